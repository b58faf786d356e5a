"""The discovery app's commands: `fmb app` (the web page) and `fmb rerank` (its re-rankers, from the shell)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from fmb.cli.common import RunName, Sets, TaskFile, app, build_config, log


@app.command("rerank", rich_help_panel="Discovery")
def rerank_command(
    model: Annotated[Optional[str], typer.Option("--model", help="Model whose scores and joint embedding are "
                                                 "re-ranked; default: the run's first scored model.")] = None,
    ranking: Annotated[Optional[str], typer.Option("--ranking", help="Score column to start from; default: the "
                                                   "headline ranking (fused_adjusted).")] = None,
    method: Annotated[Optional[str], typer.Option("--method", help="Re-ranker: bandit (the others compete for each "
                                                  "page's slots, rewarded by your labels: the app's default), "
                                                  "propagation (label propagation over the nearest-neighbour graph), "
                                                  "active_search (the k-NN model of active search), astronomaly "
                                                  "(Astronomaly's neighbour score) or gp_ei (Gaussian process, "
                                                  "expected improvement).")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="File to write, .parquet or .csv; default: "
                                                "runs/<name>/app/rerank/<model>:<ranking>:rerank=<method>.parquet "
                                                "(the list the app shows; needed with --at).", dir_okay=False)] = None,
    at: Annotated[Optional[float], typer.Option("--at", help="Use the labels as they stood at this unix time "
                                                "(a replay, written to --out: the app's list stays as it is); "
                                                "default: now.")] = None,
    config: TaskFile = None,
    set_: Sets = None,
    name: RunName = None,
) -> None:
    """Re-rank a run's objects from the labels given in its discovery app (`fmb app`): the same list
    the app shows for that re-ranker (object_id, score, rank; seeded by the config's seed)."""
    from fmb.app.rerank import rerank_run

    resolved = build_config(config, set_, name)
    done = rerank_run(resolved, model, ranking, method, out, at)
    log(f"wrote {done['path']}: {done['objects']} objects ranked by {done['method']} from {done['labels']} labels "
        f"({done['model']}, {done['ranking']})")


@app.command("app", rich_help_panel="Discovery")
def app_command(
    host: Annotated[str, typer.Option("--host", help="Address to listen on; any other than 127.0.0.1 needs "
                                      "--token.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on.", min=1, max=65535)] = 8765,
    token: Annotated[Optional[str], typer.Option("--token", help="Secret every request must carry (required "
                                                 "off 127.0.0.1).")] = None,
    config: TaskFile = None,
    set_: Sets = None,
    name: RunName = None,
) -> None:
    """The discovery app: a local web page to browse a run's ranked objects, label them (interest 0-5,
    tags, keyboard shortcuts) and re-rank from the labels; labels go to runs/<name>/app/labels.sqlite."""
    from fmb.app.server import serve

    serve(build_config(config, set_, name), host=host, port=port, token=token, log=log)
