"""Staging: a stage writes its outputs beside them and they replace the old ones only when it has
finished, so a failure, a refusal or a SIGKILL at any moment leaves the previous outputs as they were.

The engine hands the stage's code a `StagedConfig`: the same settings, whose `layout` (and
configured paths, `config.path`) send every path at or under one of the stage's declared outputs
to its staging copy, and every other path (the stage's inputs, other stages' outputs) where it is.
The staging copies live in ``runs/<name>/run/staging/<stage>/`` (outputs inside the run, by their
path under it) or, for an output outside the run (a synthetic survey directory), beside it as
``.fmb-staging-<name>`` (a rename never crosses file systems). ``key.json`` in the staging
directory names the stage key it was made for: an interrupted stage rerun with the same key
resumes in its staging copy (embed and adapt keep their finished units); any other key starts
it empty. When the stage returns, `commit` moves each staged output into place (a file by one
atomic rename; a directory by renaming the old one aside, the new one in, then deleting the old),
removes an old output the stage no longer made, and deletes the staging directory.

A `StagedConfig` pickles with its staging map, so shards run by other processes or SLURM tasks
write into the same staging copies.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from fmb.config import ResolvedConfig, _rebuilt
from fmb.io import write_json
from fmb.layout import RunLayout, StagingFiles


class StagedLayout:
    """A `RunLayout` whose paths at or under a staged output point at its staging copy."""

    def __init__(self, inner, redirect):
        self._inner, self._redirect = inner, redirect

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return self._wrap(getattr(self._inner, name))

    def _wrap(self, value):
        if isinstance(value, Path):
            return self._redirect(value)
        if callable(value) and not isinstance(value, type):
            return lambda *args, **kwargs: self._wrap(value(*args, **kwargs))
        if hasattr(value, "dir") and isinstance(getattr(value, "dir", None), Path):  # a layout's _Directory
            return StagedLayout(value, self._redirect)
        if isinstance(value, (list, tuple)):
            return type(value)(self._wrap(item) for item in value)
        return value


class StagedConfig(ResolvedConfig):
    """A config whose output paths point into the staging copies (`staged`: {output: staging copy})."""

    def __init__(self, base: ResolvedConfig, staged: dict[Path, Path]):
        super().__init__(base.values, base.root, base.origins, base.remembered)
        self.staged = dict(staged)

    def redirect(self, path: Path) -> Path:
        path = Path(path)
        for output, copy in self.staged.items():
            if path == output:
                return copy
            if path.is_relative_to(output):
                return copy / path.relative_to(output)
        return path

    @property
    def layout(self) -> RunLayout:
        return StagedLayout(RunLayout.of(self.root, self.values.name), self.redirect)

    def path(self, relative) -> Path:
        return self.redirect(super().path(relative))

    def __reduce__(self):
        base = ResolvedConfig.__reduce__(self)[1]
        return (_staged_rebuilt, (base, self.staged))


def _staged_rebuilt(base_args: tuple, staged: dict) -> StagedConfig:
    return StagedConfig(_rebuilt(*base_args), staged)


class Staging:
    """The staging copies of one stage's outputs (see the module docstring)."""

    def __init__(self, config: ResolvedConfig, stage: str, outputs: list[Path]):
        self.run_root = config.layout.root
        self.files = config.layout.staging(stage)
        self.dir = self.files.dir
        self.staged = {Path(output): self._copy_of(Path(output)) for output in outputs}
        self.config = StagedConfig(config, self.staged)
        self.found = {output: _identity(output) for output in self.staged}  # as the stage started

    def _copy_of(self, output: Path) -> Path:
        if output.is_relative_to(self.run_root):
            return self.files.copy(output.relative_to(self.run_root))
        return StagingFiles.beside(output)

    @property
    def _key_file(self) -> Path:
        return self.files.key

    def resumable(self, key: str) -> bool:
        """Whether the staging copies hold an unfinished run of this key."""
        try:
            return json.loads(self._key_file.read_text()).get("key") == key
        except (OSError, ValueError, AttributeError):
            return False

    def start(self, key: str, resume: bool, seed: list[Path] | None = None) -> bool:
        """Prepare the staging copies for a run of `key`: kept when `resume` and they hold an
        unfinished run of it (returns True), else emptied; `seed` (outputs less what is dropped
        from them) fills them with hard links of the current outputs first, so a repair redoes only
        what it dropped. Nothing outside the staging copies is touched."""
        if resume and seed is None and self.resumable(key):
            return True
        self.discard()
        self.dir.mkdir(parents=True, exist_ok=True)
        if seed is not None:
            for output, copy in self.staged.items():
                _link_copy(output, copy, set(seed))
        write_json({"key": key}, self._key_file)
        return False

    def commit(self) -> None:
        """Move every staged output into place; remove an old output the stage did not make again
        (one the stage's code wrote in place, by a path it joined itself, is kept)."""
        for output, copy in self.staged.items():
            aside = StagingFiles.replaced(output)
            if copy.exists() or copy.is_symlink():
                _replace(copy, output, aside)
            elif output.exists() and _identity(output) == self.found[output]:
                _move_aside(output, aside)
        shutil.rmtree(self.dir, ignore_errors=True)
        try:  # the run's staging directory too, once no stage has copies there
            self.dir.parent.rmdir()
        except OSError:
            pass

    def discard(self) -> None:
        for copy in self.staged.values():
            if not copy.is_relative_to(self.dir):
                _delete(copy)
        _delete(self.dir)


def _identity(path: Path) -> tuple | None:
    """What changes when a file or directory is written (a new file renamed in, an entry added)."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_ino, stat.st_mtime_ns, stat.st_size


def _link_copy(output: Path, copy: Path, dropped: set[Path]) -> None:
    """`copy` as hard links of `output`'s files, less `dropped` (every write is a rename of a new
    file, so a staged write never changes the linked original)."""
    if output in dropped or not output.exists():
        return
    copy.parent.mkdir(parents=True, exist_ok=True)
    if output.is_file():
        os.link(output, copy)
        return
    for path in sorted(output.rglob("*")):
        target = copy / path.relative_to(output)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif path not in dropped and not path.name.startswith(".tmp-"):
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(path, target)
    copy.mkdir(parents=True, exist_ok=True)


def _replace(copy: Path, output: Path, aside: Path) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    if output.is_dir() and not output.is_symlink():
        _move_aside(output, aside)
    os.replace(copy, output)
    _fsync_dir(output.parent)
    _delete(aside)


def _move_aside(output: Path, aside: Path) -> None:
    aside.parent.mkdir(parents=True, exist_ok=True)
    os.replace(output, aside)
    _delete(aside)


def _delete(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _fsync_dir(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
