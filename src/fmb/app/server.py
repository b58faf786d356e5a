"""The discovery app's web server (`fmb app`): one run's ranked objects, their views, and labelling.

`create_app` builds the FastAPI application over one run directory; `serve` runs it with uvicorn.
Pages are plain HTML and JavaScript from the package's static directory; every image is drawn here
(`fmb.app.render`) and every list is computed here, so the browser holds no state but the page it shows.

What a request can reach, and nothing else:

* object ids are 64-bit integers, checked before use; an id the run does not hold is a 404;
* no request names a file: static files are a fixed set listed when the app starts, images are
  drawn from the data index and cached under names hashed from the request, lists come from the
  run's score tables; the app writes label events (`fmb.app.labels`) and its image cache under the
  run's app directory, each re-ranked list (the file `fmb rerank` writes, so a restart shows the last
  one) and the nearest-neighbour graph it learns on, and a similarity index the run lacks where
  `fmb analyze similarity` puts it;
* every error is a JSON ``{"error": ...}`` with a 4xx status; a 500 is a bug;
* object ids go out as JSON strings: survey ids (DESI's TARGETID ~ 4e16) exceed the integers a
  browser holds exactly (2^53); they come back as strings or numbers, both read as 64-bit integers;
* bound to the loopback interface (the default), only requests naming a loopback host are answered
  (a web page elsewhere cannot reach the app by rebinding its own domain to 127.0.0.1); writes take
  JSON only, which a page of another origin cannot send without the app's consent;
* with a token, every request must carry it (the ``X-Fmb-Token`` header, or a cookie set by opening
  any page once with ``?token=...``); `serve` refuses to bind anything but loopback without one.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

import numpy as np
import pandas as pd
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParameter
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from fmb.app.labels import LABEL, MAX_INTEREST, MAX_NOTE, MAX_RANKING, LabelStore
from fmb.app.rerank import DEFAULT_METHOD, DEFAULT_RANDOM_FRACTION, RERANKERS, GraphCache, Reranked, discovery_curve
from fmb.app.rerank import known_method, load_inputs, page_count, page_positions, read_reranked, rerank_snapshot
from fmb.app.rerank import reranked_name, slice_sizes, source_key, write_reranked
from fmb.app.render import FRAMES, STRETCHES, Contrast, Renderer, draw_discovery, figure_png
from fmb.config import ResolvedConfig
from fmb.data.catalog import load_catalog
from fmb.data.schema import BAND_NAMES
from fmb.detect.scores import (CONSENSUS, frame_headline, is_score, load_score_tables, pct_column, percentile_of_rank,
                               rank_column, ranked)
from fmb.errors import FmbError
from fmb.layout import SimilarityFiles

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
ObjectId = Annotated[int, PathParameter(ge=INT64_MIN, le=INT64_MAX, description="a 64-bit object id")]
STATIC_DIR = Path(__file__).with_name("static")
PAGES = {"list": "index.html", "object": "object.html"}
MEDIA_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".png": "image/png",
               ".svg": "image/svg+xml"}
CONSENSUS_MODEL = "consensus"  # the cross-model ranking, offered as if it were one more model
TOKEN_HEADER, TOKEN_COOKIE, TOKEN_QUERY = "x-fmb-token", "fmb_token", "token"
LOOPBACK_NAMES = {"localhost"}
PAGE_SIZE_MAX = 200
PAGE_MAX = 10**9
DISCOVERY_THRESHOLD = 4
CLASS_VALUES_MAX = 64  # a catalog text column with more distinct values is a name, not a class
log = logging.getLogger("fmb.app")


# -- requests --------------------------------------------------------------------------------------------
class ListQuery(BaseModel):
    """One ranked list, filtered, and the page of it to show."""

    model: str | None = Field(None, max_length=100)
    column: str | None = Field(None, max_length=100)
    rerank: str | None = Field(None, max_length=100, description="a re-ranker: the list it made from the labels")
    page: int = Field(0, ge=0, le=PAGE_MAX)
    page_size: int = Field(48, ge=1, le=PAGE_SIZE_MAX)
    score_min: float | None = Field(None, allow_inf_nan=False)
    score_max: float | None = Field(None, allow_inf_nan=False)
    labelled: Literal["any", "yes", "no"] = "any"
    min_interest: int | None = Field(None, ge=0, le=MAX_INTEREST)
    tag: str | None = Field(None, max_length=40)
    z_min: float | None = Field(None, allow_inf_nan=False)
    z_max: float | None = Field(None, allow_inf_nan=False)
    cls: list[str] = Field([], max_length=16, description="COLUMN=VALUE: a class column of the catalog")
    find: int | None = Field(None, ge=INT64_MIN, le=INT64_MAX, description="show the page holding this object")


class LabelRequest(BaseModel):
    object_id: int = Field(ge=INT64_MIN, le=INT64_MAX)
    interest: int | None = Field(None, ge=0, le=MAX_INTEREST)
    tags: list[str] = Field([], max_length=64)
    note: str = Field("", max_length=MAX_NOTE)
    user: str = Field("anonymous", max_length=64)
    ranking: str | None = Field(None, max_length=MAX_RANKING)
    rank: int | None = Field(None, ge=1, le=INT64_MAX)


class UndoRequest(BaseModel):
    user: str = Field("anonymous", max_length=64)


class RerankRequest(BaseModel):
    model: str | None = Field(None, max_length=100)
    column: str | None = Field(None, max_length=100)
    method: str = Field(max_length=100)


class ContrastQuery(BaseModel):
    stretch: Literal[STRETCHES] = "asinh"
    low: float = Field(1.0, ge=0, le=100)
    high: float = Field(99.5, ge=0, le=100)

    def contrast(self) -> Contrast:
        return Contrast(self.stretch, self.low, self.high)  # FmbError (400) unless low < high


# -- the run's rankings ----------------------------------------------------------------------------------
class ScoreTable:
    """One model's score table, by object id, each ranking ordered once when first asked."""

    def __init__(self, frame: pd.DataFrame, preferred: str | None = None):
        self.frame = frame.set_index("object_id", drop=False)
        self.columns = [column for column in frame.columns if is_score(column)]
        self.default = frame_headline(frame, preferred)
        self._orders: dict[str, pd.DataFrame] = {}
        self._ranks: dict[str, pd.Series] = {}

    def order(self, column: str) -> pd.DataFrame:
        """object_id, score, rank: best first by the ranking rule (`fmb.detect.scores.ranked`)."""
        if column not in self._orders:
            table = ranked(self.frame.reset_index(drop=True)[["object_id", column]], column)
            self._orders[column] = table.rename(columns={column: "score"}).reset_index(drop=True)
        return self._orders[column]

    def ranks(self, column: str) -> pd.Series:
        """The rank of each object by `column`, indexed by object id."""
        if column not in self._ranks:
            order = self.order(column)
            self._ranks[column] = pd.Series(order["rank"].to_numpy(), index=order["object_id"].to_numpy())
        return self._ranks[column]

    def scores_of(self, object_id: int) -> list[dict]:
        """Every score of one object with its rank and percentile (1 = the most anomalous)."""
        if object_id not in self.frame.index:
            return []
        row = self.frame.loc[object_id]  # all-numeric columns make it float64: the id is passed on as given
        return [{"column": column, **self._standing(row, column, object_id)} for column in self.columns]

    def _standing(self, row: pd.Series, column: str, object_id: int) -> dict:
        score = finite_or_none(row[column])
        if score is None:
            return {"score": None, "rank": None, "pct": None}
        if rank_column(column) in row.index:  # the score table's own (the same rule, computed once)
            return {"score": score, "rank": int(row[rank_column(column)]), "pct": float(row[pct_column(column)])}
        ranks = self.ranks(column)
        rank = int(ranks[object_id])
        return {"score": score, "rank": rank, "pct": percentile_of_rank(rank, len(ranks))}


def load_tables(config: ResolvedConfig) -> dict[str, ScoreTable]:
    tables = {model: ScoreTable(frame) for model, frame in load_score_tables(config, _shown).items()}
    consensus = config.layout.scores.consensus
    if consensus.is_file():
        tables[CONSENSUS_MODEL] = ScoreTable(pd.read_parquet(consensus), preferred=CONSENSUS)
    return tables


def _shown(column: str) -> bool:
    """The score-table columns the app reads: ids, scores, and their ranks and percentiles (not the
    robust z, tail probabilities or flags, which would double what it holds per object)."""
    return column == "object_id" or is_score(column) or column.startswith(("rank_", "pct_"))


class Catalog:
    """The catalog's columns the list filters on: a redshift and the class (text) columns."""

    def __init__(self, frame: pd.DataFrame | None):
        self.frame = frame if frame is not None else pd.DataFrame(index=pd.Index([], dtype=np.int64))
        numeric = [c for c in self.frame.columns if pd.api.types.is_numeric_dtype(self.frame[c])]
        self.redshift = next((c for c in numeric if c.lower() in ("z", "redshift")), None)
        self.classes = {c: sorted(map(str, self.frame[c].dropna().unique())) for c in self.frame.columns
                        if c not in numeric and self.frame[c].nunique() <= CLASS_VALUES_MAX}

    def row(self, object_id: int) -> dict:
        if object_id not in self.frame.index:
            return {}
        return {column: jsonable(value) for column, value in self.frame.loc[object_id].items()}

    def column(self, name: str, ids: pd.Series) -> np.ndarray:
        return self.frame[name].reindex(ids.to_numpy()).to_numpy()


# -- the app's state -------------------------------------------------------------------------------------
class RunView:
    """What the app shows of one run and the labels it records; the routes only translate to and from HTTP."""

    def __init__(self, config: ResolvedConfig):
        self.config = config
        self.tables = load_tables(config)
        if not self.tables:
            raise FmbError(f"run {config.name} has no scores yet; run `fmb detect` first")
        self.catalog = Catalog(load_catalog(config, required=False))
        self.labels = LabelStore(config.layout.app.labels_db)
        self.renderer = Renderer(config)
        self.neighbours = Neighbours(config)
        self._reranked: dict[tuple[str, str, str], Reranked] = {}  # the last list of each re-ranker
        self._rerank_inputs: dict[tuple[str, str], object] = {}
        self._reranking = threading.Lock()
        self.graphs = GraphCache(config.layout.app.graph)

    # -- what the list page offers --------------------------------------------------------------------
    def choices(self) -> dict:
        labels = self.labels.current()
        return {"models": {model: {"default": table.default, "columns": table.columns}
                           for model, table in self.tables.items()},
                "rerankers": {name: kind.summary for name, kind in RERANKERS.items()},
                "default_reranker": DEFAULT_METHOD, "random_fraction": DEFAULT_RANDOM_FRACTION,
                "redshift": self.catalog.redshift, "classes": self.catalog.classes,
                "tags": sorted({tag for tags in labels.tags for tag in tags}), "labelled": len(labels),
                "bands": list(BAND_NAMES), "stretches": list(STRETCHES), "frames": list(FRAMES)}

    def table(self, model: str | None) -> tuple[str, ScoreTable]:
        model = model or next(iter(self.tables))
        if model not in self.tables:
            raise HTTPException(404, f"no scores for model {model!r}; the run has {', '.join(self.tables)}")
        return model, self.tables[model]

    def column(self, table: ScoreTable, column: str | None) -> str:
        column = column or table.default
        if column not in table.columns:
            raise HTTPException(404, f"no score column {column!r}")
        return column

    # -- a ranked list --------------------------------------------------------------------------------
    def page(self, query: ListQuery) -> dict:
        model, table = self.table(query.model)
        column = self.column(table, query.column)
        labels = self.current_labels()
        reranked = self.reranked(model, column, query.rerank) if query.rerank else None
        order = self.filtered(table.order(column) if reranked is None else reranked.order, query, labels)
        fraction = DEFAULT_RANDOM_FRACTION if reranked else 0.0  # a re-ranked list has its random slice
        page = self.page_number(order, query, fraction)
        positions, random = page_positions(len(order), page, query.page_size, fraction, self.config.seed)
        return {"ranking": ranking_name(model, column, query.rerank), "model": model, "column": column,
                "page": page, "pages": page_count(len(order), query.page_size, fraction), "total": len(order),
                "page_size": query.page_size, "rerank": reranked.describe() if reranked else None,
                "items": self.items(order.iloc[positions], random, labels, first_position=page * query.page_size)}

    def reranked(self, model: str, column: str, method: str) -> Reranked:
        """The last list of `method`: in memory, else the one saved in the run when it re-ranked these
        very scores (after a restart, or written by `fmb rerank`), else computed from the labels now."""
        self.reranker_for(model, method)
        with self._reranking:
            if (model, column, method) not in self._reranked:
                saved = read_reranked(self.config.layout.app.reranked(reranked_name(model, column, method)))
                if saved is not None and self.still_current(saved, model, column, method):
                    self._reranked[(model, column, method)] = saved
                else:
                    self._rerank_locked(model, column, method)
            return self._reranked[(model, column, method)]

    def still_current(self, saved: Reranked, model: str, column: str, method: str) -> bool:
        """Whether a saved list re-ranked this run's current scores of (model, column) with `method`."""
        frame = self.tables[model].frame
        kept = frame["object_id"].isin(saved.order["object_id"]).to_numpy()
        current = source_key(frame["object_id"].to_numpy()[kept], frame[column].to_numpy(np.float64)[kept])
        return (saved.model, saved.ranking, saved.method, saved.source) == (model, column, method, current)

    def rerank(self, model: str | None, column: str | None, method: str) -> dict:
        """Fit `method` on the labels as they are now: the re-ranked list replaces the last one, in
        memory and in the run's app directory."""
        model, table = self.table(model)
        column = self.column(table, column)
        self.reranker_for(model, method)
        with self._reranking:
            done = self._rerank_locked(model, column, method)
        return {"ranking": ranking_name(model, column, method), "objects": len(done.order),
                "labelled": done.labels, "rerank": done.describe()}

    @staticmethod
    def reranker_for(model: str, method: str) -> None:
        known_method(method)
        if model == CONSENSUS_MODEL:
            raise HTTPException(400, "re-rankers learn on one model's embeddings, not on the consensus")

    def _rerank_locked(self, model: str, column: str, method: str) -> Reranked:
        if (model, column) not in self._rerank_inputs:  # the embeddings are read once, labels every time
            self._rerank_inputs[(model, column)] = load_inputs(self.config, model, column)
        labels, event = self.labels.snapshot()
        done = rerank_snapshot(self._rerank_inputs[(model, column)], method, labels, event, self.config.seed,
                               self.graphs)
        write_reranked(done, self.config.layout.app.reranked(reranked_name(model, column, method)))
        self._reranked[(model, column, method)] = done
        return done

    def filtered(self, order: pd.DataFrame, query: ListQuery, labels: pd.DataFrame) -> pd.DataFrame:
        keep = np.ones(len(order), bool)
        ids = order["object_id"]
        if query.score_min is not None:
            keep &= order["score"].to_numpy() >= query.score_min
        if query.score_max is not None:
            keep &= order["score"].to_numpy() <= query.score_max
        if query.labelled != "any":
            keep &= ids.isin(labels.index).to_numpy() == (query.labelled == "yes")
        if query.min_interest is not None:
            keep &= labels["interest"].reindex(ids.to_numpy()).fillna(-1).to_numpy() >= query.min_interest
        if query.tag:
            keep &= ids.isin(labels.index[labels["tags"].map(lambda tags: query.tag in tags)]).to_numpy()
        keep &= self.redshift_mask(ids, query.z_min, query.z_max) & self.class_mask(ids, query.cls)
        return order[keep].reset_index(drop=True)

    def redshift_mask(self, ids: pd.Series, low: float | None, high: float | None) -> np.ndarray:
        if low is None and high is None:
            return np.ones(len(ids), bool)
        if self.catalog.redshift is None:
            raise HTTPException(400, "the run's catalog has no redshift column to filter on")
        redshift = self.catalog.column(self.catalog.redshift, ids).astype(float)
        with np.errstate(invalid="ignore"):
            return (redshift >= (-np.inf if low is None else low)) & (redshift <= (np.inf if high is None else high))

    def class_mask(self, ids: pd.Series, wanted: list[str]) -> np.ndarray:
        keep = np.ones(len(ids), bool)
        for condition in wanted:
            name, _, value = condition.partition("=")
            if name not in self.catalog.classes:
                raise HTTPException(400, f"{name!r} is not a class column of the catalog "
                                         f"({', '.join(self.catalog.classes) or 'it has none'})")
            keep &= self.catalog.column(name, ids).astype(str) == value
        return keep

    @staticmethod
    def page_number(order: pd.DataFrame, query: ListQuery, fraction: float) -> int:
        """The page asked for, or the one whose ranked part holds `query.find`."""
        if query.find is not None:
            where = np.flatnonzero(order["object_id"].to_numpy() == query.find)
            if not len(where):
                raise HTTPException(404, f"object {query.find} is not in this list")
            return int(where[0]) // slice_sizes(query.page_size, fraction)[0]
        if query.page >= page_count(len(order), query.page_size, fraction):
            raise HTTPException(404, f"page {query.page} is past the end of this list ({len(order)} objects)")
        return query.page

    def items(self, shown: pd.DataFrame, random: np.ndarray, labels: pd.DataFrame, first_position: int) -> list[dict]:
        ids = shown["object_id"].to_numpy()
        ranks = {model: table.ranks(table.default).reindex(ids) for model, table in self.tables.items()}
        return [{"object_id": str(object_id), "position": first_position + offset, "rank": int(rank),
                 "score": finite_or_none(score), "random": bool(is_random),
                 "ranks": {model: finite_or_none(ranks[model].iat[offset]) for model in ranks},
                 "label": label_of(labels, int(object_id))}
                for offset, (object_id, score, rank, is_random)
                in enumerate(zip(ids, shown["score"], shown["rank"], random))]

    # -- one object -----------------------------------------------------------------------------------
    def require(self, object_id: int) -> int:
        if not self.renderer.knows(object_id):
            raise HTTPException(404, f"no object {object_id} in this run")
        return object_id

    def object(self, object_id: int) -> dict:
        sample = self.sample(self.require(object_id))
        return {"object_id": str(object_id), "redshift": finite_or_none(sample.redshift),
                "has_image": sample.bands is not None or sample.rgb is not None,
                "has_spectrum": sample.spectrum is not None, "bands": list(BAND_NAMES),
                "catalog": self.catalog.row(object_id), "label": label_of(self.current_labels(), object_id),
                "scores": {model: table.scores_of(object_id) for model, table in self.tables.items()}}

    def sample(self, object_id: int):
        try:
            return self.renderer.sample(object_id)
        except FmbError as reason:
            raise HTTPException(404, str(reason)) from None

    def image(self, object_id: int, draw: Callable[[], bytes]) -> Response:
        self.require(object_id)
        try:
            return png_response(draw())
        except FmbError as reason:  # the object lacks what was asked (no spectrum, no bands)
            raise HTTPException(404, str(reason)) from None

    # -- labels ---------------------------------------------------------------------------------------
    def current_labels(self) -> pd.DataFrame:
        return self.labels.current().set_index("object_id")

    def add_label(self, request: LabelRequest) -> dict:
        """The label's event id once it is durable, and the object's label as the log now holds it
        (read back by object: one index lookup, not a replay), for the page to confirm."""
        self.require(request.object_id)
        event = self.labels.add(request.object_id, request.interest, request.tags, request.note, request.user,
                                request.ranking, request.rank)
        return {"event": event, "object_id": str(request.object_id), "label": self.labels.label(request.object_id)}

    def undo(self, user: str) -> dict:
        """The undo's event id, the object whose label it cancelled and that object's label now."""
        event = self.labels.undo(user)
        if event is None:
            return {"event": None, "object_id": None}
        object_id = self.labels.object_of(event)
        return {"event": event, "object_id": str(object_id), "label": self.labels.label(object_id)}

    def discovery(self, model: str | None, column: str | None) -> bytes:
        """The discovery curve: objects labelled >= 4 among the first N viewed, in the order they
        were labelled, against the same count down the plain ranking."""
        model, table = self.table(model)
        column = self.column(table, column)
        events = self.labels.events()
        viewed = pd.unique(events.loc[events["kind"] == LABEL, "object_id"])
        interest = self.current_labels()["interest"].dropna().astype(int)
        curves = {}
        if len(viewed):
            plain = table.order(column)["object_id"].to_numpy()[: len(viewed)]
            curves = {"as labelled": discovery_curve(viewed, interest, DISCOVERY_THRESHOLD),
                      f"plain ranking ({model} {column})": discovery_curve(plain, interest, DISCOVERY_THRESHOLD)}
        return figure_png(lambda figure: draw_discovery(figure, curves, DISCOVERY_THRESHOLD), (5, 3.2))


class Neighbours:
    """Each object's nearest neighbours per model and modality, from the run's similarity indexes
    (`fmb.analyze.similarity`), loaded when first asked; an index older than its embeddings is rebuilt."""

    def __init__(self, config: ResolvedConfig):
        self.config = config
        self._indexes: dict[str, dict] | None = None
        self._loading = threading.Lock()

    def of(self, object_id: int) -> dict:
        k = self.config.analyze.similarity.k
        found = {}
        for model, indexes in self.indexes().items():
            found[model] = {modality: self._nearest(index, object_id, k) for modality, index in indexes.items()}
        return found

    @staticmethod
    def _nearest(index, object_id: int, k: int) -> list[dict]:
        try:
            ids, similarities = index.query_ids([object_id], k)
        except FmbError:  # not embedded by this model (it failed its checks for this modality)
            return []
        return [{"object_id": str(i), "similarity": finite_or_none(s)} for i, s in zip(ids[0], similarities[0]) if i >= 0]

    def indexes(self) -> dict[str, dict]:
        with self._loading:
            if self._indexes is None:
                from fmb.embed.store import embedded_models

                self._indexes = {model: self._model_indexes(model) for model in embedded_models(self.config)}
            return self._indexes

    def _model_indexes(self, model: str) -> dict:
        """The saved indexes when each is newer than the embeddings, else `current_index` (which
        reuses a saved index built from these very embeddings, and builds the others)."""
        from fmb.analyze.similarity import SimilarityIndex, current_index
        from fmb.embed.store import load_embeddings, read_manifest

        embeddings = self.config.layout.embeddings(model)
        modalities = tuple(read_manifest(embeddings.manifest)["signature"]["dims"])
        directories = {modality: self.config.layout.similarity.index_dir(model, modality) for modality in modalities}
        made = embeddings.manifest.stat().st_mtime
        nprobe = self.config.analyze.similarity.nprobe
        if all(_saved_after(directory, made) for directory in directories.values()):
            return {modality: SimilarityIndex.load(directory, nprobe) for modality, directory in directories.items()}
        ids, matrices = load_embeddings(embeddings.dir, modalities)
        return {modality: current_index(self.config, model, modality, ids, vectors, log.info)
                for modality, vectors in matrices.items()}


def _saved_after(directory: Path, time: float) -> bool:
    meta = SimilarityFiles.index_files(directory)[2]  # written last: its presence means a whole index
    return meta.is_file() and meta.stat().st_mtime >= time


# -- JSON and responses ----------------------------------------------------------------------------------
def finite_or_none(value) -> float | int | None:
    """A number JSON can carry (NaN and missing values become null)."""
    if value is None or value is pd.NA:
        return None
    value = value.item() if isinstance(value, np.generic) else value
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def jsonable(value):
    return finite_or_none(value) if isinstance(value, (int, float, np.generic)) or value is pd.NA else str(value)


def label_of(labels: pd.DataFrame, object_id: int) -> dict | None:
    if object_id not in labels.index:
        return None
    row = labels.loc[object_id]
    return {"interest": finite_or_none(row["interest"]), "tags": list(row["tags"]), "note": row["note"],
            "user": row["user"], "time": float(row["time"])}


def ranking_name(model: str, column: str, rerank: str | None) -> str:
    """The list a label was made in, as the label log records it."""
    return f"{model}:{column}" + (f":rerank={rerank}" if rerank else "")


def error_response(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def png_response(data: bytes) -> Response:
    return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=600"})


def static_files() -> dict[str, Path]:
    """The files the app serves, by name: listed once, so no request ever names a path."""
    return {path.name: path for path in STATIC_DIR.iterdir() if path.is_file() and path.suffix in MEDIA_TYPES}


def validation_message(error: RequestValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first.get("loc", ())[1:]) or "request"
    return f"{where}: {first.get('msg', 'invalid')}"


# -- access ----------------------------------------------------------------------------------------------
def is_loopback(host: str) -> bool:
    """Whether `host` (a name or an address, as uvicorn binds it) is this machine only."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def refusal(request: Request, token: str | None) -> tuple[int, str] | None:
    """Why a request is refused (status, message), or None."""
    if token is None:
        host = urlsplit(f"//{request.headers.get('host', '')}").hostname or ""
        if not is_loopback(host):
            return 400, f"this app answers requests for localhost only, not for {host!r}"
        return None
    given = (request.headers.get(TOKEN_HEADER) or request.cookies.get(TOKEN_COOKIE)
             or request.query_params.get(TOKEN_QUERY) or "")
    if not hmac.compare_digest(given.encode(), token.encode()):
        return 401, "this app needs its token: open it once with ?token=... or send the X-Fmb-Token header"
    return None


def guard(app: FastAPI, token: str | None) -> None:
    """Refuse what `refusal` refuses; remember a token given in the query string in a cookie."""

    @app.middleware("http")
    async def check(request: Request, call_next):
        refused = refusal(request, token)
        if refused:
            return error_response(*refused)
        response = await call_next(request)
        if token is not None and request.query_params.get(TOKEN_QUERY):
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
        return response


def handle_errors(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError):
        return error_response(400, validation_message(error))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):
        return error_response(error.status_code, str(error.detail))

    @app.exception_handler(FmbError)
    async def refused(request: Request, error: FmbError):  # a label the store refuses, a bad contrast
        return error_response(400, str(error))


# -- the application -------------------------------------------------------------------------------------
def create_app(config: ResolvedConfig, token: str | None = None) -> FastAPI:
    """The app over `config`'s run; with `token`, every request must carry it."""
    view = RunView(config)
    files = static_files()
    app = FastAPI(title=f"fmb discovery: {config.name}", docs_url=None, redoc_url=None, openapi_url=None)
    guard(app, token)
    handle_errors(app)

    def static(name: str) -> FileResponse:
        if name not in files:
            raise HTTPException(404, "no such file")
        return FileResponse(files[name], media_type=MEDIA_TYPES[files[name].suffix],
                            headers={"Cache-Control": "no-cache"})

    app.get("/")(lambda: static(PAGES["list"]))
    app.get("/static/{name}")(static)

    @app.get("/object/{object_id}")
    def object_page(object_id: ObjectId):
        view.require(object_id)
        return static(PAGES["object"])

    @app.get("/api/choices")
    def choices():
        return view.choices()

    @app.get("/api/list")
    def ranked_list(query: Annotated[ListQuery, Query()]):
        return view.page(query)

    @app.get("/api/object/{object_id}")
    def one_object(object_id: ObjectId):
        return view.object(object_id)

    @app.get("/api/object/{object_id}/neighbours")
    def neighbours(object_id: ObjectId):
        return view.neighbours.of(view.require(object_id))

    @app.post("/api/labels", status_code=201)
    def add_label(request: LabelRequest):
        return view.add_label(request)

    @app.post("/api/undo")
    def undo(request: UndoRequest):
        return view.undo(request.user)

    @app.post("/api/rerank")
    def rerank(request: RerankRequest):
        return view.rerank(request.model, request.column, request.method)

    add_image_routes(app, view)
    return app


def add_image_routes(app: FastAPI, view: RunView) -> None:
    renderer = view.renderer

    @app.get("/img/{object_id}/thumbnail.png")
    def thumbnail(object_id: ObjectId):
        return view.image(object_id, lambda: renderer.thumbnail(object_id))

    @app.get("/img/{object_id}/rgb.png")
    def rgb(object_id: ObjectId, contrast: Annotated[ContrastQuery, Query()]):
        shown = contrast.contrast()
        return view.image(object_id, lambda: renderer.rgb(object_id, shown))

    @app.get("/img/{object_id}/band/{index}.png")
    def band(object_id: ObjectId, index: Annotated[int, PathParameter(ge=0, lt=len(BAND_NAMES))],
             contrast: Annotated[ContrastQuery, Query()]):
        shown = contrast.contrast()
        return view.image(object_id, lambda: renderer.band(object_id, index, shown))

    @app.get("/img/{object_id}/spectrum.png")
    def spectrum(object_id: ObjectId, frame: Literal[FRAMES] = "rest",
                 smooth: Annotated[float, Query(ge=0, le=50)] = 2.0):
        return view.image(object_id, lambda: renderer.spectrum(object_id, frame, smooth))

    @app.get("/img/{object_id}/figure.png")
    def figure(object_id: ObjectId):
        return view.image(object_id, lambda: renderer.figure(object_id))

    @app.get("/img/discovery.png")
    def discovery(model: Annotated[str | None, Query(max_length=100)] = None,
                  column: Annotated[str | None, Query(max_length=100)] = None):
        return Response(view.discovery(model, column), media_type="image/png", headers={"Cache-Control": "no-store"})


def serve(config: ResolvedConfig, host: str = "127.0.0.1", port: int = 8765, token: str | None = None,
          log=print) -> None:
    """Run the app with uvicorn until interrupted; anything but a loopback address needs a token.
    Says, once the run has opened, where the page is, which run it serves and how to stop it."""
    if not is_loopback(host) and not token:
        raise FmbError(f"binding to {host} lets other machines reach the app and its labels: give a token "
                       "(--token), or keep the default 127.0.0.1")
    import uvicorn

    app = create_app(config, token)
    address = f"http://{'[' + host + ']' if ':' in host else host}:{port}/" + (f"?token={token}" if token else "")
    log(f"fmb app: run {config.name} ({config.layout.root}) at {address}")
    log("open that address in a browser; press Ctrl+C here to stop the app (labels are saved as you give them)")
    uvicorn.run(app, host=host, port=port, log_level="warning")
