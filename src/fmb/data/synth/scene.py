"""Drawing a scene: unit-flux GalSim profiles, each with its own SED, rendered through the Euclid
VIS and NISP PSFs, plus the DESI fibre spectrum of the same light.

Rendering is linear, so each component is drawn once per PSF at unit flux and the four bands
are flux-weighted sums of those stamps (VIS has its own PSF; Y, J and H share the NISP one). The
noise-free VIS stamp of each component also gives its fibre-aperture fraction, so a component's
contribution to the spectrum is exactly the light that falls down a 1.5" fibre.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import galsim
import numpy as np
from scipy.ndimage import gaussian_filter
from scipy.signal import fftconvolve

from fmb.data.schema import BAND_NAMES, ZEROPOINT_NJY_PER_ADU
from fmb.data.synth.sed import Sed

PIXEL_SCALE = 0.1  # arcsec / px, MER mosaics
#: PSFs: diffraction by Euclid's 1.2 m obscured pupil (Airy) convolved with a Gaussian for
#: jitter, charge diffusion and (NISP) the 0.3" native pixels resampled onto the MER grid.
#: Resulting FWHM (measured): VIS 0.169", NISP 0.479" (Y, J, H share one PSF at 1.4 micron).
TELESCOPE_DIAMETER = 1.2  # m
OBSCURATION = 0.3
VIS_WAVELENGTH, VIS_GAUSSIAN_FWHM, VIS_FWHM = 720.0, 0.125, 0.17  # nm, arcsec, arcsec
NISP_WAVELENGTH, NISP_GAUSSIAN_FWHM, NISP_FWHM = 1400.0, 0.40, 0.48
FIBRE_RADIUS = 0.75  # arcsec: DESI fibres are 1.5" across
SEEING_FWHM = 1.1  # arcsec: typical DESI seeing, which decides how much light enters a fibre
#: 5-sigma point-source depths (AB) of the Euclid Wide survey: VIS ~26, NISP ~24.5.
DEPTH_VIS, DEPTH_NISP = 26.0, 24.5
#: error (1e-17 erg/s/cm^2/A) of spectrum pixels that the real noise template masks
MASKED_ERROR = 1e3
#: Half-size of the stamp on which a point-like clump's image (shape x PSF) is drawn once,
#: before being placed at every clump position.
POINT_KERNEL_RADIUS = 2.0  # arcsec
#: Moderate accuracy (differences < 1e-3 of the peak against GalSim defaults, measured) at a
#: fraction of the FFT cost: big galaxies no longer force 512^2 transforms.
GSPARAMS = galsim.GSParams(folding_threshold=2e-2, stepk_minimum_hlr=2, maxk_threshold=2e-3)
BAND_PSF = (0, 1, 1, 1)  # which PSF each band uses: VIS, NISP, NISP, NISP
ADU_PER_NJY = np.array([1.0 / ZEROPOINT_NJY_PER_ADU[band] for band in BAND_NAMES])


@dataclass
class Component:
    """One light source and its SED. Either a unit-flux profile placed relative to the target, or
    (`points` given) equal clumps of shape `profile` at those positions (arcsec, (n, 2) as x, y)."""

    name: str
    profile: galsim.GSObject
    sed: Sed
    in_spectrum: bool = True  # whether its light reaches the fibre spectrum
    points: np.ndarray | None = None
    nuisance: bool = False  # a field galaxy, neighbour or star (fmb.data.synth.sky), not the object


@dataclass
class Scene:
    components: list[Component]
    offset: tuple[float, float] = (0.0, 0.0)  # sub-pixel offset of the target from the stamp centre
    seeing: float = SEEING_FWHM  # arcsec FWHM at the telescope when the spectrum was taken

    @property
    def band_njy(self) -> np.ndarray:
        """Total fluxes of the object (its nuisance neighbours left out, as a deblended catalogue would)."""
        return np.sum([component.sed.band_njy for component in self.components if not component.nuisance], axis=0)


@dataclass(frozen=True)
class Optics:
    size: int
    psfs: tuple[galsim.GSObject, galsim.GSObject]  # VIS, NISP
    fwhm: tuple[float, float]  # arcsec, VIS and NISP
    noise_adu: np.ndarray  # (4,) pixel sigma in ADU at the reference depths


@functools.cache
def get_optics(size: int, psf_scale: float = 1.0) -> Optics:
    """PSFs `psf_scale` times as wide as Euclid's and reference pixel noise for a stamp size (once
    per process). The pixel noise is the sky's and the detector's, so it comes from the nominal PSFs:
    a blurrier PSF alone leaves it as it is (and makes point sources shallower than the depths say)."""
    nominal = euclid_psfs()
    depths = (DEPTH_VIS, DEPTH_NISP, DEPTH_NISP, DEPTH_NISP)
    noise = [point_source_sigma(nominal[index], depth) for index, depth in zip(BAND_PSF, depths)]
    return Optics(size=size, psfs=euclid_psfs(psf_scale), fwhm=(VIS_FWHM * psf_scale, NISP_FWHM * psf_scale),
                  noise_adu=np.array(noise) * ADU_PER_NJY)


def euclid_psfs(scale: float = 1.0) -> tuple[galsim.GSObject, galsim.GSObject]:
    """The VIS and NISP PSFs, `scale` times as wide as Euclid's."""
    return (euclid_psf(VIS_WAVELENGTH, VIS_GAUSSIAN_FWHM, scale), euclid_psf(NISP_WAVELENGTH, NISP_GAUSSIAN_FWHM, scale))


def euclid_psf(wavelength_nm: float, gaussian_fwhm: float, scale: float = 1.0) -> galsim.GSObject:
    """Airy pattern of the obscured 1.2 m pupil, blurred by a Gaussian (both analytic in Fourier
    space, so drawing is ~2x faster than with a Moffat, whose transform is tabulated), both
    `scale` times as wide: the Airy pattern through its lambda / D (exact; a 1.0 changes no bit)."""
    airy = galsim.Airy(lam=wavelength_nm * scale, diam=TELESCOPE_DIAMETER, obscuration=OBSCURATION,
                       scale_unit=galsim.arcsec, gsparams=GSPARAMS)
    return galsim.Convolve(airy, galsim.Gaussian(fwhm=gaussian_fwhm * scale, gsparams=GSPARAMS), gsparams=GSPARAMS)


def point_source_sigma(psf: galsim.GSObject, depth_ab: float) -> float:
    """Pixel noise (nJy) for which a point source of magnitude `depth_ab` is detected at 5 sigma
    with PSF-weighted photometry: sigma_flux = sigma_pix sqrt(N_eff), N_eff = 1 / sum(p_i^2)."""
    stamp = psf.drawImage(nx=41, ny=41, scale=PIXEL_SCALE).array
    n_eff = 1.0 / np.sum((stamp / stamp.sum()) ** 2)
    return 3631e9 * 10 ** (-0.4 * depth_ab) / (5 * np.sqrt(n_eff))


@dataclass
class Rendering:
    model: np.ndarray  # (4, H, W) noise-free, ADU
    fibre_fractions: np.ndarray  # (n_components,)


def render(scene: Scene, optics: Optics) -> Rendering:
    """Noise-free band images of a scene and each component's fibre fraction."""
    size = optics.size
    model = np.zeros((4, size, size))
    aperture = fibre_aperture(size, scene.offset, scene.seeing)
    fractions = np.empty(len(scene.components))
    for index, component in enumerate(scene.components):
        stamps = [draw(component, psf, size, scene.offset) for psf in optics.psfs]
        fractions[index] = float(np.sum(stamps[0] * aperture))
        band_adu = component.sed.band_njy * ADU_PER_NJY
        for band, psf_index in enumerate(BAND_PSF):
            model[band] += band_adu[band] * stamps[psf_index]
    return Rendering(model, fractions)


def fibre_fractions(scene: Scene, optics: Optics) -> np.ndarray:
    """Each component's fraction of light in the fibre, from its noise-free VIS stamp only (for a
    scene whose spectrum is observed but whose image is not: a mis-paired object's ghost)."""
    aperture = fibre_aperture(optics.size, scene.offset, scene.seeing)
    return np.array([np.sum(draw(component, optics.psfs[0], optics.size, scene.offset) * aperture)
                     for component in scene.components])


def draw(component: Component, psf: galsim.GSObject, size: int, offset: tuple[float, float]) -> np.ndarray:
    """One unit-flux component through one PSF on the stamp grid."""
    if component.points is not None:
        return draw_points(component.points, component.profile, psf, size, offset)
    image = galsim.ImageF(size, size, scale=PIXEL_SCALE)
    galsim.Convolve(component.profile, psf, gsparams=GSPARAMS).drawImage(image=image, offset=offset, method="auto")
    return image.array.astype(np.float64)


def draw_points(points: np.ndarray, shape: galsim.GSObject, psf: galsim.GSObject, size: int,
                offset: tuple[float, float]) -> np.ndarray:
    """Many identical clumps: their positions deposited on the pixel grid (bilinear, so sub-pixel
    positions survive), convolved with one GalSim image of clump x PSF. A Fourier-space sum of
    dozens of point sources (GalSim RandomKnots drawn by FFT) is ~10x slower; photon shooting is
    as fast but leaves shot noise above the sky noise on bright galaxies."""
    side = 2 * int(POINT_KERNEL_RADIUS / PIXEL_SCALE) + 1
    kernel = galsim.Convolve(shape, psf, gsparams=GSPARAMS).drawImage(nx=side, ny=side, scale=PIXEL_SCALE).array
    x = (size - 1) / 2 + offset[0] + points[:, 0] / PIXEL_SCALE
    y = (size - 1) / 2 + offset[1] + points[:, 1] / PIXEL_SCALE
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = x - x0, y - y0
    grid = np.zeros((size, size))
    for dx, dy, weight in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        inside = (x0 + dx >= 0) & (x0 + dx < size) & (y0 + dy >= 0) & (y0 + dy < size)
        np.add.at(grid, (y0[inside] + dy, x0[inside] + dx), weight[inside] / len(points))
    return fftconvolve(grid, kernel, mode="same")


def galsim_deviate(rng: np.random.Generator) -> galsim.BaseDeviate:
    """A GalSim random deviate seeded from the object's numpy generator (so runs are reproducible)."""
    return galsim.BaseDeviate(int(rng.integers(1, 2**31 - 1)))


def fibre_aperture(size: int, offset: tuple[float, float], seeing: float) -> np.ndarray:
    """Probability that light from each pixel of the (space-resolution) VIS stamp ends up in the
    fibre: the 1.5" disc on the target (linearly anti-aliased) convolved with the Gaussian seeing
    of the spectroscopic exposure. Summing a noise-free VIS stamp times this map gives its fibre
    fraction (~0.75 for a point source in 1.1" seeing, as DESI's FIBERFLUX / FLUX)."""
    centre_x = (size - 1) / 2 + offset[0]
    centre_y = (size - 1) / 2 + offset[1]
    y, x = np.mgrid[0:size, 0:size]
    radius = np.hypot(x - centre_x, y - centre_y)
    disc = np.clip(FIBRE_RADIUS / PIXEL_SCALE + 0.5 - radius, 0.0, 1.0)
    return gaussian_filter(disc, seeing / 2.3548 / PIXEL_SCALE, mode="constant", truncate=3.5)


def add_image_noise(model: np.ndarray, noise_adu: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Sky-subtracted images: the model plus Gaussian background noise per band (GalSim noise)."""
    noisy = np.empty(model.shape, dtype=np.float32)
    for band in range(model.shape[0]):
        image = galsim.ImageF(model[band].astype(np.float32), scale=PIXEL_SCALE)
        image.addNoise(galsim.GaussianNoise(galsim_deviate(rng), sigma=float(noise_adu[band])))
        noisy[band] = image.array
    return noisy


def add_spectrum_noise(model: np.ndarray, ivar: np.ndarray, rng: np.random.Generator,
                       masked_error: float = MASKED_ERROR) -> tuple[np.ndarray, np.ndarray]:
    """Flux and error of a DESI-like spectrum: Gaussian noise of sigma = 1/sqrt(ivar). Pixels with no
    inverse variance (masked in the real template) get flux 0 and a large but finite error."""
    good = ivar > 0
    error = np.full(model.shape, masked_error)
    error[good] = 1.0 / np.sqrt(ivar[good])
    flux = np.where(good, model + rng.normal(0.0, 1.0, model.shape) * error, 0.0)
    return flux, error


def fibre_spectrum(scene: Scene, fractions: np.ndarray) -> np.ndarray:
    """Noise-free fibre spectrum (1e-17 erg/s/cm^2/A): each component's light times its fibre fraction."""
    spectrum = np.zeros_like(scene.components[0].sed.spectrum)
    for component, fraction in zip(scene.components, fractions):
        if component.in_spectrum:
            spectrum += fraction * component.sed.spectrum
    return spectrum
