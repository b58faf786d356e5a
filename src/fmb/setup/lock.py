"""The lock file: the commit each hub repository a run reads was fetched at, and each file's sha256.

`fmb setup download` writes it (``fmb.lock.json`` beside ``fmb.yaml``, `fmb.layout.lock_file`);
`fmb setup check` verifies a cache against it; a later download on another machine fetches the same
commits and refuses a cached file whose hash differs.

    {"version": 1, "written_by": "fmb 0.1.0",
     "repos": [{"repo_type": "model", "repo_id": "polymathic-ai/aion-base", "revision": "<commit>",
                "used_by": ["aion"], "files": {"config.json": "<sha256>", ...}}, ...]}
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator

from fmb import __version__
from fmb.errors import FmbError
from fmb.io import read_json_object, write_json
from fmb.models.base import file_sha256

LOCK_VERSION = 1
Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


class RepoLock(BaseModel):
    """One repository: the commit its files came from and their hashes (paths relative to the repo)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    repo_type: Literal["model", "dataset"]
    repo_id: str = Field(pattern=r"^[\w.-]+/[\w.-]+$")
    revision: str = Field(pattern=r"^[0-9a-f]{40}$", description="the commit")
    used_by: list[str] = Field(description="the models (or `data`) that read it")
    files: dict[str, Sha256]

    @field_validator("files")
    @classmethod
    def _inside_the_repo(cls, files: dict[str, str]) -> dict[str, str]:
        outside = [name for name in files if PurePosixPath(name).is_absolute() or ".." in PurePosixPath(name).parts]
        if outside:
            raise ValueError(f"file names must be relative to the repository: {outside[:3]}")
        return files

    @property
    def key(self) -> tuple[str, str]:
        return self.repo_type, self.repo_id


class Lock(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = LOCK_VERSION
    written_by: str = f"fmb {__version__}"
    repos: list[RepoLock] = []

    def get(self, repo_type: str, repo_id: str) -> RepoLock | None:
        return next((entry for entry in self.repos if entry.key == (repo_type, repo_id)), None)

    def put(self, entry: RepoLock) -> None:
        """Add `entry`, replacing what the lock held for its repository."""
        self.repos = sorted([e for e in self.repos if e.key != entry.key] + [entry], key=lambda e: e.key)


def read_lock(path) -> Lock | None:
    """The lock at `path`, None when there is none; a malformed one is a one-line error."""
    if not path.is_file():
        return None
    remedy = "run `fmb setup download` to write it again"
    data = read_json_object(path, remedy)
    try:
        return Lock.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise FmbError(f"{path} is not an fmb lock file ({where}: {first['msg']}); {remedy}") from None


def write_lock(lock: Lock, path) -> None:
    lock.written_by = f"fmb {__version__}"
    write_json(lock.model_dump(mode="json"), path)


def hashes(files: dict) -> dict[str, str]:
    """{name in the repo: sha256} of {name: local path}."""
    return {name: file_sha256(path) for name, path in files.items()}
