"""Offline inputs of the generator, loaded once per process (lazily: nothing happens at import).

Everything here comes from field libraries and the data files they ship (see shared
data_sources.md): kcorrect's NMF galaxy templates, speclite's Euclid filter curves, synphot's LBQS
QSO composite and stellar spectra, sedpy's Sun and Vega, Planck18 distances from astropy, and real
DESI inverse-variance spectra from specutils' test coadds (read with `fmb.data.desi.read_coadd`).
The derived tables (AB maggies of each template per Euclid band on a redshift grid, distances on
a redshift grid) are computed here once, so per object the photometry is a dot product.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
import importlib.util
from pathlib import Path

import numpy as np

from fmb.data.schema import desi_wavelength

BANDS = ("VIS", "Y", "J", "H")
SPECULITE_FILTERS = ("Euclid-VIS", "Euclid-Y", "Euclid-J", "Euclid-H")
C_ANGSTROM_S = 2.99792458e18
C_KM_S = 299792.458
AB_ZERO_CGS_NU = 3631e-23  # erg/s/cm^2/Hz
PC_CM = 3.0856775814913673e18
#: spectra are stored in DESI's unit, 1e-17 erg/s/cm^2/A
FLUX_UNIT = 1e-17

#: Where every input comes from (recorded in synth.json).
SOURCES = {
    "galaxy_templates": "kcorrect 5.1.9 data/templates/kcorrect-default-v4.fits (NMF, lines replaced by SFR-based lines)",
    "filters": "speclite Euclid-VIS, Euclid-Y, Euclid-J, Euclid-H",
    "qso_template": "synphot tests/data/qso_template_001.dat (LBQS composite, Francis et al. 1991), power-law + broad Ha beyond 6000 A",
    "stars": "synphot k93_4500_0_5_rn_box.fits, grw_70d5824_stisnic_005.fits; sedpy sun_kurucz93.fits, alpha_lyr_stis_011.fits",
    "desi_noise": "specutils io/default_loaders/tests/desi_test_data/coadd-*.fits inverse variance (real fibres)",
    "cosmology": "astropy Planck18",
    "images": "GalSim (Sersic, Exponential, RandomKnots, Airy, Gaussian, lens shear)",
}
#: Observed-frame grid on which broad-band fluxes are integrated; the Euclid curves span 2990-21000 A.
BAND_GRID = np.arange(2900.0, 21100.0, 2.0)
#: Redshift grid for the precomputed template photometry and distances.
Z_GRID = np.arange(0.0, 3.0001, 0.0025)

#: Emission lines (vacuum rest wavelengths, A, as DESI spectra are in vacuum). Masked out of the
#: kcorrect templates (whose NMF lines are not tied to any SFR) and added back from the SFR.
TEMPLATE_LINES = (1215.67, 3727.09, 3729.88, 3869.86, 3890.15, 3971.2, 4102.89, 4341.69, 4364.4,
                  4862.68, 4960.30, 5008.24, 5877.3, 6302.05, 6549.86, 6564.61, 6585.27, 6718.29,
                  6732.67, 7137.8, 9071.1, 9533.2)


@dataclass(frozen=True)
class Library:
    """All per-process tables; see `get_library`."""

    desi_wave: np.ndarray  # (7781,)
    band_weights: np.ndarray  # (4, len(BAND_GRID)): maggies = band_weights @ f_lambda(BAND_GRID) [cgs]
    band_line_density: np.ndarray  # (4, len(BAND_GRID)): maggies per erg/s/cm^2 of a line at BAND_GRID
    template_wave: np.ndarray  # (10000,) rest A
    template_flux: np.ndarray  # (5, 10000) erg/s/cm^2/A per solar mass formed, at 10 pc, lines removed
    template_mremain: np.ndarray  # (5,) surviving stellar mass per solar mass formed
    template_maggies: np.ndarray  # (len(Z_GRID), 5, 4) per solar mass formed at 10 pc, redshifted
    dl_cm: np.ndarray  # (len(Z_GRID),) luminosity distance
    kpc_per_arcsec: np.ndarray  # (len(Z_GRID),) proper scale from the angular-diameter distance
    age_gyr: np.ndarray  # (len(Z_GRID),) cosmic time, for the main-sequence evolution
    qso_wave: np.ndarray  # rest A, LBQS composite extended to 30000 A
    qso_flux: np.ndarray  # arbitrary f_lambda units
    star_names: tuple[str, ...]
    star_flux: np.ndarray  # (n_star, len(BAND_GRID)) f_lambda, normalised to VIS maggies 1
    noise_ivar: np.ndarray  # (n_fibre, 7781) real DESI inverse variance, (1e-17 erg/s/cm^2/A)^-2
    sky_pixels: np.ndarray  # indices of the strongest sky-line pixels (lowest relative ivar)

    def interp_z(self, table: np.ndarray, z: float) -> np.ndarray:
        """Linear interpolation of a Z_GRID table (first axis) at redshift z."""
        position = np.clip(z, Z_GRID[0], Z_GRID[-1]) / (Z_GRID[1] - Z_GRID[0])
        low = min(int(position), len(Z_GRID) - 2)
        frac = position - low
        return table[low] * (1.0 - frac) + table[low + 1] * frac

    def band_maggies(self, wave: np.ndarray, flam_cgs: np.ndarray) -> np.ndarray:
        """AB maggies in the four Euclid bands of an observed-frame spectrum (must cover 2900-21100 A)."""
        return self.band_weights @ np.interp(BAND_GRID, wave, flam_cgs, left=0.0, right=0.0)

    def line_maggies(self, observed_wave: np.ndarray, line_flux_cgs: np.ndarray) -> np.ndarray:
        """AB maggies (4,) of emission lines of given observed wavelengths and fluxes (erg/s/cm^2)."""
        density = np.stack([np.interp(observed_wave, BAND_GRID, row, left=0.0, right=0.0)
                            for row in self.band_line_density])
        return density @ line_flux_cgs


@functools.cache
def get_library() -> Library:
    """Load and precompute everything once per process (a few hundred ms)."""
    band_weights, band_line_density = _filter_tables()
    template_wave, template_flux, mremain = _kcorrect_templates()
    maggies = _template_maggies(template_wave, template_flux, band_weights)
    dl_cm, kpc_per_arcsec, age_gyr = _cosmology_tables()
    qso_wave, qso_flux = _qso_template()
    star_names, star_flux = _star_templates(band_weights)
    noise_ivar = _desi_noise_templates()
    return Library(
        desi_wave=desi_wavelength(),
        band_weights=band_weights,
        band_line_density=band_line_density,
        template_wave=template_wave,
        template_flux=template_flux,
        template_mremain=mremain,
        template_maggies=maggies,
        dl_cm=dl_cm,
        kpc_per_arcsec=kpc_per_arcsec,
        age_gyr=age_gyr,
        qso_wave=qso_wave,
        qso_flux=qso_flux,
        star_names=star_names,
        star_flux=star_flux,
        noise_ivar=noise_ivar,
        sky_pixels=_sky_line_pixels(noise_ivar),
    )


def _package_file(package: str, *parts: str) -> Path:
    """A data file shipped inside an installed package, located without importing the package
    (importing synphot or specutils costs seconds)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"package {package!r} is not installed; the synthetic survey needs its data files")
    return Path(list(spec.submodule_search_locations)[0]).joinpath(*parts)


def _filter_tables() -> tuple[np.ndarray, np.ndarray]:
    """Per-band weights turning f_lambda on BAND_GRID into AB maggies (photon-counting, as speclite).

    maggies = int f_lambda R lambda dlambda / int (3631 Jy c / lambda^2) R lambda dlambda.
    """
    import speclite.filters

    filters = speclite.filters.load_filters(*SPECULITE_FILTERS)
    step = np.gradient(BAND_GRID)
    weights, line_density = [], []
    for curve in filters:
        response = np.interp(BAND_GRID, curve.wavelength, curve.response, left=0.0, right=0.0)
        norm = np.sum(AB_ZERO_CGS_NU * C_ANGSTROM_S / BAND_GRID**2 * response * BAND_GRID * step)
        line_density.append(response * BAND_GRID / norm)
        weights.append(response * BAND_GRID * step / norm)
    return np.array(weights), np.array(line_density)


def _kcorrect_templates() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """kcorrect-default-v4 NMF templates with their emission lines interpolated over.

    Units (kcorrect docs, checked in the report): erg/s/cm^2/A at 10 pc per solar mass formed;
    MREMAIN is the surviving stellar mass per solar mass formed.
    """
    from astropy.io import fits

    path = _package_file("kcorrect", "data", "templates", "kcorrect-default-v4.fits")
    with fits.open(path, memmap=False) as hdul:
        wave = np.asarray(hdul["FLUX"].data["wave"][0], dtype=np.float64)
        flux = np.asarray(hdul["FLUX"].data["flux"][0], dtype=np.float64)
        mremain = np.asarray(hdul["MREMAIN"].data, dtype=np.float64)
    return wave, np.array([_strip_lines(wave, row) for row in flux]), mremain


def _strip_lines(wave: np.ndarray, flux: np.ndarray, half_width: float = 14.0) -> np.ndarray:
    """Replace +-half_width A around each known line by a straight line between the window edges
    (medians of 4 pixels), but only where the window holds emission (peak above the edges)."""
    flux = flux.copy()
    for line in TEMPLATE_LINES:
        inside = np.flatnonzero(np.abs(wave - line) <= max(half_width, 3.5 * line / 1200))
        if len(inside) == 0:
            continue
        lo, hi = inside[0], inside[-1]
        left, right = np.median(flux[lo - 4:lo]), np.median(flux[hi + 1:hi + 5])
        if flux[inside].max() <= 1.02 * max(left, right):
            continue  # absorption or nothing: keep the stellar feature
        flux[inside] = np.interp(wave[inside], [wave[lo - 1], wave[hi + 1]], [left, right])
    return flux


def _template_maggies(wave: np.ndarray, flux: np.ndarray, band_weights: np.ndarray) -> np.ndarray:
    """(Z_GRID, template, band) AB maggies per solar mass formed at 10 pc, observed at redshift z
    (wavelengths stretched by 1+z, f_lambda divided by 1+z; the distance is applied per object)."""
    table = np.empty((len(Z_GRID), len(flux), band_weights.shape[0]))
    for i, z in enumerate(Z_GRID):
        shifted = np.array([np.interp(BAND_GRID / (1 + z), wave, row) for row in flux]) / (1 + z)
        table[i] = shifted @ band_weights.T
    return table


def _cosmology_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from astropy.cosmology import Planck18

    z = np.maximum(Z_GRID, 1e-5)
    dl_cm = Planck18.luminosity_distance(z).to_value("cm")
    kpc_per_arcsec = Planck18.angular_diameter_distance(z).to_value("kpc") * np.pi / 180 / 3600
    age = Planck18.age(Z_GRID).to_value("Gyr")
    return dl_cm, kpc_per_arcsec, age


def _qso_template() -> tuple[np.ndarray, np.ndarray]:
    """The LBQS composite (800-6000 A rest), continued redward so every Euclid band is covered at
    any redshift: a power law fitted on the line-free 5400-5900 A window, plus a broad H-alpha
    (the composite stops before it) with the usual Balmer decrement (Ha = 3 Hb) and FWHM 4000 km/s."""
    data = np.loadtxt(_package_file("synphot", "tests", "data", "qso_template_001.dat"))
    wave, flux = data[:, 0], data[:, 1]
    window = (wave > 5400) & (wave < 5900)
    slope, intercept = np.polyfit(np.log(wave[window]), np.log(flux[window]), 1)
    hbeta = (wave > 4700) & (wave < 4940)
    continuum = np.exp(intercept) * wave[hbeta] ** slope
    hbeta_flux = np.trapezoid(np.clip(flux[hbeta] - continuum, 0, None), wave[hbeta])
    red = np.arange(wave[-1] + 2.5, 30000.0, 2.5)
    sigma = 6564.61 * 4000 / 2.3548 / C_KM_S
    red_flux = np.exp(intercept) * red**slope + 3.0 * hbeta_flux * _gauss(red, 6564.61, sigma)
    return np.concatenate([wave, red]), np.concatenate([flux, red_flux])


def _gauss(x: np.ndarray, mean: float, sigma: float) -> np.ndarray:
    return np.exp(-0.5 * ((x - mean) / sigma) ** 2) / (np.sqrt(2 * np.pi) * sigma)


#: Stellar templates ordered by temperature: (package, path parts, flux unit).
_STARS = (
    ("K4500_kurucz", "synphot", ("tests", "data", "k93_4500_0_5_rn_box.fits"), "PHOTLAM"),
    ("sun_kurucz", "sedpy", ("data", "sun_kurucz93.fits"), "FLAM"),
    ("vega_A0V", "sedpy", ("data", "alpha_lyr_stis_011.fits"), "FLAM"),
    ("wd_grw70d5824", "synphot", ("tests", "data", "grw_70d5824_stisnic_005.fits"), "FLAM"),
)


def _star_templates(band_weights: np.ndarray) -> tuple[tuple[str, ...], np.ndarray]:
    """Stellar f_lambda on BAND_GRID, each scaled to 1 maggie in VIS (magnitudes set per object)."""
    from astropy.io import fits

    spectra = []
    for _, package, parts, unit in _STARS:
        with fits.open(_package_file(package, *parts), memmap=False) as hdul:
            wave = np.asarray(hdul[1].data["WAVELENGTH"], dtype=np.float64)
            flux = np.asarray(hdul[1].data["FLUX"], dtype=np.float64)
        if unit == "PHOTLAM":  # photons/s/cm^2/A -> erg/s/cm^2/A
            flux = flux * 6.62607015e-27 * C_ANGSTROM_S / wave
        sampled = np.interp(BAND_GRID, wave, flux)
        spectra.append(sampled / (band_weights[0] @ sampled))
    return tuple(name for name, *_ in _STARS), np.array(spectra)


def _desi_noise_templates() -> np.ndarray:
    """Arm-merged inverse variance of the real science fibres in specutils' DESI coadds (noise
    shapes with sky lines and arm edges; a per-object depth factor scales them)."""
    from fmb.data.desi import read_coadd

    folder = _package_file("specutils", "io", "default_loaders", "tests", "desi_test_data")
    rows = []
    for path in sorted(folder.glob("coadd-*.fits")):
        coadd = read_coadd(path)
        for ivar in coadd.ivar:
            if np.mean(ivar > 0) > 0.9:  # a real, observed fibre (unassigned/sky fibres are all zero)
                rows.append(ivar.astype(np.float64))
    if not rows:
        raise RuntimeError(f"no usable DESI fibres in {folder}")
    return np.array(rows)


def _sky_line_pixels(noise_ivar: np.ndarray, count: int = 60) -> np.ndarray:
    """Pixels where the inverse variance dips furthest below its running median: the sky lines."""
    from scipy.ndimage import median_filter

    mean_ivar = noise_ivar.mean(axis=0)
    contrast = mean_ivar / median_filter(mean_ivar, size=151, mode="nearest")
    order = np.argsort(contrast)
    picked: list[int] = []
    for index in order:  # keep distinct lines (>= 5 px apart)
        if all(abs(index - other) >= 5 for other in picked):
            picked.append(int(index))
        if len(picked) == count:
            break
    return np.sort(np.array(picked))
