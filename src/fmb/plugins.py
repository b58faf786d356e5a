"""The registries: which encoders, detectors and re-rankers fmb has, by name, and where their code lives.

One line per plugin. Adding a model or a detector is one new module plus one line here (or one
`register_*` call, for code outside fmb). The registries hold import paths, not classes, so that
listing or validating names never imports torch or PyOD; a class is imported when it is used.

Each plugin class describes itself:

* an encoder (`fmb.models.base.Encoder`): ``name``, ``label`` (for figures and the report),
  ``aligned`` (its image and spectrum spaces are aligned by training, so their cosine means
  something), ``section`` (its config section class, ``models.<name>``) and its own ``adapt``;
* a detector (`fmb.detect.base.Detector`): ``name`` and explicit keyword hyper-parameters in
  ``__init__`` (scikit-learn style); its config section ``detect.<name>`` is built from that
  signature by `signature_section`;
* a re-ranker (`fmb.app.rerankers.base.Reranker`): explicit keyword parameters in ``__init__`` (all with
  defaults, ``seed`` among them) and ``summary``, one line saying what it does.

This module sits at the bottom of the import layers: it imports nothing of fmb but `fmb.errors`.
"""

from __future__ import annotations

import importlib
import inspect
from functools import cache
from typing import Annotated, Any, get_args, get_origin

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

_KINDS = {"encoder": ENCODERS, "detector": DETECTORS, "reranker": RERANKERS}


def register_encoder(name: str, target: str) -> None:
    """Add an encoder: `target` is "package.module:Class"."""
    _register("encoder", name, target)


def register_detector(name: str, target: str) -> None:
    """Add a detector: `target` is "package.module:Class"."""
    _register("detector", name, target)


def register_reranker(name: str, target: str) -> None:
    """Add a re-ranker: `target` is "package.module:Class"."""
    _register("reranker", name, target)


def _register(kind: str, name: str, target: str) -> None:
    if ":" not in target:
        raise ConfigError(f"a {kind} target is 'module:Class', got {target!r}")
    _KINDS[kind][name] = target
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


def import_target(target: str):
    """The object named by "package.module:Name" (imported now)."""
    module_name, object_name = target.split(":")
    return getattr(importlib.import_module(module_name), object_name)


def check_names(kind: str, names, key: str) -> None:
    """A clear error when a config list names a plugin that is not registered."""
    unknown = [name for name in names if name not in _KINDS[kind]]
    if unknown:
        raise ValueError(f"{key}: unknown {kind} {', '.join(map(repr, unknown))}; choose from {', '.join(_KINDS[kind])}")


def hyper_parameters(cls) -> dict[str, tuple[Any, Any]]:
    """{name: (annotation, default)} of the hyper-parameters of `cls.__init__`: every parameter with a
    default except `seed` (the run's seed is given to every detector)."""
    parameters = inspect.signature(cls.__init__, eval_str=True).parameters
    return {name: (parameter.annotation, parameter.default) for name, parameter in parameters.items()
            if name != "seed" and parameter.default is not inspect.Parameter.empty}


def signature_section(cls, base):
    """A config section class (subclass of `base`) with one field per hyper-parameter of `cls`.

    ``Annotated[int, Field(ge=1, description=...)] = 5`` in the signature becomes a validated field
    with that description, so a detector's parameters, defaults and limits are written once.
    """
    from pydantic import create_model

    fields = {name: _field(annotation, default) for name, (annotation, default) in hyper_parameters(cls).items()}
    return create_model(f"{cls.__name__}Section", __base__=base, __doc__=(cls.__doc__ or "").strip().split("\n")[0],
                        **fields)


def _field(annotation, default):
    """(type, FieldInfo) for one hyper-parameter; an `Annotated[T, Field(...)]` keeps its constraints."""
    from pydantic import Field

    if get_origin(annotation) is Annotated:
        base, *extras = get_args(annotation)
        return Annotated[base, *extras], default
    return annotation, Field(default)
