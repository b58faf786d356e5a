"""Adaptation in several processes: `torchrun --nproc-per-node 2` with the gloo backend on CPU, through
the real path of `fmb adapt` (engine on rank 0, registry, work units, each rank's share of every global
batch, DistributedDataParallel in the shared trainer), against one process with the same global batch.

The model is the toy encoder trained (its loss is a mean over objects, so two ranks must agree with
one process to float rounding). The survey is cut so that the awkward cases happen: a global batch
where rank 1 has no usable object, one with a single usable object (skipped by every rank), units
whose last batch has one row (rank 1 has nothing to read there and must still step). The worker
(this module run by torchrun) runs several jobs in one launch to keep the test short.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fmb import plugins
from fmb.config import load_config
from fmb.data.loader import is_validation
from fmb.data.tasks import index
from fmb.errors import FmbError
from fmb.io import read_torch
from fmb.models import tasks
from fmb.models.base import Encoder
from fmb.models.distributed import Ranks, session
from fmb.models.trainer import Trainer
from tests.conftest import tagged_row, write_rows
from tests.e2e.toy_encoder import ToyEncoder

ROOT = Path(__file__).resolve().parents[2]
TOY = "ddptoy"
UNIT = 12  # rows per work unit (fmb uses 256): several units, shuffled each epoch
BATCH, FRACTION, EPOCHS, KILLED_AFTER = 4, 0.25, 4, 2
SETS = ["data.source=survey", *(f"models.{TOY}.adapt.{key}" for key in (
    f"epochs={EPOCHS}", f"batch_size={BATCH}", "grad_accum=2", "num_workers=2", f"val_fraction={FRACTION}",
    "lr=0.05", "warmup_fraction=0.1", "patience=10"))]


class DdpToy(ToyEncoder):
    """The toy encoder, trained: a small MLP from the band means to the spectrum's median (both carry
    the object's tag); the loss is a mean over objects. Its two blocks can be checkpointed."""

    name = TOY
    adapt = Encoder.adapt  # the shared trainer, not the toy's own fit

    def __init__(self, settings):
        super().__init__(settings)
        with torch.random.fork_rng():
            torch.manual_seed(0)
            self.blocks = torch.nn.ModuleList([torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh()),
                                               torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Tanh())])
            self.head = torch.nn.Linear(8, 1)

    def training_loss(self, batch):
        hidden = batch["bands"].mean((2, 3)) / 50
        for block in self.blocks:
            hidden = block(hidden)
        return F.mse_loss(self.head(hidden).squeeze(-1), batch["flux"].median(dim=1).values / 50)

    def trainable_parameters(self):
        return [*self.blocks.parameters(), *self.head.parameters()]

    def gradient_checkpoint_blocks(self):
        return list(self.blocks)


class Killed(Exception):
    pass


def adapt_everywhere(config):
    """What `fmb adapt ddptoy` does in each process: the stage through the engine on rank 0, the
    other ranks beside it (`adapt_on_every_rank`)."""
    from fmb.run import run_one
    from fmb.run.stages import stage_named
    from fmb.stage import with_action

    stage = stage_named(config, f"adapt:{TOY}")
    return tasks.adapt_on_every_rank(
        config, TOY, lambda action: run_one(config, with_action(stage, action) if action else stage, log=lambda _: None))


def killed() -> None:
    raise Killed


def stop_after_epoch(epoch: int, stop):
    """Trainer._end_epoch that calls `stop()` once the checkpoint of `epoch` epochs is written."""
    original = Trainer._end_epoch

    def end_epoch(self, *args):
        original(self, *args)
        if self.epoch == epoch:
            stop()
    return end_epoch


# -- the worker: this module under torchrun ------------------------------------------------------------
def worker(spec_file: str) -> None:
    spec = json.loads(Path(spec_file).read_text())
    plugins.register_encoder(TOY, "tests.e2e.test_ddp:DdpToy")
    tasks._UNIT_ROWS = UNIT
    rank = int(os.environ["RANK"])
    if rank:
        forbid_writing()
    outcomes = []
    with session(torch.device("cpu")):  # one process group for all jobs
        for job in spec["jobs"]:
            if job.get("stop") == "sigkill":  # a hard kill on every rank: the last job of the launch
                Trainer._end_epoch = stop_after_epoch(KILLED_AFTER, lambda: os.kill(os.getpid(), signal.SIGKILL))
            config = load_config(root=Path(job["project"]), sets=SETS + job.get("sets", []))
            if job.get("stop") == "raise":  # every rank stops with an error after the epoch's checkpoint
                original, Trainer._end_epoch = Trainer._end_epoch, stop_after_epoch(KILLED_AFTER, killed)
                status = "not stopped"
                try:
                    adapt_everywhere(config)
                except Killed:
                    status = "killed"
                finally:
                    Trainer._end_epoch = original
            elif job.get("refused"):
                with pytest.raises(FmbError, match=job["refused"]):
                    adapt_everywhere(config)
                status = "refused"
            else:
                outcome = adapt_everywhere(config)
                status = outcome.status if outcome is not None else None
            if rank == 0:  # the engine's verdict on each job, as far as the launch got
                outcomes.append(status)
                Path(spec["outcomes"]).write_text(json.dumps(outcomes))


def forbid_writing() -> None:
    """On ranks other than 0: any write of the trainer, the adapt stage or the engine fails the run."""
    import fmb.models.trainer as trainer
    import fmb.run as run
    import fmb.run.engine as engine

    def refuse(*args, **kwargs):
        raise AssertionError(f"rank {os.environ['RANK']} tried to write or run the engine")
    for module, name in [(trainer, "write_torch"), (trainer, "write_json"), (trainer, "atomic_path"),
                         (tasks, "write_torch"), (engine, "write_json"), (engine, "execute"),
                         (run, "execute")]:
        setattr(module, name, refuse)


# -- the test side -------------------------------------------------------------------------------------
def survey_with_gaps(project: Path) -> None:
    """A tagged survey whose units (of UNIT rows) have the awkward global batches; the objects whose
    spectrum is dropped are chosen from the split and the ranks' shares as the stages compute them."""
    ids = np.arange(1000, 1000 + 5 * UNIT)
    seed = load_config(root=project).seed
    train = [unit[~is_validation(unit, FRACTION, seed)] for unit in np.split(ids, 5)]
    assert len(train[0]) >= BATCH and len(train[1]) >= BATCH and any(len(t) % BATCH == 1 for t in train)
    first = train[0][:BATCH]
    second_rank = first[Ranks(1, 2).share_of(np.ones(BATCH, bool), BATCH)]
    dropped = {*second_rank,  # unit 0, batch 0: rank 1's share is unusable, rank 0's is not
               *train[1][1:BATCH]}  # unit 1, batch 0: one usable object (rank 0's), so no batch at all
    assert len(second_rank) == BATCH // 2 and len(dropped & set(first)) == BATCH // 2
    rows = []
    for object_id in ids:
        row = tagged_row(int(object_id))
        if object_id in dropped:
            row["spectrum"] = None
        rows.append(row)
    write_rows(project / "survey" / "part-0.parquet", rows)


def new_project(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "fmb.yaml").write_text("name: test\n")
    survey_with_gaps(path)
    index(load_config(root=path, sets=SETS))
    return path


def torchrun(spec: dict, spec_file: Path) -> subprocess.CompletedProcess:
    spec_file.write_text(json.dumps(spec))
    with socket.socket() as probe:  # a free port for the rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
               "--master-port", str(port), "-m", "tests.e2e.test_ddp", str(spec_file)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)


def model_dir(project: Path) -> Path:
    return load_config(root=project, sets=SETS).layout.model(TOY).dir


def files(project: Path):
    from fmb.layout import ModelFiles

    return ModelFiles(model_dir(project))


def staged_files(project: Path):
    """The model's files in the staging copy an unfinished adaptation writes (`fmb.run.staging`)."""
    from fmb.layout import ModelFiles

    layout = load_config(root=project, sets=SETS).layout
    return ModelFiles(layout.staging(f"adapt:{TOY}").copy(model_dir(project).relative_to(layout.root)))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A: one process. B: two processes (with gradient checkpointing), then again (nothing changed).
    C: one process killed after epoch 2, resumed on two. E: two processes stopped after epoch 2,
    resumed on two. D: two processes SIGKILLed after epoch 2, resumed in one."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(plugins.ENCODERS, TOY, "tests.e2e.test_ddp:DdpToy")
        plugins.load.cache_clear()
        patch.setattr(tasks, "_UNIT_ROWS", UNIT)
        root = tmp_path_factory.mktemp("ddp")
        a, b, c, d, e = (new_project(root / name) for name in "abcde")
        adapt_everywhere(load_config(root=a, sets=SETS))
        with pytest.MonkeyPatch.context() as stopping:
            stopping.setattr(Trainer, "_end_epoch", stop_after_epoch(KILLED_AFTER, killed))
            with pytest.raises(Killed):
                adapt_everywhere(load_config(root=c, sets=SETS))
        checkpointing = [f"models.{TOY}.adapt.gradient_checkpointing=true"]
        spec = {"outcomes": str(root / "outcomes.json"), "jobs": [
            {"project": str(b), "sets": checkpointing}, {"project": str(b)}, {"project": str(c)},
            {"project": str(e), "sets": checkpointing, "stop": "raise"}, {"project": str(e), "sets": checkpointing},
            {"project": str(b), "sets": ["executor.kind=slurm"], "refused": "under torchrun .* leave out --slurm"},
            {"project": str(d), "stop": "sigkill"}]}
        launched = torchrun(spec, root / "spec.json")
        log = launched.stdout[-3000:] + launched.stderr[-6000:]
        assert launched.returncode != 0 and (root / "outcomes.json").exists(), log  # the last job kills them
        outcomes = json.loads((root / "outcomes.json").read_text())
        stopped = read_torch(staged_files(d).checkpoint, "checkpoint")  # killed: still in its staging copy
        assert (stopped["epoch"], stopped["world_size"]) == (KILLED_AFTER, 2), log
        assert not files(d).history.exists()
        adapt_everywhere(load_config(root=d, sets=SETS))
        yield {"a": a, "b": b, "c": c, "d": d, "e": e, "outcomes": outcomes, "log": log}
    plugins.load.cache_clear()


def weights(project: Path) -> dict[str, torch.Tensor]:
    return read_torch(files(project).checkpoint, "checkpoint")["model"]


def assert_same_training(project: Path, reference: Path) -> None:
    ours, theirs = (json.loads(files(p).history.read_text()) for p in (project, reference))
    assert [e["epoch"] for e in ours["epochs"]] == list(range(EPOCHS))
    for key in ("train_loss", "val_loss"):
        np.testing.assert_allclose([e[key] for e in ours["epochs"]], [e[key] for e in theirs["epochs"]], rtol=1e-5)
    assert [s["lr"] for s in ours["steps"]] == pytest.approx([s["lr"] for s in theirs["steps"]], rel=1e-12)
    np.testing.assert_allclose([s["grad_norm"] for s in ours["steps"]], [s["grad_norm"] for s in theirs["steps"]],
                               rtol=1e-4)
    mine, expected = weights(project), weights(reference)
    assert mine.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(mine[key], expected[key], rtol=1e-5, atol=1e-6)


def test_two_processes_train_like_one_with_the_same_global_batch(runs):
    assert_same_training(runs["b"], runs["a"])
    history = json.loads(files(runs["a"]).history.read_text())
    assert len(history["steps"]) >= 2 * EPOCHS and history["epochs"][-1]["train_loss"] < history["epochs"][0]["train_loss"]
    # the weights differ from the start: they were trained, and the comparison is not vacuous
    start = DdpToy(DdpToy.section()).adapted_state()
    assert not torch.allclose(weights(runs["b"])["head.weight"], start["head.weight"])
    state = json.loads(load_config(root=runs["b"], sets=SETS).layout.state.read_text())
    assert state[f"adapt:{TOY}"]["status"] == "done"


def test_rank_zero_leads_and_an_unchanged_stage_is_skipped_on_every_rank(runs):
    # B ran, B again was skipped by rank 0's engine (rank 1 went on with the next job instead of
    # waiting), C ran, E stopped then ran, B under the SLURM executor was refused on every rank; D
    # was killed. Rank 1 never wrote nor ran the engine (that would have failed B).
    assert runs["outcomes"] == ["ran", "skipped", "ran", "killed", "ran", "refused"], runs["log"][-3000:]


def test_a_run_resumes_on_another_number_of_processes(runs):
    assert_same_training(runs["c"], runs["a"])  # one process, then two
    assert_same_training(runs["d"], runs["a"])  # two processes (killed), then one
    assert read_torch(files(runs["c"]).checkpoint, "checkpoint")["world_size"] == 2
    assert read_torch(files(runs["d"]).checkpoint, "checkpoint")["world_size"] == 1


def test_a_run_resumed_on_as_many_processes_is_bit_identical(runs):
    resumed, straight = weights(runs["e"]), weights(runs["b"])
    assert all(torch.equal(resumed[key], straight[key]) for key in straight)
    curves = [[(e["train_loss"], e["val_loss"], e["step"]) for e in json.loads(files(runs[p]).history.read_text())["epochs"]]
              for p in "eb"]
    assert curves[0] == curves[1] and len(curves[0]) == EPOCHS


def test_the_global_batch_is_dealt_out_to_the_ranks():
    kept = np.array([True, False, True, True, True, True, False, True, True, True])  # 8 kept rows: batches of 4
    shares = [Ranks(rank, 2).share_of(kept, 4) for rank in (0, 1)]
    assert not (shares[0] & shares[1]).any() and list(shares[0] | shares[1]) == list(kept)
    positions = np.flatnonzero(kept)
    assert list(np.flatnonzero(shares[0])) == list(positions[[0, 2, 4, 6]])  # every other row of each batch
    assert Ranks(0, 1).share_of(kept, 4) is kept


def test_a_batch_size_the_ranks_cannot_share_is_a_clear_error():
    assert Ranks(1, 4).per_rank(16) == 4
    with pytest.raises(FmbError, match=r"^adapt.batch_size 10 is the global batch and must divide evenly over the "
                                       r"4 processes; use a multiple of 4$"):
        Ranks(0, 4).per_rank(10)


if __name__ == "__main__":
    worker(sys.argv[1])
