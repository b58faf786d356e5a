"""Weights from the Hugging Face hub, pinned to a revision and recorded by the commit they came from.

A hub repo's ``main`` moves when its owners push: downloading without a revision would let the
weights change under a run, between two resumed embedding runs, or between two machines. Every
model therefore downloads at `models.<name>.revision` (default ``main``), reads back the commit
that revision resolved to, fetches the rest of its files at that one commit, and records it in
`describe()` (``repo@commit``), so the embedding manifest's signature changes with the weights.

Hub errors come in many classes (offline cache misses, unknown revisions, gated repos, network
failures); all of them become one `WeightsError` line saying what was asked for and what to do.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple

from fmb.data.hub import hub_or_cache
from fmb.models.base import WeightsError

DEFAULT_REVISION = "main"
_COMMIT = re.compile(r"[0-9a-f]{40}")


class HubFile(NamedTuple):
    """One file of a hub model repository that a model's `load` reads (`Encoder.hub_files`)."""

    repo_id: str
    filename: str


def download(repo_id: str, filename: str, revision: str | None, what: str) -> tuple[Path, str]:
    """(local path, resolved commit) of `filename` in `repo_id` at `revision` (None: main)."""
    from huggingface_hub import hf_hub_download

    revision = revision or DEFAULT_REVISION
    try:
        with hub_or_cache():  # no network: the cache at once, not five retries per file
            path = Path(hf_hub_download(repo_id, filename, revision=revision))
    except Exception as exc:  # hub errors come in many classes; all mean the same here
        raise WeightsError(f"cannot load {what}: {filename} of hub repo {repo_id} at revision {revision!r} is not "
                           f"available here ({reason(exc)}); fetch it with `fmb setup download` on a machine with "
                           "network access (or copy its hub cache here), or check that the revision exists") from None
    return path, _commit_of(path, filename)


def fetch(weights: str, item: HubFile | None, revision: str | None, what: str) -> tuple[Path, str]:
    """(local path, how it is recorded) of the weights a model was given: a local file as given
    (`item` None), else the hub `item` at `revision`, recorded as ``weights@commit``."""
    if item is None:
        return Path(weights).expanduser(), weights
    path, commit = download(item.repo_id, item.filename, revision, what)
    return path, pinned(weights, commit)


def reason(exc: Exception) -> str:
    """The error's class and first sentence: hub messages run to several lines of advice."""
    lines = re.split(r"(?<=\.)\s", str(exc).strip(), maxsplit=1)[0].splitlines()
    return f"{type(exc).__name__}: {lines[0][:160]}" if lines else type(exc).__name__


def _commit_of(path: Path, filename: str) -> str:
    """The commit in the cache path the hub returns: ``.../snapshots/<commit>/<filename>``."""
    snapshot = path.parents[len(Path(filename).parts) - 1]
    if snapshot.parent.name != "snapshots" or not _COMMIT.fullmatch(snapshot.name):
        raise WeightsError(f"cannot tell which commit {path} comes from (not in a hub cache snapshot)")
    return snapshot.name


def pinned(item: str, commit: str) -> str:
    """How a model records hub weights: the item it was given (``repo``, ``repo:file``, ...) and the
    commit they came from, ``item@commit``."""
    return f"{item}@{commit}"
