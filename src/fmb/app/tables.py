"""What the app reads of a run: its score tables (`ScoreTable`, each ranking ordered once when first
asked) and the catalog's columns the list filters on (`Catalog`), and how their values go out as JSON."""

from __future__ import annotations

import numpy as np
import pandas as pd

from fmb.config import ResolvedConfig
from fmb.detect.scores import (CONSENSUS, frame_headline, is_score, load_score_tables, pct_column, percentile_of_rank,
                               rank_column, ranked, score_tables)

from fmb.errors import FmbError

CONSENSUS_MODEL = "consensus"  # the cross-model ranking, offered as if it were one more model
CLASS_VALUES_MAX = 64  # a catalog text column with more distinct values is a name, not a class


class NotFound(FmbError):
    """What a request asked for is not in the run (an object, a model, a score column, a page): a 404."""


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


def chosen_model(tables: dict[str, ScoreTable], model: str | None) -> str:
    """`model`, or the run's first scored model when None; NotFound when the run has no scores of it."""
    if not tables:
        raise FmbError("the run has no scores yet; run `fmb detect` first")
    model = model or next(iter(tables))
    if model not in tables:
        raise NotFound(f"no scores for model {model!r}; the run has {', '.join(tables)}")
    return model


def chosen_column(table: ScoreTable, column: str | None) -> str:
    """`column`, or the table's headline ranking when None; NotFound when the table has no such score."""
    column = column or table.default
    if column not in table.columns:
        raise NotFound(f"no score column {column!r} (e.g. {table.default})")
    return column


def load_tables(config: ResolvedConfig) -> dict[str, ScoreTable]:
    tables = {model: ScoreTable(frame) for model, frame in load_score_tables(config, _shown).items()}
    consensus = config.layout.scores.consensus
    if consensus.is_file():
        tables[CONSENSUS_MODEL] = ScoreTable(pd.read_parquet(consensus), preferred=CONSENSUS)
    return tables


def tables_signature(config: ResolvedConfig) -> tuple:
    """What `load_tables` would read, by file, size and time of change: a change means read again."""
    paths = [*score_tables(config).values(), config.layout.scores.consensus]
    return tuple((str(path), stat.st_size, stat.st_mtime_ns) for path in paths if path.is_file()
                 for stat in [path.stat()])


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
