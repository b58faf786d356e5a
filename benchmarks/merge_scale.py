"""The detect stage's merge (`finish_detect`: population columns, the model's table, the consensus)
at growing N: peak memory and time of the out-of-core merge, against the in-memory merge it
replaced, side by side on the same score parts.

The score parts come from a `benchmarks/detect_scale.py` project (real detector outputs for 1M
objects, 50k rows a part, every default detector on 3 modalities). Larger N tile those parts with
shifted object ids. Each merge runs in its own process, so its peak RSS is its own. The baseline
is the merge of another git revision (default: the last commit before the out-of-core merge),
checked out in a temporary worktree and imported from there.

    python benchmarks/merge_scale.py --source /tmp/fmb-detect-scale/n1000000 \
        --n 1000000 3000000 10000000 --baseline-max-n 3000000 --workdir /tmp/fmb-merge-scale
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

MODEL = "aion"
BASELINE = "b2cf9d1"  # the in-memory merge (pandas ranks over every object's ranked columns)


def tiled_project(source: Path, n: int, workdir: Path) -> Path:
    """A project whose run holds n objects' score parts (the source's parts repeated with object ids
    shifted by the source's size), the embedding manifest that lists them, and the fit record; the
    embeddings themselves are not needed by the merge and are not copied."""
    project = workdir / f"n{n}"
    run, origin = project / "runs" / "bench", source / "runs" / "bench"
    if (run / "scores" / MODEL / "fit.json").is_file():
        return project
    manifest = json.loads((origin / "embeddings" / MODEL / "manifest.json").read_text())
    size = sum(entry["rows"] for entry in manifest["parts"].values())
    if n % size:
        raise SystemExit(f"--n {n} is not a multiple of the source's {size} objects")
    (run / "embeddings" / MODEL).mkdir(parents=True, exist_ok=True)
    (run / "scores" / MODEL / "parts").mkdir(parents=True, exist_ok=True)
    shutil.copy(source / "fmb.yaml", project / "fmb.yaml")
    shutil.copy(origin / "scores" / MODEL / "fit.json", run / "scores" / MODEL / "fit.json")
    parts, unit = {}, 0
    for copy in range(n // size):
        for key in sorted(manifest["parts"], key=int):
            entry, name = manifest["parts"][key], f"part-{int(key):05d}"
            table = pq.read_table(origin / "scores" / MODEL / "parts" / f"{name}.parquet")
            ids = pc.add(table.column("object_id"), pa.scalar(copy * size, table.schema.field("object_id").type))
            table = table.set_column(table.schema.get_field_index("object_id"), "object_id", ids)
            pq.write_table(table, run / "scores" / MODEL / "parts" / f"part-{unit:05d}.parquet", compression="zstd")
            shutil.copy(origin / "scores" / MODEL / "parts" / f"{name}.json",
                        run / "scores" / MODEL / "parts" / f"part-{unit:05d}.json")
            parts[str(unit)] = {**entry, "unit": unit, "file": f"part-{unit:05d}.parquet"}
            unit += 1
    (run / "embeddings" / MODEL / "manifest.json").write_text(json.dumps({**manifest, "parts": parts}))
    return project


def baseline_tree(revision: str, workdir: Path) -> Path:
    tree = workdir / f"baseline-{revision}"
    if not tree.is_dir():
        root = Path(__file__).resolve().parents[1]
        subprocess.run(["git", "-C", str(root), "worktree", "add", "--detach", str(tree), revision], check=True,
                       capture_output=True)
    return tree


def measure(project: Path, code: Path, memory_gb: float) -> dict:
    """The merge of `project` by the fmb package under `code`/src, in a fresh process."""
    command = [sys.executable, __file__, "--child", str(project), "--memory-gb", str(memory_gb)]
    environment = os.environ | {"PYTHONPATH": str(code / "src")}
    output = subprocess.run(command, check=True, capture_output=True, text=True, env=environment).stdout
    return json.loads(output.strip().splitlines()[-1])


def child(project: Path, memory_gb: float) -> None:
    import fmb
    from fmb.config import load_config
    from fmb.detect.tasks import finish_detect

    config = load_config(root=project, sets=[f"executor.merge_memory_gb={memory_gb}"]) \
        if _knows_merge_memory() else load_config(root=project)
    (config.layout.scores.table(MODEL)).unlink(missing_ok=True)
    started = time.perf_counter()
    summary = finish_detect(config, log=lambda line: None)
    print(json.dumps({"seconds": time.perf_counter() - started, "objects": summary[MODEL]["objects"],
                      "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
                      "code": str(Path(fmb.__file__).parents[2])}))


def same_table(a: Path, b: Path) -> str:
    """'identical' when both merges wrote the same columns, types and values (NaN equal to NaN), else
    the columns that differ; read one column at a time."""
    schema = pq.read_schema(a)
    if schema != pq.read_schema(b):
        return "differ in schema"
    differing = [name for name in schema.names if not _same_column(pq.read_table(a, columns=[name]).column(0),
                                                                     pq.read_table(b, columns=[name]).column(0))]
    return "identical" if not differing else f"differ in {differing}"


def _same_column(x, y) -> bool:
    if x.null_count != y.null_count or not x.is_null().equals(y.is_null()):
        return False
    left, right = x.drop_null().to_numpy(), y.drop_null().to_numpy()
    return bool(np.array_equal(left, right, equal_nan=left.dtype.kind == "f"))


def _knows_merge_memory() -> bool:
    from fmb.config import ExecutorConfig

    return "merge_memory_gb" in ExecutorConfig.model_fields


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=Path("/tmp/fmb-detect-scale/n1000000"),
                        help="a detect_scale.py project whose detect stage has run")
    parser.add_argument("--n", type=int, nargs="+", default=[1_000_000, 3_000_000, 10_000_000])
    parser.add_argument("--baseline-max-n", type=int, default=3_000_000, help="largest N the baseline merges")
    parser.add_argument("--baseline", default=BASELINE, help="git revision of the merge compared against")
    parser.add_argument("--memory-gb", type=float, default=2.0, help="executor.merge_memory_gb")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/fmb-merge-scale"))
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.memory_gb)
    here, old = Path(__file__).resolve().parents[1], baseline_tree(args.baseline, args.workdir)
    print(f"merge_memory_gb={args.memory_gb}; baseline {args.baseline} at {old}", flush=True)
    print(f"{'N':>11s} {'merge s':>8s} {'peak GB':>8s} {'baseline s':>11s} {'baseline GB':>12s}", flush=True)
    for n in args.n:
        project = tiled_project(args.source, n, args.workdir)
        table = project / "runs" / "bench" / "scores" / f"{MODEL}.parquet"
        new = measure(project, here, args.memory_gb)
        before = None
        if n <= args.baseline_max_n:
            shutil.copy(table, args.workdir / "merged-now.parquet")
            before = measure(project, old, args.memory_gb)
        shown = f"{before['seconds']:11.0f} {before['peak_rss_gb']:12.2f}" if before else f"{'not run':>11s}"
        same = f"  tables {same_table(args.workdir / 'merged-now.parquet', table)}" if before else ""
        print(f"{n:>11,d} {new['seconds']:8.0f} {new['peak_rss_gb']:8.2f} {shown}{same}", flush=True)


if __name__ == "__main__":
    main()
