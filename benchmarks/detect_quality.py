"""Detection quality on a synthetic survey, through the demo's models and the pixel-PCA reference.

Runs the real pipeline (synth -> index -> adapt -> embed -> detect -> evaluate) in a project
directory and prints:

* the best fused score's mean average precision over anomaly classes vs the best single PyOD
  baseline's (goal: >= 1.2x);
* `mispaired` recall in the top 5 % for the misalignment score and the fused scores (goal >= 0.9);
* each model's best mean class AP against the pixel-PCA reference's.

Choosing "best" over scores uses the evaluation labels, so these figures describe what the scores
*can* do on this survey; the defaults of fmb are not tuned on them.

    python benchmarks/detect_quality.py --n 10000 --out bench/quality
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import pandas as pd

from fmb.analyze.evaluate import evaluate, summary_table
from fmb.config import detect_config_class, load_config
from fmb.data.tasks import index, synth
from fmb.detect.tasks import detect
from fmb.embed.extract import embed
from fmb.models import tasks as model_tasks

ROOT = Path(__file__).resolve().parents[1]
BASELINE_METHODS = ("iforest", "lof", "knn", "ecod")


def run_pipeline(out: Path, n: int, models: list[str], reuse_survey: bool = False,
                 default_detect: bool = False) -> Path:
    """Synthesise and index (unless reuse_survey), adapt and embed `models`, then detect and evaluate all."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "fmb.yaml").write_text("name: quality\n")
    tasks = [ROOT / "configs/tasks/demo.yaml", ROOT / "configs/adapt/tiny.yaml"]
    config = load_config(tasks, root=out, sets=[f"synth.n={n}", "synth.out=data/quality", "data.source=data/quality",
                                                "name=quality", "detect.folds=5"])
    if default_detect:  # fmb's own detection defaults instead of the demo's fast settings
        config.values.detect = detect_config_class()(folds=5)
    steps = [] if reuse_survey else [("synth", lambda: synth(config)), ("index", lambda: index(config))]
    for model in models:
        steps += [(f"adapt {model}", lambda m=model: model_tasks.adapt(config, m, log=lambda _: None)),
                  (f"embed {model}", lambda m=model: embed_afresh(config, m))]
    steps += [("detect", lambda: detect(config, log=lambda _: None)), ("evaluate", lambda: evaluate(config))]
    for name, step in steps:
        started = time.perf_counter()
        step()
        print(f"  {name}: {time.perf_counter() - started:.0f} s", flush=True)
    return config.layout.evaluation.metrics


def embed_afresh(config, model: str) -> None:
    shutil.rmtree(config.layout.embeddings(model).dir, ignore_errors=True)  # made by other weights: start over
    embed(config, model)


def report(metrics: pd.DataFrame) -> None:
    summary = summary_table(metrics)
    method = summary.score.str.extract(r"^score_\w+?_(\w+)$")[0]
    fused = summary[summary.score.str.startswith("fused_")].iloc[0]
    baseline = summary[method.isin(BASELINE_METHODS)].iloc[0]
    print(f"\nbest fused score:       {fused.model}/{fused.score}  mean class AP {fused.mean_class_ap:.3f}")
    print(f"best single baseline:   {baseline.model}/{baseline.score}  mean class AP {baseline.mean_class_ap:.3f}")
    print(f"ratio (goal >= 1.2):    {fused.mean_class_ap / baseline.mean_class_ap:.2f}")
    mispaired = metrics[(metrics["class"] == "mispaired") & (metrics.score.isin(
        ["mismatch", "mismatch_residual", "fused_geo", "fused_all", "fused_max"]))]
    print("\nmispaired recall@5% (goal >= 0.9):")
    print(mispaired.pivot_table(index="model", columns="score", values="recall_5pct").round(3).to_string())
    best = summary.groupby("model").mean_class_ap.max()
    print("\nbest mean class AP per model (pixels = no foundation model):")
    for model, value in best.sort_values(ascending=False).items():
        print(f"  {model:10s} {value:.3f}  ({value / best.get('pixels', float('nan')):.2f}x pixels)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "quality")
    parser.add_argument("--models", nargs="+", default=["pixels", "astroclip", "astropt", "aion"])
    parser.add_argument("--reuse-embeddings", action="store_true",
                        help="keep the survey and embeddings already in --out; rerun detect and evaluate only")
    parser.add_argument("--default-detect", action="store_true",
                        help="detect with fmb's default settings (PCA 64, larger and longer-trained flows) "
                             "instead of the demo's fast ones")
    parser.add_argument("--reembed", nargs="+", default=[], metavar="MODEL",
                        help="keep the survey and the other models' embeddings; adapt and embed these again")
    args = parser.parse_args()
    reuse_survey = args.reuse_embeddings or bool(args.reembed)
    models = args.reembed or ([] if args.reuse_embeddings else args.models)
    report(pd.read_csv(run_pipeline(args.out, args.n, models, reuse_survey, args.default_detect)))


if __name__ == "__main__":
    main()
