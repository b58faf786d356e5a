"""Spectral energy distributions: one `Sed` per image component, holding both its DESI-grid
spectrum and its Euclid band fluxes, so the image and the spectrum are the same light.

Galaxy continua are mixtures of kcorrect templates (in solar masses formed; the surviving mass
is coefficient x MREMAIN), emission lines are Gaussians whose H-alpha flux follows the SFR
(Kennicutt & Evans 2012) and whose other lines follow the galaxy's line ratios and Calzetti dust.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy.special import ndtr

from fmb.data.schema import WAVELENGTH_STEP
from fmb.data.synth.library import BAND_GRID, C_KM_S, FLUX_UNIT, PC_CM, Library
from fmb.data.synth.population import Galaxy

NJY_PER_MAGGIE = 3631e9
#: log L(H-alpha) [erg/s] - log SFR [Msun/yr], Kennicutt & Evans 2012 (Kroupa IMF).
LOG_HALPHA_PER_SFR = 41.27
#: Rest vacuum wavelengths (A) of the lines we add.
LINES = {
    "OII_3727": 3727.09, "OII_3730": 3729.88, "Hdelta": 4102.89, "Hgamma": 4341.69, "Hbeta": 4862.68,
    "OIII_4960": 4960.30, "OIII_5008": 5008.24, "NII_6550": 6549.86, "Halpha": 6564.61,
    "NII_6585": 6585.27, "SII_6718": 6718.29, "SII_6733": 6732.67,
}
LINE_NAMES = tuple(LINES)
LINE_WAVES = np.array(list(LINES.values()))
#: Mass fractions of the kcorrect templates in the old population (mostly template 3, passive).
OLD_MIX = np.array([0.1, 0.0, 0.0, 0.9, 0.0])
#: Timescale turning sSFR into the mass fraction formed recently (young-template weight).
YOUNG_TIMESCALE_YR = 1e9
BURST_TIMESCALE_YR = 3e6


@dataclass
class Sed:
    """Observed light of one component: f_lambda on the DESI grid (1e-17 erg/s/cm^2/A, the whole
    component, before any fibre loss) and total fluxes in the four Euclid bands (nJy)."""

    spectrum: np.ndarray
    band_njy: np.ndarray

    def __add__(self, other: Sed) -> Sed:
        return Sed(self.spectrum + other.spectrum, self.band_njy + other.band_njy)

    def scaled(self, factor: float) -> Sed:
        return Sed(self.spectrum * factor, self.band_njy * factor)


def ab_mag(njy: float) -> float:
    """AB magnitude of a flux in nJy (fluxes <= 0 read as 1e-3 nJy, i.e. ~40 mag)."""
    return float(-2.5 * np.log10(max(float(njy), 1e-3) / NJY_PER_MAGGIE))


def distance_factor(lib: Library, z: float) -> float:
    """(10 pc / D_L)^2: the kcorrect templates are fluxes at 10 pc."""
    return float((10 * PC_CM / lib.interp_z(lib.dl_cm, z)) ** 2)


def continuum_sed(lib: Library, coeffs: np.ndarray, z: float) -> Sed:
    """kcorrect mixture (solar masses formed per template) observed at redshift z."""
    scale = distance_factor(lib, z)
    rest = coeffs @ lib.template_flux
    spectrum = np.interp(lib.desi_wave / (1 + z), lib.template_wave, rest) / (1 + z) * scale / FLUX_UNIT
    maggies = coeffs @ lib.interp_z(lib.template_maggies, z) * scale
    return Sed(spectrum, maggies * NJY_PER_MAGGIE)


def line_sed(lib: Library, z: float, fluxes_cgs: np.ndarray, sigma_kms: float) -> Sed:
    """Gaussian emission lines (observed fluxes in erg/s/cm^2, LINE_NAMES order), integrated over
    each 0.8 A pixel so narrow lines conserve flux; width = gas dispersion (+) DESI resolution."""
    observed = LINE_WAVES * (1 + z)
    wave = lib.desi_wave
    spectrum = np.zeros_like(wave)
    for centre, flux in zip(observed, fluxes_cgs):
        sigma = centre * np.hypot(sigma_kms, _desi_sigma_kms(centre)) / C_KM_S
        lo, hi = np.searchsorted(wave, [centre - 8 * sigma, centre + 8 * sigma])
        if flux <= 0 or hi <= lo:
            continue  # outside the DESI range: the line still counts in the band fluxes below
        edges = np.append(wave[lo:hi], wave[hi - 1] + WAVELENGTH_STEP) - WAVELENGTH_STEP / 2
        spectrum[lo:hi] += flux * np.diff(ndtr((edges - centre) / sigma)) / WAVELENGTH_STEP
    maggies = lib.line_maggies(observed, fluxes_cgs)
    return Sed(spectrum / FLUX_UNIT, maggies * NJY_PER_MAGGIE)


def _desi_sigma_kms(wave: float) -> float:
    """DESI resolving power rises from ~2000 (blue) to ~5000 (red): sigma = c / (2.355 R)."""
    resolution = np.interp(wave, [3600, 9800], [2000, 5000])
    return C_KM_S / (2.3548 * resolution)


def calzetti_k(wave: np.ndarray) -> np.ndarray:
    """Calzetti et al. 2000 attenuation curve k(lambda) (R_V = 4.05), wave in A."""
    x = np.asarray(wave, dtype=np.float64) / 1e4
    blue = 2.659 * (-2.156 + 1.509 / x - 0.198 / x**2 + 0.011 / x**3) + 4.05
    red = 2.659 * (-1.857 + 1.040 / x) + 4.05
    return np.where(x < 0.63, blue, red)


def sfr_line_fluxes(lib: Library, galaxy: Galaxy) -> np.ndarray:
    """Observed line fluxes (erg/s/cm^2, LINE_NAMES order) of a galaxy: H-alpha from its SFR,
    the rest from its line ratios, all attenuated by Calzetti dust scaled to A(H-alpha)."""
    halpha = 10 ** (galaxy.logsfr + LOG_HALPHA_PER_SFR) / (4 * np.pi * lib.interp_z(lib.dl_cm, galaxy.z) ** 2)
    ratios = intrinsic_ratios(galaxy.log_oiii_hbeta, galaxy.log_nii_halpha, galaxy.log_oii_hbeta)
    attenuation = galaxy.a_halpha * calzetti_k(LINE_WAVES) / calzetti_k(np.array([LINES["Halpha"]]))
    return halpha * ratios * 10 ** (-0.4 * attenuation)


def intrinsic_ratios(log_oiii_hbeta: float, log_nii_halpha: float, log_oii_hbeta: float,
                     log_sii_halpha: float = -0.5) -> np.ndarray:
    """Line fluxes relative to H-alpha (LINE_NAMES order): case-B Balmer decrement (Ha/Hb = 2.86),
    doublet ratios fixed by atomic physics ([O III], [N II] ~ 3:1) or low density ([O II], [S II])."""
    hbeta = 1 / 2.86
    oiii, oii, nii, sii = 10**log_oiii_hbeta * hbeta, 10**log_oii_hbeta * hbeta, 10**log_nii_halpha, 10**log_sii_halpha
    values = {
        "OII_3727": 0.42 * oii, "OII_3730": 0.58 * oii, "Hdelta": 0.259 * hbeta, "Hgamma": 0.468 * hbeta,
        "Hbeta": hbeta, "OIII_4960": oiii / 2.98, "OIII_5008": oiii, "NII_6550": nii / 3.05, "Halpha": 1.0,
        "NII_6585": nii, "SII_6718": 0.58 * sii, "SII_6733": 0.42 * sii,
    }
    return np.array([values[name] for name in LINE_NAMES])


def galaxy_mixtures(lib: Library, galaxy: Galaxy) -> dict[str, np.ndarray]:
    """Template coefficients (solar masses formed) of the bulge, the smooth disc and the knots.

    The bulge is old. The disc forms stars: its mass formed in the last ~1 Gyr, 1 - exp(-sSFR x 1 Gyr),
    is shared between the dusty (2) and blue (4) star-forming templates, except the last ~3 Myr of it
    (SFR x 3 Myr), which goes to the extreme-starburst template 1 (M/L_r ~ 0.01: a few-Myr population).
    Checked: rest g-r is 0.77 quiescent, ~0.5 on the main sequence, ~0.1-0.2 for starbursts.
    A `knot_fraction` of the young stars sits in clumps.
    """
    mass = 10**galaxy.logm
    disc_mass = mass * (1 - galaxy.bulge_fraction)
    sfr = 10**galaxy.logsfr
    young = disc_mass * (1 - np.exp(-sfr / max(disc_mass, 1.0) * YOUNG_TIMESCALE_YR))
    burst = min(sfr * BURST_TIMESCALE_YR, 0.5 * young)
    young_mix = np.zeros(5)
    young_mix[1] = burst
    young_mix[2] = (young - burst) * galaxy.dusty_fraction
    young_mix[4] = (young - burst) * (1 - galaxy.dusty_fraction)
    per_formed = 1 / lib.template_mremain  # coefficients are in mass formed, not surviving mass
    bulge = mass * galaxy.bulge_fraction * OLD_MIX * per_formed
    old_disc = (disc_mass - young) * OLD_MIX * per_formed
    young_disc = young_mix * per_formed
    return {
        "bulge": bulge,
        "disc": old_disc + (1 - galaxy.knot_fraction) * young_disc,
        "knots": galaxy.knot_fraction * young_disc,
    }


def galaxy_seds(lib: Library, galaxy: Galaxy, line_fluxes: np.ndarray) -> dict[str, Sed]:
    """Bulge, disc and knot SEDs of a galaxy; the lines live where the young stars are."""
    mixtures = galaxy_mixtures(lib, galaxy)
    lines = line_sed(lib, galaxy.z, line_fluxes, galaxy.sigma_gas)
    return {
        "bulge": continuum_sed(lib, mixtures["bulge"], galaxy.z),
        "disc": continuum_sed(lib, mixtures["disc"], galaxy.z) + lines.scaled(1 - galaxy.knot_fraction),
        "knots": continuum_sed(lib, mixtures["knots"], galaxy.z) + lines.scaled(galaxy.knot_fraction),
    }


def galaxy_total_sed(lib: Library, galaxy: Galaxy, line_fluxes: np.ndarray | None = None) -> Sed:
    """All the light of a galaxy (lines from its SFR unless given) as one SED."""
    lines = sfr_line_fluxes(lib, galaxy) if line_fluxes is None else line_fluxes
    bulge, disc, knots = galaxy_seds(lib, galaxy, lines).values()
    return bulge + disc + knots


def continuum_at(sed: Sed, lib: Library, rest_wave: float, z: float, half_width: float = 30.0) -> float:
    """Mean observed continuum f_lambda (cgs) of a line-free SED near a rest wavelength."""
    centre = rest_wave * (1 + z)
    window = np.abs(lib.desi_wave - centre) < half_width * (1 + z)
    if window.any():
        return float(sed.spectrum[window].mean() * FLUX_UNIT)
    return float("nan")


def qso_sed(lib: Library, z: float, vis_njy: float, slope_delta: float) -> Sed:
    """The LBQS composite at redshift z, its continuum tilted by (lambda/3000 A)^slope_delta,
    scaled to a VIS flux."""
    rest = lib.qso_flux * (lib.qso_wave / 3000.0) ** slope_delta
    on_grid = np.interp(BAND_GRID / (1 + z), lib.qso_wave, rest, left=0.0, right=0.0) / (1 + z)
    maggies = lib.band_weights @ on_grid
    scale = vis_njy / NJY_PER_MAGGIE / maggies[0]
    spectrum = np.interp(lib.desi_wave / (1 + z), lib.qso_wave, rest) / (1 + z) * scale / FLUX_UNIT
    return Sed(spectrum, maggies * scale * NJY_PER_MAGGIE)


def star_sed(lib: Library, template: float, ebv: float, velocity_kms: float, vis_njy: float) -> Sed:
    """A star: `template` in [0, n_star - 1] interpolates between neighbouring stellar templates
    (ordered by temperature), reddened by Milky-Way dust (CCM89, R_V = 3.1), Doppler shifted."""
    low = int(np.clip(np.floor(template), 0, len(lib.star_flux) - 2))
    weight = template - low
    flux = (1 - weight) * lib.star_flux[low] + weight * lib.star_flux[low + 1]
    flux = flux * 10 ** (-0.4 * 3.1 * ebv * _ccm_on_band_grid())
    observed_wave = BAND_GRID * (1 + velocity_kms / C_KM_S)
    on_grid = np.interp(BAND_GRID, observed_wave, flux)
    maggies = lib.band_weights @ on_grid
    scale = vis_njy / NJY_PER_MAGGIE / maggies[0]
    spectrum = np.interp(lib.desi_wave, observed_wave, flux) * scale / FLUX_UNIT
    return Sed(spectrum, maggies * scale * NJY_PER_MAGGIE)


@functools.cache
def _ccm_on_band_grid() -> np.ndarray:
    return ccm_a_over_av(BAND_GRID)


def ccm_a_over_av(wave: np.ndarray, r_v: float = 3.1) -> np.ndarray:
    """Cardelli, Clayton & Mathis 1989 extinction A(lambda)/A(V) for 0.3 <= x <= 8 /micron."""
    x = np.clip(1e4 / np.asarray(wave, dtype=np.float64), 0.3, 8.0)
    y = x - 1.82
    a_opt = 1 + 0.17699 * y - 0.50447 * y**2 - 0.02427 * y**3 + 0.72085 * y**4 + 0.01979 * y**5 - 0.77530 * y**6 + 0.32999 * y**7
    b_opt = 1.41338 * y + 2.28305 * y**2 + 1.07233 * y**3 - 5.38434 * y**4 - 0.62251 * y**5 + 5.30260 * y**6 - 2.09002 * y**7
    a_uv = 1.752 - 0.316 * x - 0.104 / ((x - 4.67) ** 2 + 0.341)
    b_uv = -3.090 + 1.825 * x + 1.206 / ((x - 4.62) ** 2 + 0.263)
    a = np.where(x < 1.1, 0.574 * x**1.61, np.where(x < 3.3, a_opt, a_uv))
    b = np.where(x < 1.1, -0.527 * x**1.61, np.where(x < 3.3, b_opt, b_uv))
    return a + b / r_v
