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
from dataclasses import replace

from fmb.config import ResolvedConfig
from fmb.data.tasks import INDEX, SYNTH, VALIDATE
from fmb.detect.tasks import DETECT
from fmb.embed.extract import EMBED as _EMBED
from fmb.embed.store import damaged_parts
from fmb.models.tasks import ADAPT
from fmb.stage import Stage


def _damaged_embeddings(config: ResolvedConfig, model: str) -> list:
    return damaged_parts(config.layout.embeddings(model).dir)


#: embed, whose finished parts are checked against their manifest before it is skipped: a damaged
#: part is redone by the next `fmb embed` (the engine's repair), the others kept
EMBED = replace(_EMBED, damaged=_damaged_embeddings)


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
