"""Outputs are unchanged by a refactor: content fingerprints of a run's score tables, embeddings and
evaluation metrics, compared with the fingerprints recorded from an earlier commit.

    python benchmarks/refactor_parity.py                      # run the parity config, compare
    python benchmarks/refactor_parity.py --record FILE.json   # write this code's fingerprints

The run is `fmb run` on `benchmarks/parity.yaml` + `configs/adapt/tiny.yaml` (300 synthetic objects,
all four tiny models) in a temporary project, same seed. A table is fingerprinted by its columns'
values (not its file bytes, which carry the writer's version), so "identical" means every value of
every column is equal.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from fmb.config import load_config
from fmb.embed.store import embedded_models

HERE = Path(__file__).resolve().parent
BASELINE = HERE / "parity_baseline.json"
CONFIGS = [HERE / "parity.yaml", HERE.parent / "configs" / "adapt" / "tiny.yaml"]


def table_fingerprint(path: Path) -> str:
    table = pq.read_table(path)
    digest = hashlib.sha256()
    for name in table.column_names:
        digest.update(name.encode())
        column = table.column(name).to_pandas()
        values = column.astype(str) if column.dtype == object else column
        digest.update(pd.util.hash_pandas_object(values, index=False).values.tobytes())
    return digest.hexdigest()


def run_fingerprints(project: Path) -> dict[str, str]:
    config = load_config(CONFIGS, root=project)
    layout = config.layout
    found = {f"scores/{layout.scores.table(m).name}": table_fingerprint(layout.scores.table(m)) for m in config.run.models}
    for model in embedded_models(config):
        found |= {f"embeddings/{model}/{p.name}": table_fingerprint(p) for p in layout.embeddings(model).parts()}
    found["metrics.csv"] = hashlib.sha256(layout.evaluation.metrics.read_bytes()).hexdigest()
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", type=Path, help="write the fingerprints here instead of comparing")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        project = Path(directory)
        (project / "fmb.yaml").write_text("name: parity\n")
        configs = [argument for path in CONFIGS for argument in ("--config", str(path))]
        subprocess.run([sys.executable, "-c", "from fmb.cli import main; main()", "run", *configs], cwd=project,
                       check=True, env={**os.environ, "PYTHONHASHSEED": "0"})
        found = run_fingerprints(project)
    if args.record:
        args.record.write_text(json.dumps(found, indent=1, sort_keys=True) + "\n")
        print(f"recorded {len(found)} fingerprints in {args.record}")
        return
    expected = json.loads(BASELINE.read_text())
    differing = sorted(k for k in set(expected) | set(found) if expected.get(k) != found.get(k))
    for name in sorted(found):
        print(f"{'same' if name not in differing else 'DIFFERENT':9s} {name}")
    print(f"{len(found) - len([d for d in differing if d in found])} of {len(expected)} fingerprints identical "
          f"to {BASELINE.name}")
    sys.exit(1 if differing else 0)


if __name__ == "__main__":
    main()
