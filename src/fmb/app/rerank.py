"""Re-ranking a run's objects from its labels: what the re-rankers learn on (`load_inputs`), one
fit (`rerank_snapshot`), and the re-ranked list on disk (`Reranked`), which the app shows after a
restart and `fmb rerank` writes (`rerank_run`).

The re-rankers themselves are plugins (`fmb.plugins.RERANKERS`, one module each in
`fmb.app.rerankers`); a re-ranked list has one name (`ranking_name`), the one the label log records
for labels given in it and the one its file is saved under.
"""

from __future__ import annotations

import inspect
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from fmb.app.graph import GraphCache, content_key
from fmb.app.rerankers.base import Reranker
from fmb.detect.scores import calibrated_inputs, frame_headline, is_score, p_column, ranked, score_tables
from fmb.errors import FmbError
from fmb.io import write_csv, write_table
from fmb.plugins import reranker_class, reranker_names

#: The bandit (issue 30): which re-ranker finds what a user is after differs from survey to survey
#: (benchmarks/RESULTS.md: propagation and active search tied on the development survey, active
#: search ahead on another), so the app lets them compete for each page's slots and learns from the
#: labels which one works for this user, rather than betting on one.
DEFAULT_METHOD = "bandit"
MODALITY = "joint"  # the embedding the re-rankers learn on: image and spectrum together
METADATA_KEY = b"fmb.rerank"  # the Parquet schema metadata of a re-ranked list: how it was made
ORDER_COLUMNS = ("object_id", "score", "rank", "chosen_by")  # chosen_by: only where an arm chose each


def reranker(method: str, seed: int = 0, graphs: GraphCache | None = None) -> Reranker:
    """A fresh estimator of a registered re-ranker with its default parameters (and `graphs`, for
    those that learn on the nearest-neighbour graph)."""
    kind = reranker_class(known_method(method))
    return kind(seed=seed, graphs=graphs) if "graphs" in inspect.signature(kind).parameters else kind(seed=seed)


def known_method(method: str) -> str:
    if method not in reranker_names():
        raise FmbError(f"unknown re-ranker {method!r}: choose one of {', '.join(reranker_names())}")
    return method



@dataclass(frozen=True)
class RerankInputs:
    """What every re-ranking of one (model, ranking) reads: load once, re-rank after every label."""

    model: str
    ranking: str
    object_ids: np.ndarray  # (N,) int64, in the score table's order
    features: np.ndarray  # (N, D + k): the joint embedding and the evidence profile, each of unit total variance
    anomaly: np.ndarray  # (N,) the ranking's scores, higher = more anomalous


def load_inputs(config, model: str | None = None, ranking: str | None = None) -> RerankInputs:
    """The embedding and ranking of `model` (default: the run's first scored model) and `ranking` (a
    score column; default the headline ranking) for the objects that have both."""
    from fmb.embed.store import load_embeddings

    tables = score_tables(config)
    if not tables:
        raise FmbError(f"run {config.name} has no scores yet: run `fmb detect` first")
    model = model or next(iter(tables))
    if model not in tables:
        raise FmbError(f"run {config.name} has no scores for model {model!r} (scored: {', '.join(tables)})")
    scores = pd.read_parquet(tables[model])
    ranking = ranking or frame_headline(scores)
    if ranking not in scores.columns or not is_score(ranking):
        raise FmbError(f"{ranking!r} is not a score column of {tables[model].name} (e.g. {frame_headline(scores)})")
    ids, matrices = load_embeddings(config.layout.embeddings(model).dir, (MODALITY,))
    if MODALITY not in matrices:
        raise FmbError(f"model {model} has no {MODALITY} embedding to re-rank on")
    rows = pd.Index(ids).get_indexer(scores.object_id.to_numpy())
    kept = rows >= 0
    features = np.hstack([_unit_variance(matrices[MODALITY][rows[kept]]), _unit_variance(evidence(scores[kept]))])
    return RerankInputs(model, ranking, scores.object_id.to_numpy(np.int64)[kept], features,
                        scores[ranking].to_numpy(np.float64)[kept])


def evidence(scores: pd.DataFrame) -> np.ndarray:
    """(N, k) -log10 of the calibrated tail probability of each way of being odd that the default
    ranking fuses (`calibrated_inputs`: image, spectrum, the misalignment): how an object is odd, which
    says more of what it is than how odd. A missing probability is no evidence (p = 1)."""
    columns = [p_column(column) for column in calibrated_inputs(scores.columns) if p_column(column) in scores]
    probabilities = np.nan_to_num(scores[columns].to_numpy(np.float64), nan=1.0)
    return -np.log10(np.clip(probabilities, 1e-300, 1.0))


def _unit_variance(block: np.ndarray) -> np.ndarray:
    """Centred and scaled to unit total variance, so that blocks of features weigh the same."""
    block = np.asarray(block, dtype=np.float64)
    centred = block - block.mean(axis=0) if len(block) else block
    total = float(centred.var(axis=0).sum()) if len(block) else 0.0
    return centred / np.sqrt(total) if total > 0 else centred


def labelled_positions(inputs: RerankInputs, labels: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(positions in `inputs`, interest) of the labels that carry an interest, for objects of the run
    (labels of other objects, e.g. imported from another survey, say nothing here)."""
    with_interest = labels.dropna(subset=["interest"]).drop_duplicates("object_id", keep="last")
    positions = pd.Index(inputs.object_ids).get_indexer(with_interest.object_id.to_numpy(np.int64))
    found = positions >= 0
    return positions[found], with_interest.interest.to_numpy(np.float64)[found]


def rerank_loaded(inputs: RerankInputs, method: str, labels: pd.DataFrame, seed: int = 0,
                  graphs: GraphCache | None = None, previous: pd.DataFrame | None = None) -> pd.DataFrame:
    """(object_id, score, rank), best first by the ranking rule, of `method` fitted on `labels`
    (object_id, interest: `LabelStore.current()`); `graphs` keeps the nearest-neighbour graphs. A
    re-ranker that says which of its arms chose each object (the bandit) adds `chosen_by`, and learns
    from the `chosen_by` of the `previous` list (object_id, chosen_by), the one the labels were given in."""
    labelled, interest = labelled_positions(inputs, labels)
    estimator = reranker(method, seed, graphs)
    if "chosen_by" in inspect.signature(estimator.fit).parameters:
        estimator.fit(inputs.features, inputs.anomaly, labelled, interest, chosen_by(inputs, labelled, previous))
    else:
        estimator.fit(inputs.features, inputs.anomaly, labelled, interest)
    frame = pd.DataFrame({"object_id": inputs.object_ids, "score": estimator.scores_})
    if hasattr(estimator, "chosen_by_"):
        frame["chosen_by"] = estimator.chosen_by_.astype(str)
    frame = ranked(frame, "score")
    return frame[[column for column in ORDER_COLUMNS if column in frame]].reset_index(drop=True)


def chosen_by(inputs: RerankInputs, labelled: np.ndarray, previous: pd.DataFrame | None) -> np.ndarray:
    """The arm of `previous` that chose each labelled object ("" where none did)."""
    if previous is None or "chosen_by" not in previous:
        return np.full(len(labelled), "", dtype=object)
    arms = previous.set_index("object_id")["chosen_by"]
    return arms.reindex(inputs.object_ids[labelled]).fillna("").to_numpy(object)


def rerank(config, model: str | None, ranking_column: str | None, method: str, labels: pd.DataFrame) -> pd.DataFrame:
    """The re-ranked list of a run's objects: `rerank_loaded` on `load_inputs`, seeded by the config."""
    return rerank_loaded(load_inputs(config, model, ranking_column), method, labels, config.seed)


# -- a re-ranked list on disk -----------------------------------------------------------------------
@dataclass(frozen=True)
class Reranked:
    """A re-ranked list and how it was made: what the app shows after a restart and `fmb rerank` writes."""

    order: pd.DataFrame  # object_id, score, rank (and chosen_by for the bandit): best first
    method: str
    model: str
    ranking: str
    event: int  # the label log's last event it was computed from (`LabelStore.snapshot`; 0: no label)
    labels: int  # the labels with an interest it learnt from
    time: float  # unix time it was computed
    seed: int
    source: str  # `source_key` of the objects and anomaly scores it re-ranked

    def describe(self) -> dict:
        """Everything but the list (JSON)."""
        return {key: value for key, value in asdict(self).items() if key != "order"}


def source_key(object_ids: np.ndarray, anomaly: np.ndarray) -> str:
    """What a re-ranked list started from: the objects (in the score table's order) and their anomaly scores."""
    return content_key(np.asarray(anomaly, np.float64), content_key(np.asarray(object_ids, np.int64)))


def rerank_snapshot(inputs: RerankInputs, method: str, labels: pd.DataFrame, event: int, seed: int = 0,
                    graphs: GraphCache | None = None, previous: Reranked | None = None) -> Reranked:
    """`rerank_loaded` on the labels of `LabelStore.snapshot` (labels, event), with how it was made;
    `previous`: the last list of `method`, the one the labels were given in."""
    order = rerank_loaded(inputs, method, labels, seed, graphs, None if previous is None else previous.order)
    return Reranked(order, method, inputs.model, inputs.ranking, int(event),
                    len(labelled_positions(inputs, labels)[0]), time.time(), int(seed),
                    source_key(inputs.object_ids, inputs.anomaly))


def write_reranked(reranked: Reranked, path: Path) -> Path:
    """The list as Parquet (object_id, score, rank), how it was made in its schema metadata; atomic."""
    table = pa.Table.from_pandas(reranked.order, preserve_index=False)
    metadata = {**(table.schema.metadata or {}), METADATA_KEY: json.dumps(reranked.describe()).encode()}
    return write_table(table.replace_schema_metadata(metadata), path)


def read_reranked(path: Path) -> Reranked | None:
    """The list `write_reranked` wrote at `path`; None when there is none or it cannot be read."""
    import pyarrow.parquet as pq

    if not path.is_file():
        return None
    try:
        table = pq.read_table(path)
        made = json.loads(table.schema.metadata[METADATA_KEY])
        order = table.to_pandas()
        order = order[[column for column in ORDER_COLUMNS if column in order]]
        return Reranked(order, **{key: made[key] for key in Reranked.__dataclass_fields__ if key != "order"})
    except (OSError, ValueError, KeyError, TypeError, pa.ArrowException):  # damaged or foreign: computed again
        return None


def ranking_name(model: str, column: str, method: str | None = None) -> str:
    """The one name of a list: model:column, and :rerank=method for a re-ranked one. The label log
    records it for each label given in that list; a re-ranked list's file in the run's app directory
    is named by it (`fmb.layout.AppFiles.reranked`)."""
    return f"{model}:{column}" + (f":rerank={method}" if method else "")


def rerank_run(config, model: str | None = None, ranking: str | None = None, method: str | None = None,
               out: Path | None = None, at: float | None = None) -> dict:
    """`fmb rerank`: the run's labels (as they stood at unix time `at`, default now) re-rank its
    objects by `method` (default `DEFAULT_METHOD`); the list goes to `out` (default
    runs/<name>/app/rerank/<model>:<ranking>:rerank=<method>.parquet, the file the app writes and
    shows; a .csv `out` is the list alone). A replay (`at`) needs `out`: the app's list is of every label.
    Returns what was done: path, objects, labels used, method, model, ranking, event."""
    from fmb.app.labels import COLUMNS, LabelStore

    method = known_method(method or DEFAULT_METHOD)  # before any loading
    if at is not None and (not math.isfinite(at) or out is None):
        raise FmbError(f"--at {at}: a replay needs a finite unix time and --out for its list (the app's own list, "
                       "from every label, stays as it is)")
    if out is not None and out.suffix.lower() not in (".parquet", ".csv"):
        raise FmbError(f"--out {out}: a re-ranked list is written as .parquet or .csv")
    database = config.layout.app.labels_db
    empty = (pd.DataFrame(columns=list(COLUMNS)), 0)
    labels, event = LabelStore(database).snapshot(at) if database.is_file() else empty
    inputs = load_inputs(config, model, ranking)
    saved = config.layout.app.reranked(ranking_name(inputs.model, inputs.ranking, method))
    done = rerank_snapshot(inputs, method, labels, event, config.seed, GraphCache(config.layout.app.graph),
                           read_reranked(saved))
    path = write_csv(done.order, out, index=False) if out is not None and out.suffix.lower() == ".csv" else \
        write_reranked(done, out or saved)
    return {"path": path, "objects": len(done.order), **done.describe()}
