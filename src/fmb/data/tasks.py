"""The data stage's commands, one function each (the CLI only parses and calls these)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from fmb.config import ResolvedConfig
from fmb.data.index import Fetcher, ObjectIndex, build_index, indexed_content_sha256, save_index
from fmb.data.schema import BAND_NAMES
from fmb.data.scan import iter_samples, summarize, write_rejects
from fmb.data.sources import local_inputs, open_source
from fmb.data.validate import SKIPPED, RowChecker
from fmb.errors import FmbError
from fmb.io import write_json
from fmb.progress import progress_bar
from fmb.stage import Stage


def synth(config: ResolvedConfig) -> dict:
    """Generate the synthetic survey into ``synth.out``."""
    from fmb.data.synth import synthesize
    from fmb.data.synth.sky import Sky

    settings = config.synth
    sky = Sky(**settings.sky.model_dump(exclude={"enabled"})) if settings.sky.enabled else Sky()
    with progress_bar("synthesising", settings.n) as advance:
        return synthesize(
            config.path(settings.out),
            settings.n,
            config.seed,
            cutout_px=settings.cutout_px,
            anomaly_rate=settings.anomaly_rate,
            psf_scale=settings.psf_scale,
            noise_scale=settings.noise_scale,
            population_mix=settings.population_mix,
            sky=sky,
            workers=settings.workers,
            shard_size=settings.shard_size,
            progress=advance,
        )


@dataclass
class IndexSummary:
    objects: int
    shards: int
    skipped: int
    index_path: Path
    rejects_path: Path


def index(config: ResolvedConfig, log=print) -> IndexSummary:
    """Index the configured source (ids only) and record shard/id problems as rejects; a file passed
    over is said, and a source of which no object could be indexed is an error."""
    source = open_source(config)
    for name, why in source.passed_over.items():
        log(f"passed over {name}: {why}")
    shards = source.shards()
    if not shards:
        raise FmbError(f"{source.description} holds no data files (an id column and a modality column)")
    with progress_bar("indexing", len(shards), unit="shards") as advance:
        result = build_index(source, progress=lambda _shard: advance(1))
    files = config.layout.data
    rejects_path = write_rejects(files.rejects, "index", result.issues)
    if not result.table.num_rows:
        found = [issue for issue in result.issues if issue.location not in source.passed_over]
        raise FmbError(f"no object of {source.description} could be indexed: "
                       + (_first_problem(found) if found else f"its {len(result.shards)} data files hold no rows"))
    index_path = save_index(result, files.dir, source)
    return IndexSummary(result.table.num_rows, len(result.shards), len(result.issues), index_path, rejects_path)


def validate(config: ResolvedConfig, strict: bool = False) -> dict:
    """Check every row of the source against the contract; write rejects and a summary. `strict`:
    stop at the first invalid object or dropped modality, whatever `data.on_invalid` says."""
    source = open_source(config)
    checker = RowChecker(config.data.model_copy(update={"on_invalid": "error"}) if strict else config.data)
    total = _indexed_count(config)
    issues: list = []
    usable = 0
    with progress_bar("validating", total) as advance:
        for _ in iter_samples(source, checker, issues, progress=advance):
            usable += 1
    files = config.layout.data
    write_rejects(files.rejects, "validate", issues)
    if not usable:
        skipped = [issue for issue in issues if issue.action == SKIPPED]
        raise FmbError(f"no object of {source.description} is usable: "
                       + (_first_problem(skipped) if skipped else "it holds no rows"))
    summary = {"source": source.description, **summarize(issues, usable)}
    write_json(summary, files.validation)
    return summary


def _first_problem(issues: list) -> str:
    """The first of the problems that left no object, and how many there are (all in the rejects table)."""
    first = issues[0]
    return f"{first.location}: {first.field}: {first.reason} ({len(issues)} such problems in the rejects table)"


def open_fetcher(config: ResolvedConfig) -> Fetcher:
    """Samples by object id through this run's index (`fmb data index` must have run)."""
    return Fetcher(open_source(config), ObjectIndex.load(config.layout.data.dir), RowChecker(config.data))


def show(config: ResolvedConfig, out: Path | None = None) -> Path:
    """Draw one object (RGB, four bands, rest-frame spectrum) to a PNG and return its path."""
    from fmb.viz.object_view import draw_object

    fetcher = open_fetcher(config)
    if len(fetcher.index) == 0:
        raise FmbError("the index is empty; nothing to show")
    object_id = config.show.object_id if config.show.object_id is not None else int(fetcher.index.ids[0])
    sample, issues = fetcher.sample(object_id)
    if sample is None:
        reasons = "; ".join(f"{issue.field}: {issue.reason}" for issue in issues)
        raise FmbError(f"object {object_id} cannot be shown: {reasons}")
    path = out if out is not None else config.layout.object_figure(object_id)
    return draw_object(sample, path, BAND_NAMES, smooth_px=config.show.smooth_px)


def check_indexed_source(config: ResolvedConfig) -> None:
    """Refuse a source that is not the one the run indexed, or has changed since (`fmb data validate
    --source other` validated the other data; adapt then fitted on rows the index does not describe)."""
    if config.layout.data.index_meta.is_file():
        indexed_content_sha256(config.layout.data.dir, open_source(config))


def _indexed_count(config: ResolvedConfig) -> int | None:
    path = config.layout.data.index
    return pq.read_metadata(path).num_rows if path.is_file() else None


# -- the stages of stage 0 (ordered with the others by fmb.run.stages) ---------------------------------
def _synth_output(config: ResolvedConfig) -> list[Path]:
    return [config.path(config.synth.out)]


def _not_synthetic(config: ResolvedConfig) -> str | None:
    return None if config.run.synth else "only with run.synth (the built-in synthetic survey)"


def _index_action(config: ResolvedConfig, log) -> dict:
    summary = index(config, log)
    return {"objects": summary.objects, "shards": summary.shards, "rejected": summary.skipped}


def _source_identity(config: ResolvedConfig) -> dict:
    return open_source(config).fingerprint()


def _index_file(config: ResolvedConfig) -> list[Path]:
    return [config.layout.data.index]


SYNTH = Stage("synth", lambda config, log: synth(config), ("synth", "seed"), outputs=_synth_output,
              applies=_not_synthetic)
# its output is the whole data directory (the index, its record, the rejects table), which its code
# addresses by directory; a new index is followed by new validation and embeddings, which add theirs
INDEX = Stage("index", _index_action, ("data",), inputs=lambda config: local_inputs(config),
              outputs=lambda config: [config.layout.data.dir],
              after=("synth",), fingerprint=_source_identity)
VALIDATE = Stage("validate", lambda config, log: validate(config), ("data",), inputs=_index_file,
                 outputs=lambda config: [config.layout.data.validation], after=("index",),
                 fingerprint=_source_identity, check=check_indexed_source)
