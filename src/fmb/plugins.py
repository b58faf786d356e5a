"""The registries: which encoders, detectors and re-rankers fmb has, by name, and where their code lives.

One line per plugin, and one per config section. Adding a model or a detector is one new module,
one section class and a line in each table here (or one `register_*` call, for code outside fmb).
The registries hold import paths, not classes, so that listing or validating names never imports
torch or PyOD; a class is imported when it is used. A plugin's config section is named apart from
its class (`ENCODER_SECTIONS`, `DETECTOR_SECTIONS`), in a module that imports neither
(`fmb.models.sections`, `fmb.detect.sections`): loading a configuration, `fmb config show` and
`fmb --help` build the schema from the sections alone and never import a model or a detector.

Each plugin class describes itself:

* an encoder (`fmb.models.base.Encoder`): ``name``, ``label`` (for figures and the report),
  ``aligned`` (its image and spectrum spaces are aligned by training, so their cosine means
  something), ``section`` (its config section class, ``models.<name>``) and its own ``adapt``;
* a detector (`fmb.detect.base.Detector`): ``name`` and ``section`` (its config section class,
  ``detect.<name>``), whose fields are the keyword hyper-parameters of its ``__init__``
  (scikit-learn style, validated and defaulted by the section);
* a re-ranker (`fmb.app.rerankers.base.Reranker`): explicit keyword parameters in ``__init__`` (all with
  defaults, ``seed`` among them) and ``summary``, one line saying what it does.

This module sits at the bottom of the import layers: it imports nothing of fmb but `fmb.errors`.
"""

from __future__ import annotations

import importlib
from functools import cache

from fmb.errors import ConfigError

ENCODERS: dict[str, str] = {
    "pixels": "fmb.models.pixels:PixelsEncoder",
    "physical": "fmb.models.physical:PhysicalEncoder",
    "aion": "fmb.models.aion:AionEncoder",
    "aion_codec": "fmb.models.aion_codec:AionCodecEncoder",
    "astropt": "fmb.models.astropt:AstroPTEncoder",
    "astroclip": "fmb.models.astroclip:AstroCLIPEncoder",
}

DETECTORS: dict[str, str] = {
    "flow": "fmb.detect.methods.flow:FlowDetector",
    "iforest": "fmb.detect.methods.iforest:IForestDetector",
    "lof": "fmb.detect.methods.lof:LOFDetector",
    "knn": "fmb.detect.methods.knn:KNNDetector",
    "ecod": "fmb.detect.methods.ecod:ECODDetector",
}

RERANKERS: dict[str, str] = {
    "astronomaly": "fmb.app.rerankers.astronomaly:NeighbourScore",
    "gp_ei": "fmb.app.rerankers.gp_ei:GaussianProcessEI",
    "propagation": "fmb.app.rerankers.propagation:LabelPropagation",
    "active_search": "fmb.app.rerankers.active_search:ActiveSearch",
    "bandit": "fmb.app.rerankers.bandit:Bandit",
}

#: Each plugin's config section class ("module:Class", the same class as the plugin's ``section``),
#: importable without the plugin's own code. A plugin missing here has its class imported for it.
ENCODER_SECTIONS: dict[str, str] = {
    "pixels": "fmb.models.sections:PixelsSection",
    "physical": "fmb.models.sections:PhysicalSection",
    "aion": "fmb.models.sections:AionSection",
    "aion_codec": "fmb.models.sections:AionCodecSection",
    "astropt": "fmb.models.sections:AstroPTSection",
    "astroclip": "fmb.models.sections:AstroCLIPSection",
}

DETECTOR_SECTIONS: dict[str, str] = {
    "flow": "fmb.detect.sections:FlowSection",
    "iforest": "fmb.detect.sections:IForestSection",
    "lof": "fmb.detect.sections:LOFSection",
    "knn": "fmb.detect.sections:KNNSection",
    "ecod": "fmb.detect.sections:ECODSection",
}

_KINDS = {"encoder": ENCODERS, "detector": DETECTORS, "reranker": RERANKERS}
_SECTIONS = {"encoder": ENCODER_SECTIONS, "detector": DETECTOR_SECTIONS}


def register_encoder(name: str, target: str, section: str | None = None) -> None:
    """Add an encoder: `target` is "package.module:Class", `section` its config section class
    (default: read from the class, which is then imported whenever a config is loaded)."""
    _register("encoder", name, target, section)


def register_detector(name: str, target: str, section: str | None = None) -> None:
    """Add a detector: `target` is "package.module:Class", `section` its config section class
    (default: read from the class, which is then imported whenever a config is loaded)."""
    _register("detector", name, target, section)


def register_reranker(name: str, target: str) -> None:
    """Add a re-ranker: `target` is "package.module:Class"."""
    _register("reranker", name, target)


def _register(kind: str, name: str, target: str, section: str | None = None) -> None:
    for given in (target, section or ":"):
        if ":" not in given:
            raise ConfigError(f"a {kind} target is 'module:Class', got {given!r}")
    _KINDS[kind][name] = target
    if section:
        _SECTIONS[kind][name] = section
    else:
        _SECTIONS[kind].pop(name, None)
    load.cache_clear()


def encoder_names() -> list[str]:
    return list(ENCODERS)


def detector_names() -> list[str]:
    return list(DETECTORS)


def reranker_names() -> list[str]:
    return list(RERANKERS)


def encoder_class(name: str):
    return load("encoder", name)


def detector_class(name: str):
    return load("detector", name)


def reranker_class(name: str):
    return load("reranker", name)


@cache
def load(kind: str, name: str):
    """The class registered as `name` (imported on first use)."""
    registry = _KINDS[kind]
    if name not in registry:
        raise ConfigError(f"unknown {kind} {name!r}; choose from {', '.join(registry)}")
    return import_target(registry[name])


def section_class(kind: str, name: str):
    """The config section class of the encoder or detector `name`: from its section table when it is
    there (the plugin's own module is not imported), else the plugin class's ``section``."""
    target = _SECTIONS[kind].get(name)
    return import_target(target) if target else load(kind, name).section


def import_target(target: str):
    """The object named by "package.module:Name" (imported now)."""
    module_name, object_name = target.split(":")
    return getattr(importlib.import_module(module_name), object_name)


def check_names(kind: str, names, key: str) -> None:
    """A clear error when a config list names a plugin that is not registered."""
    unknown = [name for name in names if name not in _KINDS[kind]]
    if unknown:
        raise ValueError(f"{key}: unknown {kind} {', '.join(map(repr, unknown))}; choose from {', '.join(_KINDS[kind])}")
