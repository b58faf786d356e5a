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
`benchmarks/detect_quality.py`: `dev` (seed 1101, 10,000 objects), on which choices are made looking
at the seen classes only (`--survey dev` reports nothing else); `test` (seed 2202, 12,000 objects),
run after every choice was frozen, to report every class; and `shifted` (seed 3303, another
generator setting), a survey no choice has seen, reported once.

The test run also times one propagation refit as it was before the graph cache (the module of commit
`BEFORE`, read from git) and as it is now, on the same survey and labels.

    python benchmarks/labelling_sim.py --survey test            # synth + pipeline + simulation
    python benchmarks/labelling_sim.py --survey dev --workdir bench/labelling
    python benchmarks/labelling_sim.py --survey test --as-is    # on the detection outputs already there
    python benchmarks/labelling_sim.py --survey dev --as-is --neighbours-only  # what the features allow
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pandas as pd

from detect_quality import ROOT, SEEN, SURVEYS, Survey
from fmb.analyze.evaluate import truth_path
from fmb.app.graph import GraphCache, principal_components
from fmb.app.pages import DEFAULT_RANDOM_FRACTION, page_positions
from fmb.app.rerank import RerankInputs, load_inputs, rerank_loaded
from fmb.app.rerankers.propagation import LabelPropagation
from fmb.plugins import RERANKERS
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
#: The last commit whose label propagation built its graph and solved its system directly on every refit.
BEFORE = "6dd59a7"
REPEATS = 3


def survey_config(workdir: Path, name: str, survey: Survey):
    """The benchmark run of `survey`: the demo's detection settings with 5 folds, the pixel reference only."""
    project = workdir / name
    project.mkdir(parents=True, exist_ok=True)
    (project / "fmb.yaml").write_text(f"name: {name}\n")
    sets = [f"seed={survey.seed}", f"synth.n={survey.n}", f"synth.out=data/{name}", f"data.source=data/{name}",
            f"name={name}", "detect.folds=5", f"run.models={json.dumps([MODEL])}", "synth.anomaly_rate=0.0075",
            "synth.workers=2"]
    sets += [f"synth.{key}={json.dumps(value)}" for key, value in survey.synth.items()]
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


def labelling_loop(inputs: RerankInputs, interesting: np.ndarray, method: str, seed: int,
                   graphs: GraphCache) -> tuple[np.ndarray, np.ndarray]:
    """The ids shown in ROUNDS pages of PAGE, and which were drawn at random: each page the first page
    of the re-ranked order of what is not shown yet, with its random slice; the oracle labels it, the
    re-ranker is refitted on every label."""
    position = pd.Index(inputs.object_ids)
    shown, random = np.array([], dtype=np.int64), np.array([], dtype=bool)
    previous = None  # the last list, whose `chosen_by` (the bandit's) says which arm each label rewards
    for round_ in range(ROUNDS):
        positions = position.get_indexer(shown)
        labels = pd.DataFrame({"object_id": shown, "interest": np.where(interesting[positions], INTERESTING, DULL)})
        reranked = rerank_loaded(inputs, method, labels, seed, graphs, previous)
        order = reranked.object_id.to_numpy()
        unseen = order[~np.isin(order, shown)]
        page, drawn = page_positions(len(unseen), 0, PAGE, DEFAULT_RANDOM_FRACTION, seed + round_)
        if "chosen_by" in reranked:  # a pick of the random slice rewards no arm
            previous = reranked[["object_id", "chosen_by"]].copy()
            previous.loc[previous.object_id.isin(unseen[page][drawn]), "chosen_by"] = "random"
        shown, random = np.concatenate([shown, unseen[page]]), np.concatenate([random, drawn])
    return shown, random


def simulate(config, inputs: RerankInputs, names: tuple[str, ...], methods=tuple(RERANKERS)) -> pd.DataFrame:
    """One row per anomaly class of `names`: its objects, how many of them each ranking (the plain one
    and each re-ranker of `methods`) shows in the first 100, where the first of them came (-1: none)
    and how many came in the random slice."""
    classes = classes_of(config, inputs.object_ids)
    plain = pd.Index(inputs.object_ids).get_indexer(plain_first(inputs, PAGE * ROUNDS))
    graphs = GraphCache()
    rows = []
    for name in names:
        interesting = classes == name
        row = {"class": name, "objects": int(interesting.sum()), "plain": int(interesting[plain].sum())}
        for method in methods:
            started = time.perf_counter()
            ids, random = labelling_loop(inputs, interesting, method, config.seed, graphs)
            found = interesting[pd.Index(inputs.object_ids).get_indexer(ids)]
            row[method] = int(found.sum())
            row[f"{method}_first"] = int(np.argmax(found)) if found.any() else -1
            row[f"{method}_random"] = int(found[random].sum())
            row[f"{method}_s"] = time.perf_counter() - started
        rows.append(row)
        print("  " + ", ".join(f"{key} {value:.0f}" if isinstance(value, float) else f"{key} {value}"
                               for key, value in row.items()), flush=True)
    return pd.DataFrame(rows)


def neighbour_precision(config, inputs: RerankInputs, names: tuple[str, ...], counts=(10, 100)) -> pd.DataFrame:
    """What the features allow, whatever the re-ranker: for each class of `names`, the share of the class
    among each member's `counts` nearest neighbours in the space the graph re-rankers learn on (the
    principal components of `fmb.app.rerank`). A re-ranker that has found one member and shows its
    100 nearest neighbours finds about 100 x precision@100 more."""
    from sklearn.neighbors import NearestNeighbors

    defaults = LabelPropagation()
    space = principal_components(inputs.features, defaults.components, config.seed)
    classes = classes_of(config, inputs.object_ids)
    nearest = NearestNeighbors(n_neighbors=max(counts) + 1).fit(space)
    rows = []
    for name in names:
        members = classes == name
        neighbours = nearest.kneighbors(space[members], return_distance=False)[:, 1:]  # itself first
        rows.append({"class": name, **{f"precision@{k}": members[neighbours[:, :k]].mean() for k in counts},
                     "chance": members.mean()})
    return pd.DataFrame(rows)


def markdown(table: pd.DataFrame) -> str:
    """The per-class table (with each class's half: seen, the development classes, or unseen), the
    average over all classes and over each half, and each re-ranker's multiple of the plain ranking;
    then where each re-ranker showed the class first and how many it found in the random slice."""
    methods = [method for method in RERANKERS if method in table]
    header = "| class | half | objects | plain | " + " | ".join(methods) + " |"
    lines = [header, "|---|---" + "|---:" * (2 + len(methods)) + "|"]
    half = np.where(table["class"].isin(SEEN), "seen", "unseen")
    for row, where in zip(table.itertuples(index=False), half):
        cells = [f"{getattr(row, m)} ({getattr(row, m) / row.plain:.1f}x)" if row.plain else f"{getattr(row, m)} (-)"
                 for m in methods]
        lines.append(f"| {row[0]} | {where} | {row.objects} | {row.plain} | " + " | ".join(cells) + " |")
    for name, rows in (("mean over classes", table), ("mean, seen half", table[half == "seen"]),
                       ("mean, unseen half", table[half == "unseen"])):
        if len(rows) and (rows is table or len(rows) < len(table)):
            mean = rows[["objects", "plain", *methods]].mean()
            cells = [f"**{mean[m]:.1f} ({mean[m] / mean.plain:.2f}x)**" for m in methods]
            lines.append(f"| **{name}** | | {mean.objects:.1f} | **{mean.plain:.1f}** | " + " | ".join(cells) + " |")
    lines += ["", "| class | " + " | ".join(f"{m}: first shown at / in the random slice" for m in methods) + " |",
              "|---" + "|---:" * len(methods) + "|"]
    for row in table.itertuples(index=False):
        cells = [f"{getattr(row, f'{m}_first') + 1 if getattr(row, f'{m}_first') >= 0 else '-'} / "
                 f"{getattr(row, f'{m}_random')}" for m in methods]
        lines.append(f"| {row[0]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def module_at(commit: str, path: str) -> types.ModuleType:
    """The module at `path` as it was at `commit` (read with `git show`; nothing is checked out)."""
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{commit}:{path}"], capture_output=True, text=True,
                            check=True).stdout
    module = types.ModuleType(f"before_{commit}")
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(source, f"{commit}:{path}", "exec"), module.__dict__)
    return module


def seconds(action, repeats: int = REPEATS) -> float:
    """The median wall time of `repeats` calls."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def refit_timing(config, inputs: RerankInputs) -> dict:
    """Seconds of one propagation refit on the survey (the plain top 50 labelled, the first of them 5):
    as at `BEFORE`; now with the graph built (and saved in the run's app directory), read back by a
    fresh cache (a restarted app, or `fmb rerank`), and held in memory; and whether the lists agree."""
    labels = pd.DataFrame({"object_id": plain_first(inputs, 50), "interest": [INTERESTING] + [DULL] * 49})
    before = module_at(BEFORE, "src/fmb/app/rerank.py")
    old = before.rerank_loaded(inputs, "propagation", labels, config.seed)
    timing = {"before": seconds(lambda: before.rerank_loaded(inputs, "propagation", labels, config.seed))}
    for stale in config.layout.app.graph("x").parent.glob("knn-*.npz"):
        stale.unlink()
    started = time.perf_counter()
    new = rerank_loaded(inputs, "propagation", labels, config.seed, GraphCache(config.layout.app.graph))
    timing["built"] = time.perf_counter() - started
    timing["from file"] = seconds(lambda: rerank_loaded(inputs, "propagation", labels, config.seed,
                                                        GraphCache(config.layout.app.graph, kept=0)))
    held = GraphCache()
    rerank_loaded(inputs, "propagation", labels, config.seed, held)
    timing["in memory"] = seconds(lambda: rerank_loaded(inputs, "propagation", labels, config.seed, held))
    timing["same list"] = bool(old.object_id.equals(new.object_id))
    timing["largest score difference"] = float(np.abs(old.score.to_numpy() - new.score.to_numpy()).max())
    return timing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--survey", choices=list(SURVEYS), default="test")
    parser.add_argument("--workdir", type=Path, default=ROOT / "bench" / "labelling")
    parser.add_argument("--prepare", action="store_true", help="run the pipeline only")
    parser.add_argument("--timing-only", action="store_true", help="time one propagation refit, no simulation")
    parser.add_argument("--neighbours-only", action="store_true",
                        help="how much of each class lies among its members' nearest neighbours, no simulation")
    parser.add_argument("--rerankers", nargs="+", choices=list(RERANKERS), default=list(RERANKERS),
                        help="the re-rankers simulated (default: every one)")
    parser.add_argument("--as-is", action="store_true",
                        help="simulate on the run's detection outputs as they are, without bringing the pipeline up "
                             "to date (say so when reporting: a stage's code may have changed since)")
    args = parser.parse_args()
    survey = SURVEYS[args.survey]
    config = survey_config(args.workdir, args.survey, survey)
    print(f"== {args.survey} survey: seed {survey.seed}, {survey.n} objects", flush=True)
    if not args.as_is:
        run_pipeline(config)
    if args.prepare:
        return
    inputs = load_inputs(config, MODEL, DEFAULT_RANKING)
    print(f"{len(inputs.object_ids)} objects, {MODEL} {inputs.ranking}; {ROUNDS} rounds of {PAGE}, "
          f"random slice {DEFAULT_RANDOM_FRACTION:g}", flush=True)
    names = SEEN if args.survey == "dev" else ANOMALY_CLASSES
    if args.neighbours_only:
        precision = neighbour_precision(config, inputs, names)
        print(" | ".join(precision.columns))
        for row in precision.itertuples(index=False):
            print(f"{row[0]} | " + " | ".join(f"{value:.3f}" for value in row[1:]))
        return
    if not args.timing_only:
        table = simulate(config, inputs, names, tuple(args.rerankers))
        table.to_csv(args.workdir / f"{args.survey}.csv", index=False)
        print(markdown(table))
    if args.survey == "test":
        print(f"one propagation refit, {len(inputs.object_ids)} objects, median of {REPEATS}:")
        print("  " + ", ".join(f"{key} {value:.3g}" if isinstance(value, float) else f"{key} {value}"
                               for key, value in refit_timing(config, inputs).items()), flush=True)


if __name__ == "__main__":
    main()
