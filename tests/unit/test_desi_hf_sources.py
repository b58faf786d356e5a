"""Real DESI coadd files (shipped with specutils) and the Hugging Face path, offline."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import specutils
from astropy.io import fits

from fmb.config import load_config
from fmb.data.desi import read_coadd
from fmb.data.index import Fetcher, ObjectIndex, build_index
from fmb.data.scan import iter_samples
from fmb.data.schema import WAVELENGTH_MIN, WAVELENGTH_STEP
from fmb.data.sources import open_source
from fmb.data.validate import DROPPED, RowChecker
from fmb.errors import ConfigError, DataError
from tests.conftest import row_tag, tagged_row, write_rows

DESI_FILES = Path(specutils.__file__).parent / "io/default_loaders/tests/desi_test_data"
COADD = DESI_FILES / "coadd-sv3-dark-26065.fits"


def test_arms_merge_by_inverse_variance_on_the_7781_grid():
    merged = read_coadd(COADD)
    assert merged.flux.shape == (5, 7781)
    fibre = int(np.flatnonzero(merged.targetid == 39627866878514741)[0])
    with fits.open(COADD) as hdul:
        b_wave, r_wave = hdul["B_WAVELENGTH"].data, hdul["R_WAVELENGTH"].data
        overlap = 5780.0  # inside the B/R overlap
        b, r = np.argmin(abs(b_wave - overlap)), np.argmin(abs(r_wave - overlap))
        fb, ib = hdul["B_FLUX"].data[fibre, b], hdul["B_IVAR"].data[fibre, b] * (hdul["B_MASK"].data[fibre, b] == 0)
        fr, ir = hdul["R_FLUX"].data[fibre, r], hdul["R_IVAR"].data[fibre, r] * (hdul["R_MASK"].data[fibre, r] == 0)
        z_flux = hdul["Z_FLUX"].data[fibre, -1]
    pixel = int(round((overlap - WAVELENGTH_MIN) / WAVELENGTH_STEP))
    assert merged.ivar[fibre, pixel] == pytest.approx(ib + ir, rel=1e-5)
    assert merged.flux[fibre, pixel] == pytest.approx((fb * ib + fr * ir) / (ib + ir), rel=1e-4)
    assert merged.flux[fibre, -1] == pytest.approx(z_flux, rel=1e-5)
    assert np.isinf(merged.error[merged.ivar == 0]).all() and np.isfinite(merged.ivar).all()


def test_corrupt_coadd_is_a_clear_error(tmp_path: Path):
    bad = tmp_path / "coadd-bad.fits"
    bad.write_bytes(b"SIMPLE = junk")
    with pytest.raises(DataError, match="cannot read DESI coadd coadd-bad.fits"):
        read_coadd(bad)


@pytest.fixture
def desi_project(project: Path) -> Path:
    coadds = project / "coadds"
    coadds.mkdir()
    for path in DESI_FILES.glob("coadd-*.fits"):
        shutil.copy(path, coadds)
    cutouts = project / "cutouts"
    cutouts.mkdir()
    rng = np.random.default_rng(0)
    hdus = [fits.PrimaryHDU()] + [fits.ImageHDU(rng.normal(size=(32, 32)).astype("f4"), name=n)
                                  for n in ("VIS", "NISP_Y", "NISP_J", "NISP_H")]
    fits.HDUList(hdus).writeto(cutouts / "39627866878511337.fits")
    fits.HDUList(hdus[:3]).writeto(cutouts / "39627866878514741.fits")  # lacks NISP_J and NISP_H
    return project


def test_desi_source_pairs_spectra_with_cutouts_by_targetid(desi_project: Path):
    config = load_config(root=desi_project, sets=["data.source=desi:coadds", "data.cutouts=cutouts"])
    source = open_source(config)
    result = build_index(source)
    ids = set(result.table.column("object_id").to_pylist())
    assert ids == {39627866878511337, 39627866878514741, 39633297352951412, 39633300968442591}  # science fibres only
    issues: list = []
    samples = {s.object_id: s for s in iter_samples(source, RowChecker(config.data), issues)}
    full = samples[39627866878511337]
    assert full.bands.shape == (4, 32, 32) and full.spectrum is not None and full.rgb is not None
    partial = [i for i in issues if i.object_id == 39627866878514741 and i.action == DROPPED]
    assert [i.field for i in partial] == ["39627866878514741.fits", "bands"]
    assert "lacks extensions NISP_J, NISP_H" in partial[0].reason
    assert samples[39627866878514741].bands is None and samples[39627866878514741].spectrum is not None
    # a real target whose spectrum is fully masked and has no cutout has nothing usable: skipped
    assert 39633297352951412 not in samples
    assert {(i.field, i.action) for i in issues if i.object_id == 39633297352951412} >= {("spectrum", DROPPED)}
    fetched, _ = Fetcher(source, ObjectIndex(result.table)).sample(39633300968442591)
    np.testing.assert_allclose(fetched.spectrum.flux, samples[39633300968442591].spectrum.flux)


def _hub_like_dataset(root: Path) -> Path:
    """A dataset directory laid out like the hub repository: data/<split>-NNNNN-of-NNNNN.parquet."""
    write_rows(root / "data" / "train-00000-of-00001.parquet", [tagged_row(i) for i in range(10, 16)])
    write_rows(root / "data" / "test-00000-of-00001.parquet", [tagged_row(i) for i in range(20, 23)])
    return root


@pytest.fixture
def offline_hf(monkeypatch, tmp_path: Path):
    """The hub is unreachable here: force offline mode and an empty HF cache."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))


@pytest.mark.parametrize("streaming", [False, True])
def test_hf_source_through_datasets_offline(project: Path, offline_hf, streaming):
    _hub_like_dataset(project / "hub_copy")
    config = load_config(root=project, sets=["data.source=hf:hub_copy", f"data.streaming={streaming}"])
    source = open_source(config)
    assert source.shards() == ["train", "test"]
    result = build_index(source)
    assert result.table.column("object_id").to_pylist() == [10, 11, 12, 13, 14, 15, 20, 21, 22]
    issues: list = []
    samples = list(iter_samples(source, RowChecker(), issues, batch_size=4))
    assert issues == [] and [row_tag(s) for s in samples][:2] == [(10, 10), (11, 11)]
    fetcher = Fetcher(source, ObjectIndex(result.table))
    if streaming:
        with pytest.raises(DataError, match="random access"):
            fetcher.rows([21])
    else:
        sample, _ = fetcher.sample(21)
        assert row_tag(sample) == (21, 21)


def test_uncached_hub_dataset_offline_is_a_clear_error(project: Path, offline_hf):
    config = load_config(root=project)  # default source is overridden to the real hub id
    source = open_source(config, "hf:msiudek/astroPT_euclid_Q1_desi_dr1_dataset")
    with pytest.raises(ConfigError, match="cannot load Hugging Face dataset 'msiudek/astroPT_euclid_Q1_desi_dr1_dataset'"):
        source.read_ids("train")
