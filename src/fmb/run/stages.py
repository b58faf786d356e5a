"""The stages of the fmb pipeline, upstream first. Each is declared beside its code; this module
only puts them in order:

    synth -> index -> validate
                   -> adapt:<model> -> embed:<model> -> detect -> evaluate, agreement, similarity, figures
                                                     -> probes
    everything -> report
"""

from __future__ import annotations

from fmb.analyze.agreement import AGREEMENT
from fmb.analyze.evaluate import EVALUATE
from fmb.analyze.figures import FIGURES
from fmb.analyze.probes import PROBES
from fmb.analyze.report import REPORT
from fmb.analyze.similarity import SIMILARITY
from fmb.config import ResolvedConfig
from fmb.data.tasks import INDEX, SYNTH, VALIDATE
from fmb.detect.tasks import DETECT
from fmb.embed.extract import EMBED
from fmb.models.tasks import ADAPT
from fmb.stage import Stage


def build_stages(config: ResolvedConfig) -> list[Stage]:
    models = config.run.models
    return [SYNTH, INDEX, VALIDATE, *ADAPT.expand(models), *EMBED.expand(models), DETECT,
            EVALUATE, AGREEMENT, PROBES, SIMILARITY, FIGURES, REPORT]


def stage_named(config: ResolvedConfig, name: str) -> Stage:
    """One stage of the pipeline by its name ("detect", "embed:aion")."""
    found = [stage for stage in build_stages(config) if stage.name == name]
    if not found:
        from fmb.plugins import ENCODERS  # a model outside run.models still has its stages

        family, _, model = name.partition(":")
        families = {"adapt": ADAPT, "embed": EMBED}
        if family in families and model in ENCODERS:
            return families[family].for_model(model)
        raise KeyError(name)
    return found[0]
