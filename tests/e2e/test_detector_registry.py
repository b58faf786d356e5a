"""Detectors come from the registry: config sections named beside them, validated names,
a detector registered at run time runs through `fmb detect`, and configured values reach PyOD."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from fmb import plugins
from fmb.config import load_config
from fmb.errors import ConfigError

TOY = "tests.e2e.toy_detector:ToyDetector"


@pytest.fixture
def toy():
    """The toy detector registered for one test, and unregistered after it."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(plugins.DETECTORS, "toy", TOY)  # undone on leaving the context
        plugins.register_detector("toy", TOY)
        yield TOY
    plugins.load.cache_clear()


def test_a_registered_detector_gets_its_config_section(toy, project):
    config = load_config(sets=["detect.methods=[toy]", "detect.toy.some_param=3", "detect.fusion_method=toy"],
                         root=project)
    assert config.detect.methods == ["toy"] and config.detect.fusion_method == "toy"
    assert config.detect.toy.some_param == 3
    assert config.detect.flow.hidden == 128  # the built-in sections are still there
    section = type(config.detect).model_fields["toy"].annotation
    assert section.model_fields["some_param"].description == "multiplies the distance"


def test_unknown_keys_and_bad_values_under_a_detector_section_are_rejected(toy, project):
    with pytest.raises(ConfigError, match=r"detect\.toy\.bogus: no such key; keys here: some_param"):
        load_config(sets=["detect.toy.bogus=1"], root=project)
    with pytest.raises(ConfigError, match=r"detect\.toy\.some_param: Input should be greater than or equal to 1"):
        load_config(sets=["detect.toy.some_param=0"], root=project)
    with pytest.raises(ConfigError, match=r"detect\.flow\.hidden: Input should be greater than or equal to 8"):
        load_config(sets=["detect.flow.hidden=4"], root=project)


def test_unknown_detector_names_are_rejected_with_the_choices(project):
    with pytest.raises(ConfigError, match=r"detect\.methods: .*unknown detector 'nope'; "
                                          r"choose from flow, iforest, lof, knn, ecod"):
        load_config(sets=["detect.methods=[flow, nope]"], root=project)
    with pytest.raises(ConfigError, match=r"detect\.fusion_method: .*'nope' is neither 'ensemble' nor one of "
                                          r"detect.methods \['flow', 'iforest'"):
        load_config(sets=["detect.fusion_method=nope"], root=project)
    with pytest.raises(ConfigError, match=r"detect\.fusion_method: .*'lof' is neither"):  # registered but not run
        load_config(sets=["detect.methods=[flow]", "detect.fusion_method=lof"], root=project)


def test_the_registration_ends_with_the_test(project):
    assert "toy" not in plugins.DETECTORS
    with pytest.raises(ConfigError, match=r"detect\.toy: no such key"):
        load_config(sets=["detect.toy.some_param=3"], root=project)


def test_detector_and_critic_sections_hold_their_defaults(project):
    detect = load_config(root=project).detect
    assert detect.flow.model_dump() == {"transforms": 5, "hidden": 128, "epochs": 30, "batch_size": 512, "lr": 1e-3,
                                        "patience": 4, "min_steps": 800, "max_steps": 2000, "check_every": 100}
    assert detect.iforest.n_estimators == 200 and detect.lof.n_neighbors == 20
    assert detect.knn.model_dump() == {"n_neighbors": 10, "method": "mean"} and detect.ecod.model_dump() == {}
    assert detect.mismatch.model_dump() == {"hidden": 128, "dim": 64, "epochs": 40, "min_steps": 300,
                                            "max_steps": 3000, "batch_size": 256, "lr": 1e-3, "references": 4096,
                                            "check_every": 50, "patience": 5}  # n_image is not a setting


def test_configured_hyper_parameters_reach_the_detectors(project):
    from fmb.detect.tasks import _factory

    config = load_config(sets=["detect.iforest.n_estimators=17", "detect.iforest.max_samples=0.5",
                               "detect.lof.n_neighbors=7", "detect.knn.n_neighbors=3", "detect.knn.method=median"],
                         root=project)
    x = np.random.default_rng(0).normal(size=(200, 4))
    iforest = _factory("iforest", config)(seed=5).fit(x)
    assert iforest.model_.n_estimators == 17 and len(iforest.model_.detector_.estimators_) == 17
    assert iforest.model_.max_samples == 0.5 and iforest.model_.random_state == 5
    from pyod.models.knn import KNN
    from pyod.models.lof import LOF

    new = np.random.default_rng(1).normal(size=(20, 4))  # fmb's kNN and LOF score as PyOD's with those settings
    np.testing.assert_allclose(_factory("lof", config)(seed=0).fit(x).score(new),
                               LOF(n_neighbors=7).fit(x).decision_function(new), rtol=1e-4)
    np.testing.assert_allclose(_factory("knn", config)(seed=0).fit(x).score(new),
                               KNN(n_neighbors=3, method="median").fit(x).decision_function(new), rtol=1e-4)


def test_importing_the_config_or_a_detector_module_imports_no_detection_code_or_pyod():
    code = ("import sys, fmb.config, fmb.detect.methods.iforest, fmb.detect.methods.knn; "
            "print(sorted(m for m in sys.modules if m == 'pyod' or m.startswith(('pyod.', 'fmb.detect.tasks'))))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
    code = "import sys, fmb.config; print(any(m.startswith('fmb.detect') for m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"  # config is the bottom layer


def _embedded_run(project: Path, n: int = 240) -> None:
    """The run's pixels embeddings written directly: three modalities of a toy embedding."""
    from fmb.embed.store import write_embeddings

    rng = np.random.default_rng(0)
    latent = rng.normal(size=(n, 3))
    matrices = {"image": latent @ rng.normal(size=(3, 6)) + 0.1 * rng.normal(size=(n, 6)),
                "spectrum": np.tanh(latent) @ rng.normal(size=(3, 5)) + 0.1 * rng.normal(size=(n, 5))}
    matrices["joint"] = np.hstack([matrices["image"], matrices["spectrum"]])
    from fmb.config import load_config

    directory = load_config(root=project).layout.embeddings("pixels").dir
    write_embeddings(directory, {"model": "pixels"}, np.arange(1000, 1000 + n), matrices)


def test_a_registered_detector_runs_through_fmb_detect(toy, project, monkeypatch):
    from fmb.cli import app
    from fmb.detect.density import load

    _embedded_run(project)
    monkeypatch.chdir(project)
    sets = ["detect.methods=[toy, knn]", "detect.toy.some_param=3", "detect.fusion_method=toy", "detect.folds=2",
            "detect.pca_components=4", "detect.mismatch.hidden=16", "detect.mismatch.dim=4",
            "detect.mismatch.min_steps=20", "detect.mismatch.max_steps=20", "run.models=[pixels]"]
    result = CliRunner().invoke(app, ["detect", *[arg for value in sets for arg in ("--set", value)]])
    assert result.exit_code == 0, result.output
    from fmb.config import load_config

    scores = load_config(root=project).layout.scores
    frame = pq.read_table(scores.table("pixels")).to_pandas()
    for column in ("score_image_toy", "score_spectrum_toy", "score_joint_toy", "score_joint_knn", "mismatch",
                   "pct_image_toy", "fused_geo"):
        assert column in frame.columns
    assert len(frame) == 240 and frame.in_common_set.all() and (frame.score_image_toy > 0).all()
    fitted = load(scores.detectors("pixels"))  # saved detectors unpickle
    toy_folds = fitted.detectors[("image", "toy")].detectors
    assert [type(d).__name__ for d in toy_folds] == ["ToyDetector"] * 2 and toy_folds[0].some_param == 3
