"""The base population: DESI-like tracers (BGS, LRG, ELG) of three morphological types, with
redshift, stellar mass, star-formation rate, size and shape drawn from published scaling relations.

Relations used (all with their published scatter):
- star-forming main sequence with redshift evolution: Speagle et al. 2014 (their eq. 28),
  log SFR = (0.84 - 0.026 t) log M - (6.51 - 0.11 t), t = cosmic time in Gyr (Planck18);
  quiescent galaxies ~1.5 dex below it;
- mass-size relations of early and late types and their evolution: van der Wel et al. 2014,
  r_e / kpc = A(z) (M / 5e10)^alpha, turned into arcsec with the Planck18 angular-diameter distance;
- disc inclinations isotropic with an intrinsic thickness q0 (Padilla & Strauss 2008 style);
- H-alpha dust attenuation as a function of mass: Garn & Best 2010.
The tracer mix and redshift/mass ranges follow the DESI BGS / LRG / ELG target classes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from fmb.data.synth.library import Library

GALAXY_TYPES = ("elliptical", "disc", "irregular")
#: tracer: (probability, type probabilities in GALAXY_TYPES order)
TRACERS = {
    "BGS": (0.40, (0.35, 0.50, 0.15)),
    "LRG": (0.25, (0.90, 0.10, 0.00)),
    "ELG": (0.35, (0.00, 0.55, 0.45)),
}
DEFAULT_TRACER_FRACTIONS = tuple(fraction for fraction, _ in TRACERS.values())
Z_MIN, Z_MAX = 0.02, 1.5
LOGM_MIN, LOGM_MAX = 9.0, 11.8


@dataclass
class Galaxy:
    """Physical parameters of one galaxy (everything needed to draw its image and spectrum)."""

    galaxy_type: str
    tracer: str
    z: float
    logm: float
    logsfr: float
    r_half_kpc: float
    r_half_arcsec: float  # of the whole galaxy (the disc for disc/irregular, the bulge for ellipticals)
    q: float  # projected axis ratio b/a of the main component
    position_angle: float  # degrees
    bulge_fraction: float  # stellar-mass fraction in the de Vaucouleurs component
    bulge_r_half_arcsec: float
    bulge_q: float
    knot_fraction: float  # fraction of the young light and lines in star-forming knots
    n_knots: int
    knot_sigma_arcsec: float  # Gaussian size of a star-forming clump (0.15-0.5 kpc)
    dusty_fraction: float  # share of the young stars in the dusty star-forming template (vs the blue one)
    a_halpha: float  # H-alpha attenuation, mag
    sigma_gas: float  # emission-line velocity dispersion, km/s
    log_oiii_hbeta: float
    log_nii_halpha: float
    log_oii_hbeta: float

    @property
    def ssfr(self) -> float:
        return 10 ** (self.logsfr - self.logm)

    def truth(self) -> dict:
        return asdict(self)


def normalise_mix(mix: Mapping[str, float] | None) -> tuple[float, ...]:
    """Probabilities of the TRACERS (in their order) from relative weights; None: the default mix."""
    if mix is None:
        return DEFAULT_TRACER_FRACTIONS
    unknown = [name for name in mix if name not in TRACERS]
    if unknown:
        raise ValueError(f"population_mix: unknown tracer {unknown[0]!r} (known: {', '.join(TRACERS)})")
    weights = np.array([float(mix.get(name, 0.0)) for name in TRACERS])
    if not (np.isfinite(weights).all() and (weights >= 0).all() and weights.sum() > 0):
        raise ValueError(f"population_mix weights must be finite, >= 0 and of positive sum, got {dict(mix)}")
    return tuple(float(weight) for weight in weights / weights.sum())


def main_sequence(logm: float, z: float, lib: Library) -> float:
    """Speagle et al. 2014 log SFR (Msun/yr) of the star-forming main sequence."""
    t = float(lib.interp_z(lib.age_gyr, z))
    return (0.84 - 0.026 * t) * logm - (6.51 - 0.11 * t)


def draw_galaxy(rng: np.random.Generator, lib: Library, *, galaxy_type: str | None = None,
                tracer: str | None = None, z: float | None = None, logm: float | None = None,
                sfr_offset: float | None = None,
                tracer_fractions: Sequence[float] = DEFAULT_TRACER_FRACTIONS) -> Galaxy:
    """One galaxy of the base population; keyword arguments pin a parameter (anomaly builders).
    `tracer_fractions` (TRACERS order) decides the tracer unless it is pinned."""
    tracer = tracer or rng.choice(list(TRACERS), p=tracer_fractions)
    galaxy_type = galaxy_type or rng.choice(GALAXY_TYPES, p=TRACERS[tracer][1])
    z = _draw_redshift(rng, tracer) if z is None else z
    logm = _draw_mass(rng, tracer, galaxy_type, z) if logm is None else logm
    offset = _draw_sfr_offset(rng, galaxy_type, tracer) if sfr_offset is None else sfr_offset
    logsfr = main_sequence(logm, z, lib) + offset
    r_half_kpc = _draw_size_kpc(rng, galaxy_type, logm, z)
    scale = float(lib.interp_z(lib.kpc_per_arcsec, z))
    bulge_fraction, bulge_size = _draw_bulge(rng, galaxy_type, logm)
    star_forming = galaxy_type != "elliptical"
    x = logm - 10.0
    return Galaxy(
        galaxy_type=str(galaxy_type),
        tracer=str(tracer),
        z=float(z),
        logm=float(logm),
        logsfr=float(logsfr),
        r_half_kpc=float(r_half_kpc),
        r_half_arcsec=float(r_half_kpc / scale),
        q=float(_draw_axis_ratio(rng, galaxy_type)),
        position_angle=float(rng.uniform(0, 180)),
        bulge_fraction=float(bulge_fraction),
        bulge_r_half_arcsec=float(bulge_size * r_half_kpc / scale),
        bulge_q=float(rng.uniform(0.6, 1.0)),
        knot_fraction=float(rng.uniform(0.05, 0.25) if galaxy_type == "disc" else rng.uniform(0.15, 0.45))
        if star_forming else 0.0,
        n_knots=int(rng.integers(15, 60)) if star_forming else 0,
        knot_sigma_arcsec=float(rng.uniform(0.15, 0.5) / scale),
        dusty_fraction=float(np.clip(rng.normal(0.35 + 0.3 * x, 0.15), 0.05, 0.95)),
        a_halpha=float(np.clip(0.91 + 0.77 * x + 0.11 * x**2 - 0.09 * x**3 + rng.normal(0, 0.25), 0.0, 3.0)),
        sigma_gas=float(np.clip(rng.normal(40 + 40 * (logm - 9), 15), 25, 250)),
        **_draw_line_ratios(rng, galaxy_type, logm, z),
    )


def _draw_redshift(rng: np.random.Generator, tracer: str) -> float:
    """BGS: low-z, gamma-like peaking ~0.2; LRG: 0.3-1.1 around 0.7; ELG: 0.6-1.5 around 1."""
    if tracer == "BGS":
        z = 0.02 + rng.gamma(2.5, 0.08)
        return float(np.clip(z, Z_MIN, 0.6))
    if tracer == "LRG":
        return float(np.clip(rng.normal(0.68, 0.18), 0.3, 1.1))
    return float(np.clip(rng.normal(1.0, 0.22), 0.6, Z_MAX))


def _draw_mass(rng: np.random.Generator, tracer: str, galaxy_type: str, z: float) -> float:
    """Masses that a flux-limited tracer selects: BGS rises with z (r < 19.5), LRGs are the most
    massive red galaxies, ELGs are modest-mass star-formers; irregulars are lighter."""
    if tracer == "LRG":  # z_fibre < 21.6 keeps only the most massive at high z
        mean, sigma = 11.05 + 0.5 * (z - 0.4), 0.22
    elif tracer == "BGS":
        mean, sigma = 10.15 + 2.0 * z + (0.3 if galaxy_type == "elliptical" else 0.0), 0.4
    else:
        mean, sigma = 9.95, 0.35
    if galaxy_type == "irregular":
        mean -= 0.5
    return float(np.clip(rng.normal(mean, sigma), LOGM_MIN, LOGM_MAX))


def _draw_sfr_offset(rng: np.random.Generator, galaxy_type: str, tracer: str) -> float:
    """Offset from the main sequence: quiescent ~ -1.5 dex, discs on it (LRG discs are red, below
    it), irregulars starbursting."""
    if galaxy_type == "elliptical":
        return float(rng.normal(-1.5, 0.4))
    if galaxy_type == "disc":
        return float(rng.normal(-1.0 if tracer == "LRG" else 0.0, 0.3))
    return float(rng.uniform(0.2, 0.8))


def _draw_size_kpc(rng: np.random.Generator, galaxy_type: str, logm: float, z: float) -> float:
    """van der Wel et al. 2014: early types log A = 0.60 at z=0.25 evolving as (1+z)^-1.48, slope
    0.75, scatter 0.10 dex; late types log A = 0.86 at z=0.25, (1+z)^-0.75, slope 0.22, 0.16 dex."""
    evolution = np.log10((1 + z) / 1.25)
    if galaxy_type == "elliptical":
        log_r = 0.60 - 1.48 * evolution + 0.75 * (logm - np.log10(5e10)) + rng.normal(0, 0.10)
    else:
        log_r = 0.86 - 0.75 * evolution + 0.22 * (logm - np.log10(5e10)) + rng.normal(0, 0.16)
        log_r -= 0.1 if galaxy_type == "irregular" else 0.0
    return float(np.clip(10**log_r, 0.3, 25.0))


def _draw_axis_ratio(rng: np.random.Generator, galaxy_type: str) -> float:
    """Ellipticals intrinsically round-ish; discs are thin and seen at random inclinations."""
    if galaxy_type == "elliptical":
        return float(np.clip(rng.normal(0.75, 0.15), 0.35, 1.0))
    q0 = 0.15 if galaxy_type == "disc" else 0.35
    cos_i = rng.uniform(0, 1)
    return float(np.sqrt(cos_i**2 * (1 - q0**2) + q0**2))


def _draw_bulge(rng: np.random.Generator, galaxy_type: str, logm: float) -> tuple[float, float]:
    """(bulge mass fraction, bulge size relative to the galaxy's). Ellipticals are bulge-dominated
    with a faint extended envelope; disc bulges grow with mass; irregulars have none to speak of."""
    if galaxy_type == "elliptical":
        return float(rng.uniform(0.8, 1.0)), 1.0
    if galaxy_type == "disc":
        mean = np.clip(0.15 + 0.2 * (logm - 10), 0.05, 0.6)
        return float(np.clip(rng.beta(2, 2 / mean - 2), 0.0, 0.8)), float(rng.uniform(0.2, 0.5))
    return float(rng.uniform(0.0, 0.05)), 0.3


def _draw_line_ratios(rng: np.random.Generator, galaxy_type: str, logm: float, z: float) -> dict:
    """Strong-line ratios: [O III]/Hb falls and [N II]/Ha rises with mass (mass-metallicity relation),
    [O III]/Hb is higher at high z; quiescent galaxies get LINER-like ratios."""
    if galaxy_type == "elliptical":
        return {"log_oiii_hbeta": float(rng.normal(0.1, 0.2)), "log_nii_halpha": float(rng.normal(0.1, 0.15)),
                "log_oii_hbeta": float(rng.normal(0.6, 0.15))}
    return {
        "log_oiii_hbeta": float(np.clip(0.65 - 0.45 * (logm - 9) + 0.25 * min(z, 1.5) + rng.normal(0, 0.15), -0.8, 0.95)),
        "log_nii_halpha": float(np.clip(-1.15 + 0.4 * (logm - 9) + rng.normal(0, 0.1), -1.6, -0.25)),
        "log_oii_hbeta": float(rng.normal(0.45, 0.12)),
    }
