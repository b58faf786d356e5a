"""What a configuration reads from the Hugging Face hub: each model's files, as its encoder names them
(`Encoder.hub_files`, the one place that knows them), grouped by repository, and the dataset of an
``hf:<dataset id>`` source with the splits it reads."""

from __future__ import annotations

from dataclasses import dataclass, replace

from fmb.config import ResolvedConfig
from fmb.data.sources import parse_source
from fmb.errors import ConfigError
from fmb.plugins import check_names, encoder_class

DATA = "data"  # how `--revision` and the lock's `used_by` name the dataset


@dataclass(frozen=True)
class RepoNeed:
    """One hub repository a run reads."""

    repo_type: str  # "model" or "dataset"
    repo_id: str
    used_by: tuple[str, ...]  # model names, or ("data",)
    revision: str | None  # what the configuration asks for (None: main)
    files: tuple[str, ...] = ()  # a model repo's files; a dataset's are whatever its splits need

    @property
    def key(self) -> tuple[str, str]:
        return self.repo_type, self.repo_id


def chosen_models(config: ResolvedConfig, models: list[str] | None) -> list[str]:
    """`models` (checked against the registry), default the run's models."""
    models = list(models or config.run.models)
    check_names("encoder", models, "--model")
    return models


def model_needs(config: ResolvedConfig, models: list[str]) -> list[RepoNeed]:
    """The model repositories `models` read, each once (two models may share one, e.g. both AION routes)."""
    found: dict[str, RepoNeed] = {}
    for name in models:
        settings = config.section(f"models.{name}")
        for item in encoder_class(name).hub_files(settings):
            need = found.setdefault(item.repo_id, RepoNeed("model", item.repo_id, (), settings.revision))
            if need.revision != settings.revision:
                raise ConfigError(f"models {', '.join(need.used_by)} and {name} read hub repo {item.repo_id} at "
                                  f"different revisions ({need.revision or 'main'} and {settings.revision or 'main'}); "
                                  "set the same models.<name>.revision for both")
            found[item.repo_id] = replace(need, used_by=_with(need.used_by, name), files=_with(need.files, item.filename))
    return list(found.values())


def _with(items: tuple[str, ...], item: str) -> tuple[str, ...]:
    return items if item in items else (*items, item)


def dataset_need(config: ResolvedConfig) -> RepoNeed | None:
    """The hub dataset of an ``hf:<dataset id>`` source; None for local data (nothing to fetch)."""
    parsed = parse_source(config.data.source)
    if parsed.kind != "hf" or config.path(parsed.location).exists():
        return None
    return RepoNeed("dataset", parsed.location, (DATA,), None)


def parse_revisions(items: list[str], needs: list[RepoNeed]) -> dict[str, str]:
    """``--revision NAME=REV`` as {NAME: REV}; NAME is a model, ``data`` or a repository id, and must
    be one of those being fetched."""
    known = {name for need in needs for name in (*need.used_by, need.repo_id)}
    asked = {}
    for item in items:
        name, sep, revision = item.partition("=")
        name, revision = name.strip(), revision.strip()
        if not sep or not name or not revision:
            raise ConfigError(f"--revision expects NAME=REVISION (e.g. aion=main or data=<commit>), got {item!r}")
        if name not in known:
            raise ConfigError(f"--revision {item!r}: {name!r} is not fetched here; choose one of {', '.join(sorted(known))}")
        asked[name] = revision
    return asked


def asked_revision(need: RepoNeed, asked: dict[str, str], locked: str | None) -> str | None:
    """Which revision to fetch: ``--revision`` for the repository or one of its users, else the
    configuration's, else the lock's commit (a second machine gets the same files), else main."""
    for name in (need.repo_id, *need.used_by):
        if name in asked:
            return asked[name]
    return need.revision or locked
