"""The original research code's score CSVs read into fmb's score-table contract (`fmb.detect.scores`).

Three kinds of file, told apart by their header (reference §6, §12):

=============  ==============================================================  ==========================
original       columns                                                         fmb columns
=============  ==============================================================  ==========================
density        ``anomaly_scores_<m>.csv``: object_id, embedding_key, log_prob,  ``score_<modality>_flow``
(detect          neg_log_prob, anomaly_sigma, rank (one row per object and key)  = neg_log_prob (the flow's
outliers)                                                                        NLL, as fmb's flow scores)
cosine         ``cosine_scores_<m>.csv``: object_id, cosine_similarity, rank    ``mismatch_cosine``
                                                                                 = 1 - cosine_similarity
multimodal     ``multimodal/all_scores.csv``: object_id, model, ...,            ``fused_geo``, ``fused_min``,
                 score_mm_geo, score_mm_min, uplift_mm (the rows of one model)   ``uplift``
=============  ==============================================================  ==========================

The embedding key of a density row gives its modality by `fmb.embed.store.LEGACY_KEYS`. Ranks and
percentiles are computed again by fmb's one ranking rule, so they mean what fmb's own mean (rank 1 =
highest score); the original's ``rank`` is the same order where scores do not tie. Every cell is
checked before anything is written: an id that is not an integer, a score that is not a number,
an unknown embedding key or an object listed twice is one error naming the line, the object and the
column. The table is written atomically to ``runs/<name>/scores/<model>.parquet``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from fmb.detect.scores import pct_column, percentile, rank_column, rank_descending, ranked_columns, score_column
from fmb.embed.store import LEGACY_KEYS
from fmb.errors import DataError, FmbError
from fmb.io import write_table

DENSITY = ("object_id", "embedding_key", "neg_log_prob", "anomaly_sigma", "rank")
COSINE = ("object_id", "cosine_similarity", "rank")
MULTIMODAL = ("object_id", "model", "score_mm_geo", "score_mm_min", "uplift_mm")
KINDS = {"density": DENSITY, "multimodal": MULTIMODAL, "cosine": COSINE}  # the first whose columns are all there
MULTIMODAL_COLUMNS = {"score_mm_geo": "fused_geo", "score_mm_min": "fused_min", "uplift_mm": "uplift"}


def import_scores(paths: list[Path], model: str, out: Path, replace: bool = False) -> pd.DataFrame:
    """One score table for `model` from the original's CSVs (any of the three kinds, each at most
    once per column), written to `out`; the table."""
    if out.exists() and not replace:
        raise FmbError(f"{out} exists (scores of this run); --force replaces it")
    frame = read_scores(paths, model)
    write_table(pa.Table.from_pandas(frame, preserve_index=False), out)
    return frame


def read_scores(paths: list[Path], model: str) -> pd.DataFrame:
    """The files' scores merged on object_id, with fmb's pct_/rank_ columns."""
    merged, origin = None, {}
    for path in paths:
        frame = _read(path, model)
        for column in frame.columns.drop("object_id"):
            if column in origin:
                raise FmbError(f"{path}: gives {column}, which {origin[column]} gave already; import one file of "
                               "each kind per model")
            origin[column] = path
        merged = frame if merged is None else merged.merge(frame, on="object_id", how="outer")
    if merged is None:
        raise FmbError("no score files given")
    merged = merged.sort_values("object_id", kind="stable").reset_index(drop=True)
    for column in ranked_columns(merged.columns):
        _add_ranks(merged, column)
    return merged


def file_kind(path: Path, header: list[str]) -> str:
    kind = next((kind for kind, needed in KINDS.items() if set(needed) <= set(header)), None)
    if kind is None:
        expected = "; ".join(f"{kind}: {', '.join(needed)}" for kind, needed in KINDS.items())
        raise FmbError(f"{path}: its columns ({', '.join(header)}) are none of the original's score files ({expected})")
    return kind


def _read(path: Path, model: str) -> pd.DataFrame:
    try:
        text = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as error:
        raise FmbError(f"{path}: not a readable CSV file ({str(error).splitlines()[0][:160]})") from None
    kind = file_kind(path, list(text.columns))
    lines = np.arange(len(text)) + 2  # line 1 is the header
    if kind == "multimodal":
        mine = (text["model"].str.strip().str.lower() == model.lower()).to_numpy()
        if not mine.any():
            raise FmbError(f"{path}: no rows of model {model!r} (models: {', '.join(sorted(set(text['model'])))})")
        text, lines = text[mine].reset_index(drop=True), lines[mine]
    ids = _integers(path, text, lines)
    if kind == "density":
        return _density(path, text, lines, ids)
    if kind == "cosine":
        columns = {"mismatch_cosine": 1.0 - _numbers(path, text, lines, ids, "cosine_similarity")}
    else:
        columns = {fmb: _numbers(path, text, lines, ids, original) for original, fmb in MULTIMODAL_COLUMNS.items()}
    _refuse_repeats(path, ids, lines, "")
    return pd.DataFrame({"object_id": ids, **columns})


def _density(path: Path, text: pd.DataFrame, lines: np.ndarray, ids: np.ndarray) -> pd.DataFrame:
    keys = text["embedding_key"].str.strip().to_numpy()
    unknown = ~np.isin(keys, list(LEGACY_KEYS))
    if unknown.any():
        first = unknown.argmax()
        raise _cell(path, lines[first], ids[first], "embedding_key", f"{keys[first]!r} is none of {', '.join(LEGACY_KEYS)}")
    columns = np.array([score_column(LEGACY_KEYS[key], "flow") for key in keys])
    for column in dict.fromkeys(columns):
        _refuse_repeats(path, ids[columns == column], lines[columns == column], f" for {column}")
    scores = pd.DataFrame({"object_id": ids, "column": columns, "score": _numbers(path, text, lines, ids, "neg_log_prob")})
    wide = scores.pivot(index="object_id", columns="column", values="score")
    return wide.rename_axis(columns=None).reset_index()


def _integers(path: Path, text: pd.DataFrame, lines: np.ndarray) -> np.ndarray:
    values = pd.to_numeric(text["object_id"].str.strip(), errors="coerce")
    bad = (values.isna() | (values != values.round())).to_numpy()
    if bad.any():
        first = bad.argmax()
        raise FmbError(f"{path}: line {lines[first]}: object_id is {text['object_id'].iloc[first]!r}, not an integer")
    return values.to_numpy().astype(np.int64)


def _numbers(path: Path, text: pd.DataFrame, lines: np.ndarray, ids: np.ndarray, column: str) -> np.ndarray:
    """The column as floats; an empty cell or 'nan' is a missing score (unranked), anything else that
    is not a number is refused."""
    raw = text[column].str.strip()
    values = pd.to_numeric(raw, errors="coerce")
    bad = (values.isna() & ~raw.str.lower().isin(["", "nan"])).to_numpy()
    if bad.any():
        first = bad.argmax()
        raise _cell(path, lines[first], ids[first], column, f"is {raw.iloc[first]!r}, not a number")
    return values.to_numpy(dtype=float)


def _refuse_repeats(path: Path, ids: np.ndarray, lines: np.ndarray, what: str) -> None:
    unique, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        repeated = unique[counts > 1][0]
        where = lines[ids == repeated]
        raise FmbError(f"{path}: object {repeated} appears more than once{what} (lines "
                       f"{', '.join(map(str, where[:3]))}); one row per object")


def _add_ranks(frame: pd.DataFrame, column: str) -> None:
    """pct_/rank_ of `column` over the objects with a finite score, by fmb's ranking rule."""
    values = frame[column].to_numpy(dtype=float)
    finite = np.isfinite(values)
    frame[pct_column(column)] = np.nan
    frame[rank_column(column)] = pd.array([pd.NA] * len(frame), dtype="Int64")
    frame.loc[finite, pct_column(column)] = percentile(values[finite])
    frame.loc[finite, rank_column(column)] = rank_descending(values[finite])


def _cell(path: Path, line: int, object_id: int, column: str, reason: str) -> FmbError:
    return FmbError(f"{path}: line {line}: {DataError(reason, object_id=int(object_id), field=column)}")
