"""`fmb detect`: scores/<model>.parquet per model (design §3), detectors saved beside it, and the
cross-model consensus ranking (scores/consensus.parquet).

Never reads a truth table: only embeddings go in. Fitting (`_fit`) and scoring (`score_frame`)
are separate, so objects scored later with the saved detectors (`score_new`) go through the same
code as the run's own.
"""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import closing
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fmb.config import ResolvedConfig
from fmb.data.catalog import catalog_path
from fmb.detect.conditional import MIN_REDSHIFTS, RedshiftConditional, with_redshift
from fmb.detect.consensus import write_consensus
from fmb.detect.density import CrossFitted, Reducer, load, save
from fmb.detect.fusion import Calibration, adjust, calibrate, fuse
from fmb.detect.mismatch import ContrastiveMismatch, PairResidual, cosine_mismatch
from fmb.detect.nuisance import ObjectContext, covariate_sources, object_context
from fmb.detect.population import connection, first_duplicate, parquet_source, population_parts, spearman
from fmb.detect.residual import PCAResidual
from fmb.detect.scores import (COMMON_SET, FIT_SAMPLE, MODALITIES, REDSHIFT, RESIDUAL, ranked_columns, score_column,
                               z_column)
from fmb.embed.store import (duplicate_ids, embedded_models, embedding_manifests, embedding_parts,
                             load_embeddings_and_residuals, part_arrays, read_part, read_rows)
from fmb.errors import FmbError
from fmb.io import atomic_path, read_json_object, write_json, write_table
from fmb.layout import EmbeddingFiles
from fmb.plugins import detector_class, encoder_class
from fmb.progress import progress_bar
from fmb.stage import Sharding, Stage


@dataclass
class ModelDetectors:
    """Everything needed to score new objects of one model later."""

    reducers: dict  # modality -> Reducer
    detectors: dict  # (modality, method) -> CrossFitted on the reduced embedding
    residuals: dict  # modality -> CrossFitted PCAResidual on the embedding (where the model gives none)
    mismatch: dict  # score column ("mismatch", "mismatch_residual") -> CrossFitted; empty without both modalities
    methods: list  # the methods of the ensembles
    fusion_method: str
    calibration: Calibration
    aligned: bool
    fit_ids: np.ndarray | None = None  # the objects of the fit sample
    context: ObjectContext | None = None  # where redshifts and nuisance covariates are read (None: saved before them)
    conditional: dict | None = None  # modality -> CrossFitted RedshiftConditional on [z, reduced embedding]
    fit_scores: dict | None = None  # score column -> the fit sample's cross-fitted scores, in fit_ids' order

    @property
    def population_fusion(self) -> str | None:
        """Whose percentiles the original's percentile fusions read (`detect.fusion_method`), or None
        where they do not apply (no misalignment or no joint embedding)."""
        return self.fusion_method if self.mismatch and "joint" in self.reducers else None

    def known_scores(self, ids: np.ndarray) -> "KnownScores | None":
        """The cross-fitted scores already computed for those of `ids` in the fit sample (None: none)."""
        if not self.fit_scores or self.fit_ids is None:
            return None
        order = np.argsort(self.fit_ids)
        position = np.clip(np.searchsorted(self.fit_ids, ids, sorter=order), 0, len(order) - 1)
        inside = self.fit_ids[order[position]] == ids
        return KnownScores(inside, order[position[inside]], self.fit_scores) if inside.any() else None


@dataclass
class KnownScores:
    """Scores of the fit sample's objects computed when the calibrations were fitted, by the same
    detectors on the same embeddings: the run's own parts take them instead of scoring those
    objects a second time (at `max_fit` objects or fewer, that is every object)."""

    inside: np.ndarray  # per row: in the fit sample
    positions: np.ndarray  # for the rows inside: their place in `columns`' arrays
    columns: dict

    def score(self, column: str, crossfit, x: np.ndarray, ids: np.ndarray) -> np.ndarray:
        if column not in self.columns:
            return crossfit.score(x, ids)
        out = np.empty(len(ids), dtype=np.float64)
        out[self.inside] = self.columns[column][self.positions]
        rest = ~self.inside
        if rest.any():
            out[rest] = crossfit.score(x[rest], ids[rest])
        return out


def detect(config: ResolvedConfig, log=print) -> dict:
    """The detect stage in this process: the same three steps an executor runs as jobs (fit on a
    sample, score every embedding part, merge), so both give the same table object for object."""
    fit_detectors(config, log)
    score_units(config, detect_units(config))
    return finish_detect(config, log)


def detect_models(config: ResolvedConfig) -> list[str]:
    models = config.detect.models or embedded_models(config)
    if not models:
        raise FmbError("no embeddings to score; run `fmb embed MODEL` first")
    return models


def check_detect(config: ResolvedConfig) -> None:
    """Refuse, before anything is written, a model that is not registered or has no embeddings."""
    from fmb.plugins import encoder_names

    for model in detect_models(config):
        if model not in encoder_names():
            raise FmbError(f"detect.models: unknown model {model!r}; registered models: {', '.join(encoder_names())}")
        if not config.layout.embeddings(model).manifest.is_file():
            raise FmbError(f"no embeddings of {model} in {config.layout.embeddings(model).dir}; run "
                           f"`fmb embed {model}` first")


def detect_outputs(config: ResolvedConfig) -> list[Path]:
    """What a run of detect replaces: the table and detectors of each model it scores, the consensus
    and the summary; other models' tables stay as they are."""
    files = config.layout.scores
    models = detect_models(config)
    per_model = [path for model in models for path in (files.table(model), files.detectors(model).parent)]
    # the consensus needs two models' tables (this run's and those already there): none with one
    tabled = set(models) | {model for model in embedded_models(config) if files.table(model).is_file()}
    return [*per_model, *([files.consensus] if len(tabled) >= 2 else []), files.summary]


# -- 1. fit, on one node: a sample of each model's embeddings, read part by part ----------------------
def fit_detectors(config: ResolvedConfig, log=print) -> None:
    """Fit and save every model's detectors and calibrations; a model already fitted under this
    stage's key (the engine clears the outputs when the key changes) is kept."""
    for model in detect_models(config):
        files = config.layout.scores
        if files.detectors(model).is_file() and files.fit_record(model).is_file():
            continue
        parts = _parts(config, model)
        total = sum(part.rows for part in parts)
        if total < 2:
            raise FmbError(f"{model} has {total} usable embedded objects: nothing to fit detectors on (see "
                           f"{config.layout.data.rejects} for why objects were skipped)")
        ids, matrices, residuals = read_rows(parts, np.flatnonzero(_fit_sample(config, total)))
        log(f"{model}: fitting on {len(ids)} of {total} objects ({', '.join(matrices)})")
        seconds: dict[str, float] = defaultdict(float)
        every = np.ones(len(ids), dtype=bool)
        fitted = _fit(config, model, ids, matrices, residuals, every, seconds)
        fitted.fit_ids = np.asarray(ids, dtype=np.int64)
        frame = score_objects(fitted, ids, matrices, residuals, every, seconds)  # fits the calibrations
        fitted.fit_scores = {column: frame[column].to_numpy(dtype=np.float64) for column in _cross_fitted_columns(fitted)}
        save(fitted, files.detectors(model))  # the record last: it says the fit is complete
        write_json({"objects": total, "fit_objects": len(ids), "population_fusion": fitted.population_fusion,
                    "seconds": dict(seconds)}, files.fit_record(model))


def _parts(config: ResolvedConfig, model: str) -> list:
    """The model's embedding parts that hold objects (a unit in which none was usable holds none)."""
    return [part for part in embedding_parts(config.layout.embeddings(model).dir) if part.rows]


def _fit_sample(config: ResolvedConfig, n: int) -> np.ndarray:
    """A boolean mask of the objects the detectors and calibrations are fitted on."""
    rng = np.random.default_rng(config.seed)
    mask = np.zeros(n, dtype=bool)
    mask[rng.choice(n, min(config.detect.max_fit, n), replace=False)] = True
    return mask


# -- 2. score, in shards: one embedding part at a time -------------------------------------------------
def _work(config: ResolvedConfig) -> list[tuple[str, object]]:
    """Every (model, embedding part) to score, in a fixed order: the work units of the shard plan."""
    return [(model, part) for model in detect_models(config) for part in _parts(config, model)]


def detect_units(config: ResolvedConfig) -> list[int]:
    return list(range(len(_work(config))))


def detect_shard(config: ResolvedConfig, shard) -> dict:
    """One shard of `detect` (an `fmb.run.executors.Shard`): its parts, those not scored yet."""
    return score_units(config, shard.units)


def score_units(config: ResolvedConfig, units) -> dict:
    work, fitted, scored = _work(config), {}, 0
    todo = [work[unit] for unit in units if not _is_scored(config, *work[unit])]
    with progress_bar("scoring", sum(part.rows for _, part in todo)) as advance:
        for model, part in todo:
            if model not in fitted:
                fitted[model] = load(config.layout.scores.detectors(model))
            _score_part(config, model, part, fitted[model])
            advance(part.rows)
            scored += 1
    return {"parts_scored": scored, "parts": len(units)}


def _is_scored(config: ResolvedConfig, model: str, part) -> bool:
    files = config.layout.scores
    record = files.part_record(model, part.unit)
    return record.is_file() and files.part(model, part.unit).is_file() and \
        read_json_object(record, "delete it to score that part again").get("rows") == part.rows


def _score_part(config: ResolvedConfig, model: str, part, fitted: "ModelDetectors") -> None:
    """One embedding part's scores, then its record (a kill in between rescores the part)."""
    files = config.layout.scores
    seconds: dict[str, float] = defaultdict(float)
    ids, matrices, residuals = part_arrays(read_part(part.path))
    frame = score_objects(fitted, ids, matrices, residuals, None, seconds, known=fitted.known_scores(ids))
    write_table(pa.Table.from_pandas(frame, preserve_index=False), files.part(model, part.unit))
    write_json({"rows": len(ids), "seconds": dict(seconds)}, files.part_record(model, part.unit))


# -- 3. merge: the columns that rank objects against each other, then every model's table -------------
def finish_detect(config: ResolvedConfig, log=print) -> dict:
    """Merge every model's parts into its score table, then the consensus of every model of the run
    with a table (those scored now and those left as they were); out of core, within
    `executor.merge_memory_gb` whatever the number of objects."""
    summary, files = {}, config.layout.scores
    with connection(config.executor.merge_memory_gb, files.spill) as con:
        for model in detect_models(config):
            summary[model] = _merge(con, config, model)
            write_json(summary[model], files.merge_record(model))
            log(f"{model}: {summary[model]['objects']} objects scored")
        write_consensus(con, {model: files.table(model) for model in _scored_models(config)}, config.detect.tail,
                        files.consensus)
    write_json({model: read_json_object(files.merge_record(model), "rerun `fmb detect --force`")
                for model in _scored_models(config) if files.merge_record(model).is_file()}, files.summary)
    return summary


def _scored_models(config: ResolvedConfig) -> list[str]:
    """The models of the run with a score table, scored now or before."""
    models = dict.fromkeys([*config.run.models, *detect_models(config)])
    return [model for model in models if config.layout.scores.table(model).is_file()]


def _merge(con, config: ResolvedConfig, model: str) -> dict:
    """scores/<model>.parquet: every part's columns and the population columns (percentiles, ranks,
    percentile fusions), written part by part as the query streams them in the parts' order; it
    reads the parts and fit.json (which fusion applies), never the embeddings nor the detectors."""
    files = config.layout.scores
    fit_record = read_json_object(files.fit_record(model), "rerun `fmb detect --force`")
    units = [part.unit for part in _parts(config, model)]
    paths = [files.part(model, unit) for unit in units]
    names = pq.read_schema(paths[0]).names
    source = parquet_source(paths, ["object_id", *ranked_columns(names)])
    duplicate = first_duplicate(con, source)
    if duplicate:
        raise duplicate_ids(config.layout.embeddings(model).dir, *duplicate)
    fusion = fit_record.get("population_fusion")
    population = population_parts(con, paths, fusion, files.merge_files(model)) if fusion else iter(())
    seconds, objects, common = defaultdict(float, fit_record["seconds"]), 0, 0
    with atomic_path(files.table(model)) as temporary, closing(population):
        writer = None
        for unit, path in zip(units, paths):
            table = pq.read_table(path)
            if fusion:
                table = _with_population(table, next(population), path)
                common += int(pc.sum(table.column(COMMON_SET)).as_py() or 0)
            writer = writer or pq.ParquetWriter(temporary, table.schema, compression="zstd")
            writer.write_table(table)
            objects += len(table)
            for key, value in read_json_object(files.part_record(model, unit), "").get("seconds", {}).items():
                seconds[key] += value
        writer.close()
    agreement = {"spearman_learned_vs_cosine_mismatch": spearman(con, source, "mismatch", "mismatch_cosine")} \
        if "mismatch_cosine" in names else {}
    return {"objects": objects, "common_set": common, "seconds": {k: round(v, 2) for k, v in seconds.items()},
            **agreement}


def _with_population(table: pa.Table, population: pa.Table, path: Path) -> pa.Table:
    """A part's table with its population columns, after checking that the rows are this part's, in
    its order (never a mis-paired row)."""
    if not population.column("object_id").equals(table.column("object_id")):
        raise FmbError(f"{path}: the merged population columns do not line up with the part's object ids "
                       "(was the part rewritten during the merge?); rerun `fmb detect`")
    for name in population.column_names[1:]:
        table = table.append_column(name, population.column(name))
    return table


def _fit(config: ResolvedConfig, model: str, ids: np.ndarray, matrices: dict, residuals: dict, fit: np.ndarray,
         seconds: dict) -> ModelDetectors:
    settings = config.detect
    fitted = ModelDetectors({}, {}, {}, {}, list(settings.methods), settings.fusion_method,
                            Calibration(settings.tail), encoder_class(model).aligned)
    reduced = {}
    for modality, matrix in matrices.items():
        fitted.reducers[modality] = Reducer(settings.pca_components).fit(matrix[fit])
        reduced[modality] = fitted.reducers[modality].transform(matrix[fit])
    by_method = {}
    for method in settings.methods:  # every modality at once: the flows of all of them train as one model
        started = time.perf_counter()
        crossfit = CrossFitted(_factory(method, config), config.detect.folds, config.seed)
        by_method[method] = dict(zip(reduced, crossfit.fit_each(list(reduced.values()), ids[fit])))
        seconds[method] += time.perf_counter() - started
    for modality, matrix in matrices.items():
        for method in settings.methods:  # the table's columns in the order of modality, then method
            fitted.detectors[(modality, method)] = by_method[method][modality]
        if modality not in residuals and matrix.shape[1] > fitted.reducers[modality].components_.shape[0]:
            started = time.perf_counter()  # a PCA that keeps every dimension leaves no residual
            fitted.residuals[modality] = _crossfit(config, partial(PCAResidual, settings.pca_components),
                                                   matrix[fit], ids[fit])
            seconds[RESIDUAL] += time.perf_counter() - started
    if {"image", "spectrum"} <= set(matrices):
        pair = np.hstack([reduced["image"], reduced["spectrum"]])
        for column, make in _mismatch_factories(config, reduced["image"].shape[1]).items():
            started = time.perf_counter()
            fitted.mismatch[column] = _crossfit(config, make, pair, ids[fit])
            seconds[column] += time.perf_counter() - started
    started = time.perf_counter()
    fitted.context = object_context(_catalog(config), covariate_sources(  # every model's: crowding is the object's
        [config.layout.embeddings(name).dir for name in embedded_models(config)]))
    z = fitted.context.redshift(ids[fit])
    has_z = np.isfinite(z)
    fitted.conditional = {modality: _crossfit(config, RedshiftConditional, with_redshift(z[has_z], x[has_z]),
                                              ids[fit][has_z])
                          for modality, x in reduced.items()} if has_z.sum() >= MIN_REDSHIFTS else {}
    seconds[REDSHIFT] += time.perf_counter() - started
    return fitted


def _catalog(config: ResolvedConfig) -> Path | None:
    """The catalog whose redshifts the conditional score reads; None when the survey cannot be
    opened here: detect needs only the embeddings, and then scores without the redshift scores."""
    try:
        return catalog_path(config)
    except FmbError:
        return None


def _crossfit(config: ResolvedConfig, make, x: np.ndarray, ids: np.ndarray) -> CrossFitted:
    return CrossFitted(make, config.detect.folds, config.seed).fit(x, ids)


def score_frame(fitted: ModelDetectors, ids: np.ndarray, matrices: dict, residuals: dict,
                reference: np.ndarray | None, seconds: dict | None = None) -> pd.DataFrame:
    """Every score of the contract (`fmb.detect.scores`) for these objects, ranked among them."""
    return population_columns(score_objects(fitted, ids, matrices, residuals, reference, seconds),
                              fitted.population_fusion)


def population_columns(frame: pd.DataFrame, fusion: str | None) -> pd.DataFrame:
    """The columns that place an object among the others scored with it: percentiles, ranks, the
    original's percentile fusions (`ModelDetectors.population_fusion`; None: none apply)."""
    return frame if fusion is None else fuse(frame, fusion)


def score_objects(fitted: ModelDetectors, ids: np.ndarray, matrices: dict, residuals: dict,
                  reference: np.ndarray | None, seconds: dict | None = None,
                  known: KnownScores | None = None) -> pd.DataFrame:
    """The scores of the contract that each object has on its own, whatever else is scored with
    it: detector scores, robust z and tail probabilities against the fit sample, the calibrated
    combinations. `reference` marks the fit sample, on which calibrations not fitted yet are
    fitted (None: all must be fitted already). `known`: the run's own objects of the fit sample,
    whose cross-fitted scores were computed with the fit (`ModelDetectors.known_scores`)."""
    seconds = defaultdict(float) if seconds is None else seconds

    def cross_fitted(column: str, crossfit, x: np.ndarray) -> np.ndarray:
        return crossfit.score(x, ids) if known is None else known.score(column, crossfit, x, ids)

    frame = pd.DataFrame({"object_id": ids})
    reduced = {m: fitted.reducers[m].transform(x) for m, x in matrices.items() if m in fitted.reducers}
    for (modality, method), crossfit in fitted.detectors.items():
        if modality in reduced:
            started = time.perf_counter()
            frame[score_column(modality, method)] = cross_fitted(score_column(modality, method), crossfit,
                                                                 reduced[modality])
            frame[z_column(modality, method)] = fitted.calibration.z(
                score_column(modality, method), frame[score_column(modality, method)].to_numpy(), reference)
            seconds[method] += time.perf_counter() - started
    for modality in MODALITIES:
        if modality in residuals:
            frame[score_column(modality, RESIDUAL)] = residuals[modality]
        elif modality in fitted.residuals and modality in matrices:
            frame[score_column(modality, RESIDUAL)] = cross_fitted(score_column(modality, RESIDUAL),
                                                                   fitted.residuals[modality], matrices[modality])
    if {"image", "spectrum"} <= set(reduced):
        pair = np.hstack([reduced["image"], reduced["spectrum"]])
        for column, crossfit in fitted.mismatch.items():
            started = time.perf_counter()
            frame[column] = cross_fitted(column, crossfit, pair)
            seconds[column] += time.perf_counter() - started
        if fitted.aligned:  # image and spectrum spaces aligned by training: the cosine means something
            frame["mismatch_cosine"] = cosine_mismatch(matrices["image"], matrices["spectrum"])
    if fitted.context is not None:  # odd for its redshift: one more way each modality is odd
        started = time.perf_counter()
        z = fitted.context.redshift(ids)
        for modality, crossfit in fitted.conditional.items():
            if modality in reduced:
                frame[score_column(modality, REDSHIFT)] = cross_fitted(score_column(modality, REDSHIFT), crossfit,
                                                                       with_redshift(z, reduced[modality]))
        seconds[REDSHIFT] += time.perf_counter() - started
    started = time.perf_counter()
    frame = calibrate(frame, fitted.calibration, fitted.methods, reference)
    if fitted.context is not None:  # the nuisance-adjusted default ranking
        frame = adjust(frame, fitted.calibration, fitted.context.covariate_matrix(ids), reference)
    seconds["calibration"] += time.perf_counter() - started
    if fitted.fit_ids is not None:
        frame[FIT_SAMPLE] = np.isin(ids, fitted.fit_ids)
    return frame


def _cross_fitted_columns(fitted: ModelDetectors) -> list[str]:
    """The score columns computed by cross-fitted detectors (what `KnownScores` keeps)."""
    return [*(score_column(modality, method) for modality, method in fitted.detectors),
            *(score_column(modality, RESIDUAL) for modality in fitted.residuals), *fitted.mismatch,
            *(score_column(modality, REDSHIFT) for modality in (fitted.conditional or {}))]


def _factory(method: str, config: ResolvedConfig):
    """detector(seed=...) makers from the registry and `detect.<method>`; partials (not lambdas) so
    that saved detectors can be unpickled."""
    return partial(detector_class(method), **getattr(config.detect, method).model_dump())


def _mismatch_factories(config: ResolvedConfig, n_image: int) -> dict:
    return {"mismatch": partial(ContrastiveMismatch, n_image, **config.detect.mismatch.model_dump()),
            "mismatch_residual": partial(PairResidual, n_image)}


def score_new(config: ResolvedConfig, model: str, embeddings: Path, out: Path) -> Path:
    """Score objects of another embedding directory with this run's saved detectors and calibrations
    (no refitting): the same columns as the run's own score table. What it is given is checked
    first: the embeddings' model, weights and widths against the detectors', and `out` (a new
    file, never inside a run's own outputs)."""
    _refuse_out(config, out)
    path = config.layout.scores.detectors(model)
    if not path.is_file():
        raise FmbError(f"no saved detectors at {path}; run `fmb detect` first")
    _refuse_other_embeddings(config, model, embeddings)
    fitted: ModelDetectors = load(path)
    ids, matrices, residuals = load_embeddings_and_residuals(embeddings)
    for modality, matrix in matrices.items():
        reducer = fitted.reducers.get(modality)
        if reducer is not None and matrix.shape[1] != reducer.mean_.shape[0]:
            raise FmbError(f"{embeddings}: the {modality} embeddings are {matrix.shape[1]} wide, the {model} detectors "
                           f"were fitted on {reducer.mean_.shape[0]}; give embeddings made by the run's {model}")
    frame = score_frame(fitted, ids, matrices, residuals, reference=None)
    return write_table(pa.Table.from_pandas(frame, preserve_index=False), out)


def _refuse_out(config: ResolvedConfig, out: Path) -> None:
    runs = config.layout.root.parent.resolve()
    target = out.resolve()
    if target.is_dir():
        raise FmbError(f"--out {out} is a directory; give the Parquet file to write (e.g. new_scores.parquet)")
    if target.is_relative_to(runs):
        raise FmbError(f"--out {out} is inside the runs' own outputs ({runs}), which the run's stages and the app "
                       "read; write the new objects' scores elsewhere (e.g. new_scores.parquet)")


def _refuse_other_embeddings(config: ResolvedConfig, model: str, embeddings: Path) -> None:
    """The embeddings' manifest must say `model`, and the weights the run's own embeddings of it had."""
    from fmb.embed.store import read_manifest

    def signature(directory: Path) -> dict:
        manifest = EmbeddingFiles(directory).manifest
        return (read_manifest(manifest).get("signature") or {}) if manifest.is_file() else {}

    given, own = signature(embeddings), signature(config.layout.embeddings(model).dir)
    if given.get("model") not in (None, model):
        raise FmbError(f"{embeddings} holds embeddings of {given['model']} (its manifest says so), not {model}; score "
                       f"them with `fmb detect score {given['model']}`")
    weights = given.get("weights_sha256"), own.get("weights_sha256")
    if all(weights) and weights[0] != weights[1]:
        raise FmbError(f"{embeddings} was made with other {model} weights (sha256 {weights[0][:12]}) than the "
                       f"embeddings its detectors were fitted on ({weights[1][:12]}); embed them with this run's "
                       "weights, or fit detectors on them")


#: Stage 3: every embedded model of run.models (or detect.models) scored; under an executor, the fit
#: is one job and the scoring one array task per shard of embedding parts.
DETECT = Stage("detect", detect, ("detect", "seed", "run.models"), inputs=embedding_manifests,
               outputs=detect_outputs, after=("embed",), version=6,  # 6: redshift scores in the modality channels
               sharding=Sharding(detect_units, detect_shard, finish_detect, fit_detectors), check=check_detect)
