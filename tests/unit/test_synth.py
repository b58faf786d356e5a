"""The synthetic Euclid x DESI survey: files and contracts, reproducibility, and physics that the
detectors rely on (lines where the redshift says, colours by type, PSFs, anomalies that look like
what they claim to be)."""

from __future__ import annotations

import copy
import json

import galsim
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fmb.data.schema import ROW_SCHEMA, ZEROPOINT_NJY_PER_ADU
from fmb.data.synth import ANOMALY_CLASSES, CLASSES, synthesize
from fmb.data.synth.anomalies import build, calibration_jump, dead_segment, satellite_trail
from fmb.data.synth.generate import ChunkTask, generate_chunk, get_context, observe
from fmb.data.synth.scene import Scene, render
from fmb.data.synth.sed import galaxy_total_sed
from fmb.layout import OWNER_MARKER, SurveyLayout, owner_marker

N, SEED, RATE = 192, 3, 0.1  # a high anomaly rate so every class shows up in a small survey
HALPHA, OIII = 6564.61, 5008.24


@pytest.fixture(scope="module")
def survey(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("synth")
    finished = []
    summary = synthesize(out, N, SEED, anomaly_rate=RATE, workers=1, shard_size=100, progress=finished.append)
    rows = pa.concat_tables([pq.read_table(path) for path in sorted(out.glob("part-*.parquet"))])
    return {"out": out, "summary": summary, "finished": finished, "rows": rows,
            "truth": pq.read_table(SurveyLayout(out).truth).to_pandas(),
            "catalog": pq.read_table(SurveyLayout(out).catalog).to_pandas()}


def arrays(rows: pa.Table, column: str) -> np.ndarray:
    return np.array(rows.column(column).to_pylist(), dtype=np.float32)


def spectra(rows: pa.Table, part: str) -> np.ndarray:
    return np.array(rows.column("spectrum").combine_chunks().field(part).to_pylist(), dtype=np.float64)


def select(survey: dict, mask) -> np.ndarray:
    """Row positions (in the parts) of truth rows matching `mask`."""
    ids = survey["truth"].object_id[mask].to_numpy()
    return np.flatnonzero(np.isin(survey["rows"].column("object_id").to_numpy(), ids))


# --- files and contracts --------------------------------------------------------------------------

def test_files_schemas_and_row_groups(survey):
    out = survey["out"]
    parts = sorted(out.glob("part-*.parquet"))
    assert [pq.ParquetFile(path).metadata.num_rows for path in parts] == [100, 92]
    for path, groups in zip(parts, ([64, 36], [64, 28])):
        assert pq.read_schema(path).equals(ROW_SCHEMA)
        metadata = pq.ParquetFile(path).metadata
        assert [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)] == groups
        assert metadata.row_group(0).column(0).compression == "ZSTD"
    catalog = pq.read_schema(SurveyLayout(out).catalog)
    assert catalog.names == ["TARGETID", "Z", "LOGM", "LOGSFR", "SPECTYPE"]
    assert catalog.field("TARGETID").type == pa.int64() and catalog.field("Z").type == pa.float64()
    truth = survey["truth"]
    for column in ("object_id", "anomaly_class", "galaxy_type", "z", "logm", "logsfr", "r_half_arcsec",
                   "ellipticity", "bulge_fraction", "depth_vis", "spec_depth", "anomaly_params"):
        assert column in truth.columns
    info = json.loads(SurveyLayout(out).summary.read_text())
    assert info["n"] == N and sum(info["classes"].values()) == N and info["seed"] == SEED
    assert sum(survey["finished"]) == N
    assert not list(out.glob(".tmp-*")), "temporary files left behind"


def test_ids_unique_targetid_like_and_consistent(survey):
    rows, truth, catalog = survey["rows"], survey["truth"], survey["catalog"]
    ids = rows.column("object_id").to_numpy()
    assert len(np.unique(ids)) == N
    assert all(len(str(i)) == 17 for i in ids)
    assert (rows.column("targetid").to_numpy() == ids).all()
    assert (truth.object_id.to_numpy() == ids).all() and (catalog.TARGETID.to_numpy() == ids).all()
    np.testing.assert_array_equal(rows.column("redshift").to_numpy(), catalog.Z.to_numpy())
    assert set(catalog.SPECTYPE) <= {"GALAXY", "QSO", "STAR"}


def test_every_class_present_at_about_the_rate(survey):
    counts = survey["summary"]["classes"]
    assert set(counts) == set(CLASSES) and len(ANOMALY_CLASSES) == 8
    for name in ANOMALY_CLASSES:
        assert 5 <= counts[name] <= 45, (name, counts[name])
    assert set(survey["truth"].anomaly_class) == set(CLASSES)
    with pytest.raises(ValueError, match="anomaly_rate"):
        synthesize(survey["out"] / "bad", 10, anomaly_rate=0.2)


def test_values_finite_errors_positive(survey):
    rows = survey["rows"]
    for column in ("VIS_image", "NISP_Y_image", "NISP_J_image", "NISP_H_image"):
        images = arrays(rows, column)
        assert images.shape == (N, 64, 64) and np.isfinite(images).all()
    flux, error = spectra(rows, "flux"), spectra(rows, "error")
    assert flux.shape == (N, 7781) and np.isfinite(flux).all()
    assert np.isfinite(error).all() and (error > 0).all()
    sed = rows.column("sed_data").to_pylist()
    assert all(np.isfinite(list(entry.values())).all() and entry["flux_VIS"] > 0 for entry in sed)


# --- reproducibility --------------------------------------------------------------------------

def test_same_seed_two_workers_identical_and_prefix_stable(survey, tmp_path):
    """Another run with the same seed, two worker processes, a different n and shard size: the
    objects it shares with the fixture are byte-identical; stale parts of a survey directory fmb
    made (its marker) go."""
    layout = SurveyLayout(tmp_path)
    owner_marker(tmp_path).write_text("made by fmb")
    layout.part(9).write_bytes(b"stale")
    summary = synthesize(tmp_path, 130, SEED, anomaly_rate=RATE, workers=2, shard_size=64)
    rows = pa.concat_tables([pq.read_table(path) for path in summary["parts"]])
    assert sorted(tmp_path.glob("part-*.parquet")) == [layout.part(i) for i in range(3)]
    assert rows.equals(survey["rows"].slice(0, 130))
    truth = pq.read_table(layout.truth)
    assert truth.equals(pq.read_table(SurveyLayout(survey["out"]).truth).slice(0, 130))


def test_different_seed_differs(survey):
    other = generate_chunk(ChunkTask(SEED + 1, 0, 4, 64, RATE)).rows
    same = generate_chunk(ChunkTask(SEED, 0, 4, 64, RATE)).rows
    assert same.equals(survey["rows"].slice(0, 4))
    assert not np.array_equal(arrays(other, "VIS_image"), arrays(same, "VIS_image"))
    assert not set(other.column("object_id").to_pylist()) & set(same.column("object_id").to_pylist())


def test_failed_run_leaves_no_partial_files(tmp_path):
    def stop(_k):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        synthesize(tmp_path, 100, SEED, workers=1, shard_size=1000, progress=stop)
    assert sorted(path.name for path in tmp_path.iterdir()) == [OWNER_MARKER]  # the claim, no data


# --- physics of the normal population ---------------------------------------------------------

def line_snr(flux, error, wave, centre):
    """S/N of the flux excess within +-6 A of `centre` over the median of 20-60 A side bands,
    on pixels the real DESI noise template does not mask (those carry a huge error, flux 0)."""
    good = error < 100
    core = (np.abs(wave - centre) < 6) & good
    side = (np.abs(wave - centre) > 20) & (np.abs(wave - centre) < 60) & good
    excess = np.sum(flux[core] - np.median(flux[side]))
    return excess / np.sqrt(np.sum(error[core] ** 2))


def test_star_forming_lines_sit_at_the_catalogue_redshift(survey):
    truth, rows = survey["truth"], survey["rows"]
    wave = spectra(rows.slice(0, 1), "wavelength")[0]
    flux, error = spectra(rows, "flux"), spectra(rows, "error")
    star_forming = (truth.anomaly_class == "none") & truth.galaxy_type.isin(["disc", "irregular"])
    strong = star_forming & (truth.halpha_flux * truth.fibre_fraction > 30) & (truth.z < 0.45)
    positions = select(survey, strong)
    assert len(positions) >= 5
    for position in positions:
        z = survey["catalog"].Z[position]
        assert line_snr(flux[position], error[position], wave, HALPHA * (1 + z)) > 5
        wrong = line_snr(flux[position], error[position], wave, HALPHA * (1 + z) + 150)
        assert abs(wrong) < 5  # no line where the redshift says there is none
    # a stack of all star-forming spectra in the rest frame shows H-alpha and [O III]
    rest = np.arange(4900, 6700, 1.0)
    stack = np.mean([np.interp(rest, wave / (1 + survey["catalog"].Z[p]), flux[p] / np.median(np.abs(flux[p])))
                     for p in select(survey, star_forming & (truth.z < 0.45))], axis=0)
    for centre in (HALPHA, OIII):
        assert stack[np.abs(rest - centre) < 3].mean() > np.median(stack[np.abs(rest - centre) < 60]) + 0.5


@pytest.mark.parametrize("anomaly_class", ["none", "extreme_emitter"])
def test_image_components_carry_all_of_the_galaxys_light(anomaly_class):
    """Bulge + disc + knots add up to the galaxy's SED (band fluxes and spectrum): no light lost
    or double counted between the image and the spectrum."""
    ctx = get_context(64)
    for seed in range(6):
        draft = build(anomaly_class, ctx, np.random.default_rng(seed))
        whole = galaxy_total_sed(ctx.lib, draft.galaxy, draft.line_fluxes)
        np.testing.assert_allclose(draft.scene.band_njy, whole.band_njy, rtol=1e-9)
        parts = np.sum([component.sed.spectrum for component in draft.scene.components], axis=0)
        np.testing.assert_allclose(parts, whole.spectrum, rtol=1e-9, atol=1e-12)


def test_ellipticals_are_redder_than_star_forming_galaxies(survey):
    truth = survey["truth"]
    sed = survey["rows"].column("sed_data").to_pandas()
    colour = -2.5 * np.log10(np.array([s["flux_H"] / s["flux_VIS"] for s in sed]))  # H - VIS, AB
    normal = truth.anomaly_class.isin(["none", "image_artefact", "spectrum_artefact"])
    red = colour[select(survey, normal & (truth.galaxy_type == "elliptical"))]
    blue = colour[select(survey, normal & truth.galaxy_type.isin(["disc", "irregular"]))]
    assert red.mean() < blue.mean() - 0.4, (red.mean(), blue.mean())


def test_image_photometry_agrees_with_catalogue_fluxes(survey):
    truth, rows = survey["truth"], survey["rows"]
    compact = select(survey, (truth.anomaly_class == "none") & (truth.r_half_arcsec < 0.6) & (truth.mag_vis < 22))
    assert len(compact) >= 3
    vis = arrays(rows, "VIS_image")
    for position in compact:
        measured = vis[position].sum() * ZEROPOINT_NJY_PER_ADU["VIS"]
        expected = rows.column("sed_data")[int(position)].as_py()["flux_VIS"]
        assert measured == pytest.approx(expected, rel=0.15)


def adaptive_sigma(image: np.ndarray) -> float:
    return galsim.hsm.FindAdaptiveMom(galsim.Image(image.astype(np.float64))).moments_sigma


def test_stars_are_point_sources_sharper_in_vis_than_nisp(survey):
    truth, rows = survey["truth"], survey["rows"]
    stars = select(survey, truth.anomaly_class == "star")
    assert (survey["catalog"].SPECTYPE[stars] == "STAR").all() and (np.abs(survey["catalog"].Z[stars]) < 1e-3).all()
    vis, h = arrays(rows, "VIS_image"), arrays(rows, "NISP_H_image")
    vis_sigma = [adaptive_sigma(vis[p]) for p in stars]
    h_sigma = [adaptive_sigma(h[p]) for p in stars]
    assert max(vis_sigma) < 1.2 and min(h_sigma) > 1.6  # pixels: 0.17" and 0.48" FWHM PSFs
    galaxies = select(survey, (truth.anomaly_class == "none") & (truth.r_half_arcsec > 0.5) & (truth.mag_vis < 22))
    assert np.median([adaptive_sigma(vis[p]) for p in galaxies]) > 3 * max(vis_sigma)


# --- anomalies ------------------------------------------------------------------------------

def test_mispaired_spectrum_belongs_to_another_galaxy(survey):
    truth = survey["truth"]
    mispaired = truth[truth.anomaly_class == "mispaired"]
    assert len(mispaired)
    for _, row in mispaired.iterrows():
        ghost = json.loads(row.anomaly_params)
        assert ghost["ghost_z"] == pytest.approx(row.catalog_z)
        assert abs(row.z - row.catalog_z) > 1e-3  # the image's galaxy is elsewhere in redshift
    normal = truth[truth.anomaly_class != "mispaired"]
    galaxies = normal.spectype == "GALAXY"
    np.testing.assert_allclose(normal.z[galaxies], normal.catalog_z[galaxies])


def test_strong_lens_source_light_sits_at_the_einstein_radius():
    ctx = get_context(64)
    for seed in range(4):
        draft = build("strong_lens", ctx, np.random.default_rng(seed))
        theta_e = draft.params["theta_e_arcsec"]
        source = [c for c in draft.scene.components if c.name == "lensed_source"]
        image = render(Scene(source), ctx.optics).model[0]
        y, x = np.mgrid[0:64, 0:64]
        radius = np.hypot(x - 31.5, y - 31.5) * 0.1
        near_ring = image[np.abs(radius - theta_e) < 0.35].sum() / image.sum()
        assert near_ring > 0.7, (seed, near_ring)
        assert draft.params["z_source"] > draft.catalog["Z"] + 0.25
        assert 150 < draft.params["sigma_sis_kms"] < 450


def test_strong_lens_spectrum_shows_source_lines(survey):
    """The source's [O II] appears in the lens spectrum where z_source puts it."""
    truth, rows = survey["truth"], survey["rows"]
    wave = spectra(rows.slice(0, 1), "wavelength")[0]
    positions = select(survey, truth.anomaly_class == "strong_lens")
    flux, error = spectra(rows, "flux"), spectra(rows, "error")
    snrs = [line_snr(flux[p], error[p], wave, 3728.5 * (1 + json.loads(truth.anomaly_params[p])["z_source"]))
            for p in positions if json.loads(truth.anomaly_params[p])["z_source"] < 1.6]
    assert np.median(snrs) > 3, snrs


def test_qso_and_extreme_emitters_in_spectra(survey):
    truth, rows = survey["truth"], survey["rows"]
    wave = spectra(rows.slice(0, 1), "wavelength")[0]
    flux, error = spectra(rows, "flux"), spectra(rows, "error")
    assert (survey["catalog"].SPECTYPE[select(survey, truth.anomaly_class == "qso_agn")] == "QSO").all()
    emitters = select(survey, (truth.anomaly_class == "extreme_emitter"))
    snrs = [line_snr(flux[p], error[p], wave, OIII * (1 + truth.z[p])) for p in emitters]
    assert all(json.loads(truth.anomaly_params[p])["ew_oiii_rest"] >= 300 for p in emitters)
    assert np.median(snrs) > 20 and min(snrs) > 3, snrs  # some land on sky lines
    assert truth.mag_vis[emitters].median() > 20  # faint in the image


@pytest.mark.parametrize("anomaly_class", ["image_artefact", "spectrum_artefact"])
def test_artefacts_touch_only_their_modality(anomaly_class):
    """Observing the same draft with and without its artefact hook: only one modality changes."""
    ctx = get_context(64)
    draft = build(anomaly_class, ctx, np.random.default_rng(11))
    clean = copy.deepcopy(draft)
    clean.image_hook = clean.spectrum_hook = None
    with_artefact = observe(draft, ctx, np.random.default_rng(5))
    without = observe(clean, ctx, np.random.default_rng(5))
    images_same = np.array_equal(with_artefact.images, without.images)
    spectra_same = np.array_equal(with_artefact.flux, without.flux)
    assert (images_same, spectra_same) == ((False, True) if anomaly_class == "image_artefact" else (True, False))


def test_artefact_hooks_do_what_they_say():
    rng = np.random.default_rng(1)
    wave = 3600 + 0.8 * np.arange(7781)
    flux, error = np.ones(7781), np.full(7781, 0.1)
    params = dead_segment(flux, error, wave, np.array([10]), rng)
    dead = (wave >= params["start_wave"]) & (wave <= params["end_wave"])
    assert 150 <= params["end_wave"] - params["start_wave"] <= 600 and np.abs(flux[dead]).max() < 0.1
    flux = np.ones(7781)
    params = calibration_jump(flux, error, wave, np.array([10]), rng)
    region = wave < 5780 if params["arm"] == "B" else wave > 7570
    assert np.allclose(flux[region], params["gain"] + params["offset"]) and np.allclose(flux[~region], 1)
    images = np.zeros((4, 32, 32))
    params = satellite_trail(images, np.ones(4), rng)
    lit = [band for band in range(4) if images[band].max() > 0]
    assert lit == params["bands"] and images[lit[0]].max() > 2
