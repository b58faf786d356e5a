"""One chunk of the survey: draw, render and observe `CHUNK_SIZE` objects, return Arrow tables.

Reproducibility: chunk k uses only `np.random.default_rng([seed, k])`; it picks each object's class
and a seed for the object's own generator, so an object never depends on which process made it,
on the number of workers, on the shard size, or on how many objects come after it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
from dataclasses import dataclass

import galsim
import numpy as np
import pyarrow as pa

from fmb.data.schema import BAND_NAMES, make_row, rows_to_table
from fmb.data.synth.anomalies import CLASSES, Context, Draft, build
from fmb.data.synth.library import FLUX_UNIT, get_library
from fmb.data.synth.population import DEFAULT_TRACER_FRACTIONS, Galaxy
from fmb.data.synth.scene import (DEPTH_NISP, DEPTH_VIS, SEEING_FWHM, add_image_noise, add_spectrum_noise,
                                  fibre_fractions, fibre_spectrum, get_optics, render)
from fmb.data.synth.sed import LINE_NAMES, ab_mag
from fmb.data.synth.sky import CLEAN, Nuisances, Sky, add_sky_residuals, add_sources, nisp_noise, truncate_at_edge

CHUNK_SIZE = 64
#: DESI TARGETIDs of Legacy Surveys DR9 targets look like 39627xxxxxxxxxxxx (17 digits).
ID_BASE = 39_627_000_000_000_000
DEPTH_SCATTER_MAG = 0.15  # object-to-object imaging depth variation (dithers, coverage)
SPEC_DEPTH_SCATTER_DEX = 0.2  # object-to-object spectroscopic depth (exposure time, conditions)

CATALOG_SCHEMA = pa.schema([("TARGETID", pa.int64()), ("Z", pa.float64()), ("LOGM", pa.float64()),
                            ("LOGSFR", pa.float64()), ("SPECTYPE", pa.string())])
#: Every Galaxy parameter is a truth column (typed from the dataclass), plus derived ones.
_ARROW_TYPES = {"str": pa.string(), "float": pa.float64(), "int": pa.int32()}
_GALAXY_FIELDS = {
    **{field.name: _ARROW_TYPES[field.type] for field in dataclasses.fields(Galaxy)},
    "ellipticity": pa.float64(), "halpha_flux": pa.float64(), "oiii_5008_flux": pa.float64(), "oii_flux": pa.float64(),
}
TRUTH_SCHEMA = pa.schema([
    ("object_id", pa.int64()), ("anomaly_class", pa.string()), ("spectype", pa.string()),
    ("catalog_z", pa.float64()), *_GALAXY_FIELDS.items(),
    *[(f"mag_{band.lower()}", pa.float64()) for band in BAND_NAMES],
    ("fibre_fraction", pa.float64()), ("depth_vis", pa.float64()), ("depth_nisp", pa.float64()),
    ("spec_depth", pa.float64()), ("noise_template", pa.int32()), ("offset_x", pa.float64()),
    ("offset_y", pa.float64()), ("seeing", pa.float64()), ("anomaly_params", pa.string()),
    *[(name, pa.int32()) for name in Nuisances().truth()], ("sky_fibre_light", pa.float64()),
])


@dataclass(frozen=True)
class Variant:
    """How a survey departs from the nominal one (a shifted test survey); the defaults change no bit."""

    psf_scale: float = 1.0  # times the FWHM of the VIS and NISP PSFs
    noise_scale: float = 1.0  # times the pixel noise of every band and the spectrum noise
    tracer_fractions: tuple[float, ...] = DEFAULT_TRACER_FRACTIONS  # base population, TRACERS order
    sky: Sky = CLEAN  # nuisances around every object (fmb.data.synth.sky)


NOMINAL = Variant()


@dataclass(frozen=True)
class ChunkTask:
    seed: int
    index: int  # chunk number k
    count: int  # objects to keep (CHUNK_SIZE except in the last chunk)
    cutout_px: int
    anomaly_rate: float
    variant: Variant = NOMINAL


@dataclass
class ChunkResult:
    rows: pa.Table
    truth: pa.Table
    catalog: pa.Table


@functools.cache
def get_context(cutout_px: int, variant: Variant = NOMINAL) -> Context:
    return Context(get_library(), get_optics(cutout_px, variant.psf_scale), variant.noise_scale,
                   variant.tracer_fractions, variant.sky)


def class_probabilities(anomaly_rate: float) -> np.ndarray:
    n_anomalous = len(CLASSES) - 1
    if not 0 <= anomaly_rate * n_anomalous <= 1:
        raise ValueError(f"anomaly_rate must be in [0, {1 / n_anomalous:.4f}], got {anomaly_rate}")
    return np.array([1 - n_anomalous * anomaly_rate] + [anomaly_rate] * n_anomalous)


def object_ids(seed: int, start: int, count: int) -> np.ndarray:
    """17-digit, TARGETID-like ids: a seed-dependent block plus the running index."""
    return ID_BASE + (seed % 1000) * 1_000_000_000 + start + np.arange(count, dtype=np.int64)


@contextlib.contextmanager
def single_threaded_galsim():
    """GalSim's OpenMP noise generation is 100x slower when its threads compete with the other
    worker processes (measured 12 ms vs 0.14 ms per 64x64 stamp); parallelism here is by process."""
    previous = galsim.get_omp_threads()
    galsim.set_omp_threads(1)
    try:
        yield
    finally:
        galsim.set_omp_threads(previous)


def generate_chunk(task: ChunkTask) -> ChunkResult:
    """Objects task.index * CHUNK_SIZE ... (+ task.count) as row, truth and catalog tables."""
    with single_threaded_galsim():
        return _generate_chunk(task)


def _generate_chunk(task: ChunkTask) -> ChunkResult:
    ctx = get_context(task.cutout_px, task.variant)
    rng = np.random.default_rng([task.seed, task.index])
    classes = rng.choice(len(CLASSES), size=CHUNK_SIZE, p=class_probabilities(task.anomaly_rate))
    seeds = rng.integers(0, 2**63 - 1, size=CHUNK_SIZE)
    ids = object_ids(task.seed, task.index * CHUNK_SIZE, CHUNK_SIZE)
    rows, truths, catalogs = [], [], []
    for j in range(task.count):
        row, truth, catalog = make_object(int(ids[j]), CLASSES[classes[j]], ctx, np.random.default_rng(seeds[j]))
        rows.append(row)
        truths.append(truth)
        catalogs.append(catalog)
    return ChunkResult(
        rows_to_table(rows),
        pa.Table.from_pylist(truths, schema=TRUTH_SCHEMA),
        pa.Table.from_pylist(catalogs, schema=CATALOG_SCHEMA),
    )


#: The synthetic survey's footprint: a 3 x 3 degree field (in RA cos Dec and Dec) centred on the Euclid
#: Deep Field Fornax, each object placed uniformly in it by its id (the object's own draws are untouched).
FOOTPRINT_CENTRE_DEG = (52.93, -28.09)
FOOTPRINT_SIDE_DEG = 3.0


def footprint_position(object_id: int) -> tuple[float, float]:
    """(RA, Dec) in degrees of an object of the synthetic survey, a function of its id alone."""
    along, across = np.random.default_rng([object_id & 0xFFFFFFFF, object_id >> 32]).uniform(-0.5, 0.5, 2)
    dec = FOOTPRINT_CENTRE_DEG[1] + FOOTPRINT_SIDE_DEG * across
    ra = FOOTPRINT_CENTRE_DEG[0] + FOOTPRINT_SIDE_DEG * along / np.cos(np.radians(dec))
    return float(ra % 360), float(dec)


def make_object(object_id: int, anomaly_class: str, ctx: Context, rng: np.random.Generator):
    """Build, render and observe one object: (contract row, truth record, catalog record)."""
    draft = build(anomaly_class, ctx, rng)
    observation = observe(draft, ctx, rng)
    catalog = {"TARGETID": object_id, **draft.catalog}
    ra, dec = footprint_position(object_id)
    row = make_row(object_id=object_id, bands=observation.images, flux=observation.flux, error=observation.error,
                   redshift=float(catalog["Z"]), sed=dict(zip([f"flux_{b}" for b in BAND_NAMES], observation.band_njy.tolist())),
                   ra=ra, dec=dec)
    truth = truth_record(object_id, anomaly_class, draft, observation)
    return row, truth, catalog


@dataclass
class Observation:
    images: np.ndarray  # (4, H, W) float32 ADU
    flux: np.ndarray
    error: np.ndarray
    band_njy: np.ndarray  # total fluxes of the object (not of its nuisance neighbours)
    fibre_fraction: float
    conditions: dict
    nuisances: Nuisances = dataclasses.field(default_factory=Nuisances)
    nuisance_fibre_light: float = 0.0  # fraction of the fibre's VIS light from nuisance sources


def observe(draft: Draft, ctx: Context, rng: np.random.Generator) -> Observation:
    """Euclid images and the DESI fibre spectrum of a draft, with noise, depths, artefacts and the
    sky's nuisances (drawn from a generator spawned from `rng`, which leaves its stream as it is)."""
    optics, lib, sky = ctx.optics, ctx.lib, ctx.sky
    sky_rng = None if sky.clean else rng.spawn(1)[0]
    scene = draft.scene
    scene.offset = tuple(float(v) for v in rng.uniform(-0.5, 0.5, 2))
    scene.seeing = float(np.clip(rng.normal(SEEING_FWHM, 0.2), 0.7, 1.8))
    nuisances = Nuisances() if sky_rng is None else add_sources(
        scene, sky, lib, optics.size, ctx.tracer_fractions, float(draft.catalog["Z"]), sky_rng)
    # VIS, NISP: + is deeper; noise_scale x the noise is a survey 2.5 log10(noise_scale) mag shallower
    depth_offsets = rng.normal(0.0, DEPTH_SCATTER_MAG, 2) - 2.5 * np.log10(ctx.noise_scale)
    noise = optics.noise_adu * 10 ** (-0.4 * depth_offsets[[0, 1, 1, 1]])
    rendering = render(scene, optics)
    images = add_image_noise(rendering.model, noise, rng)
    if sky.nisp_correlated_noise:
        for band in (1, 2, 3):
            images[band] = rendering.model[band] + nisp_noise(images.shape[1:], float(noise[band]), sky_rng)

    fibre_scene = draft.spectrum_scene or scene
    fibre_scene.seeing = scene.seeing
    fractions = rendering.fibre_fractions if fibre_scene is scene else fibre_fractions(fibre_scene, optics)
    template = int(rng.integers(len(lib.noise_ivar)))
    spec_depth = float(10 ** rng.normal(0.0, SPEC_DEPTH_SCATTER_DEX)) / ctx.noise_scale**2  # ivar factor
    flux, error = add_spectrum_noise(fibre_spectrum(fibre_scene, fractions), lib.noise_ivar[template] * spec_depth, rng)
    if sky.sky_residual > 0:
        add_sky_residuals(flux, error, lib.desi_wave, lib.noise_ivar[template], sky.sky_residual, sky_rng)

    if draft.image_hook is not None:
        draft.params.update(draft.image_hook(images, noise, rng))
    if sky_rng is not None and sky_rng.random() < sky.edge_rate:
        nuisances.edge_px = truncate_at_edge(images, sky_rng)
    if draft.spectrum_hook is not None:
        draft.params.update(draft.spectrum_hook(flux, error, lib.desi_wave, lib.sky_pixels, rng))
    vis = np.array([c.sed.band_njy[0] * c.in_spectrum for c in fibre_scene.components])
    from_nuisances = np.array([c.nuisance for c in fibre_scene.components])
    fibre_vis = vis * fractions
    conditions = {"depth_vis": DEPTH_VIS + depth_offsets[0], "depth_nisp": DEPTH_NISP + depth_offsets[1],
                  "spec_depth": spec_depth, "noise_template": template,
                  "offset_x": scene.offset[0], "offset_y": scene.offset[1], "seeing": scene.seeing}
    # the object's own fibre fraction; the nuisances' share of the fibre's light beside it
    own = ~from_nuisances
    return Observation(images, flux, error, scene.band_njy, float(fibre_vis[own].sum() / max(vis[own].sum(), 1e-30)),
                       conditions, nuisances, float(fibre_vis[from_nuisances].sum() / max(fibre_vis.sum(), 1e-30)))


def truth_record(object_id: int, anomaly_class: str, draft: Draft, observation: Observation) -> dict:
    """Flat generating parameters of the image's object; class specifics as JSON in anomaly_params."""
    record = {"object_id": object_id, "anomaly_class": anomaly_class, "spectype": draft.catalog["SPECTYPE"],
              "catalog_z": float(draft.catalog["Z"]), **{name: None for name in _GALAXY_FIELDS}}
    galaxy = draft.galaxy
    if galaxy is not None:
        record.update(galaxy.truth())
        record["ellipticity"] = 1.0 - galaxy.q
        lines = dict(zip(LINE_NAMES, draft.line_fluxes / FLUX_UNIT))
        record.update({"halpha_flux": lines["Halpha"], "oiii_5008_flux": lines["OIII_5008"],
                       "oii_flux": lines["OII_3727"] + lines["OII_3730"]})
    for band, njy in zip(BAND_NAMES, observation.band_njy):
        record[f"mag_{band.lower()}"] = ab_mag(njy)
    record["fibre_fraction"] = observation.fibre_fraction
    record.update(observation.conditions)
    record.update(observation.nuisances.truth())
    record["sky_fibre_light"] = observation.nuisance_fibre_light
    record["anomaly_params"] = json.dumps(draft.params, default=_json_default, sort_keys=True)
    return record


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot serialise {type(value).__name__}")
