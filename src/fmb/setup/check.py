"""`fmb setup check`: what a compute node has, verified offline, one line per item.

Python, torch and its CUDA build, each GPU (name, memory, a tensor made on it) and bf16, every package
fmb pins (installed version against the pin), the lock file, each model's cached weights (hashes
against the lock, then loaded through fmb's own loader), the dataset cache, free disk for the run.
A GPU is optional unless asked for (``--gpu``): runs fall back to the CPU.
"""

from __future__ import annotations

import platform
import shutil
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path

from fmb.config import ResolvedConfig
from fmb.errors import FmbError
from fmb.layout import lock_file
from fmb.data.hub import offline
from fmb.setup.cache import dataset_items, weight_items
from fmb.setup.lock import Lock, read_lock
from fmb.setup.needs import chosen_models
from fmb.setup.report import FAIL, MISSING, OK, Item, Report

DISTRIBUTION = "fmb"
#: Installed without their declared dependencies, so not among fmb's requirements (pyproject.toml says why).
UNDECLARED = ("astropt",)


def check(config: ResolvedConfig, models: list[str] | None = None, lock_path: Path | None = None,
          require_gpu: bool = False, min_free_gb: float = 10.0, data: bool = True,
          show: Callable[[str], None] = print) -> Report:
    """Check everything a run of `config` needs (its models, or `models`; its data unless not `data`);
    `show` each line as it comes."""
    models = chosen_models(config, models)
    items = []
    for item in _items(config, models, lock_path or lock_file(config.root), require_gpu, min_free_gb, data):
        items.append(item)
        show(item.line())
    report = Report(items)
    show(report.summary())
    return report


def _items(config: ResolvedConfig, models: list[str], lock_path: Path, require_gpu: bool,
           min_free_gb: float, data: bool) -> Iterator[Item]:
    yield _python()
    yield from _torch(require_gpu)
    yield from _packages()
    lock, item = _lock(lock_path)
    yield item
    yield _hub_cache()
    with offline():
        yield from weight_items(config, models, lock)
        yield from dataset_items(config, lock) if data else ()
    yield _disk(config.run_dir, min_free_gb)


def _python() -> Item:
    from packaging.specifiers import SpecifierSet

    wanted = metadata.metadata(DISTRIBUTION)["Requires-Python"] or ""
    version = platform.python_version()
    ok = version in SpecifierSet(wanted)
    return Item(OK if ok else FAIL, "python", f"{version}" + ("" if ok else f", fmb needs {wanted}"))


def _torch(require_gpu: bool) -> Iterator[Item]:
    import torch

    cuda = torch.version.cuda
    build = f"CUDA {cuda} build" if cuda else "CPU-only build"
    yield Item(FAIL if require_gpu and not cuda else OK, "torch", f"{torch.__version__}, {build}")
    if not torch.cuda.is_available():
        reason = "no CUDA device visible" + ("" if cuda else " (and torch has no CUDA)")
        hint = "" if require_gpu else "; runs use the CPU"
        yield Item(MISSING, "gpu", reason + hint, required=require_gpu)
        yield Item(MISSING, "bf16", "no GPU", required=require_gpu)
        return
    for index in range(torch.cuda.device_count()):
        yield _gpu(index)
    bf16 = torch.cuda.is_bf16_supported()
    yield Item(OK if bf16 else MISSING, "bf16", "supported (amp auto uses it)" if bf16 else
               "not supported by cuda:0: set models.<name>.adapt.amp=fp16", required=False)


def _gpu(index: int) -> Item:
    import torch

    props = torch.cuda.get_device_properties(index)
    what = f"cuda:{index} {props.name}, {props.total_memory / 2**30:.1f} GiB, compute capability {props.major}.{props.minor}"
    try:
        torch.ones(8, device=f"cuda:{index}").sum().item()
    except RuntimeError as exc:
        return Item(FAIL, "gpu", f"{what}: a tensor cannot be made on it ({str(exc).splitlines()[0][:160]})")
    return Item(OK, "gpu", what)


def _packages() -> Iterator[Item]:
    from packaging.requirements import Requirement

    for text in metadata.requires(DISTRIBUTION) or []:
        requirement = Requirement(text)
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue  # an optional extra (tests, benchmarks)
        yield _package(requirement.name, requirement.specifier)
    for name in UNDECLARED:
        yield _package(name, None)


def _package(name: str, specifier) -> Item:
    try:
        version = metadata.version(name)
    except metadata.PackageNotFoundError:
        return Item(MISSING, f"package {name}", "not installed" + (f" (fmb pins {specifier})" if specifier else ""))
    if specifier and version not in specifier:
        return Item(FAIL, f"package {name}", f"{version} installed, fmb pins {specifier}")
    return Item(OK, f"package {name}", version)


def _lock(path: Path) -> tuple[Lock | None, Item]:
    try:
        lock = read_lock(path)
    except FmbError as exc:
        return None, Item(FAIL, "lock", str(exc))
    if lock is None:
        return None, Item(MISSING, "lock", f"no {path}: cached files are not checked against hashes",
                          required=False)
    return lock, Item(OK, "lock", f"{path}: {len(lock.repos)} repositories ({lock.written_by})")


def _hub_cache() -> Item:
    import huggingface_hub.constants as constants

    where = f"Hugging Face cache {constants.HF_HUB_CACHE}"
    if constants.HF_HUB_OFFLINE:
        return Item(OK, "hf offline", f"{where}, HF_HUB_OFFLINE=1")
    return Item(MISSING, "hf offline", f"{where}; HF_HUB_OFFLINE is not set, so a run on a node without network "
                "waits for the hub to time out on each file: export HF_HUB_OFFLINE=1", required=False)


def _disk(run_dir: Path, min_free_gb: float) -> Item:
    existing = next(path for path in (run_dir, *run_dir.parents) if path.exists())
    free = shutil.disk_usage(existing).free / 1e9
    enough = free >= min_free_gb
    return Item(OK if enough else FAIL, "disk", f"{free:.1f} GB free for {run_dir} (needs {min_free_gb:g} GB, "
                "--min-free-gb)")

