"""The `fmb` command line: parse, build the config, call one function per command. No logic here.

One module per command group: `common` (the root app, option types, config and stage helpers),
`data` (config, data), `stages` (adapt, embed, detect, report, run, status), `analyze`,
`discovery` (app, rerank), `export` (export, labels import), `setup` (download, check), `original`
(the original research code's command names, as aliases) and `imports` (its files). Importing them registers their commands on `app`.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.text import Text

from fmb import __version__
# the order they register in is the order of --help: the pipeline, the app, the original names, setup
from fmb.cli import stages, data, analyze, discovery, export, original, imports  # noqa: F401,I001
from fmb.cli.common import app, console, reflow_help
from fmb.cli.setup import setup_app
from fmb.config import find_root
from fmb.errors import FmbError
from fmb.layout import crash_logs

__all__ = ["app", "main"]

app.add_typer(setup_app, name="setup", rich_help_panel="Setup and migration")
reflow_help(app)


def _version(value: bool) -> None:
    if value:
        console.print(f"fmb {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")] = False,
) -> None:
    """fmb: foundation-models benchmark and anomaly discovery."""


def main() -> None:
    """Entry point: every failure prints as one line. A user-facing error (`FmbError`) exits 2; anything
    else is unexpected, exits 1 and says where its full traceback was written. ``--debug`` anywhere on
    the command line, or ``FMB_DEBUG=1``, prints the traceback as well."""
    debug = _take_flag(sys.argv, "--debug") or os.environ.get("FMB_DEBUG", "0") not in ("", "0")
    sleeping_openmp_threads(os.environ)
    try:
        app()
    except SystemExit as exc:
        if exc.code == 130 and _from_interrupt(exc):  # Typer turns Ctrl+C into a bare exit 130: say it
            _fail("interrupted: finished outputs are kept, and the same command resumes or redoes the stage "
                  "(`fmb status` says where the run stands)", 130, debug)
        raise
    except FmbError as exc:
        _fail(str(exc), 2, debug)
    except Exception as exc:  # a bug, or an input fmb does not check yet
        if type(exc).__module__.startswith("pyarrow"):  # a file fmb reads back is damaged (truncated, not Parquet)
            _fail(f"a file fmb reads is damaged or not what fmb wrote ({(str(exc).splitlines() or [''])[0][:300]}); "
                  "`fmb run --dry-run` names a damaged output of the run and the stage that redoes it; else redo the "
                  "stage that writes the file with --force", 2, debug)
        log = _write_crash_log()
        summary = (str(exc).splitlines() or [""])[0][:300]
        _fail(f"unexpected {type(exc).__name__}: {summary} (the full traceback is in {log}; please report it "
              "with that file)", 1, debug)


def sleeping_openmp_threads(environ) -> None:
    """OpenMP threads that wait at a barrier sleep instead of spinning, unless the user chose otherwise.
    Read once, when torch loads; the stage workers and data loaders inherit it. A spinning team stalls at
    every small operation when a data-loading worker or another job holds one of its cores; a sleeping
    one lets the model use every core whether the machine is quiet or not (tiny AION 2.3x -> 3.6x
    da96805's rate on a quiet 2-core machine; benchmarks/RESULTS.md, session 12)."""
    environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _take_flag(argv: list[str], flag: str) -> bool:
    """Remove `flag` from `argv` (before any `--`) and say whether it was there."""
    end = argv.index("--") if "--" in argv else len(argv)
    found = flag in argv[1:end]
    argv[:end] = [argv[0], *(arg for arg in argv[1:end] if arg != flag)]
    return found


def _from_interrupt(error: BaseException) -> bool:
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, KeyboardInterrupt):
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


def _fail(message: str, code: int, debug: bool) -> None:
    if debug:
        traceback.print_exc()
    # one line whatever the message holds (a key or value typed with a newline or a control character)
    message = "".join(char if char.isprintable() else repr(char)[1:-1] for char in message)
    Console(stderr=True).print(Text.assemble(("error: ", "bold red"), message), highlight=False, soft_wrap=True)
    sys.exit(code)


def _write_crash_log() -> Path:
    text = f"fmb {__version__}\ncommand: {' '.join(sys.argv)}\n\n{traceback.format_exc()}"
    name = f"fmb-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    for directory in (crash_logs(find_root(Path.cwd())), Path(tempfile.gettempdir())):
        try:
            directory.mkdir(parents=True, exist_ok=True)
            (directory / name).write_text(text)
            return directory / name
        except OSError:
            continue
    return Path("(nowhere: no writable directory)")
