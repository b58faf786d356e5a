"""The stages of the fmb pipeline, upstream first: what each runs, reads, writes and depends on.

    synth -> index -> validate
                   -> adapt:<model> -> embed:<model> -> detect -> evaluate, agreement, similarity, figures
                                                     -> probes
    everything -> report
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from fmb.config import ResolvedConfig
from fmb.detect import scores_dir
from fmb.run.pipeline import Stage

_NOT_SYNTHETIC = "only with run.synth (the built-in synthetic survey)"


def _source_dir(config: ResolvedConfig) -> list[Path]:
    """The local data a source reads (a hub id has none: its name is in the config key)."""
    spec = config.data.source
    kind, sep, rest = spec.partition(":")
    local = config.path(rest if sep and kind in ("hf", "desi") else spec)
    return [local] + ([config.path(config.data.cutouts)] if config.data.cutouts else [])


def _data(config: ResolvedConfig, name: str) -> Path:
    return config.run_dir / "data" / name


def _embeddings(config: ResolvedConfig) -> list[Path]:
    return [config.run_dir / "embeddings" / model / "manifest.json" for model in config.run.models]


def _scores(config: ResolvedConfig) -> list[Path]:
    return [scores_dir(config)]


def _analysis(config: ResolvedConfig, name: str) -> list[Path]:
    return [config.run_dir / "analysis" / name]


def _catalog(config: ResolvedConfig) -> list[Path]:
    from fmb.data.catalog import catalog_path

    path = catalog_path(config)
    return [path] if path else []


def _truth(config: ResolvedConfig) -> list[Path]:
    from fmb.analyze.evaluate import truth_path

    return [truth_path(config)]


# -- actions (imports inside: `fmb run --help` must not load torch) ---------------------------------

def _synth(config, log):
    from fmb.data.tasks import synth

    return synth(config)


def _index(config, log):
    from fmb.data.tasks import index

    summary = index(config)
    return {"objects": summary.objects, "shards": summary.shards, "rejected": summary.skipped}


def _validate(config, log):
    from fmb.data.tasks import validate

    return validate(config)


def _adapt(model, config, log):
    from fmb.models.tasks import adapt

    return adapt(config, model, log=log)


def _embed(model, config, log):
    from fmb.embed.extract import embed

    return embed(config, model)


def _detect(config, log):
    from fmb.detect.tasks import detect

    return detect(config, log=log)


def _evaluate(config, log):
    from fmb.analyze.evaluate import evaluate

    return evaluate(config)


def _agreement(config, log):
    from fmb.analyze.agreement import agreement

    return agreement(config, log=log)


def _probes(config, log):
    from fmb.analyze.probes import probes

    return probes(config, log=log)


def _similarity(config, log):
    from fmb.analyze.similarity import neighbour_ranks, similarity

    neighbour_ranks(config, log=log)
    return similarity(config, log=log)


def _figures(config, log):
    from fmb.viz.figures import figures

    return figures(config, log=log)


def _report(config, log):
    from fmb.viz.report import report

    return report(config)


def _needs_truth(config: ResolvedConfig) -> str | None:
    return None if _truth(config)[0].is_file() or config.run.synth else f"no truth table at {_truth(config)[0]}"


def _needs_catalog(config: ResolvedConfig) -> str | None:
    return None if _catalog(config) or config.run.synth else "no catalog (set data.catalog)"


def build_stages(config: ResolvedConfig) -> list[Stage]:
    models = config.run.models
    embeds = tuple(f"embed:{m}" for m in models)
    stages = [
        Stage("synth", _synth, ("synth", "seed"), lambda c: [], lambda c: [c.path(c.synth.out)],
              applies=lambda c: None if c.run.synth else _NOT_SYNTHETIC),
        Stage("index", _index, ("data",), _source_dir, lambda c: [_data(c, "index.parquet")], after=("synth",)),
        Stage("validate", _validate, ("data",), lambda c: [_data(c, "index.parquet")],
              lambda c: [_data(c, "validation.json")], after=("index",)),
    ]
    for model in models:
        stages.append(Stage(f"adapt:{model}", partial(_adapt, model), (f"models.{model}", "data", "seed"),
                            lambda c: [_data(c, "index.parquet")], lambda c, m=model: [c.run_dir / "models" / m],
                            after=("index",)))
    for model in models:
        stages.append(Stage(f"embed:{model}", partial(_embed, model), (f"models.{model}", "data", "seed"),
                            lambda c, m=model: [_data(c, "index.parquet"), c.run_dir / "models" / m],
                            lambda c, m=model: [c.run_dir / "embeddings" / m], after=(f"adapt:{model}",)))
    stages += [
        Stage("detect", _detect, ("detect", "seed", "run.models"), _embeddings, _scores, after=embeds),
        Stage("evaluate", _evaluate, ("evaluate",), lambda c: _scores(c) + _truth(c),
              lambda c: _analysis(c, "evaluation"), after=("detect",), applies=_needs_truth),
        Stage("agreement", _agreement, ("analyze.agreement",), _scores, lambda c: _analysis(c, "agreement"),
              after=("detect",)),
        Stage("probes", _probes, ("analyze.probes", "seed"), lambda c: _embeddings(c) + _catalog(c),
              lambda c: _analysis(c, "probes"), after=embeds, applies=_needs_catalog),
        Stage("similarity", _similarity, ("analyze.similarity",), lambda c: _embeddings(c) + _scores(c),
              lambda c: _analysis(c, "similarity"), after=("detect",)),
        Stage("figures", _figures, ("analyze.figures", "seed"),
              lambda c: _embeddings(c) + _scores(c) + _catalog(c) + [_data(c, "index.parquet")],
              lambda c: _analysis(c, "figures"), after=("detect",)),
    ]
    upstream = tuple(stage.name for stage in stages)
    stages.append(Stage("report", _report, ("name",), lambda c: [c.run_dir / "analysis", scores_dir(c),
                                                                 _data(c, "validation.json"), *_embeddings(c)],
                        lambda c: [c.run_dir / "report.html"], after=upstream))
    return stages
