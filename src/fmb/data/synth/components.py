"""Building blocks shared by the base population and every anomaly class: a galaxy as
bulge + disc + star-forming knots, a point source, and arcs (chains of sheared blobs along a
circle) used both for lensed images and for tidal tails."""

from __future__ import annotations

import functools

import galsim
import numpy as np

from fmb.data.synth.library import Library
from fmb.data.synth.population import Galaxy
from fmb.data.synth.scene import GSPARAMS, PIXEL_SCALE, Component, galsim_deviate
from fmb.data.synth.sed import Sed, galaxy_seds, sfr_line_fluxes

MIN_RADIUS = 0.02  # arcsec: below this a profile is a point source for Euclid anyway
#: Truncation radii in half-light radii. GalSim caches a Sersic profile's Hankel transform per
#: (n, truncation / scale radius), so a short list of ratios keeps every draw on a cached table.
TRUNCATIONS = (5.0, 4.0, 3.0, 2.5, 2.0, 1.6, 1.3, 1.0)


def galaxy_components(lib: Library, galaxy: Galaxy, rng: np.random.Generator, stamp_px: int, *,
                      shift=(0.0, 0.0), line_fluxes: np.ndarray | None = None, in_spectrum: bool = True,
                      prefix: str = "") -> list[Component]:
    """Bulge (truncated de Vaucouleurs), disc (exponential; for ellipticals a faint extended
    envelope) and star-forming knots (GalSim RandomKnots positions), each with its own SED."""
    lines = sfr_line_fluxes(lib, galaxy) if line_fluxes is None else line_fluxes
    seds = galaxy_seds(lib, galaxy, lines)
    if galaxy.n_knots == 0:  # no clumps: their young light stays in the smooth disc
        seds["disc"], seds["knots"] = seds["disc"] + seds["knots"], seds["knots"].scaled(0.0)
    beta = galaxy.position_angle * galsim.degrees
    disc_radius = max(galaxy.r_half_arcsec * (1.5 if galaxy.galaxy_type == "elliptical" else 1.0), MIN_RADIUS)
    bulge_radius = max(galaxy.bulge_r_half_arcsec, MIN_RADIUS)
    reach = stamp_reach(stamp_px)
    profiles = {
        "bulge": sersic(4, bulge_radius, reach).shear(q=galaxy.bulge_q, beta=beta),
        "disc": sersic(1, disc_radius, reach).shear(q=galaxy.q, beta=beta),
    }
    components = [Component(prefix + name, profile.shift(*shift), seds[name], in_spectrum)
                  for name, profile in profiles.items() if seds[name].band_njy[0] > 0]
    if seds["knots"].band_njy[0] > 0:
        # star-forming clumps scattered like the disc light (GalSim RandomKnots), each a Gaussian
        knots = galsim.RandomKnots(galaxy.n_knots, profile=profiles["disc"], rng=galsim_deviate(rng), gsparams=GSPARAMS)
        clump = galsim.Gaussian(sigma=max(galaxy.knot_sigma_arcsec, MIN_RADIUS), gsparams=GSPARAMS)
        components.append(Component(prefix + "knots", clump, seds["knots"], in_spectrum,
                                    points=np.asarray(knots.points) + np.asarray(shift)))
    return components


def stamp_reach(size_px: int) -> float:
    """Radius (arcsec) beyond which light cannot land in the stamp: its half-diagonal, plus a margin."""
    return 0.75 * size_px * PIXEL_SCALE


def sersic(n: int, half_light_radius: float, reach: float) -> galsim.GSObject:
    """A Sersic profile of unit total flux whose FFT stays small.

    Small galaxies: truncated at 5 r_e (n=4; the usual truncated de Vaucouleurs) or a plain
    exponential (n=1). Galaxies bigger than the stamp: truncated just beyond the stamp's reach with
    the flux normalised to the untruncated profile, so the pixels are those of the full profile and
    the light beyond the cut (outside the stamp anyway) still counts in the total; this is 3-10x
    faster than drawing the untruncated profile.
    """
    ratio = min((t for t in TRUNCATIONS if t * half_light_radius >= reach), default=TRUNCATIONS[0])
    return _unit_sersic(n, ratio).dilate(half_light_radius)


@functools.cache
def _unit_sersic(n: int, truncation: float) -> galsim.GSObject:
    """Sersic of half-light radius 1, built once per process: dilating it is free, while every new
    galsim.Sersic recomputes its Fourier-space extent (~0.5 ms)."""
    if truncation >= TRUNCATIONS[0]:  # the galaxy fits in the stamp
        if n == 1:
            return galsim.Exponential(half_light_radius=1.0, gsparams=GSPARAMS)
        return galsim.Sersic(n, half_light_radius=1.0, trunc=truncation, gsparams=GSPARAMS)
    return galsim.Sersic(n, half_light_radius=1.0, trunc=truncation, flux_untruncated=True, gsparams=GSPARAMS)


def point_component(name: str, sed: Sed, shift=(0.0, 0.0), in_spectrum: bool = True) -> Component:
    """An unresolved source (star, QSO nucleus): a delta function, so the image is the PSF."""
    return Component(name, galsim.DeltaFunction(gsparams=GSPARAMS).shift(*shift), sed, in_spectrum)


def arc_profile(blob: galsim.GSObject, radius: float, phi_centre: float, half_angle: float, n_blobs: int,
                shear: float, magnification: float = 1.0, centre=(0.0, 0.0), taper: bool = True) -> galsim.GSObject:
    """A unit-flux arc: `n_blobs` copies of `blob`, each tangentially sheared (stretched along the
    circle) and magnified with GalSim's `lens(g1, g2, mu)`, placed along a circle of `radius`
    around `centre` between phi_centre +- half_angle (radians). With `taper` the light fades
    towards the arc's ends; a full circle with no taper is an Einstein ring."""
    angles = phi_centre + np.linspace(-half_angle, half_angle, n_blobs)
    weights = np.exp(-0.5 * ((angles - phi_centre) / (0.6 * half_angle)) ** 2) if taper else np.ones(n_blobs)
    weights = weights / weights.sum()
    pieces = []
    for angle, weight in zip(angles, weights):
        # tangential stretching: g1 + i g2 = -g exp(2i phi) elongates perpendicular to the radius
        lensed = blob.lens(-shear * np.cos(2 * angle), -shear * np.sin(2 * angle), magnification)
        position = (centre[0] + radius * np.cos(angle), centre[1] + radius * np.sin(angle))
        pieces.append(lensed.withFlux(weight).shift(*position))
    return galsim.Sum(pieces, gsparams=GSPARAMS)
