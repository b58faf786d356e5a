"""`fmb analyze similarity` and the neighbour-rank analysis: cosine nearest neighbours of the embeddings.

The original (reference_fmb.md §7.2–7.3) L2-normalised a whole embedding file for every run, scanned
all of it for every query, and found each sample to draw by a linear scan of the dataset. Here:

* `SimilarityIndex` holds one (model, modality) embedding matrix in faiss. Cosine similarity is the
  inner product of L2-normalised float32 rows. Up to `exact_max` objects the index is exact
  (`IndexFlatIP`: one query reads all N x D floats, 0.22 s at 1M x 768 on this machine, so ~20 ms
  at the default 100k). Beyond, it is an inverted file over 8-bit scalar-quantised codes with an
  exact re-rank:
    - 2·sqrt(N) lists, k-means (spherical, 10 iterations, seeded) on a seeded sample of 40 rows
      per list;
    - a query visits `nprobe` lists and scores their rows on the 8-bit codes (4x fewer bytes to
      read than float32: reading is what a single query spends its time on);
    - the best `RERANK_FACTOR`·k of those are re-scored exactly on the float32 rows, so returned
      similarities are exact cosines and quantisation never reorders the final list.
  Measured on 1M x 768 clustered embeddings, 2 shared cores (benchmarks/similarity.py, RESULTS.md):
  nprobe 32 gives recall@10 0.974 at 7.0 ms p50 / 9.9 ms p95 per single query (exact: 219 ms),
  built in ~2 min. With sqrt(N) lists each visited list is twice as long (10 ms p50 at nprobe 32);
  4·sqrt(N) lists would shorten the scan but cost ~4x the k-means time (twice the centroids, each
  fitted on twice the rows) for a scan already inside the goal. HNSW was not tried: its build
  inserts every row into a graph one by one, slow over 1M x 768 on two cores, and its memory
  holds the full vectors plus the links. Memory: 4 + 1 bytes per value (floats for the re-rank,
  codes for the scan), 3.9 GB at 1M x 768.
* The object ids are saved beside the faiss file (the index labels are row positions into them);
  a JSON records the ids' hash, the sizes, and a fingerprint of the ids, the vectors and the build
  settings. Loading checks that the three files belong together; the task rebuilds an index only
  when the fingerprint of the current embeddings differs.
* Samples to draw come from the data index (`open_fetcher`), never a scan.

Outputs (runs/<name>/analysis/similarity/): index/<model>/<modality>/, neighbours.csv,
figures/<model>_<modality>_<query>.png, neighbour_ranks.csv, neighbour_ranks_summary.csv and
neighbour_ranks.png.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import faiss
import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from fmb.config import ResolvedConfig
from fmb.detect.scores import frame_headline, ranks_by_id, score_tables
from fmb.embed.store import embedded_ids, embedded_models, embedding_manifests, load_embeddings
from fmb.errors import DataError, FmbError
from fmb.io import atomic_path, write_csv, write_json
from fmb.layout import SimilarityFiles
from fmb.stage import Stage

BATCH_ROWS = 16_384  # rows checked, normalised and added at a time: a build holds at most this much extra
LISTS_PER_SQRT_N = 2.0
TRAIN_ROWS_PER_LIST = 40  # faiss asks for at least 39 points per k-means centroid
RERANK_FACTOR = 4
TOP_FRACTION = 0.01  # the neighbour-rank analysis asks about the top 1 % anomalies
HISTOGRAM_BINS = 50


class SimilarityIndex:
    """Cosine nearest neighbours of one embedding matrix (see the module docstring for the layout)."""

    def __init__(self, exact_max: int = 100_000, nprobe: int = 32, seed: int = 42):
        self.exact_max = exact_max
        self.nprobe = nprobe
        self.seed = seed
        self.ids: np.ndarray | None = None
        self.index: faiss.Index | None = None
        self.built_from: str | None = None
        self._order: np.ndarray | None = None  # argsort of ids, for id -> row lookups

    # -- layout ------------------------------------------------------------------------------------
    def lists_for(self, n: int) -> int:
        """Inverted lists for `n` rows; 0 means exact (flat)."""
        return 0 if n <= self.exact_max else max(1, round(LISTS_PER_SQRT_N * np.sqrt(n)))

    def fingerprint(self, ids: np.ndarray, vectors: np.ndarray) -> str:
        """Hash of the ids, the vectors and what shapes the index: equal means the same index is built."""
        ids, vectors = _checked_shapes(ids, vectors)
        digest = hashlib.sha256(json.dumps({"lists": self.lists_for(len(ids)), "seed": self.seed,
                                            "shape": list(vectors.shape)}).encode())
        digest.update(ids)
        for _, batch in _batches(vectors):
            digest.update(batch)
        return digest.hexdigest()

    # -- build and search --------------------------------------------------------------------------
    def build(self, ids, vectors) -> SimilarityIndex:
        """Index `vectors` (N, D) for the object `ids` (N,); raises DataError naming a bad object."""
        ids, vectors = _checked_shapes(ids, vectors)
        duplicated = ids[np.nonzero(np.diff(np.sort(ids)) == 0)[0]]
        if len(duplicated):
            raise DataError("appears twice among the vectors to index", object_id=int(duplicated[0]))
        lists = self.lists_for(len(ids))
        index = faiss.IndexFlatIP(vectors.shape[1]) if lists == 0 else self._trained_ivf(ids, vectors, lists)
        for start, batch in _batches(vectors):
            index.add(unit_rows(batch, ids[start:start + len(batch)]))
        self.index, self.ids = index, ids
        self.built_from = self.fingerprint(ids, vectors)
        self._order = None
        return self

    def _trained_ivf(self, ids: np.ndarray, vectors: np.ndarray, lists: int) -> faiss.Index:
        dim = vectors.shape[1]
        coarse = faiss.IndexIVFScalarQuantizer(faiss.IndexFlatIP(dim), dim, lists, faiss.ScalarQuantizer.QT_8bit,
                                               faiss.METRIC_INNER_PRODUCT)
        coarse.cp.seed = self.seed
        rows = np.random.default_rng(self.seed).choice(len(ids), min(len(ids), TRAIN_ROWS_PER_LIST * lists), replace=False)
        rows.sort()  # reads memory-mapped or chunked inputs in order
        coarse.train(unit_rows(np.asarray(vectors[rows], np.float32), ids[rows]))
        index = faiss.IndexRefineFlat(coarse)
        index.k_factor = RERANK_FACTOR
        return index

    def search(self, vectors, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(object ids, cosine similarities), each (Q, min(k, N)), best first, for raw query vectors."""
        index = self._built()
        queries = unit_rows(np.atleast_2d(np.asarray(vectors, np.float32)))
        if queries.shape[1] != index.d:
            raise FmbError(f"query vectors have {queries.shape[1]} dimensions, the index {index.d}")
        if self.lists_for(index.ntotal):
            faiss.extract_index_ivf(index).nprobe = self.nprobe
        similarities, labels = index.search(queries, min(k, index.ntotal))
        # faiss pads with label -1 when it finds fewer than k; never let -1 index the ids (it would name the last object)
        found = np.where(labels >= 0, self.ids[np.maximum(labels, 0)], -1)
        return found, np.where(labels >= 0, similarities, np.nan).astype(np.float32)

    def query_ids(self, object_ids, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest neighbours of indexed objects, each object itself left out."""
        object_ids = np.asarray(object_ids, np.int64).reshape(-1)
        vectors = self._built().reconstruct_batch(self._positions(object_ids))
        found, similarities = self.search(vectors, k + 1)
        itself = found == object_ids[:, None]
        itself[~itself.any(axis=1), -1] = True  # not among the k + 1 (an approximate miss, or exact duplicates): drop the last
        keep = ~itself
        return found[keep].reshape(len(found), -1), similarities[keep].reshape(len(found), -1)

    def _positions(self, object_ids: np.ndarray) -> np.ndarray:
        if self._order is None:
            self._order = np.argsort(self.ids, kind="stable")
        where = np.searchsorted(self.ids, object_ids, sorter=self._order).clip(0, len(self.ids) - 1)
        positions = self._order[where]
        missing = object_ids[self.ids[positions] != object_ids]
        if len(missing):
            raise FmbError(f"object {missing[0]} is not in this similarity index ({len(missing)} of the ids asked)")
        return positions

    def _built(self) -> faiss.Index:
        if self.index is None:
            raise FmbError("the similarity index is empty: build or load it first")
        return self.index

    # -- persistence -------------------------------------------------------------------------------
    def save(self, directory: Path) -> Path:
        """Write ids, faiss index and meta.json (last) under `directory`, each atomically."""
        index = self._built()
        directory = Path(directory)
        index_file, ids_file, meta_file = SimilarityFiles.index_files(directory)
        # Without meta.json a directory holds no index: a save killed half-way can never pair new files with old ones.
        meta_file.unlink(missing_ok=True)
        with atomic_path(ids_file) as temporary, temporary.open("wb") as handle:
            np.save(handle, self.ids)
        with atomic_path(index_file) as temporary:
            faiss.write_index(index, str(temporary))
        meta = {"objects": len(self.ids), "dim": index.d, "lists": self.lists_for(len(self.ids)),
                "exact_max": self.exact_max, "seed": self.seed, "built_from": self.built_from,
                "ids_sha256": hashlib.sha256(self.ids).hexdigest(), "faiss_version": faiss.__version__}
        write_json(meta, meta_file)
        return directory

    @classmethod
    def load(cls, directory: Path, nprobe: int = 32) -> SimilarityIndex:
        """The index saved in `directory`; FmbError when absent or when its files do not belong together."""
        index_file, ids_file, meta_file = SimilarityFiles.index_files(Path(directory))
        if not all(path.is_file() for path in (meta_file, ids_file, index_file)):
            raise FmbError(f"no complete similarity index in {directory}")
        try:  # a damaged meta.json or ids.npy is refused in one line (callers rebuild the index)
            meta = json.loads(meta_file.read_text())
            ids = np.load(ids_file, allow_pickle=False)
            if hashlib.sha256(ids).hexdigest() != meta["ids_sha256"] or len(ids) != meta["objects"]:
                raise FmbError(f"{ids_file} is not the id list this index was saved with")
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise FmbError(f"similarity index in {directory} cannot be read: {error}") from None
        try:
            index = faiss.read_index(str(index_file))
        except RuntimeError as error:
            raise FmbError(f"{index_file} cannot be read: {error}") from None
        if index.ntotal != len(ids) or index.d != meta["dim"]:
            raise FmbError(f"{index_file} holds {index.ntotal} x {index.d} vectors, "
                           f"its ids and meta.json say {len(ids)} x {meta['dim']}")
        loaded = cls(exact_max=meta["exact_max"], nprobe=nprobe, seed=meta["seed"])
        loaded.index, loaded.ids, loaded.built_from, loaded._order = index, ids, meta["built_from"], None
        return loaded


def unit_rows(vectors: np.ndarray, ids: np.ndarray | None = None) -> np.ndarray:
    """`vectors` scaled to unit L2 norm (a new array); DataError naming the first zero or non-finite row."""
    norms = np.linalg.norm(vectors, axis=1)
    bad = np.flatnonzero(~np.isfinite(norms) | (norms == 0))
    if len(bad):
        row = int(bad[0])
        what, object_id = ("query vector", None) if ids is None else ("embedding vector", int(ids[row]))
        raise DataError(f"{what} is zero or not finite: its cosine similarity is undefined", object_id=object_id)
    return vectors / norms[:, None]


def _checked_shapes(ids, vectors) -> tuple[np.ndarray, np.ndarray]:
    ids, vectors = np.ascontiguousarray(ids, dtype=np.int64), np.asarray(vectors)
    if vectors.ndim != 2 or ids.ndim != 1 or len(ids) != len(vectors) or len(ids) == 0:
        raise FmbError(f"need N ids and an (N, D) matrix with N > 0, got {ids.shape} ids and {vectors.shape} vectors")
    return ids, vectors


def _batches(vectors: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, C-contiguous float32 rows) in order: the same bytes however `vectors` is stored."""
    for start in range(0, len(vectors), BATCH_ROWS):
        yield start, np.ascontiguousarray(vectors[start:start + BATCH_ROWS], dtype=np.float32)


# -- the analysis tasks --------------------------------------------------------------------------------
def current_index(config: ResolvedConfig, model: str, modality: str, ids: np.ndarray, vectors: np.ndarray,
                  log: Callable[[str], None] = print) -> SimilarityIndex:
    """The saved index of (model, modality) if it was built from exactly these embeddings, else a new one (saved)."""
    settings = config.analyze.similarity
    directory = config.layout.similarity.index_dir(model, modality)
    wanted = SimilarityIndex(exact_max=settings.exact_max, nprobe=settings.nprobe, seed=config.seed)
    expected = wanted.fingerprint(ids, vectors)
    try:
        saved = SimilarityIndex.load(directory, nprobe=settings.nprobe)
        if saved.built_from == expected:
            return saved
        log(f"{model}/{modality}: embeddings or settings changed since the saved index; rebuilding")
    except FmbError as reason:
        log(f"{model}/{modality}: {reason}; building it")
    try:
        wanted.build(ids, vectors)
    except DataError as error:
        raise DataError(error.reason, object_id=error.object_id, field=f"{model} {modality} embedding") from None
    wanted.save(directory)
    return wanted


def similarity(config: ResolvedConfig, queries: list[int] | None = None, vector=None,
               log: Callable[[str], None] = print, *, models: list[str] | None = None,
               modality: str | None = None, out: SimilarityFiles | None = None) -> dict:
    """Nearest neighbours of query objects (or of one raw `vector`, given one model and a modality).

    Queries: `queries`, else `analyze.similarity.queries`, else each model's top `n_examples`
    anomalies (by `anomaly_ranks` of its scores file), else its first ids. Writes neighbours.csv and
    one gallery per (model, modality, query).
    """
    settings = config.analyze.similarity
    models = _models(config, models)
    if vector is not None and (len(models) != 1 or modality is None):
        raise FmbError("a vector query needs exactly one model and a modality")
    tables, asked_by_model = [], {}
    for model in models:
        ids, matrices = _embeddings(config, model, modality)
        asked = None if vector is not None else _queries(config, model, ids, queries or settings.queries)
        asked_by_model[model] = [] if asked is None else asked.tolist()
        for name, vectors in matrices.items():
            index = current_index(config, model, name, ids, vectors, log)
            if vector is None:
                found, similarities = index.query_ids(asked, settings.k)
            else:
                found, similarities = index.search(vector, settings.k)
            tables.append(neighbour_table(model, name, asked, found, similarities))
            log(f"{model}/{name}: {settings.k} neighbours of {len(found)} queries")
    table = pd.concat(tables, ignore_index=True)
    out = out or config.layout.similarity
    write_csv(table, out.neighbours, index=False)
    figures = _draw_neighbours(config, table, out, log)
    return {"neighbours": out.neighbours, "figures": figures, "queries": asked_by_model}


def neighbour_ranks(config: ResolvedConfig, models: list[str] | None = None, score: str | None = None,
                    log: Callable[[str], None] = print) -> dict:
    """Where the k nearest neighbours of a model's top-1 % anomalies fall in that same anomaly ranking.

    For each model with scores and each modality: neighbour percentiles (rank / N · 100, 0 = most
    anomalous) and the share of neighbours in the top 1 %, against the share expected by chance,
    (n_top - 1) / (N - 1) (the query itself is one of the n_top and is never its own neighbour).
    """
    k = config.analyze.similarity.k
    tables, summaries = [], []
    tables_of = score_tables(config)
    for model in _models(config, models):
        if model not in tables_of:
            log(f"{model}: no scores; skipped")
            continue
        column, ranks = anomaly_ranks(pq.read_table(tables_of[model]).to_pandas(), score, config.detect.fusion_method)
        ids, matrices = _embeddings(config, model, None)
        n_top = max(1, round(TOP_FRACTION * len(ranks)))
        top = ranks.index[ranks <= n_top].intersection(ids).to_numpy()
        for name, vectors in matrices.items():
            found, similarities = current_index(config, model, name, ids, vectors, log).query_ids(top, k)
            table = neighbour_table(model, name, top, found, similarities)
            table.insert(2, "score", column)
            table["neighbour_rank"] = ranks.reindex(table.neighbour_id).to_numpy()
            table["neighbour_percentile"] = 100 * table.neighbour_rank / len(ranks)
            tables.append(table)
            summaries.append(_rank_summary(table, n_top, len(ranks)))
            log(f"{model}/{name}: {summaries[-1]['share_top']:.1%} of the neighbours of the top {n_top} "
                f"by {column} are in the top 1 % (chance {summaries[-1]['expected_share']:.1%})")
    if not tables:
        raise FmbError("no model has both embeddings and scores; run `fmb detect` first")
    out = config.layout.similarity
    neighbours, summary = pd.concat(tables, ignore_index=True), pd.DataFrame(summaries)
    write_csv(neighbours, out.neighbour_ranks, index=False)
    write_csv(summary, out.neighbour_ranks_summary, index=False)
    _draw_rank_histograms(neighbours, summary, out.neighbour_ranks_plot)
    return {"summary": summary, "neighbours": out.neighbour_ranks, "figure": out.neighbour_ranks_plot}


def anomaly_ranks(scores: pd.DataFrame, column: str | None = None, method: str = "flow") -> tuple[str, pd.Series]:
    """(score column, rank by object id: 1 = most anomalous) over the objects with a finite score.

    Default column: the default ranking (`fmb.detect.scores.headline`); ranks follow the one ranking rule.
    """
    chosen = frame_headline(scores, column, method)
    if chosen is None or (column and chosen != column):
        raise FmbError(f"no usable score column {column or ''}; the scores file has {list(scores.columns)}")
    return chosen, ranks_by_id(scores, chosen)


def neighbour_table(model: str, modality: str, query_ids, found: np.ndarray, similarities: np.ndarray) -> pd.DataFrame:
    """Long table: query_id (NA for a raw vector), model, modality, rank (1 = nearest), neighbour_id, similarity."""
    queries, k = found.shape
    query_column = pd.array(np.repeat(query_ids, k) if query_ids is not None else [pd.NA] * found.size, dtype="Int64")
    return pd.DataFrame({"query_id": query_column, "model": model, "modality": modality,
                         "rank": np.tile(np.arange(1, k + 1), queries), "neighbour_id": found.reshape(-1),
                         "similarity": similarities.reshape(-1)})


def _models(config: ResolvedConfig, models: list[str] | None) -> list[str]:
    available = embedded_models(config)
    missing = sorted(set(models or []) - set(available))
    if missing:
        raise FmbError(f"no embeddings for {missing}; available: {available}")
    if not available:
        raise FmbError("no embeddings to search; run `fmb embed MODEL` first")
    return models or available


def _embeddings(config: ResolvedConfig, model: str, modality: str | None) -> tuple[np.ndarray, dict]:
    ids, matrices = load_embeddings(config.layout.embeddings(model).dir)
    if modality is None:
        return ids, matrices
    if modality not in matrices:
        raise FmbError(f"{model} has no {modality} embeddings (it has {sorted(matrices)})")
    return ids, {modality: matrices[modality]}


def _queries(config: ResolvedConfig, model: str, ids: np.ndarray, asked: list[int]) -> np.ndarray:
    if asked:
        missing = sorted(set(asked) - set(ids.tolist()))
        if missing:
            raise FmbError(f"object {missing[0]} has no {model} embeddings ({len(missing)} of the queries)")
        return np.asarray(asked, np.int64)
    count = config.analyze.similarity.n_examples
    scores_path = score_tables(config).get(model)
    if scores_path is None:
        return ids[:count]
    _, ranks = anomaly_ranks(pq.read_table(scores_path).to_pandas(), method=config.detect.fusion_method)
    return ranks[ranks.index.isin(ids)].nsmallest(count).index.to_numpy(np.int64)


def _rank_summary(table: pd.DataFrame, n_top: int, n_scored: int) -> dict:
    scored = table.neighbour_rank.dropna()
    share = float((scored <= n_top).mean()) if len(scored) else np.nan
    expected = (n_top - 1) / (n_scored - 1) if n_scored > 1 else np.nan
    return {"model": table.model.iat[0], "modality": table.modality.iat[0], "score": table.score.iat[0],
            "queries": table.query_id.nunique(), "neighbours_scored": len(scored), "share_top": share,
            "expected_share": expected, "enrichment": share / expected if expected else np.nan,
            "median_percentile": float(table.neighbour_percentile.median())}


def _draw_neighbours(config: ResolvedConfig, table: pd.DataFrame, out: SimilarityFiles, log) -> list[Path]:
    """One gallery per (model, modality, query): the query (when it is an object) then its neighbours."""
    from fmb.data.tasks import open_fetcher
    from fmb.viz.gallery import draw_gallery

    try:
        fetcher = open_fetcher(config)
    except FmbError as reason:
        log(f"figures skipped: {reason}")
        return []
    wanted = pd.unique(pd.concat([table.query_id.dropna(), table.neighbour_id[table.neighbour_id >= 0]]).astype(np.int64))
    samples = dict(zip(wanted.tolist(), fetcher.samples(wanted.tolist())))
    paths = []
    for (model, modality, query), group in table.groupby(["model", "modality", "query_id"], dropna=False, sort=False):
        cells = [] if pd.isna(query) else [(int(query), "query", None)]
        cells += [(int(row.neighbour_id), f"#{row.rank}", row.similarity) for row in group.itertuples() if row.neighbour_id >= 0]
        drawable = [(samples[i], _title(samples[i], label, similarity)) for i, label, similarity in cells if samples[i] is not None]
        if len(drawable) < len(cells):
            log(f"{model}/{modality}: {len(cells) - len(drawable)} objects fail their checks and are left out of the figure")
        name = "vector" if pd.isna(query) else str(int(query))
        subject = "a query vector" if pd.isna(query) else f"object {name}"
        path = out.example(model, modality, name)
        paths.append(draw_gallery([s for s, _ in drawable], [t for _, t in drawable], path, columns=4,
                                  suptitle=f"{model} · {modality}: nearest neighbours of {subject}"))
    return paths


def _title(sample, label: str, similarity: float | None) -> str:
    text = f"{label}  {sample.object_id}  z={sample.redshift:.3f}"
    if similarity is None:
        return text
    # embeddings sharing a strong common direction put every neighbour at cos = 1.000 to three decimals
    return f"{text}  cos={similarity:.3f}" if similarity < 0.999 else f"{text}  1-cos={1 - similarity:.1e}"


def _draw_rank_histograms(neighbours: pd.DataFrame, summary: pd.DataFrame, path: Path) -> None:
    from fmb.viz.style import fmb_style, save_figure

    models, modalities = list(summary.model.unique()), list(summary.modality.unique())
    with fmb_style():
        import matplotlib.pyplot as plt

        figure, axes = plt.subplots(len(models), len(modalities), squeeze=False, sharex=True,
                                    figsize=(4.2 * len(modalities), 2.8 * len(models) + 0.6))
        for axis in axes.flat:
            axis.set_visible(False)
        for row in summary.itertuples():
            axis = axes[models.index(row.model), modalities.index(row.modality)]
            axis.set_visible(True)
            values = neighbours.loc[(neighbours.model == row.model) & (neighbours.modality == row.modality), "neighbour_percentile"]
            axis.hist(values.dropna(), bins=HISTOGRAM_BINS, range=(0, 100), color="C0")
            axis.set_title(f"{row.model} / {row.modality}", fontsize=9)
            axis.text(0.97, 0.93, f"top 1 %: {row.share_top:.1%}\nchance: {row.expected_share:.1%}",
                      transform=axis.transAxes, ha="right", va="top", fontsize=8)
        for axis in axes[-1]:
            axis.set_xlabel("neighbour percentile (0 = most anomalous)")
        for axis in axes[:, 0]:
            axis.set_ylabel("neighbours")
        figure.suptitle(f"Nearest neighbours of the top {TOP_FRACTION:.0%} anomalies ({summary.score.iat[0]})")
        save_figure(figure, path)


def _similarity_action(config: ResolvedConfig, log: Callable[[str], None]) -> dict:
    neighbour_ranks(config, log=log)
    return similarity(config, log=log)


def _similarity_inputs(config: ResolvedConfig) -> list[Path]:
    return embedding_manifests(config) + list(score_tables(config).values())


def check_similarity(config: ResolvedConfig) -> None:
    """Before anything is written (the run's remembered settings among it): every query object asked
    for has each model's embeddings. A query the survey lacks would otherwise fail the stage and stay
    in the run's settings, failing every later `fmb run` on it."""
    asked = config.analyze.similarity.queries
    for model in _models(config, None) if asked else []:
        _queries(config, model, embedded_ids(config.layout.embeddings(model).dir), asked)


SIMILARITY = Stage("similarity", _similarity_action, ("analyze.similarity", "run.models", "detect.fusion_method"),
                   inputs=_similarity_inputs, outputs=lambda config: [config.layout.similarity.dir], after=("detect",),
                   check=check_similarity)
