"""A realistic sky around every object: the nuisances of real Euclid cutouts and DESI spectra.

None of these is an anomaly class: they touch ordinary and anomalous objects alike, so a detector
must learn that they are ordinary.

* faint field galaxies (VIS 23.5-26.5, ~2 per 6.4" cutout at the default: Euclid's VIS counts to
  26 mag are ~150-200 per arcmin^2), anywhere beyond 0.8" of the target;
* a bright neighbour (-1 to +2.5 mag from the target), a fraction of them blended (0.5-1.5" away),
  at its own redshift or, for one in three, the target's (a companion);
* a field star (VIS 16-23) through the PSF plus a broad halo (a Moffat holding 2-5 % of its light),
  placed in a box 1.3x the stamp so that some shine in from outside with only their wings;
* a detector edge: a strip of the cutout without data (exactly 0, as MER mosaics fill it);
* correlated NISP noise: white noise on the native 0.3" grid resampled (bilinear) onto the 0.1" MER
  grid, rescaled to the same per-pixel sigma;
* sky-subtraction residuals at the sky lines (a mis-scaled and slightly shifted sky model: the
  excess error of the line pixels times a per-spectrum scale and shift) and telluric-correction
  residuals in the O2 and H2O bands, neither in the pipeline's error;
* fibre light from neighbours: every nuisance source is in the scene the fibre sees, so the light
  of a close neighbour or star enters the spectrum through its fibre fraction.

Every draw uses a generator spawned from the object's own (`Generator.spawn` does not advance it),
so a clean survey (`Sky()`, all rates 0) is bit for bit the survey without this module.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import galsim
import numpy as np
from scipy.ndimage import median_filter, zoom

from fmb.data.synth.components import point_component, sersic, stamp_reach
from fmb.data.synth.library import Library
from fmb.data.synth.population import draw_galaxy
from fmb.data.synth.scene import GSPARAMS, PIXEL_SCALE, Component, Scene
from fmb.data.synth.sed import galaxy_total_sed, star_sed

NJY_AB_ZERO = 3631e9
FIELD_MAG_RANGE = (23.5, 26.5)  # VIS AB of faint field galaxies
FIELD_RADIUS_RANGE = (0.08, 0.4)  # arcsec, half-light radius
FIELD_MIN_DISTANCE = 0.8  # arcsec from the target: closer, a faint galaxy is part of its segment
NEIGHBOUR_DELTA_MAG = (-1.0, 2.5)  # VIS magnitude of a bright neighbour minus the target's
NEIGHBOUR_DISTANCE = (1.5, 3.0)  # arcsec; a blend is closer
BLEND_DISTANCE = (0.5, 1.5)
COMPANION_FRACTION = 1 / 3  # neighbours at the target's redshift
STAR_MAG_RANGE = (16.0, 23.0)
STAR_BOX = 1.3  # stars are placed in a box this many stamps wide: some only shine in with their wings
HALO_FRACTION = (0.02, 0.05)  # of a star's light in its broad halo (scattered light)
HALO_FWHM, HALO_BETA = 1.5, 2.0  # arcsec, Moffat
EDGE_DEPTH = (0.1, 0.4)  # of the stamp side without data; < 0.5 keeps the target on the detector
NISP_NATIVE_PX = 3  # 0.3" NISP pixels on the 0.1" MER grid
#: (start, end) Angstrom of the telluric bands DESI corrects: O2 B and A bands, H2O bands
TELLURIC_BANDS = ((6864.0, 6884.0), (7160.0, 7340.0), (7594.0, 7630.0), (8130.0, 8350.0), (8950.0, 9800.0))
TELLURIC_RESIDUAL = 0.03  # sigma of the fractional correction error per band at sky_residual 1
SKY_SCALE_ERROR = 1.0  # sigma of the sky-model scale error, in units of the line pixels' excess error
SKY_SHIFT_ERROR = 0.3  # sigma of the sky-model wavelength error, pixels


@dataclass(frozen=True)
class Sky:
    """How much of each nuisance a survey has; the defaults (all 0) give the clean survey."""

    field_galaxies: float = 0.0  # mean number of faint field galaxies per cutout (Poisson)
    neighbour_rate: float = 0.0  # probability of a bright neighbour
    blend_fraction: float = 0.0  # of those neighbours, the fraction blended with the target
    star_rate: float = 0.0  # probability of a field star in or near the cutout
    edge_rate: float = 0.0  # probability that a detector edge truncates the cutout
    nisp_correlated_noise: bool = False  # NISP noise correlated by resampling
    sky_residual: float = 0.0  # scale of the sky-line and telluric residuals in the spectra (0: none)

    def __post_init__(self):
        for name in ("neighbour_rate", "blend_fraction", "star_rate", "edge_rate"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"sky.{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0 <= self.field_galaxies < float("inf") or not 0 <= self.sky_residual < float("inf"):
            raise ValueError("sky.field_galaxies and sky.sky_residual must be finite and >= 0")

    @property
    def clean(self) -> bool:
        return self == Sky()


CLEAN = Sky()


@dataclass
class Nuisances:
    """What was added to one object's scene (truth columns)."""

    field_galaxies: int = 0
    neighbours: int = 0
    blended: int = 0
    stars: int = 0
    edge_px: int = 0  # width of the strip without data

    def truth(self) -> dict:
        return {"sky_field_galaxies": self.field_galaxies, "sky_neighbours": self.neighbours,
                "sky_blended": self.blended, "sky_stars": self.stars, "sky_edge_px": self.edge_px}


def add_sources(scene: Scene, sky: Sky, lib: Library, size: int, tracer_fractions, z_target: float,
                rng: np.random.Generator) -> Nuisances:
    """Add the field galaxies, neighbour and star of this object to `scene` (nuisance components)."""
    drawn = Nuisances()
    target_vis = max(float(scene.band_njy[0]), 1e-3)
    reach = stamp_reach(size)
    half = size * PIXEL_SCALE / 2
    for _ in range(int(rng.poisson(sky.field_galaxies))):
        position = _position_away(rng, half, FIELD_MIN_DISTANCE)
        vis = NJY_AB_ZERO * 10 ** (-0.4 * rng.uniform(*FIELD_MAG_RANGE))
        scene.components.append(galaxy_blob("field", lib, rng, tracer_fractions, None, vis, position, reach))
        drawn.field_galaxies += 1
    if rng.random() < sky.neighbour_rate:
        blended = bool(rng.random() < sky.blend_fraction)
        distance = rng.uniform(*(BLEND_DISTANCE if blended else NEIGHBOUR_DISTANCE))
        angle = rng.uniform(0, 2 * np.pi)
        z = z_target if rng.random() < COMPANION_FRACTION and np.isfinite(z_target) and z_target > 0.01 else None
        vis = target_vis * 10 ** (-0.4 * rng.uniform(*NEIGHBOUR_DELTA_MAG))
        position = (distance * np.cos(angle), distance * np.sin(angle))
        scene.components.append(galaxy_blob("neighbour", lib, rng, tracer_fractions, z, vis, position, reach))
        drawn.neighbours, drawn.blended = 1, int(blended)
    if rng.random() < sky.star_rate:
        position = tuple(float(v) for v in rng.uniform(-STAR_BOX * half, STAR_BOX * half, 2))
        scene.components.extend(field_star(lib, rng, position, NJY_AB_ZERO * 10 ** (-0.4 * rng.uniform(*STAR_MAG_RANGE))))
        drawn.stars = 1
    return drawn


def _position_away(rng: np.random.Generator, half: float, min_distance: float) -> tuple[float, float]:
    """A uniform position on the stamp (arcsec from its centre) at least `min_distance` from it."""
    while True:
        x, y = rng.uniform(-half, half, 2)
        if np.hypot(x, y) >= min_distance:
            return float(x), float(y)


def galaxy_blob(name: str, lib: Library, rng: np.random.Generator, tracer_fractions, z: float | None,
                 vis_njy: float, position, reach: float) -> Component:
    """A galaxy of the population as one Sersic profile with its whole SED scaled to `vis_njy`."""
    galaxy = draw_galaxy(rng, lib, tracer_fractions=tracer_fractions, **({"z": z} if z is not None else {}))
    sed = galaxy_total_sed(lib, galaxy)
    sed = sed.scaled(vis_njy / max(float(sed.band_njy[0]), 1e-30))
    n = 4 if galaxy.galaxy_type == "elliptical" else 1
    radius = float(np.clip(galaxy.r_half_arcsec, *FIELD_RADIUS_RANGE)) if name == "field" else galaxy.r_half_arcsec
    profile = sersic(n, max(radius, 0.05), reach).shear(q=galaxy.q, beta=galaxy.position_angle * galsim.degrees)
    return Component(name, profile.shift(*position), sed, nuisance=True)


def field_star(lib: Library, rng: np.random.Generator, position, vis: float) -> list[Component]:
    """A field star (point source) of VIS flux `vis` nJy at `position` (arcsec) and its broad halo,
    both with the star's SED."""
    light = star_sed(lib, rng.uniform(0, 2), rng.uniform(0.0, 0.1), rng.normal(0, 40), vis)
    halo_fraction = rng.uniform(*HALO_FRACTION)
    core = point_component("star", light.scaled(1 - halo_fraction), shift=position)
    halo = galsim.Moffat(beta=HALO_BETA, fwhm=HALO_FWHM, gsparams=GSPARAMS).shift(*position)
    core.nuisance = True
    return [core, Component("star_halo", halo, light.scaled(halo_fraction), nuisance=True)]


def nisp_noise(shape: tuple[int, int], sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Noise of a NISP band on the MER grid: white on the native grid, resampled (bilinear), with
    per-pixel sigma `sigma` on average."""
    native = rng.normal(0.0, 1.0, (shape[0] // NISP_NATIVE_PX + 3, shape[1] // NISP_NATIVE_PX + 3))
    start = int(rng.integers(NISP_NATIVE_PX))  # the native grid's phase on the MER grid
    fine = zoom(native, NISP_NATIVE_PX, order=1)[start:start + shape[0], start:start + shape[1]]
    return fine * (sigma / _resampled_sigma())


@functools.cache
def _resampled_sigma() -> float:
    """Mean per-pixel sigma of unit white noise after the resampling (measured once, seeded)."""
    native = np.random.default_rng(0).normal(0.0, 1.0, (400, 400))
    return float(zoom(native, NISP_NATIVE_PX, order=1)[30:-30, 30:-30].std())


def truncate_at_edge(images: np.ndarray, rng: np.random.Generator) -> int:
    """Blank a strip along one side of every band (no data: 0); returns its width in pixels."""
    size = images.shape[-1]
    width = int(round(rng.uniform(*EDGE_DEPTH) * size))
    side = int(rng.integers(4))
    strip = [slice(None)] * 3
    strip[1 + side % 2] = slice(0, width) if side < 2 else slice(size - width, size)
    images[tuple(strip)] = 0.0
    return width


def add_sky_residuals(flux: np.ndarray, error: np.ndarray, wave: np.ndarray, noise_template: np.ndarray,
                      scale: float, rng: np.random.Generator) -> None:
    """Sky-subtraction and telluric-correction residuals, in place; `error` is left as the pipeline
    gives it (which is what makes them nuisances: they are larger than the error says)."""
    excess = error * _excess_error_fraction(noise_template)
    amplitude, shift = rng.normal(0.0, SKY_SCALE_ERROR * scale), rng.normal(0.0, SKY_SHIFT_ERROR * scale)
    flux += amplitude * excess + shift * np.gradient(excess)
    for start, end in TELLURIC_BANDS:
        inside = (wave >= start) & (wave <= end)
        if inside.any():
            flux[inside] *= 1.0 + rng.normal(0.0, TELLURIC_RESIDUAL * scale)


def _excess_error_fraction(noise_ivar: np.ndarray) -> np.ndarray:
    """(error - its running median) / error of a noise template: how much of each pixel's error the
    sky lines add (0 between the lines)."""
    return _excess_cached(noise_ivar.tobytes(), noise_ivar.dtype.str)


@functools.lru_cache(maxsize=64)
def _excess_cached(buffer: bytes, dtype: str) -> np.ndarray:
    ivar = np.frombuffer(buffer, dtype=dtype)
    good = ivar > 0
    error = np.where(good, 1.0 / np.sqrt(np.where(good, ivar, 1.0)), 0.0)
    smooth = median_filter(error, size=51, mode="nearest")
    return np.where(good & (error > 0), np.clip(error - smooth, 0.0, None) / np.where(error > 0, error, 1.0), 0.0)
