"""Importers of the original research code's files: `.pt` embeddings (`fmb.embed.legacy`) and CSV
scores (`fmb.detect.legacy`). Round trips give back what was written; a bad entry is one error
naming the object and the field; a pickle that would run code is refused before it runs."""

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from fmb.detect.legacy import import_scores, read_scores
from fmb.embed.legacy import import_embeddings, read_embeddings
from fmb.embed.store import load_embeddings
from fmb.errors import FmbError

IDS = [39627042000000017, 5, 12, 7]


def astropt_records(width: int = 6) -> list[dict]:
    """The original AstroPT generator's records (§5.1): tensors per modality, redshift and targetid."""
    generator = torch.Generator().manual_seed(0)
    return [{"object_id": object_id, "targetid": object_id, "redshift": 0.1 * k,
             "embedding_images": torch.randn(width, generator=generator),
             "embedding_spectra": torch.randn(width, generator=generator),
             "embedding_joint": torch.randn(2 * width, generator=generator)} for k, object_id in enumerate(IDS)]


def test_pt_records_round_trip_through_the_store(tmp_path: Path):
    records = astropt_records()
    torch.save(records, tmp_path / "astropt_embeddings.pt")
    assert import_embeddings(tmp_path / "astropt_embeddings.pt", tmp_path / "out", {"model": "astropt"}) == 4
    ids, matrices = load_embeddings(tmp_path / "out")
    np.testing.assert_array_equal(ids, IDS)
    for key, modality in (("embedding_images", "image"), ("embedding_spectra", "spectrum"), ("embedding_joint", "joint")):
        np.testing.assert_array_equal(matrices[modality], np.stack([r[key].numpy() for r in records]))


def test_aion_keys_targetid_and_integer_tensors_are_read(tmp_path: Path):
    records = [{"targetid": torch.tensor(object_id), "embedding_hsc": torch.full((3,), float(k)),
                "embedding_spectrum": [1.0, 2.0], "embedding_hsc_desi": torch.ones(1, 4)}
               for k, object_id in enumerate(IDS)]
    torch.save(records, tmp_path / "aions_embeddings.pt")
    ids, matrices = read_embeddings(tmp_path / "aions_embeddings.pt")
    np.testing.assert_array_equal(ids, IDS)
    assert matrices["image"].shape == (4, 3) and matrices["image"][2, 0] == 2
    assert matrices["spectrum"].shape == (4, 2) and matrices["joint"].shape == (4, 4)  # (1, 4) flattened


def test_a_dict_of_columns_round_trips(tmp_path: Path):
    images = torch.arange(12, dtype=torch.float32).reshape(4, 3)
    torch.save({"object_id": torch.tensor(IDS), "embedding_images": images, "embedding_joint": images * 2},
               tmp_path / "columns.pt")
    import_embeddings(tmp_path / "columns.pt", tmp_path / "out", {"model": "astroclip"})
    ids, matrices = load_embeddings(tmp_path / "out")
    np.testing.assert_array_equal(ids, IDS)
    np.testing.assert_array_equal(matrices["image"], images.numpy())
    assert set(matrices) == {"image", "joint"}  # a missing spectrum is not made up


def corrupt(records: list[dict], position: int, key: str, value) -> list[dict]:
    records[position] = {**records[position], key: value}
    return records


@pytest.mark.parametrize("damage, message", [
    (lambda r: corrupt(r, 2, "embedding_spectra", torch.randn(5)),
     "object 12, field embedding_spectra: has 5 values, record 0 has 6"),
    (lambda r: corrupt(r, 1, "embedding_images", torch.tensor([1.0, float("nan"), 0, 0, 0, 0])),
     "object 5, field embedding_images: holds NaN or inf"),
    (lambda r: corrupt(r, 3, "embedding_joint", "twelve numbers"),
     "object 7, field embedding_joint: is not an array of numbers"),
    (lambda r: [r[0], {k: v for k, v in r[1].items() if k != "embedding_joint"}],
     "object 5, field embedding_joint: is missing (record 0 has it)"),
    (lambda r: corrupt(r, 2, "embedding_hsc", torch.ones(6)),
     "object 12, field embedding_hsc: is not in record 0"),
    (lambda r: [{k: v for k, v in record.items() if k not in ("object_id", "targetid")} for record in r],
     "record 0 has no object_id (nor targetid)"),
    (lambda r: corrupt(corrupt(r, 1, "object_id", 1.5), 1, "targetid", 1.5),
     "record 1: field object_id is 1.5, not an integer object id"),
    (lambda r: corrupt(corrupt(r, 3, "object_id", 5), 3, "targetid", 5),
     "object id 5 appears 2 times (entries 1, 3)"),
    (lambda r: [],
     "the list of embedding records is empty"),
    (lambda r: [r[0], torch.ones(3)],
     "record 1 is a Tensor, not a dict"),
    (lambda r: torch.ones(4, 3),
     "holds a Tensor, not the original's list of embedding records or dict of columns"),
    (lambda r: {"object_id": torch.tensor(IDS), "embedding_images": torch.ones(3, 2)},
     "field embedding_images has shape (3, 2), expected (4, D): one row per object id"),
    (lambda r: {"object_id": torch.tensor([1.0, 2.0]), "embedding_images": torch.ones(2, 2)},
     "field object_id holds float32 values, not integer object ids"),
])
def test_a_bad_entry_is_one_line_naming_the_object_and_field(tmp_path: Path, damage, message: str):
    torch.save(damage(astropt_records()), tmp_path / "bad.pt")
    with pytest.raises(FmbError) as error:
        import_embeddings(tmp_path / "bad.pt", tmp_path / "out", {"model": "astropt"})
    assert str(error.value).startswith(f"{tmp_path / 'bad.pt'}: ") and message in str(error.value)
    assert "\n" not in str(error.value)
    assert not (tmp_path / "out").exists()  # nothing written


class WritesAFile:
    """Unpickling this calls os.system, which would create the marker: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_pickle_that_would_run_code_is_refused_before_it_runs(tmp_path: Path):
    marker = tmp_path / "code-ran"
    torch.save([{"object_id": 1, "embedding_images": WritesAFile(marker)}], tmp_path / "evil.pt")
    with pytest.raises(FmbError, match="refusing to load it as an embedding file .*posix.system"):
        read_embeddings(tmp_path / "evil.pt")
    assert not marker.exists()


# -- scores ---------------------------------------------------------------------------------------------
def density_csv(path: Path) -> pd.DataFrame:
    """anomaly_scores_astropt.csv as the original writes it: long, rows by key then input order."""
    rng = np.random.default_rng(1)
    rows = []
    for key in ("embedding_images", "embedding_spectra", "embedding_joint"):
        nll = rng.normal(size=len(IDS))
        sigma = (nll - nll.mean()) / nll.std()
        ranks = pd.Series(-sigma).rank(method="first").astype(int)
        rows.append(pd.DataFrame({"object_id": IDS, "embedding_key": key, "log_prob": -nll, "neg_log_prob": nll,
                                  "anomaly_sigma": sigma, "rank": ranks}))
    frame = pd.concat(rows, ignore_index=True)
    frame.to_csv(path, index=False)
    return frame


def cosine_csv(path: Path) -> pd.DataFrame:
    frame = pd.DataFrame({"object_id": IDS, "cosine_similarity": [0.9, -0.2, 0.5, 0.1]})
    frame = frame.sort_values("cosine_similarity").assign(rank=[1, 2, 3, 4])
    frame.to_csv(path, index=False)
    return frame


def multimodal_csv(path: Path) -> pd.DataFrame:
    columns = ["object_id", "cosine_similarity", "rank_cosine", "model", "nf_img_sigma", "nf_spec_sigma", "rank_img",
               "rank_spec", "p_mis", "p_img", "p_spec", "score_mm_geo", "score_mm_min", "uplift_mm"]
    rows = [[object_id, 0.5, 1, model, 0, 0, 1, 1, 1, 1, 1, geo, geo / 2, -geo]
            for model, offset in (("AstroPT", 0.0), ("AION", 0.5)) for object_id, geo in zip(IDS, offset + np.arange(4) / 10)]
    frame = pd.DataFrame(rows, columns=columns)
    frame.to_csv(path, index=False)
    return frame


def test_the_three_score_files_round_trip_into_one_table(tmp_path: Path):
    density = density_csv(tmp_path / "anomaly_scores_astropt.csv")
    cosine = cosine_csv(tmp_path / "cosine_scores_astropt.csv")
    multimodal = multimodal_csv(tmp_path / "all_scores.csv")
    out = tmp_path / "imported" / "astropt.parquet"
    import_scores([tmp_path / "anomaly_scores_astropt.csv", tmp_path / "cosine_scores_astropt.csv",
                   tmp_path / "all_scores.csv"], "astropt", out)
    table = pd.read_parquet(out).set_index("object_id")
    assert sorted(table.index) == sorted(IDS)
    for key, modality in (("embedding_images", "image"), ("embedding_spectra", "spectrum"), ("embedding_joint", "joint")):
        rows = density[density.embedding_key == key].set_index("object_id")
        np.testing.assert_allclose(table.loc[rows.index, f"score_{modality}_flow"], rows.neg_log_prob)
        np.testing.assert_array_equal(table.loc[rows.index, f"rank_{modality}_flow"], rows["rank"])  # the same order
    cosine = cosine.set_index("object_id")
    np.testing.assert_allclose(table.loc[cosine.index, "mismatch_cosine"], 1 - cosine.cosine_similarity)
    np.testing.assert_array_equal(table.loc[cosine.index, "rank_mismatch_cosine"], cosine["rank"])
    mine = multimodal[multimodal.model == "AstroPT"].set_index("object_id")  # the model's rows only
    np.testing.assert_allclose(table.loc[mine.index, "fused_geo"], mine.score_mm_geo)
    np.testing.assert_allclose(table.loc[mine.index, "uplift"], mine.uplift_mm)
    with pytest.raises(FmbError, match="astropt.parquet exists .*--force replaces it"):
        import_scores([tmp_path / "cosine_scores_astropt.csv"], "astropt", out)
    assert len(import_scores([tmp_path / "cosine_scores_astropt.csv"], "astropt", out, replace=True).columns) == 4


def write_text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, message", [
    ("object_id,cosine_similarity,rank\n1,0.5,1\n2,abc,2\n", "line 3: object 2, field cosine_similarity: is 'abc', not a number"),
    ("object_id,cosine_similarity,rank\n1,0.5,1\nx2,0.1,2\n", "line 3: object_id is 'x2', not an integer"),
    ("object_id,cosine_similarity,rank\n1,0.5,1\n1,0.1,2\n", "object 1 appears more than once (lines 2, 3)"),
    ("object_id,embedding_key,log_prob,neg_log_prob,anomaly_sigma,rank\n1,embedding_images,0,0,0,1\n"
     "1,embedding_foo,0,0,0,2\n", "line 3: object 1, field embedding_key: 'embedding_foo' is none of"),
    ("object_id,embedding_key,log_prob,neg_log_prob,anomaly_sigma,rank\n1,embedding_images,0,0,0,1\n"
     "2,embedding_joint,0,0,0,1\n1,embedding_images,0,0,0,2\n",
     "object 1 appears more than once for score_image_flow (lines 2, 4)"),
    ("object_id,model,score_mm_geo,score_mm_min,uplift_mm\n1,AION,0.5,0.5,0\n",
     "no rows of model 'astropt' (models: AION)"),
    ("id,score\n1,2\n", "its columns (id, score) are none of the original's score files"),
])
def test_a_bad_score_file_is_one_line_naming_line_object_and_column(tmp_path: Path, text: str, message: str):
    path = write_text(tmp_path / "scores.csv", text)
    with pytest.raises(FmbError) as error:
        read_scores([path], "astropt")
    assert str(error.value).startswith(f"{path}: ") and message in str(error.value) and "\n" not in str(error.value)


def test_two_files_giving_one_column_are_refused(tmp_path: Path):
    first = write_text(tmp_path / "a.csv", "object_id,cosine_similarity,rank\n1,0.5,1\n")
    second = write_text(tmp_path / "b.csv", "object_id,cosine_similarity,rank\n2,0.5,1\n")
    with pytest.raises(FmbError, match="b.csv: gives mismatch_cosine, which .*a.csv gave already"):
        read_scores([first, second], "astropt")


def test_a_missing_score_is_unranked(tmp_path: Path):
    path = write_text(tmp_path / "c.csv", "object_id,cosine_similarity,rank\n1,0.5,1\n2,,2\n3,-0.5,3\n")
    table = read_scores([path], "astropt").set_index("object_id")
    assert table.loc[3, "rank_mismatch_cosine"] == 1 and table.loc[1, "rank_mismatch_cosine"] == 2
    assert pd.isna(table.loc[2, "rank_mismatch_cosine"]) and np.isnan(table.loc[2, "pct_mismatch_cosine"])
