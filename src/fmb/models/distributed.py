"""Several processes, one adaptation: `fmb adapt` under `torchrun` (one process per GPU, or per CPU
share with gloo).

`session` starts the process group from torchrun's environment (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``): NCCL on CUDA, each process on the GPU of its local
rank; gloo on CPU. Without torchrun it is one process, rank 0 of 1, and nothing is started.
`Ranks` is what the trainer and the data split need from it: which rank this is, sums over ranks,
a barrier, a value from rank 0. `Ranks.share_of` deals each global batch's objects out to the ranks,
so that the global batch is the configured one whatever the number of processes.
`lead_and_follow` runs one command on every rank with rank 0 in charge of everything but the
collective work (the stage engine's cache check, outputs and state).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist

from fmb.errors import FmbError

_WORK, _OVER = "work", "over"


@dataclass(frozen=True)
class Ranks:
    """This process's place among the processes of one run (alone: rank 0 of 1)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))  # of collectives' tensors

    @property
    def main(self) -> bool:
        """The one rank that writes (checkpoints, history, plots, state) and logs."""
        return self.rank == 0

    def sum(self, values: Sequence[float]) -> list[float]:
        """Each value summed over the ranks (float64), on every rank."""
        if self.world == 1:
            return [float(v) for v in values]
        tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def share(self, value):
        """Rank 0's `value` on every rank (a small picklable object)."""
        if self.world == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def per_rank(self, batch_size: int) -> int:
        """Objects per rank in a global batch of `batch_size`; a clear error when it does not divide."""
        if batch_size % self.world:
            raise FmbError(f"adapt.batch_size {batch_size} is the global batch and must divide evenly over the "
                           f"{self.world} processes; use a multiple of {self.world}")
        return batch_size // self.world

    def share_of(self, kept: np.ndarray, batch_size: int) -> np.ndarray:
        """Which of a run of rows (`kept`: a boolean mask) fall to this rank: the kept rows make global
        batches of `batch_size` in order, and row j of each batch goes to rank j % world. Every rank
        then gets exactly batch_size / world rows of each full batch, its rows of batch k forming its
        own batch k, and the ranks' shares together are the batch one process would read."""
        if self.world == 1:
            return kept
        position = np.cumsum(kept) - 1
        return kept & ((position % batch_size) % self.world == self.rank)


SINGLE = Ranks()


def _environment() -> tuple[int, int, int]:
    try:
        return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))
    except ValueError as error:
        raise FmbError(f"RANK, WORLD_SIZE and LOCAL_RANK must be whole numbers (as torchrun sets them): {error}") from None


@contextmanager
def session(device: torch.device) -> Iterator[tuple[Ranks, torch.device]]:
    """(ranks, this process's device) for one run on `device`; under torchrun the process group is
    started here (NCCL on CUDA, gloo on CPU) unless it already is, and ended here if started here."""
    rank, world, local_rank = _environment()
    if world == 1:
        yield SINGLE, device
        return
    if device.type == "cuda":
        if device.index not in (None, local_rank):
            raise FmbError(f"under torchrun every process takes the GPU of its local rank; set the model's device "
                           f"to auto or cuda, not {device}")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    started = not dist.is_initialized()
    if started:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield Ranks(rank, world, local_rank, device if device.type == "cuda" else torch.device("cpu")), device
    finally:
        if started:
            dist.destroy_process_group()


def lead_and_follow(ranks: Ranks, lead: Callable[[Callable[..., object]], object], follow: Callable[[object], object]):
    """One command on every rank with rank 0 in charge: rank 0 runs `lead(joined)`, and each time it
    calls `joined(work, shared)` (which runs `work()`), every other rank runs `follow(shared)` beside
    it (`shared`: a small picklable object of rank 0's, such as the config its engine staged the outputs
    in), so that the collectives inside match. Rank 0 returns what `lead` returns, the others None once
    it is over."""
    if not ranks.main:
        while (order := ranks.share(None))[0] == _WORK:
            follow(order[1])
        return None
    inside = False

    def joined(work: Callable, shared=None):
        nonlocal inside
        ranks.share((_WORK, shared))
        inside = True
        result = work()
        inside = False
        return result

    try:
        return lead(joined)
    finally:
        if not inside:  # after an error inside `work` the others wait in a collective: torchrun ends them
            ranks.share((_OVER, None))
