"""Detection quality under an honest protocol: choose on one survey, report on others.

Three synthetic surveys, each run through the real pipeline (synth -> index -> adapt -> embed ->
detect -> evaluate) with the demo's models and the pixel-PCA reference:

* ``dev``: the development survey (one seed). Any choice of method, feature or default may look at
  the labels of the **seen** classes of this survey only; `--survey dev` prints nothing else.
* ``test``: another seed, larger, never looked at while choosing. Reported for both halves.
* ``shifted``: another seed with the generator's variant settings (larger cutouts, a wider PSF,
  more noise, another population mix): how the figures hold when the survey is not the one fmb
  was developed on. Reported for both halves, even where it falls short.

The eight anomaly classes were split in two halves by a seeded draw (numpy default_rng(20261202)
permuting the sorted names) before any of this work started: SEEN and UNSEEN below.

Figures per survey and half (mean class AP = AP per class, class vs ordinary objects, averaged):

* the **default** ranking (`fmb.detect.scores.DEFAULT_RANKING`) of every model, and the cross-model
  consensus ranking: what a user looks at, chosen by principle and not by labels;
* the best single PyOD baseline *picked with the labels* of that survey and half (a ceiling that
  no user has), and the better of the two trivial scores (spectrum median S/N, total flux);
* `mispaired` recall in the top 5 % for the default ranking and the misalignment score;
* the pixel reference's AP on each image-only class against its chance AP;
* what each detection method cost (seconds, fit and score, summed over models and modalities).

    python benchmarks/detect_quality.py                 # all three surveys
    python benchmarks/detect_quality.py --survey dev    # seen classes only
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from fmb.analyze.evaluate import EVALUATE
from fmb.config import load_config
from fmb.detect.scores import CALIBRATED_FUSION, DEFAULT_RANKING, MISMATCH, REDSHIFT_CHANNEL
from fmb.detect.tasks import DETECT
from fmb.embed.extract import EMBED
from fmb.models.tasks import ADAPT
from fmb.run.engine import execute, select
from fmb.data.tasks import INDEX, SYNTH

ROOT = Path(__file__).resolve().parents[1]
MODELS = ["pixels", "physical", "astroclip", "astropt", "aion"]
BASELINE_METHODS = ("iforest", "lof", "knn", "ecod")
SEEN = ("strong_lens", "mispaired", "merger", "image_artefact")
UNSEEN = ("star", "extreme_emitter", "spectrum_artefact", "qso_agn")
IMAGE_ONLY = ("image_artefact", "merger", "strong_lens")
TRIVIAL = "trivial"  # the pseudo-model of evaluate's trivial scores
CONSENSUS = "consensus"  # the pseudo-model of the cross-model consensus ranking


@dataclass(frozen=True)
class Survey:
    seed: int
    n: int
    synth: dict = field(default_factory=dict)  # variant settings of the generator
    halves: tuple[str, ...] = ("seen", "unseen")


SURVEYS = {
    "dev": Survey(seed=1101, n=10_000, halves=("seen",)),
    "test": Survey(seed=2202, n=12_000),
    # dev and test: the realistic sky at its defaults (synth.sky); shifted: twice its nuisances
    "shifted": Survey(seed=3303, n=10_000, synth={"cutout_px": 72, "psf_scale": 1.3, "noise_scale": 1.5,
                                                   "population_mix": {"BGS": 0.2, "LRG": 0.3, "ELG": 0.5},
                                                   "sky": {"field_galaxies": 4.0, "neighbour_rate": 0.3,
                                                           "star_rate": 0.12, "edge_rate": 0.06, "sky_residual": 2.0}}),
}


def survey_config(out: Path, name: str, survey: Survey, models=MODELS, scale: float = 1.0):
    project = out / name
    project.mkdir(parents=True, exist_ok=True)
    (project / "fmb.yaml").write_text(f"name: {name}\n")
    tasks = [ROOT / "configs/tasks/demo.yaml", ROOT / "configs/adapt/tiny.yaml"]
    sets = [f"seed={survey.seed}", f"synth.n={round(survey.n * scale)}", f"synth.out=data/{name}",
            f"data.source=data/{name}", f"name={name}", "detect.folds=5", f"run.models={json.dumps(list(models))}",
            "synth.anomaly_rate=0.0075"]
    sets += [f"synth.{key}={json.dumps(value)}" for key, value in survey.synth.items()]
    return load_config(tasks, root=project, sets=sets)


def run_survey(config, measure: bool, reembed: list[str]) -> None:
    """synth .. embed through the engine (skipped when unchanged, `reembed` models embedded again);
    then, when `measure`, detect and evaluate, always rerun since they are what is measured."""
    models = config.run.models
    stages = [SYNTH, INDEX, *ADAPT.expand(models), *EMBED.expand(models)] + ([DETECT, EVALUATE] if measure else [])
    forced = {DETECT.name, EVALUATE.name} | {EMBED.for_model(model).name for model in reembed}
    for stage in stages:
        started = time.perf_counter()
        outcome = execute(config, select([stage], only=stage.name, force=stage.name in forced), log=lambda _: None)[0]
        print(f"  {stage.name}: {outcome.status} {time.perf_counter() - started:.0f} s", flush=True)


def mean_class_ap(metrics: pd.DataFrame, classes) -> pd.DataFrame:
    """(model, score) -> mean AP over `classes`, best first."""
    rows = metrics[metrics["class"].isin(classes)]
    return rows.groupby(["model", "score"]).ap.mean().sort_values(ascending=False).rename("mean_class_ap").reset_index()


def half_report(metrics: pd.DataFrame, half: str, classes) -> dict:
    table = mean_class_ap(metrics, classes)
    method = table.score.str.extract(r"^score_\w+?_(\w+)$")[0]
    baseline = table[method.isin(BASELINE_METHODS)].iloc[0]
    trivial = table[table.model == TRIVIAL].iloc[0]
    defaults = table[(table.score == DEFAULT_RANKING) & ~table.model.isin([TRIVIAL, CONSENSUS])]
    consensus = table[table.model == CONSENSUS]
    print(f"\n[{half} classes: {', '.join(classes)}]")
    print(f"  best PyOD baseline (picked with labels): {baseline.model}/{baseline.score} {baseline.mean_class_ap:.3f}")
    print(f"  better trivial score:                   {trivial.score} {trivial.mean_class_ap:.3f}")
    print(f"  default ranking ({DEFAULT_RANKING}) per model: mean class AP, x baseline, x trivial")
    before = table[table.score.isin([CALIBRATED_FUSION, REDSHIFT_CHANNEL]) & ~table.model.isin([TRIVIAL, CONSENSUS])]
    for row in [*defaults.itertuples(), *consensus.itertuples(), *before.itertuples()]:
        print(f"    {row.model:10s} {row.score:16s} {row.mean_class_ap:.3f}  {row.mean_class_ap / baseline.mean_class_ap:5.2f}x"
              f"  {row.mean_class_ap / trivial.mean_class_ap:5.2f}x")
    shown = metrics[metrics["class"].isin(classes) & (((metrics.score == DEFAULT_RANKING) & (metrics.model != CONSENSUS))
                                                      | metrics.model.isin([CONSENSUS, TRIVIAL]))]
    print("  AP per class (default ranking of every representation, the trivial scores beside):")
    print("    " + shown.pivot_table(index=["model", "score"], columns="class", values="ap").round(3)
          .to_string().replace("\n", "\n    "))
    return {"baseline": baseline.to_dict(), "trivial": trivial.to_dict(), "default": defaults.to_dict("records"),
            "consensus": consensus.to_dict("records")}


def class_report(metrics: pd.DataFrame, classes) -> None:
    if "mispaired" in classes:
        mispaired = metrics[(metrics["class"] == "mispaired") & metrics.score.isin([DEFAULT_RANKING, MISMATCH])]
        print("\n  mispaired recall@5% (goal >= 0.9):")
        print(mispaired.pivot_table(index="model", columns="score", values="recall_5pct").round(3).to_string())
    pixels = metrics[(metrics.model == "pixels") & metrics["class"].isin(IMAGE_ONLY) & metrics["class"].isin(classes)
                     & (metrics.score == DEFAULT_RANKING)]
    if len(pixels):
        print(f"\n  pixel reference, image-only classes ({DEFAULT_RANKING}; goal >= 5x chance):")
        for _, row in pixels.iterrows():
            chance = row.positives / row.objects
            print(f"    {row['class']:16s} AP {row.ap:.3f}  chance {chance:.4f}  {row.ap / chance:5.1f}x")


def cost_report(config) -> None:
    summary = json.loads(config.layout.scores.summary.read_text())
    seconds: dict[str, float] = {}
    for model in summary.values():
        for method, value in model.get("seconds", {}).items():
            seconds[method] = seconds.get(method, 0.0) + value
    print("\n  cost per method (s, fit + score, all models and modalities): "
          + ", ".join(f"{m} {s:.0f}" for m, s in sorted(seconds.items(), key=lambda kv: -kv[1])))


def report(config, survey: Survey) -> dict:
    metrics = pd.read_csv(config.layout.evaluation.metrics)
    halves = {"seen": SEEN, "unseen": UNSEEN}
    result = {}
    for half in survey.halves:
        result[half] = half_report(metrics, half, halves[half])
        class_report(metrics, halves[half])
    cost_report(config)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--survey", choices=[*SURVEYS, "all"], default="all")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "quality")
    parser.add_argument("--prepare", action="store_true", help="synthesise and embed only (no detect, no report)")
    parser.add_argument("--report-only", action="store_true", help="print the report of the last run")
    parser.add_argument("--reembed", nargs="+", default=[], metavar="MODEL", help="embed these models again")
    parser.add_argument("--models", nargs="+", default=MODELS, metavar="MODEL", help="the models run (default: all)")
    parser.add_argument("--scale", type=float, default=1.0, help="a share of each survey's objects (a quick run)")
    args = parser.parse_args()
    names = list(SURVEYS) if args.survey == "all" else [args.survey]
    results = {}
    for name in names:
        survey = SURVEYS[name]
        config = survey_config(args.out, name, survey, args.models, args.scale)
        print(f"== {name} survey: seed {survey.seed}, {config.synth.n} objects, {survey.synth or 'default generator'}", flush=True)
        if not args.report_only:
            run_survey(config, measure=not args.prepare, reembed=args.reembed)
        if not args.prepare:
            results[name] = report(config, survey)
    if results:
        (args.out / "results.json").write_text(json.dumps(results, indent=2, default=float))


if __name__ == "__main__":
    main()
