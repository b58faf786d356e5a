"""Simulated labelling: how many of an interesting class the re-rankers bring into the first 100 shown.

A synthetic survey is run through the pipeline with the pixel-PCA reference (synth -> index -> adapt
-> embed -> detect). Then, for each anomaly class taken in turn as "the interesting one", an oracle
labels what the app shows from the truth table: interest 5 for that class, 0 for anything else.
Each round shows one page of 10 objects (the random slice of `fmb.app.rerank` included, at its
default fraction), the oracle labels them, and the re-ranker is refitted on every label so far; ten
rounds make the first 100 shown. The plain ranking is the run's default fused ranking
(`fused_cauchy`) read top down. Reported per class and averaged: that class among the first 100
shown, per re-ranker against the plain ranking.

Honest protocol: every re-ranker parameter is the default of `fmb.app.rerank`, fixed from the
literature and first principles before any run. The surveys are those of
`benchmarks/detect_quality.py`: `dev` (seed 1101, 10,000 objects), on which one choice was made (the
features: the embedding alone, or beside the detector's evidence profile), and `test` (seed 2202,
12,000 objects), run once after that choice was frozen, to report.

    python benchmarks/labelling_sim.py --survey test            # synth + pipeline + simulation
    python benchmarks/labelling_sim.py --survey dev --workdir bench/labelling
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from detect_quality import ROOT, SURVEYS, Survey
from fmb.analyze.evaluate import truth_path
from fmb.app.rerank import DEFAULT_RANDOM_FRACTION, RERANKERS, RerankInputs, interleave_random, load_inputs, rerank_loaded
from fmb.config import load_config
from fmb.data.synth import ANOMALY_CLASSES
from fmb.data.tasks import INDEX, SYNTH
from fmb.detect.scores import DEFAULT_RANKING, ranked
from fmb.detect.tasks import DETECT
from fmb.embed.extract import EMBED
from fmb.models.tasks import ADAPT
from fmb.run.engine import execute, select

MODEL = "pixels"
PAGE, ROUNDS = 10, 10  # 10 objects a round, 10 rounds: the first 100 shown
INTERESTING, DULL = 5, 0


def survey_config(workdir: Path, name: str, survey: Survey):
    """The benchmark run of `survey`: the demo's detection settings with 5 folds, the pixel reference only."""
    project = workdir / name
    project.mkdir(parents=True, exist_ok=True)
    (project / "fmb.yaml").write_text(f"name: {name}\n")
    sets = [f"seed={survey.seed}", f"synth.n={survey.n}", f"synth.out=data/{name}", f"data.source=data/{name}",
            f"name={name}", "detect.folds=5", f"run.models={json.dumps([MODEL])}", "synth.anomaly_rate=0.0075",
            "synth.workers=2"]
    return load_config([ROOT / "configs/tasks/demo.yaml"], root=project, sets=sets)


def run_pipeline(config) -> None:
    """synth .. detect through the engine: each stage skipped when its config and inputs are unchanged."""
    for stage in [SYNTH, INDEX, *ADAPT.expand([MODEL]), *EMBED.expand([MODEL]), DETECT]:
        started = time.perf_counter()
        outcome = execute(config, select([stage], only=stage.name), log=lambda _: None)[0]
        print(f"  {stage.name}: {outcome.status} {time.perf_counter() - started:.0f} s", flush=True)


def classes_of(config, object_ids: np.ndarray) -> np.ndarray:
    """The truth table's anomaly class of each object (the oracle's answers; nothing else reads it)."""
    truth = pd.read_parquet(truth_path(config), columns=["object_id", "anomaly_class"])
    return truth.set_index("object_id").anomaly_class.reindex(object_ids).to_numpy()


def plain_first(inputs: RerankInputs, count: int) -> np.ndarray:
    """The first `count` object ids of the plain ranking (the ranking rule: ties by object id)."""
    frame = ranked(pd.DataFrame({"object_id": inputs.object_ids, "score": inputs.anomaly}), "score")
    return frame.object_id.to_numpy()[:count]


def labelling_loop(inputs: RerankInputs, interesting: np.ndarray, method: str, seed: int) -> np.ndarray:
    """The ids shown in ROUNDS pages of PAGE: each page the re-ranked order of what is not shown yet
    with its random slice; the oracle labels the page, the re-ranker is refitted on every label."""
    position = pd.Index(inputs.object_ids)
    shown = np.array([], dtype=np.int64)
    for round_ in range(ROUNDS):
        positions = position.get_indexer(shown)
        labels = pd.DataFrame({"object_id": shown, "interest": np.where(interesting[positions], INTERESTING, DULL)})
        order = rerank_loaded(inputs, method, labels, seed).object_id.to_numpy()
        page, _ = interleave_random(order[~np.isin(order, shown)], PAGE, DEFAULT_RANDOM_FRACTION, seed + round_)
        shown = np.concatenate([shown, page[:PAGE]])
    return shown


def simulate(config, inputs: RerankInputs) -> pd.DataFrame:
    """One row per anomaly class: its objects, and how many of them each ranking shows in the first 100."""
    classes = classes_of(config, inputs.object_ids)
    plain = pd.Index(inputs.object_ids).get_indexer(plain_first(inputs, PAGE * ROUNDS))
    rows = []
    for name in ANOMALY_CLASSES:
        interesting = classes == name
        row = {"class": name, "objects": int(interesting.sum()), "plain": int(interesting[plain].sum())}
        for method in RERANKERS:
            started = time.perf_counter()
            shown = pd.Index(inputs.object_ids).get_indexer(labelling_loop(inputs, interesting, method, config.seed))
            row[method] = int(interesting[shown].sum())
            row[f"{method}_s"] = time.perf_counter() - started
        rows.append(row)
        print("  " + ", ".join(f"{key} {value:.0f}" if isinstance(value, float) else f"{key} {value}"
                               for key, value in row.items()), flush=True)
    return pd.DataFrame(rows)


def markdown(table: pd.DataFrame) -> str:
    """The per-class table with the average over classes and each re-ranker's multiple of the plain ranking."""
    header = "| class | objects | plain | " + " | ".join(RERANKERS) + " |"
    lines = [header, "|---" + "|---:" * (2 + len(RERANKERS)) + "|"]
    for row in table.itertuples(index=False):
        cells = [f"{getattr(row, m)} ({getattr(row, m) / row.plain:.1f}x)" if row.plain else f"{getattr(row, m)} (-)"
                 for m in RERANKERS]
        lines.append(f"| {row[0]} | {row.objects} | {row.plain} | " + " | ".join(cells) + " |")
    mean = table[["objects", "plain", *RERANKERS]].mean()
    cells = [f"**{mean[m]:.1f} ({mean[m] / mean.plain:.2f}x)**" for m in RERANKERS]
    lines.append(f"| **mean over classes** | {mean.objects:.1f} | **{mean.plain:.1f}** | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--survey", choices=["dev", "test"], default="test")
    parser.add_argument("--workdir", type=Path, default=ROOT / "bench" / "labelling")
    parser.add_argument("--prepare", action="store_true", help="run the pipeline only")
    args = parser.parse_args()
    survey = SURVEYS[args.survey]
    config = survey_config(args.workdir, args.survey, survey)
    print(f"== {args.survey} survey: seed {survey.seed}, {survey.n} objects", flush=True)
    run_pipeline(config)
    if args.prepare:
        return
    inputs = load_inputs(config, MODEL, DEFAULT_RANKING)
    print(f"{len(inputs.object_ids)} objects, {MODEL} {inputs.ranking}; {ROUNDS} rounds of {PAGE}, "
          f"random slice {DEFAULT_RANDOM_FRACTION:g}", flush=True)
    table = simulate(config, inputs)
    table.to_csv(args.workdir / f"{args.survey}.csv", index=False)
    print(markdown(table))


if __name__ == "__main__":
    main()
