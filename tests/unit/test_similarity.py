"""Similarity index against brute-force numpy search, its persistence, and the analysis tasks on a planted run."""

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from fmb.analyze.similarity import SimilarityIndex, neighbour_ranks, similarity
from fmb.config import load_config
from fmb.data.tasks import index as index_data
from fmb.detect.scores import DEFAULT_RANKING
from fmb.embed import store
from fmb.errors import DataError, FmbError
from fmb.io import write_table
from fmb.layout import SimilarityFiles
from tests.conftest import tagged_row, write_rows


def clustered(n: int, dim: int, clusters: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    return (centres[rng.integers(0, clusters, n)] + 0.3 * rng.normal(size=(n, dim))).astype(np.float32)


def brute_force(vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(row positions, cosines) of the k most similar rows, by numpy alone."""
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    cosines = (queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ unit.T
    order = np.argsort(-cosines, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(cosines, order, axis=1)


@pytest.fixture
def object_ids() -> np.ndarray:
    return np.random.default_rng(1).permutation(5000)[:2000] * 1_000_003 + 39627007000000000  # unsorted, large


def test_exact_mode_equals_brute_force(object_ids):
    vectors = clustered(len(object_ids), 16, 20)
    queries = np.random.default_rng(2).normal(size=(50, 16)).astype(np.float32)
    index = SimilarityIndex(exact_max=10_000).build(object_ids, vectors)
    found, similarities = index.search(queries, 10)
    positions, cosines = brute_force(vectors, queries, 10)
    np.testing.assert_array_equal(found, object_ids[positions])
    np.testing.assert_allclose(similarities, cosines, atol=1e-5)


def test_compressed_mode_recall_on_clustered_data():
    vectors = clustered(20_000, 32, 60)
    object_ids = np.arange(20_000) + 7
    index = SimilarityIndex(exact_max=1000, nprobe=8).build(object_ids, vectors)
    assert index.lists_for(20_000) == 283 and index.index.ntotal == 20_000
    queries = vectors[:200] + np.random.default_rng(3).normal(0, 0.05, (200, 32)).astype(np.float32)
    found, similarities = index.search(queries, 10)
    positions, _ = brute_force(vectors, queries, 10)
    recall = np.mean([len(np.intersect1d(a, object_ids[b])) / 10 for a, b in zip(found, positions)])
    assert recall >= 0.9
    # the re-rank is exact: returned similarities are the true cosines of the returned objects
    _, exact = brute_force(vectors[found[0] - 7], queries[:1], 10)
    np.testing.assert_allclose(np.sort(similarities[0])[::-1], np.sort(exact[0])[::-1], atol=1e-5)


@pytest.mark.parametrize("exact_max", [10_000, 100])
def test_query_by_id_leaves_the_query_out(object_ids, exact_max):
    vectors = clustered(len(object_ids), 16, 20)
    index = SimilarityIndex(exact_max=exact_max, nprobe=64).build(object_ids, vectors)
    asked = object_ids[[5, 17, 1999]]
    found, similarities = index.query_ids(asked, 5)
    assert found.shape == similarities.shape == (3, 5)
    assert not (found == asked[:, None]).any()
    positions, cosines = brute_force(vectors, vectors[[5, 17, 1999]], 6)
    np.testing.assert_array_equal(found, object_ids[positions[:, 1:]])
    np.testing.assert_allclose(similarities, cosines[:, 1:], atol=1e-5)


def test_an_identical_twin_is_a_neighbour_not_the_query():
    vectors = clustered(100, 8, 4)
    vectors[42] = vectors[7]
    found, similarities = SimilarityIndex().build(np.arange(100), vectors).query_ids([7, 42], 3)
    assert found[0, 0] == 42 and found[1, 0] == 7
    np.testing.assert_allclose(similarities[:, 0], 1.0, atol=1e-6)


def test_unknown_query_id_and_wrong_dimension_are_clear_errors(object_ids):
    index = SimilarityIndex().build(object_ids, clustered(len(object_ids), 16, 20))
    with pytest.raises(FmbError, match="object 12 is not in this similarity index"):
        index.query_ids([object_ids[0], 12], 3)
    with pytest.raises(FmbError, match="8 dimensions, the index 16"):
        index.search(np.ones(8), 3)
    with pytest.raises(DataError, match="^query vector is zero or not finite"):
        index.search(np.zeros(16), 3)


@pytest.mark.parametrize("exact_max", [10_000, 100])
def test_save_load_round_trip_gives_identical_results(tmp_path, object_ids, exact_max):
    vectors = clustered(len(object_ids), 16, 20)
    built = SimilarityIndex(exact_max=exact_max).build(object_ids, vectors)
    built.save(tmp_path / "index")
    loaded = SimilarityIndex.load(tmp_path / "index")
    queries = clustered(30, 16, 20, seed=9)
    for got, want in zip(loaded.search(queries, 8), built.search(queries, 8)):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(loaded.query_ids(object_ids[:4], 3)[0], built.query_ids(object_ids[:4], 3)[0])
    assert loaded.built_from == built.built_from == built.fingerprint(object_ids, vectors)


def test_fingerprint_changes_with_ids_vectors_and_layout(object_ids):
    vectors = clustered(len(object_ids), 16, 20)
    index = SimilarityIndex(exact_max=10_000)
    reference = index.fingerprint(object_ids, vectors)
    changed = vectors.copy()
    changed[1234, 3] += 1e-3
    assert index.fingerprint(object_ids, changed) != reference
    assert index.fingerprint(object_ids[::-1], vectors) != reference
    assert SimilarityIndex(exact_max=100).fingerprint(object_ids, vectors) != reference
    assert index.fingerprint(object_ids, vectors.astype(np.float64)) == reference  # indexed as float32 either way


def test_mismatched_or_incomplete_files_are_detected(tmp_path, object_ids):
    directory = SimilarityIndex().build(object_ids, clustered(len(object_ids), 16, 20)).save(tmp_path / "index")
    _, ids_file, meta_file = SimilarityFiles.index_files(directory)
    with ids_file.open("wb") as handle:
        np.save(handle, object_ids[::-1])  # same length, other order: would mis-pair every neighbour
    with pytest.raises(FmbError, match="not the id list"):
        SimilarityIndex.load(directory)
    meta_file.unlink()
    with pytest.raises(FmbError, match="no complete similarity index"):
        SimilarityIndex.load(directory)


@pytest.mark.parametrize("bad", [0.0, np.nan, np.inf])
def test_zero_or_non_finite_vector_names_the_object(object_ids, bad):
    vectors = clustered(len(object_ids), 16, 20)
    vectors[321] = 0.0 if bad == 0.0 else vectors[321]
    vectors[321, 4] = bad
    with pytest.raises(DataError, match=f"object {object_ids[321]}: .*zero or not finite") as caught:
        SimilarityIndex().build(object_ids, vectors)
    assert caught.value.object_id == object_ids[321]


def test_duplicate_ids_and_shape_mismatch_are_refused():
    with pytest.raises(DataError, match="object 3: appears twice"):
        SimilarityIndex().build([1, 3, 3], np.ones((3, 4)))
    with pytest.raises(FmbError, match="need N ids"):
        SimilarityIndex().build([1, 2], np.ones((3, 4)))


# -- the tasks on a planted run ------------------------------------------------------------------------
N, ODD = 300, [297, 298, 299]  # ten clusters of ~30 objects, and three odd objects together far away
MODEL = "pixels"  # the run's one model (a registered name; the vectors are planted)
SETTINGS = ["data.source=survey", f"run.models=[{MODEL}]", "analyze.similarity.k=2", "analyze.similarity.n_examples=2"]


def cluster_of(object_id: int) -> int:
    return 10 if object_id in ODD else object_id // 30


def planted_vectors(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(11, 8)) * 5
    return (centres[[cluster_of(i) for i in range(N)]] + 0.1 * rng.normal(size=(N, 8))).astype(np.float32)


def write_embeddings(config, vectors: np.ndarray) -> None:
    files = config.layout.embeddings(MODEL)
    files.dir.mkdir(parents=True, exist_ok=True)
    files.manifest.unlink(missing_ok=True)
    store.write_embeddings(files.dir, {"model": MODEL}, np.arange(N), {"image": vectors[:, ::-1], "joint": vectors})


@pytest.fixture
def planted(project: Path):
    write_rows(project / "survey" / "part-0.parquet", [tagged_row(i) for i in range(N)], row_group_size=50)
    config = load_config(root=project, sets=SETTINGS)
    index_data(config)
    write_embeddings(config, planted_vectors())
    fused = np.arange(N) / N  # the odd objects are the top anomalies; object 0 has no score
    fused[0] = np.nan
    write_table(pa.table({"object_id": np.arange(N), DEFAULT_RANKING: fused}), config.layout.scores.table(MODEL))
    return config


def test_similarity_task_writes_neighbours_and_figures(planted):
    messages = []
    result = similarity(planted, modality="joint", log=messages.append)
    table = pd.read_csv(result["neighbours"])
    assert result["queries"] == {MODEL: [299, 298]}  # top of the default ranking
    assert list(table.columns) == ["query_id", "model", "modality", "rank", "neighbour_id", "similarity"]
    assert len(table) == 2 * 2 and (table["rank"] == [1, 2, 1, 2]).all()  # queries x k
    assert set(table.neighbour_id) <= set(ODD) and not (table.neighbour_id == table.query_id).any()
    examples = planted.layout.similarity
    assert result["neighbours"] == examples.neighbours
    assert result["figures"] == [examples.example(MODEL, "joint", 299), examples.example(MODEL, "joint", 298)]
    assert all(p.stat().st_size > 10_000 for p in result["figures"])
    assert sum("building it" in m for m in messages) == 1

    explicit = similarity(planted, queries=[100], log=messages.append)
    table = pd.read_csv(explicit["neighbours"])
    assert list(table.modality) == ["image", "image", "joint", "joint"] and (table.neighbour_id // 30 == 3).all()
    assert sum("building it" in m for m in messages) == 2  # the joint index was reused, the image one built
    assert explicit["figures"] == [examples.example(MODEL, "image", 100), examples.example(MODEL, "joint", 100)]


def test_saved_index_is_reused_until_the_embeddings_change(planted):
    planted.layout.data.index.unlink()  # no data index: neighbours without figures
    assert similarity(planted, queries=[5], log=lambda _: None)["figures"] == []
    _, _, meta = SimilarityFiles.index_files(planted.layout.similarity.index_dir(MODEL, "joint"))
    stamp = meta.stat().st_mtime_ns
    messages = []
    similarity(planted, queries=[5], log=messages.append)
    assert meta.stat().st_mtime_ns == stamp and not any("build" in m for m in messages)

    moved = planted_vectors()
    moved[5] = moved[65]  # object 5 now sits in cluster 2
    write_embeddings(planted, moved)
    messages.clear()
    table = pd.read_csv(similarity(planted, queries=[5], log=messages.append)["neighbours"])
    assert any("changed since the saved index; rebuilding" in m for m in messages)
    assert (table[table.modality == "joint"].neighbour_id // 30 == 2).all()


def test_vector_query_needs_one_model_and_modality(planted):
    centre = planted_vectors()[30:60].mean(axis=0)
    with pytest.raises(FmbError, match="exactly one model and a modality"):
        similarity(planted, vector=centre)
    result = similarity(planted, vector=centre, models=[MODEL], modality="joint")
    table = pd.read_csv(result["neighbours"])
    assert table.query_id.isna().all() and (table.neighbour_id // 30 == 1).all()
    assert result["figures"] == [planted.layout.similarity.example(MODEL, "joint", "vector")]


def test_bad_embedding_is_reported_with_model_modality_and_object(planted):
    broken = planted_vectors()
    broken[77] = 0
    write_embeddings(planted, broken)
    with pytest.raises(DataError, match=f"object 77, field {MODEL} joint embedding: .*zero"):
        similarity(planted, queries=[5], modality="joint")


def test_neighbour_ranks_of_planted_odd_group(planted):
    result = neighbour_ranks(planted)
    summary = result["summary"].set_index("modality")
    # 299 scored objects: the top 1 % is the 3 odd ones, and each one's 2 neighbours are the other two
    assert summary.loc["joint", "share_top"] == 1.0 and summary.loc["joint", "queries"] == 3
    assert summary.loc["joint", "expected_share"] == pytest.approx(2 / 298)
    neighbours = pd.read_csv(result["neighbours"])
    assert set(neighbours.neighbour_rank) == {1, 2, 3} and (neighbours.neighbour_percentile <= 1.01).all()
    assert result["figure"].stat().st_size > 10_000


def test_neighbour_ranks_needs_scores(planted):
    planted.layout.scores.table(MODEL).unlink()
    with pytest.raises(FmbError, match="no model has both embeddings and scores"):
        neighbour_ranks(planted, log=lambda _: None)
