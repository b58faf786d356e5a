"""Feeding models: work units over the index, batches of checked samples, a stable validation split.

A *work unit* is a run of consecutive index rows of one shard (`plan_units`); it is the unit of
parallelism (DataLoader workers, SLURM array tasks) and of resume (one output part per unit).
`BatchStream` reads each unit in row batches, checks every row, keeps what the model can use, and
yields the model's preprocessed batch together with the object ids and the issues found — the
image and spectrum of an object travel inside one sample from the row they came from.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import IterableDataset, get_worker_info

from fmb.config import DataConfig
from fmb.data.hashing import in_id_hash_share
from fmb.data.index import verify_row_id
from fmb.data.sources import Source
from fmb.data.validate import SKIPPED, Issue, RowChecker, Sample


@dataclass(frozen=True)
class WorkUnit:
    unit_id: int
    shard: str
    rows: np.ndarray  # row positions inside the shard, ascending
    object_ids: np.ndarray


def plan_units(index: pa.Table, rows_per_unit: int) -> list[WorkUnit]:
    """Cut the index into units of at most `rows_per_unit` consecutive rows of one shard.

    Deterministic for a given index, so a resumed run plans exactly the same units.
    """
    frame = index.to_pandas().sort_values(["shard", "row"], kind="stable")
    units = []
    for shard, group in frame.groupby("shard", sort=True):
        rows, ids = group["row"].to_numpy(), group["object_id"].to_numpy()
        for start in range(0, len(rows), rows_per_unit):
            units.append(WorkUnit(len(units), str(shard), rows[start : start + rows_per_unit],
                                  ids[start : start + rows_per_unit]))
    return units


def is_validation(object_ids: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A stable, seeded hash split: True for the ~`fraction` of ids held out for validation.

    Depends only on the id (not on file order), so the split survives re-sharding and resumes.
    """
    return in_id_hash_share(object_ids, fraction, seed)


@dataclass
class StreamItem:
    unit_id: int
    batch_no: int
    n_batches: int
    object_ids: list[int]
    batch: dict[str, torch.Tensor] | None  # None when no object of this row batch is usable
    issues: list[Issue]


class BatchStream(IterableDataset):
    """Row batches of work units -> (preprocessed batch, ids, issues); split across workers by unit."""

    def __init__(
        self,
        source: Source,
        units: list[WorkUnit],
        preprocess: Callable[[list[Sample]], dict[str, torch.Tensor]],  # a models.base.Preprocessor
        batch_size: int,
        data_config: DataConfig | None = None,
        keep_ids: Callable[[np.ndarray], np.ndarray] | None = None,
    ):
        self.source, self.units, self.preprocess = source, units, preprocess
        self.batch_size, self.checker = batch_size, RowChecker(data_config or DataConfig())
        self.keep_ids = keep_ids  # optional id filter (e.g. the training half of the split)

    def __iter__(self) -> Iterator[StreamItem]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        for position, unit in enumerate(self.units):
            if position % workers == worker:
                yield from self._unit_items(unit)

    def _unit_items(self, unit: WorkUnit) -> Iterator[StreamItem]:
        rows, ids = unit.rows, unit.object_ids
        if self.keep_ids is not None:
            kept = self.keep_ids(ids)
            rows, ids = rows[kept], ids[kept]
        n_batches = max(1, -(-len(rows) // self.batch_size))
        for batch_no in range(n_batches):
            chunk = slice(batch_no * self.batch_size, (batch_no + 1) * self.batch_size)
            samples, issues = self._checked(unit.shard, rows[chunk], ids[chunk])
            batch = self.preprocess(samples) if samples else None
            yield StreamItem(unit.unit_id, batch_no, n_batches, [s.object_id for s in samples], batch, issues)

    def _checked(self, shard: str, rows: np.ndarray, ids: np.ndarray) -> tuple[list[Sample], list[Issue]]:
        samples, issues = [], []
        records = self.source.read_rows(shard, rows.tolist()) if len(rows) else []
        for row_number, expected, row in zip(rows.tolist(), ids.tolist(), records):
            verify_row_id(row, expected, shard, row_number)
            sample, found = self.checker.check(row)
            location = f"{shard}:{row_number}"
            issues += [dataclasses.replace(issue, location=location) for issue in found]
            reason = self.preprocess.usable(sample) if sample is not None else None
            if sample is not None and reason is None:
                samples.append(sample)
            elif sample is not None:
                issues.append(Issue(sample.object_id, "model input", reason, SKIPPED, location))
        return samples, issues
