"""Re-ranking from labels: three active-learning rankings behind one interface, the random slice of
every page, and the discovery curve.

A re-ranker is a scikit-learn-style estimator: parameters in ``__init__``, ``fit(X, anomaly,
labelled_index, interest)`` and one score per row of X in ``scores_`` (higher = show first). With no
label each gives the anomaly ranking itself, and each is deterministic for its ``seed``.

* ``astronomaly``: Astronomaly's neighbour score (Lochner & Bassett 2021): a random forest predicts
  the interest u from the embedding, and the anomaly score a (scaled to 0-5) becomes
  ``a * tanh(exp(alpha * d0) - 1 + artanh(0.1 + 0.85 u / 5))``, d0 the distance to the nearest
  labelled object over its mean: near labels a is scaled by the predicted interest, far from every
  label it stays a. Parameters as the paper's code: 100 trees, alpha 1.
* ``gp_ei``: Protege's Gaussian process (Walmsley et al. 2021 via Astronomaly) ranked by expected
  improvement over the best interest seen, with its trade-off 0.5; on a PCA of the embedding, kernel
  constant x RBF + white noise, the RBF length starting at the median distance. Its prior mean is the
  anomaly percentile times one interest point, so that with few labels the unexplored objects come
  in anomaly order.
* ``propagation``: label propagation over the k-nearest-neighbour graph (k = 10) of the same PCA, as
  the harmonic function of Zhu, Ghahramani & Lafferty (2003) with a "dongle" of weight 1 holding each
  unlabelled object to 0: interest (centred, -1..1) spreads from labelled objects to their
  neighbours and fades with distance; the score is the anomaly percentile plus it.

All three learn on the same features (`load_inputs`): the model's joint embedding beside the
detector's evidence profile (-log10 p of each way of being odd that the default ranking fuses), each
block scaled to unit total variance. Every parameter above was fixed from those sources before any
benchmark ran; the evidence profile was added after one comparison on the development survey
(`benchmarks/labelling_sim.py`, `benchmarks/RESULTS.md`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fmb.detect.scores import calibrated_inputs, frame_headline, is_score, p_column, percentile, ranked, score_tables
from fmb.errors import FmbError

DEFAULT_METHOD = "astronomaly"
DEFAULT_PAGE_SIZE = 10
#: The share of every page drawn at random from what is not shown yet, so the loop does not only
#: confirm what it has learnt.
DEFAULT_RANDOM_FRACTION = 0.1
MAX_INTEREST = 5.0
MODALITY = "joint"  # the embedding the re-rankers learn on: image and spectrum together


# -- the re-rankers ---------------------------------------------------------------------------------
class Reranker:
    """Base: checks the inputs; with no label the score is the anomaly percentile (the plain order)."""

    def fit(self, X: np.ndarray, anomaly: np.ndarray, labelled_index: np.ndarray, interest: np.ndarray) -> "Reranker":
        X, anomaly, labelled_index, interest = _checked(X, anomaly, labelled_index, interest)
        prior = percentile(anomaly)
        self.scores_ = prior if len(labelled_index) == 0 else self._scores(X, anomaly, prior, labelled_index, interest)
        return self

    def _scores(self, X, anomaly, prior, labelled, interest) -> np.ndarray:
        raise NotImplementedError


class NeighbourScore(Reranker):
    """Astronomaly's neighbour score (see the module doc)."""

    def __init__(self, alpha: float = 1.0, min_score: float = 0.1, trees: int = 100, seed: int = 0):
        self.alpha, self.min_score, self.trees, self.seed = alpha, min_score, trees, seed

    def _scores(self, X, anomaly, prior, labelled, interest):
        from scipy.spatial import cKDTree
        from sklearn.ensemble import RandomForestRegressor

        forest = RandomForestRegressor(n_estimators=self.trees, random_state=self.seed, n_jobs=1)
        predicted = forest.fit(X[labelled], interest).predict(X)
        distance = cKDTree(X[labelled]).query(X, k=1)[0]
        d0 = distance / distance.mean() if distance.mean() > 0 else distance
        f_u = self.min_score + 0.85 * predicted / MAX_INTEREST
        scaled = MAX_INTEREST * (anomaly - anomaly.min()) / max(np.ptp(anomaly), np.finfo(float).tiny)
        return scaled * np.tanh(np.exp(self.alpha * d0) - 1 + np.arctanh(f_u))


class GaussianProcessEI(Reranker):
    """Gaussian process on the labels, ranked by expected improvement (see the module doc)."""

    def __init__(self, components: int = 16, tradeoff: float = 0.5, prior: float = 1.0, seed: int = 0):
        self.components, self.tradeoff, self.prior, self.seed = components, tradeoff, prior, seed

    def _scores(self, X, anomaly, prior, labelled, interest):
        from scipy.stats import norm
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.gaussian_process import GaussianProcessRegressor
        from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel

        Z = _reduced(X, self.components, self.seed)
        length = _median_distance(Z, self.seed)
        # interest is an integer: its rounding alone has variance 1/12, so the label noise is never below that
        kernel = (ConstantKernel(1.0, (1e-2, 1e2)) * RBF(length, (length / 100, length * 100))
                  + WhiteKernel(1.0, (1 / 12, 1e1)))
        mean = self.prior * prior  # interest points: the anomaly percentile times `prior`
        process = GaussianProcessRegressor(kernel, normalize_y=False, random_state=self.seed)
        with warnings.catch_warnings():  # a handful of labels often puts a hyper-parameter on its bound
            warnings.simplefilter("ignore", ConvergenceWarning)
            process.fit(Z[labelled], interest - mean[labelled])
        residual, std = process.predict(Z, return_std=True)
        gain = mean + residual - interest.max() - self.tradeoff
        std = np.maximum(std, 1e-12)
        improvement = gain * norm.cdf(gain / std) + std * norm.pdf(gain / std)
        # where the improvement underflows to 0 the prior still orders objects (it is below 1e-12)
        return improvement + 1e-12 * prior


class LabelPropagation(Reranker):
    """Harmonic label propagation over the k-NN graph, added to the anomaly percentile (see the module doc)."""

    def __init__(self, neighbours: int = 10, prior_weight: float = 1.0, components: int = 16, seed: int = 0):
        self.neighbours, self.prior_weight, self.components, self.seed = neighbours, prior_weight, components, seed

    def _scores(self, X, anomaly, prior, labelled, interest):
        from scipy.sparse import diags
        from scipy.sparse.linalg import spsolve

        graph = _knn_graph(_reduced(X, self.components, self.seed), self.neighbours)
        spread = np.zeros(len(X))
        spread[labelled] = (interest - MAX_INTEREST / 2) / (MAX_INTEREST / 2)
        free = np.setdiff1d(np.arange(len(X)), labelled)
        if len(free):
            # each free object = weighted mean of its neighbours and of its dongle (0, weight prior_weight)
            within = graph[free][:, free]
            degree = np.asarray(graph[free].sum(axis=1)).ravel()
            system = (diags(degree + self.prior_weight) - within).tocsc()
            spread[free] = spsolve(system, graph[free][:, labelled] @ spread[labelled])
        return prior + spread


RERANKERS: dict[str, type[Reranker]] = {
    "astronomaly": NeighbourScore,
    "gp_ei": GaussianProcessEI,
    "propagation": LabelPropagation,
}


def reranker(method: str, seed: int = 0) -> Reranker:
    """A fresh estimator of a registered re-ranker with its default parameters."""
    return RERANKERS[known_method(method)](seed=seed)


def known_method(method: str) -> str:
    if method not in RERANKERS:
        raise FmbError(f"unknown re-ranker {method!r}: choose one of {', '.join(RERANKERS)}")
    return method


def _checked(X, anomaly, labelled_index, interest):
    X = np.asarray(X, dtype=np.float64)
    anomaly = np.asarray(anomaly, dtype=np.float64)
    labelled_index = np.asarray(labelled_index, dtype=np.int64).reshape(-1)
    interest = np.asarray(interest, dtype=np.float64).reshape(-1)
    if X.ndim != 2 or anomaly.shape != (len(X),):
        raise FmbError(f"re-ranking needs one anomaly score per row of X, got {anomaly.shape} for X {X.shape}")
    if len(labelled_index) != len(interest) or len(np.unique(labelled_index)) != len(labelled_index):
        raise FmbError("re-ranking needs one interest per labelled object, each object once")
    if len(labelled_index) and (labelled_index.min() < 0 or labelled_index.max() >= len(X)):
        raise FmbError(f"a labelled index is outside X's {len(X)} rows")
    if not np.all((interest >= 0) & (interest <= MAX_INTEREST)):
        raise FmbError(f"interest must lie in 0..{MAX_INTEREST:g}")
    # an object without a finite anomaly score is unranked in the plain order: it goes last here
    finite = np.isfinite(anomaly)
    floor = anomaly[finite].min() - 1 if finite.any() else 0.0
    return X, np.where(finite, anomaly, floor), labelled_index, interest


def _reduced(X: np.ndarray, components: int, seed: int) -> np.ndarray:
    """The first `components` principal components (embedding dimensions are commensurate: no scaling)."""
    from sklearn.decomposition import PCA

    count = min(components, *X.shape)
    return PCA(count, random_state=seed).fit_transform(X) if count < X.shape[1] else X - X.mean(axis=0)


def _median_distance(Z: np.ndarray, seed: int, sample: int = 1000) -> float:
    """The median distance between objects (of a seeded sample): the RBF length scale's usual start."""
    from scipy.spatial.distance import pdist

    rows = np.random.default_rng(seed).permutation(len(Z))[:sample]
    distances = pdist(Z[rows]) if len(rows) > 1 else np.ones(1)
    return float(np.median(distances)) or 1.0


def _knn_graph(Z: np.ndarray, neighbours: int):
    """Symmetric 0/1 adjacency: i ~ j when either is among the other's `neighbours` nearest."""
    from sklearn.neighbors import NearestNeighbors

    count = min(neighbours + 1, len(Z))
    adjacency = NearestNeighbors(n_neighbors=count).fit(Z).kneighbors_graph(mode="connectivity")
    adjacency.setdiag(0)
    adjacency.eliminate_zeros()
    return adjacency.maximum(adjacency.T).tocsr()


# -- pages and the discovery curve -------------------------------------------------------------------
def interleave_random(order: np.ndarray, page_size: int = DEFAULT_PAGE_SIZE, fraction: float = DEFAULT_RANDOM_FRACTION,
                      seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`order` cut into pages of `page_size`, each ending with round(fraction * page_size) objects (at
    least 1 when fraction > 0) drawn at random from those not shown yet; returns the new order and
    which of its entries were drawn at random."""
    if page_size < 1 or not 0 <= fraction <= 1:
        raise FmbError(f"pages need a size of at least 1 and a random fraction in 0..1, got {page_size}, {fraction}")
    order = np.asarray(order)
    per_page = max(1, round(fraction * page_size)) if fraction > 0 else 0
    rng = np.random.default_rng(seed)
    shown = np.zeros(len(order), dtype=bool)  # by position in `order`
    result, is_random, next_ranked = [], [], 0
    while len(result) < len(order):
        page_ranked = []
        while len(page_ranked) < page_size - per_page and next_ranked < len(order):
            if not shown[next_ranked]:
                page_ranked.append(next_ranked)
                shown[next_ranked] = True
            next_ranked += 1
        remaining = np.flatnonzero(~shown)
        drawn = rng.choice(remaining, size=min(per_page, len(remaining)), replace=False) if len(remaining) else []
        shown[drawn] = True
        result += [*page_ranked, *drawn]
        is_random += [False] * len(page_ranked) + [True] * len(drawn)
    return order[np.asarray(result, dtype=np.int64)], np.asarray(is_random, dtype=bool)


def discovery_curve(shown_ids_in_order, interest_by_id, threshold: int = 4) -> np.ndarray:
    """How many of the first 1, 2, ... N objects shown have an interest of at least `threshold`
    (objects without a label count as not interesting)."""
    interest = pd.Series(interest_by_id, dtype="float64")
    values = interest.reindex(pd.Index(list(shown_ids_in_order))).to_numpy()
    return np.cumsum(np.nan_to_num(values, nan=-np.inf) >= threshold)


# -- a run's re-ranked list -------------------------------------------------------------------------
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
    ranking fuses (each modality's combined score, the misalignment): how an object is odd, which
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


def rerank_loaded(inputs: RerankInputs, method: str, labels: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """(object_id, score, rank), best first by the ranking rule, of `method` fitted on `labels`
    (object_id, interest: `LabelStore.current()`)."""
    labelled, interest = labelled_positions(inputs, labels)
    scores = reranker(method, seed).fit(inputs.features, inputs.anomaly, labelled, interest).scores_
    frame = ranked(pd.DataFrame({"object_id": inputs.object_ids, "score": scores}), "score")
    return frame[["object_id", "score", "rank"]].reset_index(drop=True)


def rerank(config, model: str | None, ranking_column: str | None, method: str, labels: pd.DataFrame) -> pd.DataFrame:
    """The re-ranked list of a run's objects: `rerank_loaded` on `load_inputs`, seeded by the config."""
    return rerank_loaded(load_inputs(config, model, ranking_column), method, labels, config.seed)


def rerank_run(config, model: str | None = None, ranking: str | None = None, method: str | None = None,
               out: Path | None = None, at: float | None = None) -> dict:
    """`fmb rerank`: the run's labels (as they stood at unix time `at`, default now) re-rank its
    objects by `method` (default `DEFAULT_METHOD`); the list goes to `out` (default
    runs/<name>/app/rerank/<model>-<ranking>-<method>.parquet). Returns what was done: path, objects,
    labels used, method, model, ranking."""
    import pyarrow as pa

    from fmb.app.labels import COLUMNS, LabelStore
    from fmb.io import write_table

    method = known_method(method or DEFAULT_METHOD)  # before any loading
    database = config.layout.app.labels_db
    labels = LabelStore(database).current(at) if database.is_file() else pd.DataFrame(columns=list(COLUMNS))
    inputs = load_inputs(config, model, ranking)
    frame = rerank_loaded(inputs, method, labels, config.seed)
    path = out or config.layout.app.reranked(f"{inputs.model}-{inputs.ranking}-{method}")
    write_table(pa.Table.from_pandas(frame, preserve_index=False), path)
    return {"path": path, "objects": len(frame), "labels": len(labelled_positions(inputs, labels)[0]),
            "method": method, "model": inputs.model, "ranking": inputs.ranking}
