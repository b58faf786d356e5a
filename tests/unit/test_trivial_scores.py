"""The trivial brightness scores that `fmb analyze evaluate` sets every score beside, on a small real
synthetic survey (generated and indexed as `fmb data synth` / `fmb data index` do)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import fmb.analyze.evaluate as evaluate_module
from fmb.analyze.evaluate import EVALUATE, TRIVIAL_SCORES, evaluate, spectrum_median_snr, total_flux, trivial_scores
from fmb.config import load_config
from fmb.data.scan import iter_samples
from fmb.data.tasks import index, open_fetcher
from fmb.io import write_table

SETTINGS = ["synth.n=60", "synth.cutout_px=32", "synth.anomaly_rate=0.05", "synth.workers=1", "run.models=[pixels]"]


@pytest.fixture(scope="module")
def survey_project(tmp_path_factory):
    """A project whose data source is a freshly generated and indexed synthetic survey."""
    from fmb.data.tasks import synth

    project = tmp_path_factory.mktemp("trivial")
    (project / "fmb.yaml").write_text("name: test\n")
    config = load_config(root=project, sets=SETTINGS)
    synth(config)
    index(config)
    return project


@pytest.fixture
def project(survey_project, tmp_path):
    """A copy per test, so each starts without a cache and may change its own index."""
    import shutil

    copy = tmp_path / "project"
    shutil.copytree(survey_project, copy)
    return copy


def configured(project):
    return load_config(root=project, sets=SETTINGS)


def test_scores_follow_the_samples_by_hand(project):
    config = configured(project)
    frame = trivial_scores(config).set_index("object_id")
    fetcher = open_fetcher(config)
    assert sorted(frame.index) == sorted(fetcher.index.ids.tolist())
    for object_id in fetcher.index.ids[:3]:
        sample, _ = fetcher.sample(int(object_id))
        flux, ivar = sample.spectrum.flux.astype(float), sample.spectrum.ivar.astype(float)
        observed = ivar > 0
        snr = np.median(np.abs(flux[observed]) * np.sqrt(ivar[observed]))
        bands = sample.bands.astype(float)
        background = [np.median(band) for band in bands]
        flux_sum = sum((band - sky).sum() for band, sky in zip(bands, background))
        assert frame.loc[object_id, "spectrum_median_snr"] == pytest.approx(snr, rel=1e-5)
        assert frame.loc[object_id, "total_flux"] == pytest.approx(flux_sum, rel=1e-5)


def test_missing_modalities_give_no_score():
    assert np.isnan(spectrum_median_snr(None)) and np.isnan(total_flux(None))


def write_scores(config, ids: np.ndarray) -> None:
    """A model's score table (what `fmb detect` writes), with a detector and the misalignment score."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"object_id": ids, "score_image_flow": rng.normal(size=len(ids)), "mismatch": rng.normal(size=len(ids))})
    write_table(pa.Table.from_pandas(frame, preserve_index=False), config.layout.scores.table("pixels"))


def test_evaluate_reports_trivial_and_consensus_rows(project):
    config = configured(project)
    ids = open_fetcher(config).index.ids
    write_scores(config, ids)
    consensus = pd.DataFrame({"object_id": ids, "fused_consensus": np.arange(len(ids), dtype=float)})
    write_table(pa.Table.from_pandas(consensus, preserve_index=False), config.layout.scores.consensus)
    assert config.layout.scores.consensus in EVALUATE.inputs(config)
    evaluate(config)
    out = config.layout.evaluation
    metrics = pd.read_csv(out.metrics)
    classes = set(metrics.loc[metrics.model == "pixels", "class"])
    assert len(classes) > 2  # 'all' and more than one anomaly class
    for score in TRIVIAL_SCORES:
        assert set(metrics.loc[(metrics.model == "trivial") & (metrics.score == score), "class"]) == classes
    assert set(metrics.loc[metrics.model == "consensus", "class"]) == classes
    assert set(metrics.loc[metrics.model == "consensus", "score"]) == {"fused_consensus"}
    floor = out.summary.read_text().splitlines()[2]
    assert floor.startswith("Floor:") and any(score in floor for score in TRIVIAL_SCORES)


def test_cache_is_reused_until_the_data_changes(project, monkeypatch):
    config = configured(project)
    # A spy on the real streaming pass (real data flows through it): it only counts the passes.
    passes = []
    monkeypatch.setattr(evaluate_module, "iter_samples", lambda *a, **k: (passes.append(1), iter_samples(*a, **k))[1])
    first = trivial_scores(config)
    again = trivial_scores(config)
    assert len(passes) == 1
    pd.testing.assert_frame_equal(first, again)

    table = pq.read_table(config.layout.data.index)
    write_table(table.slice(0, table.num_rows - 1), config.layout.data.index)  # one object fewer
    trivial_scores(config)
    assert len(passes) == 2
    trivial_scores(load_config(root=project, sets=SETTINGS + ["data.max_masked_spectrum_fraction=0.4"]))
    assert len(passes) == 3  # the checks' limits decide which spectra count
