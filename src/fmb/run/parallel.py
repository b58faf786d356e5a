"""Several stages at once (`run.parallel` > 1, local executor): each stage starts as soon as the
stages it comes after are done, up to `run.parallel` at a time.

A stage comes after the stages it names in `after` (by name or family) and after every earlier
stage of the plan whose outputs it reads (one of its inputs at or under one of their outputs), so
an undeclared dependency still waits (`is_ready`). Its key, checks, staging and state record happen in this
process exactly as in a run in order (`fmb.run.engine`); only its action runs in a worker process
(spawned: a forked child would inherit torch's threads; the cores are shared out among the
workers, `fmb.run.executors.use_threads`), and its outputs are committed here when it returns.
A worker rebuilds the stage by name from the config (`fmb.run.stages.stage_named`): stages hold
lambdas, which do not pickle.

Most of a run's analysis stages (evaluation, agreement, similarity, figures, probes) and the
reference models' adaptation compute on one core; one after another they leave the other idle.
After a failure no further stage starts; those already running finish and are recorded, then the
first error is raised. Outcomes come back in the plan's order.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path

from fmb.config import ResolvedConfig
from fmb.errors import FmbError
from fmb.run.engine import Outcome, Started, State, act, finish_stage, start_stage, upstream_in
from fmb.stage import Stage


def execute_parallel(config: ResolvedConfig, stages: list[Stage], forced: set[str], state: State,
                     log) -> list[Outcome]:
    outcomes: dict[str, Outcome] = {}
    pending, running = list(stages), {}
    failure: BaseException | None = None
    with _workers(config.run.parallel) as pool:
        while pending or running:
            while failure is None and len(running) < config.run.parallel:
                ready = next((stage for stage in pending
                              if is_ready(config, stage, stages[:stages.index(stage)], outcomes.keys())), None)
                if ready is None:
                    break
                pending.remove(ready)
                try:
                    started = start_stage(config, ready, ready.name in forced, state, log)
                except Exception as error:  # a refusal: nothing of it was written
                    failure = error
                    break
                if isinstance(started, Outcome):
                    outcomes[ready.name] = started
                else:
                    running[pool.submit(run_action, started.staging.config, ready.name, started.key)] = started
            if not running:
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                failure = _finish(running.pop(future), future, state, log, outcomes) or failure
    if failure is not None:
        raise failure
    return [outcomes[stage.name] for stage in stages if stage.name in outcomes]


def _finish(started: Started, future: Future, state: State, log, outcomes: dict) -> BaseException | None:
    try:
        outcomes[started.stage.name] = finish_stage(started, state, log, future.result)
    except Exception as error:  # recorded as failed by finish_stage; the others run on
        return error
    return None


def is_ready(config: ResolvedConfig, stage: Stage, earlier: list[Stage], done) -> bool:
    """Whether `stage` may start: every stage of `earlier` (those before it in the plan) that it comes
    after is `done`, and so is every one whose outputs hold one of its inputs (asked once the former
    are done, when what it reads can be listed; a list that cannot be made yet means: wait)."""
    if not set(upstream_in(stage, {other.name for other in earlier})) <= done:
        return False
    inputs = _listed(stage.inputs, config)
    for other in earlier:
        if other.name in done:
            continue
        outputs = _listed(other.outputs, config)
        if inputs is None or outputs is None or any(_within(path, output) for path in inputs for output in outputs):
            return False
    return True


def _listed(paths, config: ResolvedConfig) -> list[Path] | None:
    """A stage's inputs or outputs, or None where they depend on what upstream stages have not made
    yet (detect's, before any embedding exists)."""
    try:
        return paths(config)
    except FmbError:
        return None


def _within(path: Path, output: Path) -> bool:
    return path == output or output in path.parents


def _workers(parallel: int) -> ProcessPoolExecutor:
    from fmb.run.executors import threads_per_worker

    return ProcessPoolExecutor(parallel, mp_context=multiprocessing.get_context("spawn"), initializer=_start_worker,
                               initargs=(threads_per_worker(parallel),))


def _start_worker(threads: int) -> None:
    """A worker's share of the cores; and the platform's default start method back, which a spawned
    process otherwise inherits as "spawn": a stage's own processes (its data loaders) start as they
    do when the stage runs in the main process."""
    from fmb.run.executors import use_threads

    use_threads(threads)
    multiprocessing.set_start_method(None, force=True)


def run_action(config: ResolvedConfig, name: str, key: str):
    """In a worker: the action of the stage called `name`, as the run's executor runs it."""
    from fmb.run.executors import on_executor
    from fmb.run.stages import stage_named

    stage = on_executor(config, stage_named(config, name))
    return act(config, stage, key, lambda line: print(f"  [{name}] {line}", flush=True))
