"""Detection on matrices with known structure: planted outliers, cross-fitting, fusion, persistence."""

from functools import partial

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fmb.detect.base import HeldOutBest, train_with_held_out
from fmb.detect.density import CrossFitted, Reducer, fold_of, load, robust_z, save
from fmb.detect.fusion import fuse
from fmb.detect.methods.flow import FlowDetector
from fmb.detect.mismatch import ContrastiveMismatch, PairResidual
from fmb.detect.scores import percentile, rank_descending
from fmb.errors import FmbError
from fmb.plugins import detector_class

FAST_FLOW = dict(hidden=32, batch_size=256, min_steps=300, max_steps=300, lr=3e-3)


def mixture(n=3000, d=8, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 6, size=(3, d))
    x = centres[rng.integers(0, 3, n)] + rng.normal(0, 1, size=(n, d))
    return x, np.arange(10_000, 10_000 + n)


def flow_crossfit(seed=0):
    return CrossFitted(partial(FlowDetector, **FAST_FLOW), n_folds=3, seed=seed)


def test_folds_are_stable_balanced_and_cover_all():
    ids = np.arange(100_000, 130_000)
    folds = fold_of(ids, 5, seed=1)
    assert set(folds) == set(range(5))
    counts = np.bincount(folds)
    assert counts.min() > 0.9 * len(ids) / 5 and counts.max() < 1.1 * len(ids) / 5
    np.testing.assert_array_equal(folds, fold_of(ids, 5, seed=1))
    np.testing.assert_array_equal(folds[::7], fold_of(ids[::7], 5, seed=1))  # a property of the id alone


def make_detector(method):
    return partial(detector_class(method), **(FAST_FLOW if method == "flow" else {}))


@pytest.mark.parametrize("method, worst_rank", [("flow", 1), ("knn", 1), ("lof", 1), ("ecod", 2), ("iforest", 30)])
def test_planted_outlier_in_a_gaussian_mixture_gets_the_top_score(method, worst_rank):
    """12 sigma off the data manifold (along its least-variance direction) from an ordinary member.
    Isolation Forest's axis-aligned random splits only bring it into the top 1 % (a known weakness).
    ECOD caps each feature's tail at -log(1 / (n + 1)), so one feature beyond every fit object ties
    with objects far out in several (here 26.43 against 26.52 for the runner-up)."""
    x, ids = mixture()
    direction = np.linalg.svd(x - x.mean(0), full_matrices=False)[2][-1]
    x[123] = x[0] + 12 * direction
    reduced = Reducer(8).fit(x).transform(x)
    scores = CrossFitted(make_detector(method), n_folds=3, seed=0).fit(reduced, ids).score(reduced, ids)
    assert (scores > scores[123]).sum() + 1 <= worst_rank


@pytest.mark.parametrize("method", ["knn", "lof"])
def test_distance_detectors_catch_an_object_between_groups(method):
    """The reducer keeps PCA geometry (one global scale), so 'between two groups' stays far from both."""
    x, ids = mixture()
    x[123] = x.mean(0) + 0.5
    reduced = Reducer(8).fit(x).transform(x)
    scores = CrossFitted(make_detector(method), n_folds=3, seed=0).fit(reduced, ids).score(reduced, ids)
    assert np.argmax(scores) == 123


def test_cross_fitting_does_not_reward_a_memorised_training_object():
    """A flexible flow trained long on few objects memorises them: scored in-sample, a rare object
    that was in the training data looks ordinary. Cross-fitted, it is scored by a flow that never
    saw it and stays an outlier."""
    x, ids = mixture(n=300)
    direction = np.linalg.svd(x - x.mean(0), full_matrices=False)[2][-1]
    x[7] = x[0] + 6 * direction
    reduced = Reducer(8).fit(x).transform(x)
    overfitting = dict(hidden=64, batch_size=128, min_steps=600, max_steps=600, patience=100, lr=3e-3, check_every=600)
    in_sample = robust_z(FlowDetector(**overfitting, seed=0).fit(reduced).score(reduced))[7]
    cross_fitted = robust_z(CrossFitted(partial(FlowDetector, **overfitting), 3, 0).fit(reduced, ids).score(reduced, ids))[7]
    assert in_sample < 4 < 10 < cross_fitted, (in_sample, cross_fitted)  # in-sample ~3, cross-fitted ~1e5


def test_saved_detector_reproduces_scores(tmp_path):
    x, ids = mixture(n=1500)
    reducer = Reducer(6).fit(x)
    crossfit = flow_crossfit().fit(reducer.transform(x), ids)
    before = crossfit.score(reducer.transform(x), ids)
    save({"reducer": reducer, "detector": crossfit}, tmp_path / "det.pt")
    loaded = load(tmp_path / "det.pt")
    after = loaded["detector"].score(loaded["reducer"].transform(x), ids)
    np.testing.assert_array_equal(before, after)


def test_new_objects_are_scored_by_one_unbiased_fold():
    x, ids = mixture(n=1500)
    reduced = Reducer(6).fit(x).transform(x)
    crossfit = flow_crossfit().fit(reduced[:1000], ids[:1000])
    folds = crossfit.folds_for(ids)
    np.testing.assert_array_equal(folds[:1000], crossfit.fit_folds)
    assert set(folds[1000:]) <= {0, 1, 2}
    assert np.all(np.isfinite(crossfit.score(reduced, ids)))


MISALIGNMENT = {"residual": lambda d: partial(PairResidual, d),
                "contrastive": lambda d: partial(ContrastiveMismatch, d, hidden=32, dim=16, max_steps=400)}


@pytest.mark.parametrize("kind", MISALIGNMENT)
def test_mispaired_objects_found_by_misalignment_not_by_density(kind):
    rng = np.random.default_rng(3)
    n, d = 3000, 6
    latent = rng.normal(size=(n, 3))  # both modalities see the same physical parameters
    image = latent @ rng.normal(size=(3, d)) + 0.1 * rng.normal(size=(n, d))
    spectrum = np.tanh(latent) @ rng.normal(size=(3, d)) + 0.1 * rng.normal(size=(n, d))
    swapped = np.arange(40)
    spectrum[swapped] = spectrum[swapped[::-1] + 1000]  # spectra of other, ordinary objects
    ids = np.arange(n)
    img_r, spec_r = Reducer(d).fit(image).transform(image), Reducer(d).fit(spectrum).transform(spectrum)
    pair = np.hstack([img_r, spec_r])
    mis = CrossFitted(MISALIGNMENT[kind](d), n_folds=3, seed=0).fit(pair, ids).score(pair, ids)
    dens = CrossFitted(partial(FlowDetector, **FAST_FLOW), n_folds=3, seed=0).fit(spec_r, ids).score(spec_r, ids)
    top = np.argsort(-mis)[:60]
    assert np.isin(swapped, top).mean() >= 0.9
    assert np.isin(swapped, np.argsort(-dens)[:60]).mean() < 0.2


def test_fusion_percentiles_are_computed_on_the_common_set():
    rng = np.random.default_rng(0)
    n = 200
    frame = pd.DataFrame({"object_id": np.arange(n)})
    for modality in ("image", "spectrum", "joint"):
        frame[f"score_{modality}_flow"] = rng.normal(size=n)
    frame["mismatch"] = rng.normal(size=n)
    frame.loc[:49, "score_spectrum_flow"] = np.nan  # 50 objects lack a spectrum score
    out = fuse(frame, "flow")
    common = out[out.in_common_set]
    assert len(common) == 150 and out.loc[:49, "pct_image_flow"].isna().all()
    top = common.sort_values("score_image_flow").iloc[-1]
    assert top.pct_image_flow == 1.0 and top.rank_image_flow == 1
    assert common.pct_image_flow.min() == pytest.approx(1 / 150)
    expected = common.pct_mismatch * np.sqrt(common.pct_image_flow * common.pct_spectrum_flow)
    np.testing.assert_allclose(common.fused_geo, expected)
    assert (common.uplift > 0).any()  # fusion can rank an object above both of its modalities


def test_percentile_and_robust_z_by_hand():
    scores = np.array([3.0, 1.0, 2.0, 10.0])
    np.testing.assert_allclose(percentile(scores), [0.75, 0.25, 0.5, 1.0])
    z = robust_z(np.array([1.0, 2.0, 3.0, 4.0, 100.0]))
    assert z[2] == 0 and z[-1] == pytest.approx(97 / 1.4826)


def test_held_out_tracker_stops_after_patience_and_restores_the_best_state():
    module = torch.nn.Linear(1, 1)  # one fold: the leading dimension of its parameters has length 1
    tracker = HeldOutBest(patience=2)
    stops = []
    for loss, weight in [(3.0, 1.0), (2.0, 2.0), (2.5, 3.0), (2.1, 4.0), (1.0, 5.0)]:
        module.weight.data.fill_(weight)
        stops.append(tracker.check(loss, module))
    assert stops == [False, False, False, True, True]  # once stopped, a fold stays stopped
    tracker.restore(module)
    assert module.weight.item() == 2.0 and tracker.best.tolist() == [2.0]

    diverged = HeldOutBest(patience=2)
    assert [diverged.check(float("nan"), module) for _ in range(2)] == [False, True]
    with pytest.raises(FmbError, match="Linear training diverged: its held-out loss was never finite"):
        diverged.restore(module)


def test_held_out_tracker_keeps_each_folds_best_state_and_stops_when_every_fold_has():
    stacked = torch.nn.Linear(1, 2, bias=False)  # weight (2, 1): fold f's parameter is row f
    tracker = HeldOutBest(patience=2, folds=2)
    stops = []
    for losses, weights in [([3.0, 3.0], [1, 1]), ([2.0, 4.0], [2, 2]), ([2.5, 2.0], [3, 3]), ([2.2, 1.0], [4, 4]),
                            ([0.1, 1.5], [5, 5]), ([0.1, 1.5], [6, 6])]:
        stacked.weight.data.copy_(torch.tensor(weights, dtype=torch.float32)[:, None])
        stops.append(tracker.check(losses, stacked))
    assert stops == [False, False, False, False, False, True]
    assert tracker.stopped.tolist() == [True, True]
    tracker.restore(stacked)  # fold 0 stopped after the 4th check: its later, lower loss is not taken
    assert stacked.weight.flatten().tolist() == [2.0, 4.0] and tracker.best.tolist() == [2.0, 1.0]

    one_diverged = HeldOutBest(patience=1, folds=2)
    one_diverged.check([1.0, float("nan")], stacked)
    with pytest.raises(FmbError, match="diverged"):
        one_diverged.restore(stacked)


def test_shared_training_loop_checks_on_schedule_stops_early_and_restores_the_best_state():
    module = torch.nn.Linear(1, 1)
    trained, checked = [], []

    def train_step():
        trained.append(len(trained) + 1)
        module.weight.data.fill_(len(trained))  # the weight says after which step a state was kept

    def run(losses, steps):
        trained.clear(), checked.clear()
        losses = iter(losses)
        return train_with_held_out(module, train_step, lambda: (checked.append(len(trained)), next(losses))[1],
                                   steps=steps, check_every=10, patience=3)

    assert run([5.0, 4.0, 4.5, 4.2, 4.1, 0.0], steps=100).tolist() == [50]  # 3 checks in a row without improvement
    assert checked == [10, 20, 30, 40, 50] and module.weight.item() == 20  # best state restored
    assert run([5.0, 4.0, 3.0], steps=25).tolist() == [25] and checked == [10, 20, 25]  # the last step is checked
    assert module.weight.item() == 25


def test_contrastive_critic_stops_early_when_held_out_pairs_teach_nothing():
    rng = np.random.default_rng(0)
    independent = rng.normal(size=(1500, 8)).astype(np.float32)  # image and spectrum unrelated
    settings = dict(hidden=64, dim=8, batch_size=128, min_steps=2000, max_steps=2000, check_every=20, patience=3)
    critic = ContrastiveMismatch(4, **settings).fit(independent)
    assert critic.steps_trained_ < 500  # it memorises training pairs; the held-out loss says stop
    image = rng.normal(size=(1500, 4)).astype(np.float32)
    dependent = np.hstack([image, image + 0.1 * rng.normal(size=image.shape).astype(np.float32)])
    assert ContrastiveMismatch(4, **settings).fit(dependent).steps_trained_ > critic.steps_trained_


def _fusion_by_hand(frame: pd.DataFrame, method: str) -> dict:
    """The percentile fusions of `fmb.detect.fusion`'s docstring, in numpy with the ranking rule."""
    inputs = [f"score_{m}_{method}" for m in ("image", "spectrum", "joint")] + ["mismatch"]
    common = np.isfinite(frame[inputs].to_numpy(dtype=float)).all(axis=1)
    p = {c: percentile(frame.loc[common, c].to_numpy()) for c in inputs}
    img, spec, joint, mis = (p[c] for c in inputs)
    geo = mis * np.sqrt(img * spec)
    return {"common": common, "rank_image_flow": rank_descending(frame.loc[common, inputs[0]].to_numpy()),
            "pct_mismatch": mis, "fused_geo": geo, "fused_min": mis * np.minimum(img, spec),
            "fused_avg": mis * (img + spec) / 2, "fused_all": (img * spec * joint * mis) ** 0.25,
            "fused_max": np.maximum.reduce([img, spec, joint, mis]), "uplift": percentile(geo) - np.maximum(img, spec)}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(*[st.sampled_from([0.0, 1.0, 2.5, -3.0, np.nan, np.inf])] * 4), min_size=1, max_size=30))
def test_the_fusion_follows_the_ranking_rule_with_ties_and_missing_scores(rows):
    frame = pd.DataFrame(rows, columns=["score_image_flow", "score_spectrum_flow", "score_joint_flow", "mismatch"])
    frame.insert(0, "object_id", np.arange(len(frame)) * 7)
    out, expected = fuse(frame, "flow"), _fusion_by_hand(frame, "flow")
    np.testing.assert_array_equal(out.in_common_set.to_numpy(), expected["common"])
    common = out[out.in_common_set]
    assert out.loc[~out.in_common_set, ["pct_image_flow", "fused_geo", "uplift"]].isna().all().all()
    assert out.loc[~out.in_common_set, "rank_image_flow"].isna().all()
    np.testing.assert_array_equal(common.rank_image_flow.to_numpy(dtype=np.int64), expected["rank_image_flow"])
    for column in ("pct_mismatch", "fused_geo", "fused_min", "fused_avg", "fused_all", "fused_max", "uplift"):
        np.testing.assert_allclose(common[column].to_numpy(dtype=float), expected[column], rtol=1e-12, err_msg=column)
    pd.testing.assert_frame_equal(out[frame.columns], frame)  # the input columns untouched, in order


def test_the_out_of_core_merge_gives_the_in_memory_fusion_part_by_part(tmp_path, monkeypatch):
    """population_parts ranks each column out of core and reads the ranks back in row groups that
    do not line up with the parts; the result must be the in-memory fusion, row for row."""
    from fmb.detect import population
    from fmb.layout import MergeFiles

    monkeypatch.setattr(population, "ROW_GROUP_ROWS", 7)  # DuckDB writes at least 2048 rows a group
    rng = np.random.default_rng(3)
    n = 5000
    frame = pd.DataFrame({"object_id": rng.permutation(10_000)[:n]})
    for column in ("score_image_flow", "score_spectrum_flow", "score_joint_flow", "mismatch", "mismatch_cosine"):
        frame[column] = rng.integers(0, 40, n).astype(float)  # many ties
    frame.loc[rng.choice(n, 20, replace=False), "score_spectrum_flow"] = np.nan
    frame.loc[rng.choice(n, 5, replace=False), "mismatch"] = np.inf
    paths = []
    for k, rows in enumerate(np.split(np.arange(n), [40, 41, 2500])):
        paths.append(tmp_path / f"part-{k}.parquet")
        frame.iloc[rows].to_parquet(paths[-1], index=False)
    with population.connection(memory_gb=0.5, spill=tmp_path / "spill") as con:
        parts = list(population.population_parts(con, paths, "flow", MergeFiles(tmp_path / "spill" / "model")))
    assert [len(part) for part in parts] == [40, 1, 2459, 2500] and not (tmp_path / "spill").exists()
    merged = pa.concat_tables(parts).to_pandas()
    expected = fuse(frame, "flow")
    for column in merged.columns:
        pd.testing.assert_series_equal(merged[column], expected[column], check_dtype=False, obj=column)


def test_reducer_is_the_exact_pca_and_pooled_moments_equal_one_pass():
    """The components span the leading right singular vectors of the centred sample (exact, not a
    randomized approximation), the scale is the components' mean variance, and moments pooled over
    parts equal those of the whole (what the cross-fitted residual's copies are fitted from)."""
    from fmb.detect.density import Moments

    x, _ = mixture(n=2000, d=12)
    x[:, 0] += 1e3  # a large mean: the pooling must not lose the spread to cancellation
    reducer = Reducer(5).fit(x)
    exact = np.linalg.svd(x - x.mean(0), full_matrices=False)[2][:5]
    cosines = np.linalg.svd(exact @ reducer.components_.T.astype(np.float64), compute_uv=False)
    np.testing.assert_allclose(cosines, 1.0, atol=1e-5)
    projected = (x - x.mean(0)) @ reducer.components_.T.astype(np.float64)
    np.testing.assert_allclose(reducer.scale_, np.sqrt(projected.var(0).mean()), rtol=1e-5)
    pooled = Moments.of(x[:700]) + Moments.of(x[700:1500]) + Moments.of(x[1500:])
    whole = Moments.of(x)
    assert pooled.n == whole.n == 2000
    np.testing.assert_allclose(pooled.mean, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(pooled.scatter, whole.scatter, rtol=1e-9, atol=1e-6)
    np.testing.assert_allclose(whole.scatter, (x - x.mean(0)).T @ (x - x.mean(0)), rtol=1e-9, atol=1e-6)


def test_cross_fitted_residual_copies_equal_residuals_fitted_on_their_folds():
    """The k copies come from one pass (each fold's moments pooled): each scores exactly like a
    residual fitted on its own training folds alone, whose scale is the fit rows' mean residual."""
    from fmb.detect.residual import PCAResidual

    x, ids = mixture(n=1500, d=10)
    crossfit = CrossFitted(partial(PCAResidual, 4), n_folds=3, seed=0).fit(x, ids)
    for fold, copy in enumerate(crossfit.detectors):
        alone = PCAResidual(4).fit(x[crossfit.fit_folds != fold])
        np.testing.assert_allclose(copy.score(x), alone.score(x), rtol=1e-4)
        np.testing.assert_allclose(alone._squared(x[crossfit.fit_folds != fold]).mean(), alone.scale_, rtol=1e-4)


def test_flows_of_several_modalities_trained_as_one_model_equal_their_separate_fits():
    """A model's modalities train their flows together (one stacked model, the same batches a fit of
    each alone draws): each modality's cross-fitted scores are those of its own fit, to float
    tolerance, and so are the steps each fold trained. Few steps: over hundreds, the batched and
    the single products' rounding differences grow into ~1 % differences of the scores."""
    x, ids = mixture(n=900, d=4)
    other = np.tanh(x[:, ::-1]) * 3
    short = partial(CrossFitted, partial(FlowDetector, **FAST_FLOW | dict(min_steps=30, max_steps=30, check_every=10,
                                                                          patience=1)), 3, 0)
    together = short().fit_each([x, other], ids)
    for matrix, fitted in zip([x, other], together):
        alone = short().fit(matrix, ids)
        np.testing.assert_allclose(fitted.score(matrix, ids), alone.score(matrix, ids), rtol=1e-4, atol=1e-4)
        assert [d.steps_trained_ for d in fitted.detectors] == [d.steps_trained_ for d in alone.detectors]
        np.testing.assert_array_equal(fitted.fit_folds, alone.fit_folds)
