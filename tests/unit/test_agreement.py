"""Agreement metrics against hand computations, and the task end to end on small score tables."""

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from scipy.stats import spearmanr

from fmb.analyze.agreement import (
    System, agreement, common_set, descending_ranks, disagreements, displacement, displacement_subset, in_top,
    jaccard_matrix, retention_matrix, select_columns, spearman_matrix, top_count,
)
from fmb.config import load_config
from fmb.errors import FmbError
from fmb.io import write_table


def test_top_count_rounds_up_and_a_tie_at_the_cut_keeps_the_whole_group():
    assert top_count(100, 7) == 7  # 7 / 100 * 100 is 7.000000000000001 in floating point
    assert top_count(250, 1) == 3 and top_count(10, 1) == 1
    ranks = descending_ranks(np.array([[5.0], [4.0], [4.0], [1.0]]))
    assert ranks[:, 0].tolist() == [1, 2, 2, 4]
    assert in_top(ranks, 50)[:, 0].tolist() == [True, True, True, False]  # m = 2, both objects tied at rank 2


def test_jaccard_of_two_known_sets():
    top = np.zeros((10, 2), dtype=bool)
    top[[0, 1, 2], 0] = True
    top[[1, 2, 3, 4], 1] = True
    expected = np.array([[1, 2 / 5], [2 / 5, 1]])  # |{1, 2}| / |{0, 1, 2, 3, 4}|
    np.testing.assert_allclose(jaccard_matrix(top), expected)


def test_spearman_matrix_equals_scipy_with_ties():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(300, 1))
    scores = np.round(base + rng.normal(scale=[0.2, 1.0, 3.0, 0.5], size=(300, 4)), 1)  # rounding makes ties
    np.testing.assert_allclose(spearman_matrix(scores), spearmanr(scores).statistic, atol=1e-12)


@pytest.fixture
def constructed_ranks() -> np.ndarray:
    """100 objects, two systems. S ranks object i at i + 1. T ranks S's top 10 (objects 0-9) at
    1, 2, 3, 20, 30, 40, 50, 60, 70, 80 and fills its other ranks with objects 99, 98, ..., 10."""
    target = np.zeros(100, dtype=np.int64)
    target[:10] = [1, 2, 3, 20, 30, 40, 50, 60, 70, 80]
    target[10:] = sorted(set(range(1, 101)) - set(target[:10]), reverse=True)
    return np.column_stack([np.arange(1, 101), target])


def test_ranks_come_from_scores(constructed_ranks):
    np.testing.assert_array_equal(descending_ranks(-constructed_ranks.astype(float)), constructed_ranks)


def test_retention_on_a_constructed_ranking(constructed_ranks):
    at_10 = retention_matrix(constructed_ranks, top_pct=10, level_pct=10)
    at_50 = retention_matrix(constructed_ranks, top_pct=10, level_pct=50)
    assert at_10[0, 1] == pytest.approx(0.3)  # objects 0, 1, 2
    assert at_50[0, 1] == pytest.approx(0.7)  # and 3, 4, 5, 6 (T ranks 20-50)
    assert at_10[1, 0] == pytest.approx(0.3)  # T's top 10 = objects 0, 1, 2 and 99-93
    np.testing.assert_allclose(np.diag(at_10), 1)


def test_displacement_lists_the_target_positions_of_the_source_top_set(constructed_ranks):
    positions = displacement(constructed_ranks[:, 0], constructed_ranks[:, 1], top_pct=10)
    assert sorted(positions) == [1, 2, 3, 20, 30, 40, 50, 60, 70, 80]  # N = 100: position = rank


def test_disagreement_on_a_constructed_case(constructed_ranks):
    table = disagreements(constructed_ranks, ["S", "T"], np.arange(1000, 1100), top_pct=10, beyond_pct=50)
    s_only = table[table.system_a == "S"]
    assert s_only.object_id.tolist() == [1007, 1008, 1009]  # S's top 10 with T rank 60, 70, 80
    assert s_only.pct_b.tolist() == [60, 70, 80] and s_only.pct_a.tolist() == [8, 9, 10]
    t_only = table[table.system_a == "T"]
    assert sorted(t_only.object_id) == list(range(1093, 1100))  # T ranks 4-10, S ranks 94-100
    assert set(t_only.system_b) == {"S"} and (t_only.pct_b > 50).all()


def test_common_set_drops_objects_missing_anywhere_and_ranks_are_recomputed():
    wide = pd.DataFrame({"a": [5.0, 4, 3, 2, 1], "b": [np.nan, 1, 2, np.inf, 4]}, index=[10, 11, 12, 13, 14])
    common, dropped = common_set(wide)
    assert common.index.tolist() == [11, 12, 14]
    assert dropped == [2, 0]  # a scored 10 and 13 too; b scored nothing outside the set
    ranks = descending_ranks(common.to_numpy())
    assert ranks[:, 0].tolist() == [1, 2, 3] and ranks[:, 1].tolist() == [3, 2, 1]  # ranks among 3, not 5


def test_select_columns_per_modality_then_named_columns():
    columns = ["object_id", "score_image_flow", "score_joint_flow", "score_image_knn", "mismatch", "fused_geo"]
    assert select_columns(columns, ["flow", "mismatch", "fused_geo", "fused_max"]) == [
        "score_image_flow", "score_joint_flow", "mismatch", "fused_geo"]
    assert System("aion", "score_image_flow").label == "aion image flow"
    assert System("astropt", "mismatch").label == "astropt mismatch"


def test_displacement_subset_takes_each_models_headline_system_or_all_of_one_model():
    one = [System("aion", c) for c in ["score_image_flow", "score_joint_flow", "mismatch"]]
    assert displacement_subset(one) == [0, 1, 2]
    two = one + [System("pixels", c) for c in ["score_image_flow", "score_joint_flow", "fused_geo", "fused_cauchy"]]
    assert displacement_subset(two) == [1, 6]  # aion joint flow (no fused score), pixels' default fused_cauchy


# ---- the task end to end ----

N = 60
#: The run's two models (`run.models`, in this order): registered names standing for any two encoders.
ALPHA, BETA = "pixels", "aion"
RUN = [f"run.models=[{ALPHA}, {BETA}]"]


def write_scores(project, model: str, ids: np.ndarray, columns: dict) -> None:
    frame = pd.DataFrame({"object_id": ids, **columns})
    write_table(pa.Table.from_pandas(frame, preserve_index=False), load_config(root=project).layout.scores.table(model))


@pytest.fixture
def two_models(project):
    """ALPHA scores objects 0..59; BETA lacks object 0 and has no mismatch for object 5. Object 30 is
    ALPHA's top joint anomaly and BETA's most ordinary."""
    rng = np.random.default_rng(1)
    ids = np.arange(N)
    shared = rng.normal(size=N)
    for model, keep in [(ALPHA, ids), (BETA, ids[1:])]:
        columns = {name: shared[keep] + rng.normal(size=len(keep)) for name in
                   ["score_image_flow", "score_joint_flow", "score_image_knn", "mismatch", "fused_geo"]}
        columns["score_joint_flow"][keep == 30] = 1000.0 if model == ALPHA else -1000.0
        if model == BETA:
            columns["mismatch"][keep == 5] = np.nan
        write_scores(project, model, keep, columns)
    return project


def test_agreement_end_to_end(two_models):
    config = load_config(root=two_models, sets=RUN + ["analyze.agreement.top_pct=10",
                                                      "analyze.agreement.methods=[flow, mismatch, fused_geo]",
                                                      "analyze.agreement.retention_pcts=[10, 50]"])
    summary = agreement(config, log=lambda _: None)
    out = config.layout.agreement
    for path in [out.matrix("spearman"), out.matrix("jaccard"), out.matrix("retention_10"), out.matrix("retention_50"),
                 out.disagreement, out.figure("spearman"), out.figure("jaccard"), out.figure("retention"),
                 out.figure("displacement"), out.summary]:
        assert path.stat().st_size > 0, path.name
    assert json.loads(out.summary.read_text()) == summary

    assert summary["n_common"] == N - 2 and summary["top_count"] == 6
    dropped = {s["label"]: s["dropped"] for s in summary["systems"]}
    assert dropped == {f"{ALPHA} image flow": 2, f"{ALPHA} joint flow": 2, f"{ALPHA} mismatch": 2,
                       f"{ALPHA} fused_geo": 2, f"{BETA} image flow": 1, f"{BETA} joint flow": 1,
                       f"{BETA} mismatch": 0, f"{BETA} fused_geo": 1}

    common = sorted(set(range(N)) - {0, 5})
    scores = pd.concat([pd.read_parquet(config.layout.scores.table(m))
                        .set_index("object_id").loc[common, ["score_image_flow", "score_joint_flow", "mismatch", "fused_geo"]]
                        for m in [ALPHA, BETA]], axis=1)
    spearman = pd.read_csv(out.matrix("spearman"), index_col=0)
    assert list(spearman.index) == list(dropped)
    np.testing.assert_allclose(spearman.to_numpy(), spearmanr(scores.to_numpy()).statistic, atol=1e-5)

    disagreement = pd.read_csv(out.disagreement)
    planted = disagreement[(disagreement.system_a == f"{ALPHA} joint flow") & (disagreement.system_b == f"{BETA} joint flow")
                           & (disagreement.object_id == 30)]
    assert planted[["pct_a", "pct_b"]].to_numpy().tolist() == [[pytest.approx(100 / 58, abs=1e-5), 100.0]]
    retention = pd.read_csv(out.matrix("retention_50"), index_col=0)
    assert retention.loc[f"{ALPHA} joint flow", f"{ALPHA} joint flow"] == 1.0
    assert retention.loc[f"{ALPHA} joint flow", f"{BETA} joint flow"] <= 5 / 6  # object 30 is not retained


def test_agreement_errors_say_what_is_missing(project):
    config = load_config(root=project, sets=RUN)
    with pytest.raises(FmbError, match="no scores"):
        agreement(config)
    write_scores(project, ALPHA, np.arange(10), {"score_image_flow": np.arange(10.0), "fused_geo": np.arange(10.0)})
    with pytest.raises(FmbError, match="at least 2 systems"):
        agreement(load_config(root=project, sets=RUN + ["analyze.agreement.methods=[fused_geo]"]))
    with pytest.raises(FmbError, match="fused_typo"):
        agreement(load_config(root=project, sets=RUN + ["analyze.agreement.methods=[flow, fused_typo]"]))


def test_above_max_objects_every_table_gives_the_same_seeded_share(project):
    """Memory bounded whatever N: a share of the ids is read, row group by row group, and it is the
    same objects in every model (tables in different orders), so the statistics are estimates of
    the full ones."""
    rng = np.random.default_rng(4)
    n = 6000
    shared = rng.normal(size=n)
    for model, order in [(ALPHA, np.arange(n)), (BETA, rng.permutation(n))]:
        columns = {"score_joint_flow": shared[order] + rng.normal(size=n), "mismatch": rng.normal(size=n)}
        frame = pd.DataFrame({"object_id": order, **columns})
        write_table(pa.Table.from_pandas(frame, preserve_index=False), load_config(root=project).layout.scores.table(model),
                    row_group_size=500)
    def flow_spearman(config) -> float:
        matrix = pd.read_csv(config.layout.agreement.matrix("spearman"), index_col=0)
        return matrix.loc[f"{ALPHA} joint flow", f"{BETA} joint flow"]

    methods = "analyze.agreement.methods=[flow, mismatch]"
    config = load_config(root=project, sets=RUN + [methods])
    full = agreement(config, log=lambda _: None)
    full_spearman = flow_spearman(config)
    config = load_config(root=project, sets=RUN + [methods, "analyze.agreement.max_objects=1500"])
    sampled = agreement(config, log=lambda _: None)
    assert full["object_share"] == 1.0 and sampled["object_share"] == 0.25
    assert 1200 < sampled["n_common"] < 1800  # about a quarter, in both models at once
    assert all(system["dropped"] == 0 for system in sampled["systems"])
    assert flow_spearman(config) == pytest.approx(full_spearman, abs=0.06)  # ~3 standard errors at 1500
