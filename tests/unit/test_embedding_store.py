"""Loading embedding parts: empty units, duplicate ids and missing parts give results or clear errors."""

from pathlib import Path

import numpy as np
import pytest

from fmb.embed import store
from fmb.errors import FmbError
from fmb.layout import EmbeddingFiles


def parts(directory: Path, units: list[tuple[np.ndarray, dict]]) -> None:
    manifest = store.Manifest.open(directory, {"model": "test"})
    for unit_id, (ids, matrices) in enumerate(units):
        directory.mkdir(parents=True, exist_ok=True)
        store.write_part(EmbeddingFiles(directory).part(unit_id), ids, matrices)
        manifest.add(unit_id, len(ids), [])
    manifest.merge()


def test_a_unit_with_no_usable_object_is_skipped_when_loading(tmp_path: Path):
    parts(tmp_path, [(np.arange(3), {"image": np.ones((3, 2))}), (np.array([], np.int64), {}),
                     (np.arange(3, 5), {"image": np.zeros((2, 2))})])
    ids, matrices = store.load_embeddings(tmp_path)
    np.testing.assert_array_equal(ids, np.arange(5))
    assert matrices["image"].shape == (5, 2)


def test_duplicate_ids_across_parts_are_refused(tmp_path: Path):
    parts(tmp_path, [(np.arange(3), {"image": np.ones((3, 2))}), (np.array([2, 7]), {"image": np.zeros((2, 2))})])
    with pytest.raises(FmbError, match="object id 2 appears 2 times"):
        store.load_embeddings(tmp_path)


def test_a_missing_part_is_a_clear_error(tmp_path: Path):
    parts(tmp_path, [(np.arange(3), {"image": np.ones((3, 2))})])
    EmbeddingFiles(tmp_path).part(0).unlink()
    with pytest.raises(FmbError, match="embedding part .* is missing or unreadable"):
        store.load_embeddings(tmp_path)
