"""`fmb setup download`: fetch every hub file a run reads into the Hugging Face cache, pinned, and lock it.

Run where the hub can be reached (a login node). Each repository is fetched at one commit: the
revision asked for (``--revision``, else ``models.<name>.revision``, else the lock's commit, else
main) is resolved once, on its first file, and the rest are fetched at that commit, the same way
the models load (`fmb.models.hub`). Model files are exactly those the encoders name
(`Encoder.hub_files`); the dataset is fetched and prepared by `datasets` for each configured split
(what an offline `load_dataset` then reads). The lock records the commits and every file's sha256;
a file already locked at the same commit whose hash differs is refused (the cache copy changed).

With ``HF_HUB_OFFLINE=1`` the same code resolves everything from the cache, which locks a cache
that was copied in from elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fmb.config import ResolvedConfig
from fmb.errors import FmbError
from fmb.layout import lock_file
from fmb.models import hub
from fmb.setup.lock import Lock, RepoLock, hashes, read_lock, write_lock
from fmb.setup.needs import RepoNeed, asked_revision, chosen_models, dataset_need, model_needs, parse_revisions


def download(config: ResolvedConfig, models: list[str] | None = None, revisions: list[str] = (),
             lock_path: Path | None = None, data: bool = True, log: Callable[[str], None] = print) -> Path:
    """Fetch what `models` (default: the run's) and the configured hub dataset read; write the lock
    (default `fmb.layout.lock_file`), keeping its entries for repositories not fetched now."""
    needs = model_needs(config, chosen_models(config, models))
    dataset = dataset_need(config) if data else None
    if data and dataset is None:
        log(f"data: data.source {config.data.source!r} is not a hub dataset (hf:<id>): nothing to fetch")
    needs += [dataset] if dataset else []
    asked = parse_revisions(list(revisions), needs)
    path = lock_path or lock_file(config.root)
    lock = read_lock(path) or Lock()
    for need in needs:
        locked = lock.get(*need.key)
        revision = asked_revision(need, asked, locked.revision if locked else None)
        entry = _fetch_model(need, revision) if need.repo_type == "model" else _fetch_dataset(need, revision, config)
        _same_as_locked(entry, locked)
        lock.put(entry)
        moved = f" (the lock had {locked.revision[:12]})" if locked and locked.revision != entry.revision else ""
        log(f"{'/'.join(need.used_by)}: {need.repo_id}@{entry.revision}, {len(entry.files)} files{moved}")
    write_lock(lock, path)
    return path


def _fetch_model(need: RepoNeed, revision: str | None) -> RepoLock:
    what = f"{'/'.join(need.used_by)} weights"
    first, *rest = need.files
    path, commit = hub.download(need.repo_id, first, revision, what)
    paths = {first: path} | {name: hub.download(need.repo_id, name, commit, what)[0] for name in rest}
    return RepoLock(repo_type="model", repo_id=need.repo_id, revision=commit, used_by=list(need.used_by),
                    files=hashes(paths))


def _fetch_dataset(need: RepoNeed, revision: str | None, config: ResolvedConfig) -> RepoLock:
    """Resolve the revision (fetching only the repo's small metadata files), then let `datasets`
    fetch and prepare each split at that commit; lock every file of the snapshot."""
    import datasets
    from huggingface_hub import snapshot_download

    asked = revision or hub.DEFAULT_REVISION
    try:
        snapshot = Path(snapshot_download(need.repo_id, repo_type="dataset", revision=asked,
                                          allow_patterns=[".gitattributes", "README.md"]))
    except Exception as exc:  # hub errors come in many classes; all mean the same here
        raise FmbError(f"cannot fetch hub dataset {need.repo_id} at revision {asked!r} ({hub.reason(exc)}); "
                       "run this where the hub can be reached, or check the dataset id and revision") from None
    for split in config.data.splits:
        try:
            datasets.load_dataset(need.repo_id, split=split, revision=snapshot.name)
        except Exception as exc:  # as above: datasets raises hub, network and builder errors alike
            raise FmbError(f"cannot fetch split {split!r} of hub dataset {need.repo_id} at {snapshot.name} "
                           f"({hub.reason(exc)}); check data.splits") from None
    files = {str(p.relative_to(snapshot)): p for p in sorted(snapshot.rglob("*")) if p.is_file()}
    return RepoLock(repo_type="dataset", repo_id=need.repo_id, revision=snapshot.name, used_by=list(need.used_by),
                    files=hashes(files))


def _same_as_locked(entry: RepoLock, locked: RepoLock | None) -> None:
    """At the commit the lock holds, every locked file must still have its locked hash."""
    if locked is None or locked.revision != entry.revision:
        return
    changed = sorted(name for name, sha in entry.files.items() if locked.files.get(name, sha) != sha)
    if changed:
        raise FmbError(f"{entry.repo_id}@{entry.revision[:12]}: the cached {', '.join(changed)} no longer match the "
                       f"sha256 in the lock file; the cache copy was changed: remove it (`hf cache rm "
                       f"{entry.repo_type}/{entry.repo_id}`) and download again")
