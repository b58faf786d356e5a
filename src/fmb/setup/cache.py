"""The cache a run reads, verified offline.

Weights: each hub file a model names (`Encoder.hub_files`) is resolved at the revision the run asks
for (``models.<name>.revision``, default main) exactly as the model resolves it (`fmb.models.hub`),
checked against the lock (same commit, same sha256), and then the model is loaded through its own
code (`fmb.models.registry.build_encoder`). Data: the hub dataset's snapshot against the lock, and
each split read offline through the source a run uses.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator

from fmb.config import ResolvedConfig
from fmb.data.sources import local_inputs, open_source
from fmb.errors import FmbError
from fmb.data.hub import offline
from fmb.models import hub
from fmb.models.base import WeightsError, file_sha256
from fmb.models.registry import build_encoder
from fmb.setup.lock import Lock, RepoLock
from fmb.setup.needs import RepoNeed, dataset_need, model_needs
from fmb.setup.report import FAIL, MISSING, OK, Item

_FETCH = "fetch it with `fmb setup download` where the hub can be reached"


def weight_items(config: ResolvedConfig, models: list[str], lock: Lock | None) -> Iterator[Item]:
    for name in models:
        try:
            needs = model_needs(config, [name])
        except FmbError as exc:
            yield Item(FAIL, f"weights {name}", str(exc))
            continue
        complete = True
        for need in needs:
            locked = lock.get(*need.key) if lock else None
            for filename in need.files:
                item = _file_item(name, need, filename, locked)
                complete = complete and item.status == OK
                yield item
        if complete:
            yield _load_item(config, name)


def _file_item(model: str, need: RepoNeed, filename: str, locked: RepoLock | None) -> Item:
    label, where = f"weights {model}", f"{need.repo_id} {filename}"
    try:
        path, commit = hub.download(need.repo_id, filename, need.revision, f"{model} weights")
    except WeightsError:
        return _not_cached(model, need, filename, locked)
    if locked is None:
        return Item(OK, label, f"{where} @{commit[:12]} (no lock file: hash not verified)")
    if commit != locked.revision:
        return Item(FAIL, label, f"{where}: revision {need.revision or hub.DEFAULT_REVISION} is {commit[:12]} in this "
                    f"cache but the lock pins {locked.revision[:12]}; set models.{model}.revision={locked.revision} "
                    "and fetch it, or download again to lock the new commit")
    expected = locked.files.get(filename)
    if expected is None:
        return Item(FAIL, label, f"{where} is not in the lock file; run `fmb setup download` again")
    actual = file_sha256(path)
    if actual != expected:
        return Item(FAIL, label, f"{where}: sha256 {actual[:12]} differs from the lock's {expected[:12]}: the cached "
                    f"file was changed ({path}); remove it (`hf cache rm model/{need.repo_id}`) and download again")
    return Item(OK, label, f"{where} @{commit[:12]}, sha256 matches the lock")


def _not_cached(model: str, need: RepoNeed, filename: str, locked: RepoLock | None) -> Item:
    from huggingface_hub import try_to_load_from_cache

    revision = need.revision or hub.DEFAULT_REVISION
    where = f"{need.repo_id} {filename} at revision {revision}"
    if locked is not None and isinstance(try_to_load_from_cache(need.repo_id, filename, revision=locked.revision), str):
        return Item(FAIL, f"weights {model}", f"{where} is not in this cache, which holds the locked commit: set "
                    f"models.{model}.revision={locked.revision}")
    return Item(MISSING, f"weights {model}", f"{where} is not in the Hugging Face cache; {_FETCH}")


def _load_item(config: ResolvedConfig, model: str) -> Item:
    try:
        encoder = build_encoder(config, model, weights="base")
    except Exception as exc:  # a load fails in many ways (a package, the architecture, the file); report them all
        return Item(FAIL, f"load {model}", str(exc) if isinstance(exc, FmbError) else hub.reason(exc))
    weights = encoder.describe().get("weights")
    del encoder
    gc.collect()
    return Item(OK, f"load {model}", f"loads offline through fmb's loader ({weights})")


def dataset_items(config: ResolvedConfig, lock: Lock | None) -> Iterator[Item]:
    need = dataset_need(config)
    if need is None:
        yield _local_data(config)
        return
    source = open_source(config)
    commit = source.revision()  # what an offline load reads
    if commit is None:
        yield Item(MISSING, "data", f"hub dataset {need.repo_id} is not in the Hugging Face cache; {_FETCH}")
        return
    locked = lock.get(*need.key) if lock else None
    yield _snapshot_item(need, commit, locked) if locked else Item(
        OK, "data", f"{need.repo_id} @{commit[:12]} (no lock file: files not verified)")
    for split in config.data.splits:
        try:
            count = len(source.read_ids(split))
        except FmbError as exc:
            yield Item(FAIL, f"data {split}", str(exc))
        else:
            yield Item(OK, f"data {split}", f"{count} objects, read offline")


def _snapshot_item(need: RepoNeed, commit: str, locked: RepoLock) -> Item:
    from huggingface_hub import try_to_load_from_cache

    if commit != locked.revision:
        return Item(FAIL, "data", f"{need.repo_id}: the cache's main is {commit[:12]} but the lock pins "
                    f"{locked.revision[:12]}; download again (the lock follows) or fetch the locked commit")
    absent, changed = [], []
    for filename, expected in locked.files.items():
        path = try_to_load_from_cache(need.repo_id, filename, revision=commit, repo_type="dataset")
        if not isinstance(path, str):
            absent.append(filename)
        elif file_sha256(path) != expected:
            changed.append(filename)
    if changed:
        return Item(FAIL, "data", f"{need.repo_id} @{commit[:12]}: sha256 differs from the lock for "
                    f"{', '.join(changed[:4])}; remove it (`hf cache rm dataset/{need.repo_id}`) and download again")
    if absent:
        return Item(MISSING, "data", f"{need.repo_id} @{commit[:12]}: {', '.join(absent[:4])} not cached; {_FETCH}")
    return Item(OK, "data", f"{need.repo_id} @{commit[:12]}, {len(locked.files)} files, sha256 match the lock")


def _local_data(config: ResolvedConfig) -> Item:
    source = config.data.source
    absent = [str(path) for path in local_inputs(config) if not path.exists()]
    if not absent:
        return Item(OK, "data", f"{source}: local, nothing to fetch")
    if config.run.synth:
        return Item(OK, "data", f"{source}: made by the run (run.synth)")
    return Item(MISSING, "data", f"data.source {source!r}: {', '.join(absent)} does not exist")
