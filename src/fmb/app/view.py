"""The run as the app shows it: its ranked lists (filtered, paged, re-ranked), one object's view, and
the labels it records. A plain module: it raises fmb errors (`fmb.app.tables.NotFound` for what the
run does not hold, `FmbError` for a request it refuses) and `fmb.app.server` turns them into HTTP.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa
from pydantic import BaseModel, Field

from fmb.app.export import candidate_table, export_bytes, write_export
from fmb.app.graph import GraphCache
from fmb.app.labels import INTERESTING, LABEL, MAX_INTEREST, LabelStore
from fmb.app.neighbours import Neighbours
from fmb.app.pages import DEFAULT_RANDOM_FRACTION, discovery_curve, page_count, page_positions, slice_sizes
from fmb.app.render import Renderer, figure_png
from fmb.app.rerank import (DEFAULT_METHOD, Reranked, known_method, load_inputs, ranking_name, read_reranked,
                            rerank_snapshot, source_key, write_reranked)
from fmb.app.samp import send_table
from fmb.app.tables import (CONSENSUS_MODEL, Catalog, NotFound, ScoreTable, chosen_column, chosen_model,
                            finite_or_none, load_tables, tables_signature)
from fmb.config import ResolvedConfig
from fmb.data.catalog import load_catalog
from fmb.data.schema import BAND_NAMES
from fmb.data.sky import object_coordinates, sky_position
from fmb.detect.nuisance import run_crowding
from fmb.errors import FmbError
from fmb.plugins import reranker_class, reranker_names
from fmb.viz.discovery import draw_discovery
from fmb.viz.spectrum import FRAMES
from fmb.viz.stretch import STRETCHES

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
PAGE_SIZE_MAX = 200
PAGE_MAX = 10**9
DISCOVERY_THRESHOLD = INTERESTING
#: The discovery curve is drawn from this many objects labelled >= DISCOVERY_THRESHOLD: before the
#: first, both of its lines are flat at zero and say nothing.
DISCOVERY_MIN_FOUND = 1


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


class RunView:
    """What the app shows of one run and the labels it records; the routes only translate to and from HTTP."""

    def __init__(self, config: ResolvedConfig):
        self.config = config
        self._tables_read, self._tables = tables_signature(config), load_tables(config)
        if not self._tables:
            raise FmbError(f"run {config.name} has no scores yet; run `fmb detect` first")
        catalog = load_catalog(config, required=False)
        self.catalog = Catalog(catalog)
        self.labels = LabelStore(config.layout.app.labels_db)
        self.renderer = Renderer(config)
        self.coordinates = object_coordinates(self.renderer.fetcher.index, catalog)
        self.crowded = run_crowding(config)  # how each object was observed: its cutout's crowding
        self.neighbours = Neighbours(config)
        self._reranked: dict[tuple[str, str, str], Reranked] = {}  # the last list of each re-ranker
        self._rerank_inputs: dict[tuple[str, str], object] = {}
        self._reranking = threading.RLock()  # re-entered: a re-ranking reads the tables, which may reload
        self._drawn: dict[tuple[str, str, str], set[int]] = {}  # shown in a random slice: a label there rewards no arm
        self.graphs = GraphCache(config.layout.app.graph)

    @property
    def tables(self) -> dict[str, ScoreTable]:
        """The run's score tables, read again when `fmb detect` rewrote them while the app runs (it
        served the columns and ranks of before, and failed to re-rank on a column gone)."""
        now = tables_signature(self.config)
        if now == self._tables_read:
            return self._tables
        with self._reranking:  # no re-ranking reads the caches while they are dropped
            try:
                tables = load_tables(self.config)
            except (OSError, pa.ArrowException, FmbError):  # caught mid-rewrite: keep what was read
                return self._tables
            if tables:  # a table briefly absent mid-rewrite: keep what was read
                self._tables_read, self._tables = now, tables
                self._rerank_inputs.clear()  # learnt on the old scores, and so were the lists
                self._reranked.clear()
        return self._tables

    # -- what the list page offers --------------------------------------------------------------------
    def choices(self) -> dict:
        labels = self.labels.current()
        return {"models": {model: {"default": table.default, "columns": table.columns}
                           for model, table in self.tables.items()},
                "rerankers": {name: reranker_class(name).summary for name in reranker_names()},
                "default_reranker": DEFAULT_METHOD, "random_fraction": DEFAULT_RANDOM_FRACTION,
                "redshift": self.catalog.redshift, "classes": self.catalog.classes,
                "tags": sorted({tag for tags in labels.tags for tag in tags}), "labelled": len(labels),
                "bands": list(BAND_NAMES), "stretches": list(STRETCHES), "frames": list(FRAMES)}

    def table(self, model: str | None) -> tuple[str, ScoreTable]:
        model = chosen_model(self.tables, model)
        return model, self.tables[model]

    @staticmethod
    def column(table: ScoreTable, column: str | None) -> str:
        return chosen_column(table, column)

    # -- a ranked list --------------------------------------------------------------------------------
    def page(self, query: ListQuery) -> dict:
        model, table = self.table(query.model)
        column = self.column(table, query.column)
        labels = self.current_labels()
        reranked = self.reranked(model, column, query.rerank) if query.rerank else None
        order = self.filtered(table.order(column) if reranked is None else reranked.order, query, labels)
        interesting = int((labels["interest"].dropna() >= DISCOVERY_THRESHOLD).sum())
        fraction = DEFAULT_RANDOM_FRACTION if reranked else 0.0  # a re-ranked list has its random slice
        page = self.page_number(order, query, fraction)
        positions, random = page_positions(len(order), page, query.page_size, fraction, self.config.seed)
        self.renderer.ahead.schedule(order["object_id"].to_numpy()[positions])
        if reranked is not None:
            self._drawn.setdefault((model, column, query.rerank), set()).update(
                order["object_id"].to_numpy()[positions[random]].tolist())
        return {"ranking": ranking_name(model, column, query.rerank), "model": model, "column": column,
                "page": page, "pages": page_count(len(order), query.page_size, fraction), "total": len(order),
                "page_size": query.page_size, "rerank": reranked.describe() if reranked else None,
                "discovery": interesting >= DISCOVERY_MIN_FOUND,
                "items": self.items(order.iloc[positions], random, labels, first_position=page * query.page_size)}

    def reranked(self, model: str, column: str, method: str) -> Reranked:
        """The last list of `method`: in memory, else the one saved in the run when it re-ranked these
        very scores (after a restart, or written by `fmb rerank`), else computed from the labels now."""
        self.reranker_for(model, method)
        with self._reranking:
            if (model, column, method) not in self._reranked:
                saved = read_reranked(self.config.layout.app.reranked(ranking_name(model, column, method)))
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
            raise FmbError("re-rankers learn on one model's embeddings, not on the consensus")

    def _rerank_locked(self, model: str, column: str, method: str) -> Reranked:
        inputs = self._rerank_inputs.get((model, column))  # the embeddings are read once, labels every time
        if inputs is None:
            inputs = self._rerank_inputs[(model, column)] = load_inputs(self.config, model, column)
        labels, event = self.labels.snapshot()
        path = self.config.layout.app.reranked(ranking_name(model, column, method))
        previous = self._reranked.get((model, column, method)) or read_reranked(path)  # the list labelled in
        if previous is not None and "chosen_by" in previous.order:
            drawn = previous.order["object_id"].isin(self._drawn.get((model, column, method), ()))
            previous = replace(previous, order=previous.order.assign(
                chosen_by=previous.order["chosen_by"].where(~drawn, "random")))
        done = rerank_snapshot(inputs, method, labels, event, self.config.seed, self.graphs, previous)
        write_reranked(done, path)
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
            raise FmbError("the run's catalog has no redshift column to filter on")
        redshift = self.catalog.column(self.catalog.redshift, ids).astype(float)
        with np.errstate(invalid="ignore"):
            return (redshift >= (-np.inf if low is None else low)) & (redshift <= (np.inf if high is None else high))

    def class_mask(self, ids: pd.Series, wanted: list[str]) -> np.ndarray:
        keep = np.ones(len(ids), bool)
        for condition in wanted:
            name, _, value = condition.partition("=")
            if name not in self.catalog.classes:
                raise FmbError(f"{name!r} is not a class column of the catalog "
                                         f"({', '.join(self.catalog.classes) or 'it has none'})")
            keep &= self.catalog.column(name, ids).astype(str) == value
        return keep

    @staticmethod
    def page_number(order: pd.DataFrame, query: ListQuery, fraction: float) -> int:
        """The page asked for, or the one whose ranked part holds `query.find`."""
        if query.find is not None:
            where = np.flatnonzero(order["object_id"].to_numpy() == query.find)
            if not len(where):
                raise NotFound(f"object {query.find} is not in this list")
            return int(where[0]) // slice_sizes(query.page_size, fraction)[0]
        if query.page >= page_count(len(order), query.page_size, fraction):
            raise NotFound(f"page {query.page} is past the end of this list ({len(order)} objects)")
        return query.page

    def items(self, shown: pd.DataFrame, random: np.ndarray, labels: pd.DataFrame, first_position: int) -> list[dict]:
        """The page's objects; `chosen_by`: the bandit's arm that chose each ("random": the random
        slice; None in a list that no bandit made)."""
        ids = shown["object_id"].to_numpy()
        ranks = {model: table.ranks(table.default).reindex(ids) for model, table in self.tables.items()}
        arms = shown["chosen_by"] if "chosen_by" in shown else [None] * len(shown)
        return [{"object_id": str(object_id), "position": first_position + offset, "rank": int(rank),
                 "score": finite_or_none(score), "random": bool(is_random),
                 "chosen_by": "random" if is_random and arm is not None else arm,
                 "ranks": {model: finite_or_none(ranks[model].iat[offset]) for model in ranks},
                 "label": label_of(labels, int(object_id))}
                for offset, (object_id, score, rank, is_random, arm)
                in enumerate(zip(ids, shown["score"], shown["rank"], random, arms))]

    # -- one object -----------------------------------------------------------------------------------
    def require(self, object_id: int) -> int:
        if not self.renderer.knows(object_id):
            raise NotFound(f"no object {object_id} in this run")
        return object_id

    def object(self, object_id: int) -> dict:
        sample = self.sample(self.require(object_id))
        known = object_id in self.coordinates.index
        ra, dec = (self.coordinates.at[object_id, "ra"], self.coordinates.at[object_id, "dec"]) if known else (np.nan,) * 2
        return {"object_id": str(object_id), "redshift": finite_or_none(sample.redshift),
                "sky": sky_position(float(ra), float(dec)),
                "headlines": {model: table.default for model, table in self.tables.items()},
                "has_image": sample.bands is not None or sample.rgb is not None,
                "has_spectrum": sample.spectrum is not None, "bands": list(BAND_NAMES),
                "catalog": self.catalog.row(object_id), "label": self.labels.label(object_id),
                "crowding": self.crowding(object_id),
                "scores": {model: table.scores_of(object_id) for model, table in self.tables.items()}}

    def crowding(self, object_id: int) -> dict:
        """The object's nuisance covariates (neighbours, flux ratio, distance, blend and edge flags) as
        the run's models measured them; empty when none stores them."""
        if object_id not in self.crowded.index:
            return {}
        return {name: finite_or_none(value) for name, value in self.crowded.loc[object_id].items()}

    def sample(self, object_id: int):
        try:
            return self.renderer.sample(object_id)
        except FmbError as reason:
            raise NotFound(str(reason)) from None

    def image(self, object_id: int, draw: Callable[[], bytes]) -> bytes:
        self.require(object_id)
        try:
            return draw()
        except FmbError as reason:  # the object lacks what was asked (no spectrum, no bands)
            raise NotFound(str(reason)) from None

    # -- labels ---------------------------------------------------------------------------------------
    def current_labels(self) -> pd.DataFrame:
        return self.labels.current().set_index("object_id")

    def add_label(self, object_id: int, interest: int | None, tags: list[str], note: str, user: str,
                  ranking: str | None, rank: int | None) -> dict:
        """The label's event id once it is durable, and the object's label as the log now holds it
        (read back by object: one index lookup, not a replay), for the page to confirm."""
        self.require(object_id)
        event = self.labels.add(object_id, interest, tags, note, user, ranking, rank)
        return {"event": event, "object_id": str(object_id), "label": self.labels.label(object_id)}

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
        if (interest >= DISCOVERY_THRESHOLD).sum() < DISCOVERY_MIN_FOUND:
            raise NotFound(f"no object is labelled {DISCOVERY_THRESHOLD} or more yet: the discovery curve would be flat")
        plain = table.order(column)["object_id"].to_numpy()[: len(viewed)]
        curves = {"as labelled": discovery_curve(viewed, interest, DISCOVERY_THRESHOLD),
                  f"plain ranking ({model} {column})": discovery_curve(plain, interest, DISCOVERY_THRESHOLD)}
        return figure_png(lambda figure: draw_discovery(figure, curves, DISCOVERY_THRESHOLD), (5, 3.2))

    # -- what leaves the app --------------------------------------------------------------------------
    def candidates(self, model: str | None, column: str | None, top: int):
        """The export table (`fmb.app.export.candidate_table`) of the labelled objects and the top of a ranking."""
        model, table = self.table(model)
        column = self.column(table, column)
        return candidate_table(self.tables, model, column, top, self.labels.current(), self.coordinates,
                               self.catalog)

    def export(self, suffix: str, model: str | None, column: str | None, top: int) -> tuple[bytes, str]:
        """The export table as the bytes of a file in format `suffix`, and the file's name."""
        table = self.candidates(model, column, top)
        return export_bytes(table, suffix), f"{self.config.name}-candidates.{suffix}"

    def send_samp(self, model: str | None, column: str | None, top: int) -> dict:
        """The export table sent over SAMP to every client that loads VOTables (TOPCAT, Aladin)."""
        table = self.candidates(model, column, top)
        path = write_export(table, self.config.layout.app.samp_table(self.config.name))
        return {"objects": len(table), "sent_to": send_table(path, f"fmb {self.config.name} candidates")}


def label_of(labels: pd.DataFrame, object_id: int) -> dict | None:
    if object_id not in labels.index:
        return None
    row = labels.loc[object_id]
    return {"interest": finite_or_none(row["interest"]), "tags": list(row["tags"]), "note": row["note"],
            "user": row["user"], "time": float(row["time"])}
