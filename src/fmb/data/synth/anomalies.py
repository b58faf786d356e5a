"""The object classes of the synthetic survey (design §4): the normal population and eight rare
anomaly classes. Each builder returns a `Draft`: the scene the images show, the scene the fibre
sees (different only for mis-paired objects), the catalogue entry, and optional artefact hooks
applied after the noise. Strengths are drawn from wide ranges, so no class is one constant away
from normal."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import galsim
import numpy as np

from fmb.data.synth.components import arc_profile, galaxy_components, point_component
from fmb.data.synth.library import C_KM_S, Library
from fmb.data.synth.population import DEFAULT_TRACER_FRACTIONS, Galaxy, draw_galaxy
from fmb.data.synth.scene import BAND_PSF, GSPARAMS, NISP_FWHM, PIXEL_SCALE, VIS_FWHM, Component, Optics, Scene
from fmb.data.synth.sky import CLEAN, Sky
from fmb.data.synth.sed import (LINE_NAMES, LINES, LOG_HALPHA_PER_SFR, Sed, ab_mag, continuum_at, galaxy_total_sed,
                                intrinsic_ratios, qso_sed, sfr_line_fluxes, star_sed)

ANOMALY_CLASSES = ("image_artefact", "spectrum_artefact", "qso_agn", "strong_lens", "mispaired", "merger",
                   "star", "extreme_emitter")
CLASSES = ("none", *ANOMALY_CLASSES)

#: hook(images (4,H,W) ADU, noise (4,) ADU, rng) -> params, applied in place after the image noise
ImageHook = Callable[[np.ndarray, np.ndarray, np.random.Generator], dict]
#: hook(flux, error, wave, sky_pixels, rng) -> params, applied in place after the spectrum noise
SpectrumHook = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.random.Generator], dict]


@dataclass
class Context:
    lib: Library
    optics: Optics
    noise_scale: float = 1.0  # times the pixel and spectrum noise sigma of the nominal survey
    tracer_fractions: tuple[float, ...] = DEFAULT_TRACER_FRACTIONS  # of the base population's tracers
    sky: Sky = CLEAN  # the nuisances around every object


@dataclass
class Draft:
    scene: Scene  # what the Euclid images show
    galaxy: Galaxy | None  # the image's main galaxy (None for stars)
    catalog: dict  # Z, LOGM, LOGSFR, SPECTYPE of the object whose spectrum this is
    params: dict = field(default_factory=dict)  # class-specific truth
    line_fluxes: np.ndarray | None = None  # the main galaxy's emission lines (erg/s/cm^2, LINE_NAMES order)
    spectrum_scene: Scene | None = None  # None: the fibre sees `scene`
    image_hook: ImageHook | None = None
    spectrum_hook: SpectrumHook | None = None


def build(anomaly_class: str, ctx: Context, rng: np.random.Generator) -> Draft:
    return BUILDERS[anomaly_class](ctx, rng)


# --- shared pieces ----------------------------------------------------------------------------

def galaxy_catalog(galaxy: Galaxy, spectype: str = "GALAXY") -> dict:
    return {"Z": galaxy.z, "LOGM": galaxy.logm, "LOGSFR": galaxy.logsfr, "SPECTYPE": spectype}


def galaxy_draft(ctx: Context, rng: np.random.Generator, galaxy: Galaxy | None = None,
                 line_fluxes: np.ndarray | None = None) -> Draft:
    """A galaxy (drawn from the population unless given), its lines from its SFR unless given."""
    galaxy = galaxy or draw_galaxy(rng, ctx.lib, tracer_fractions=ctx.tracer_fractions)
    lines = sfr_line_fluxes(ctx.lib, galaxy) if line_fluxes is None else line_fluxes
    scene = Scene(galaxy_components(ctx.lib, galaxy, rng, ctx.optics.size, line_fluxes=lines))
    return Draft(scene, galaxy, galaxy_catalog(galaxy), line_fluxes=lines)


def total_sed(components: list[Component]) -> Sed:
    total = components[0].sed
    for component in components[1:]:
        total = total + component.sed
    return total


# --- normal ----------------------------------------------------------------------------------

def build_normal(ctx: Context, rng: np.random.Generator) -> Draft:
    return galaxy_draft(ctx, rng)


# --- image artefacts (image only) ---------------------------------------------------------------

def build_image_artefact(ctx: Context, rng: np.random.Generator) -> Draft:
    draft = _artefact_draft(ctx, rng, IMAGE_ARTEFACTS, "image_hook")
    if draft.image_hook is satellite_trail:  # as wide as this survey's PSFs, not the nominal ones
        draft.image_hook = functools.partial(satellite_trail, fwhm=ctx.optics.fwhm)
    return draft


def _artefact_draft(ctx: Context, rng: np.random.Generator, kinds: dict, hook: str) -> Draft:
    """An ordinary galaxy with one artefact of a randomly chosen kind applied by `hook`."""
    draft = galaxy_draft(ctx, rng)
    kind = str(rng.choice(list(kinds)))
    draft.params = {"kind": kind}
    setattr(draft, hook, kinds[kind])
    return draft


def satellite_trail(images: np.ndarray, noise: np.ndarray, rng: np.random.Generator,
                    fwhm: tuple[float, float] = (VIS_FWHM, NISP_FWHM)) -> dict:
    """A straight streak across the stamp, PSF-wide (slightly defocused; `fwhm` of the VIS and NISP
    PSFs, arcsec), in 1-4 bands: a satellite crossing some of the exposures. Peak 3-100 sigma per pixel."""
    size = images.shape[-1]
    angle = rng.uniform(0, np.pi)
    anchor = rng.uniform(0.15, 0.85, 2) * size
    bands = np.sort(rng.choice(4, size=int(rng.integers(1, 5)), replace=False))
    peak_snr = 10 ** rng.uniform(0.5, 2.0)
    y, x = np.mgrid[0:size, 0:size]
    distance = np.abs((x - anchor[0]) * np.sin(angle) - (y - anchor[1]) * np.cos(angle))
    for band in bands:
        sigma_px = fwhm[BAND_PSF[band]] / 2.3548 / PIXEL_SCALE * rng.uniform(1.0, 1.6)
        images[band] += peak_snr * noise[band] * np.exp(-0.5 * (distance / sigma_px) ** 2)
    return {"angle_deg": float(np.degrees(angle)), "anchor_px": anchor.round(2).tolist(),
            "bands": bands.tolist(), "peak_snr": float(peak_snr)}


def cosmic_rays(images: np.ndarray, noise: np.ndarray, rng: np.random.Generator) -> dict:
    """1-10 cosmic-ray hits in VIS: single pixels or short tracks, sharper than the PSF, 20-500 sigma."""
    size = images.shape[-1]
    hits = []
    for _ in range(int(rng.integers(1, 11))):
        length = int(rng.integers(1, 8))
        angle = rng.uniform(0, np.pi)
        start = rng.uniform(0, size, 2)
        steps = np.arange(length)
        xs = np.clip(np.round(start[0] + steps * np.cos(angle)).astype(int), 0, size - 1)
        ys = np.clip(np.round(start[1] + steps * np.sin(angle)).astype(int), 0, size - 1)
        snr = 10 ** rng.uniform(1.3, 2.7)
        images[0, ys, xs] += snr * noise[0] * rng.uniform(0.5, 1.0, length)
        hits.append({"x": int(xs[0]), "y": int(ys[0]), "length": length, "snr": round(float(snr), 1)})
    return {"n_hits": len(hits), "hits": hits}


def bad_column(images: np.ndarray, noise: np.ndarray, rng: np.random.Generator) -> dict:
    """A hot or cold detector column (full or partial) in one band, offset by 3-50 sigma."""
    size = images.shape[-1]
    band, column = int(rng.integers(4)), int(rng.integers(size))
    start = int(rng.integers(0, size // 2)) if rng.random() < 0.5 else 0
    sign = 1.0 if rng.random() < 0.6 else -1.0
    snr = 10 ** rng.uniform(0.5, 1.7)
    images[band, start:, column] += sign * snr * noise[band]
    return {"band": band, "column": column, "start_row": start, "snr": float(sign * snr)}


IMAGE_ARTEFACTS: dict[str, ImageHook] = {
    "satellite_trail": satellite_trail, "cosmic_rays": cosmic_rays, "bad_column": bad_column,
}


# --- spectrum artefacts (spectrum only) -------------------------------------------------------

def build_spectrum_artefact(ctx: Context, rng: np.random.Generator) -> Draft:
    return _artefact_draft(ctx, rng, SPECTRUM_ARTEFACTS, "spectrum_hook")


def sky_residuals(flux, error, wave, sky_pixels, rng) -> dict:
    """Badly subtracted sky lines: 3-12 of the strongest OH/[O I] lines (where the real DESI noise
    peaks) left with +-5-30 sigma residuals, some P-Cygni shaped (a wavelength-calibration shift)."""
    chosen = np.sort(rng.choice(sky_pixels, size=int(rng.integers(3, 13)), replace=False))
    pixels = np.arange(len(flux))
    spikes = []
    for pixel in chosen:
        amplitude = (1 if rng.random() < 0.7 else -1) * 10 ** rng.uniform(0.7, 1.5) * error[pixel]
        width = rng.uniform(0.7, 1.5)
        window = slice(max(pixel - 6, 0), pixel + 7)
        profile = np.exp(-0.5 * ((pixels[window] - pixel) / width) ** 2)
        if rng.random() < 0.4:  # P-Cygni: positive and negative lobes either side of the line
            profile = profile * np.sign(pixels[window] - pixel + 0.5)
        flux[window] += amplitude * profile
        spikes.append({"wave": round(float(wave[pixel]), 1), "amplitude": round(float(amplitude), 3)})
    return {"n_spikes": len(spikes), "spikes": spikes}


def dead_segment(flux, error, wave, sky_pixels, rng) -> dict:
    """A dead stretch of 150-600 A (a CCD amplifier or fibre-trace failure): flux ~0, errors normal."""
    length = int(rng.uniform(150, 600) / (wave[1] - wave[0]))
    start = int(rng.integers(0, len(flux) - length))
    flux[start:start + length] = rng.normal(0, 0.02, length) * error[start:start + length]
    return {"start_wave": float(wave[start]), "end_wave": float(wave[start + length - 1])}


def calibration_jump(flux, error, wave, sky_pixels, rng) -> dict:
    """One arm mis-calibrated against the others: a 15-45% gain error plus an additive offset of
    0.5-2 median sigma, starting at the arm boundary (B/R at 5780 A or R/Z at 7570 A)."""
    arm = str(rng.choice(["B", "Z"]))
    region = wave < 5780 if arm == "B" else wave > 7570
    gain = rng.uniform(0.55, 0.85) if rng.random() < 0.5 else rng.uniform(1.15, 1.45)
    offset = rng.choice([-1, 1]) * rng.uniform(0.5, 2.0) * float(np.median(error[region]))
    flux[region] = flux[region] * gain + offset
    return {"arm": arm, "gain": float(gain), "offset": float(offset)}


SPECTRUM_ARTEFACTS: dict[str, SpectrumHook] = {
    "sky_residuals": sky_residuals, "dead_segment": dead_segment, "calibration_jump": calibration_jump,
}


# --- QSO / AGN (image and spectrum) -----------------------------------------------------------

def build_qso_agn(ctx: Context, rng: np.random.Generator) -> Draft:
    """A host galaxy with an unresolved nucleus: the LBQS composite (broad lines) at the host's
    redshift, 0.25-10x the host's VIS flux, with a varied continuum slope."""
    draft = galaxy_draft(ctx, rng)
    host_vis = float(draft.scene.band_njy[0])
    ratio = 10 ** rng.uniform(-0.6, 1.0)
    slope = rng.normal(0.0, 0.3)
    nucleus = qso_sed(ctx.lib, draft.galaxy.z, ratio * host_vis, slope)
    draft.scene.components.append(point_component("qso", nucleus))
    draft.catalog["SPECTYPE"] = "QSO"
    draft.params = {"qso_to_host_vis": float(ratio), "slope_delta": float(slope),
                    "qso_mag_vis": ab_mag(nucleus.band_njy[0]), "qso_mag_h": ab_mag(nucleus.band_njy[3])}
    return draft


# --- strong lens (image and spectrum) ---------------------------------------------------------

LENS_CONFIGURATIONS = {  # name: (arc centre angles in units of pi/2, relative fluxes)
    "single_arc": ((0,), (1.0,)),
    "double": ((0, 2), (0.6, 0.4)),
    "cross": ((0, 1, 2, 3), (0.3, 0.25, 0.25, 0.2)),
}


def build_strong_lens(ctx: Context, rng: np.random.Generator) -> Draft:
    """A massive elliptical deflector with a magnified star-forming source behind it, drawn as
    tangentially sheared arcs (or a ring) at the Einstein radius. The fibre catches the deflector
    and part of the arcs, so the spectrum shows a second set of emission lines at z_source."""
    lib = ctx.lib
    z_lens = rng.uniform(0.2, 0.75)
    deflector = draw_galaxy(rng, lib, galaxy_type="elliptical", tracer="LRG", z=z_lens, logm=rng.uniform(11.2, 11.8))
    z_source = rng.uniform(z_lens + 0.3, 1.6)
    source = draw_galaxy(rng, lib, galaxy_type=str(rng.choice(["disc", "irregular"])), tracer="ELG",
                         z=z_source, logm=rng.uniform(9.3, 10.4), sfr_offset=rng.uniform(0.1, 0.6))
    theta_e = rng.uniform(0.8, 1.6)
    magnification = 10 ** rng.uniform(0.5, 1.2)
    configuration = str(rng.choice(["single_arc", "double", "cross", "ring"], p=[0.35, 0.3, 0.15, 0.2]))
    arcs = _lens_arcs(rng, source, theta_e, configuration)
    source_light = galaxy_total_sed(lib, source).scaled(magnification)
    draft = galaxy_draft(ctx, rng, deflector)
    draft.scene.components.append(Component("lensed_source", arcs, source_light))
    draft.params = {
        "z_source": float(z_source), "theta_e_arcsec": float(theta_e), "magnification": float(magnification),
        "configuration": configuration, "source_logm": source.logm, "source_logsfr": source.logsfr,
        "source_type": source.galaxy_type, "source_mag_vis": ab_mag(source_light.band_njy[0]),
        "sigma_sis_kms": _sis_dispersion(lib, theta_e, z_lens, z_source),
    }
    return draft


def _lens_arcs(rng: np.random.Generator, source: Galaxy, theta_e: float, configuration: str) -> galsim.GSObject:
    blob = galsim.Exponential(half_light_radius=float(np.clip(source.r_half_arcsec, 0.08, 0.3)), gsparams=GSPARAMS)
    shear = rng.uniform(0.45, 0.75)
    phi0 = rng.uniform(0, 2 * np.pi)
    if configuration == "ring":
        return arc_profile(blob, theta_e, phi0, np.pi * (1 - 1 / 20), 20, shear, 1.5, taper=False)
    angles, fluxes = LENS_CONFIGURATIONS[configuration]
    pieces = []
    for quarter, flux in zip(angles, fluxes):
        half_angle = rng.uniform(0.25, 0.6) * np.sqrt(flux / max(fluxes))
        angle = phi0 + quarter * np.pi / 2 + rng.normal(0, 0.15)
        radius = theta_e * rng.uniform(0.92, 1.08)  # ellipticity of the deflector's potential
        pieces.append(arc_profile(blob, radius, angle, half_angle, 7, shear, 1.5).withFlux(flux))
    return galsim.Sum(pieces, gsparams=GSPARAMS)


def _sis_dispersion(lib: Library, theta_e: float, z_lens: float, z_source: float) -> float:
    """Velocity dispersion of the singular isothermal sphere with this Einstein radius:
    theta_E = 4 pi (sigma/c)^2 D_ls / D_s (flat universe: D_ls = (D_C,s - D_C,l) / (1 + z_s))."""
    def comoving(z):
        return float(lib.interp_z(lib.kpc_per_arcsec, z)) * 206264.8 * (1 + z)
    d_ls = (comoving(z_source) - comoving(z_lens)) / (1 + z_source)
    d_s = comoving(z_source) / (1 + z_source)
    return float(C_KM_S * np.sqrt(np.radians(theta_e / 3600) * d_s / (4 * np.pi * d_ls)))


# --- mis-paired (only jointly anomalous) --------------------------------------------------------

def build_mispaired(ctx: Context, rng: np.random.Generator) -> Draft:
    """The image of one galaxy with the spectrum (and catalogue redshift) of another, independently
    drawn 'ghost' from the same population: each modality alone looks normal."""
    draft = galaxy_draft(ctx, rng)
    ghost = galaxy_draft(ctx, rng)
    draft.spectrum_scene = ghost.scene
    draft.catalog = ghost.catalog
    draft.params = {f"ghost_{key}": value for key, value in ghost.galaxy.truth().items()}
    return draft


# --- merger (image only) ---------------------------------------------------------------------

def build_merger(ctx: Context, rng: np.random.Generator) -> Draft:
    """Two galaxies at the same redshift 0.4-1.5" apart (mass ratio 1:1-1:4) with 1-2 faint curved
    tidal tails; the fibre is on the primary and its spectrum is the primary's."""
    lib = ctx.lib
    draft = galaxy_draft(ctx, rng)
    primary = draft.galaxy
    mass_ratio = 10 ** rng.uniform(0.0, 0.6)
    secondary = draw_galaxy(rng, lib, tracer=primary.tracer, z=primary.z, logm=primary.logm - np.log10(mass_ratio))
    separation, angle = rng.uniform(0.4, 1.5), rng.uniform(0, 2 * np.pi)
    position = (separation * np.cos(angle), separation * np.sin(angle))
    draft.scene.components += galaxy_components(lib, secondary, rng, ctx.optics.size, shift=position, in_spectrum=False,
                                                 prefix="secondary_")
    pair_light = total_sed(draft.scene.components)
    tails = []
    for side in rng.choice([-1, 1], size=int(rng.integers(1, 3)), replace=False):
        fraction = rng.uniform(0.03, 0.12)
        profile, tail = _tidal_tail(rng, position, side, float(np.clip(max(separation, primary.r_half_arcsec), 0.8, 2.5)))
        draft.scene.components.append(Component("tail", profile, pair_light.scaled(fraction), in_spectrum=False))
        tails.append({"flux_fraction": float(fraction), **tail})
    draft.params = {"mass_ratio": float(mass_ratio), "separation_arcsec": float(separation),
                    "angle_deg": float(np.degrees(angle)), "secondary_type": secondary.galaxy_type,
                    "secondary_logm": secondary.logm, "tails": tails}
    return draft


def _tidal_tail(rng: np.random.Generator, secondary_at, side: int, scale: float):
    """A curved tail leaving the pair: an arc of sheared exponential blobs on a circle whose one end
    sits at the midpoint of the two nuclei; its size follows the galaxies' (`scale`, arcsec), so it
    stays a faint, extended feature rather than a compact arc."""
    midpoint = (secondary_at[0] / 2, secondary_at[1] / 2)
    radius = rng.uniform(1.0, 2.0) * scale
    half_angle = rng.uniform(0.4, 0.9)
    axis = np.arctan2(secondary_at[1], secondary_at[0]) + side * np.pi / 2
    centre = (midpoint[0] + radius * np.cos(axis), midpoint[1] + radius * np.sin(axis))
    start = axis + np.pi  # the angle, seen from the circle's centre, of the midpoint
    blob = galsim.Exponential(half_light_radius=rng.uniform(0.2, 0.4) * scale, gsparams=GSPARAMS)
    profile = arc_profile(blob, radius, start + side * half_angle, half_angle, 6, rng.uniform(0.3, 0.6), centre=centre)
    return profile, {"radius_arcsec": float(radius), "half_angle_rad": float(half_angle), "side": int(side)}


# --- star (image and spectrum) ---------------------------------------------------------------

def build_star(ctx: Context, rng: np.random.Generator) -> Draft:
    """A point source with a stellar spectrum at z ~ 0: K to A stars (or a white dwarf), interpolated
    between neighbouring templates, with Milky-Way reddening and a radial velocity."""
    template = rng.uniform(0, 2) if rng.random() < 0.85 else rng.uniform(2, 3)
    ebv = rng.uniform(0.0, 0.15)
    velocity = rng.normal(0, 40)
    vis_mag = rng.uniform(17.0, 22.5)
    light = star_sed(ctx.lib, template, ebv, velocity, 3631e9 * 10 ** (-0.4 * vis_mag))
    scene = Scene([point_component("star", light)])
    catalog = {"Z": float(velocity / C_KM_S), "LOGM": float("nan"), "LOGSFR": float("nan"), "SPECTYPE": "STAR"}
    names = ctx.lib.star_names
    params = {"template": float(template), "templates": [names[int(min(template, len(names) - 2))],
                                                         names[int(min(template, len(names) - 2)) + 1]],
              "ebv": float(ebv), "velocity_kms": float(velocity), "mag_vis": float(vis_mag)}
    return Draft(scene, None, catalog, params)


# --- extreme emission-line galaxy (spectrum; weak in the image) -------------------------------

def build_extreme_emitter(ctx: Context, rng: np.random.Generator) -> Draft:
    """A compact, low-mass starburst ('green pea' / EELG) with [O III] 5008 rest equivalent width
    300-2500 A and high [O III]/Hbeta; faint and barely resolved in Euclid."""
    lib = ctx.lib
    galaxy = draw_galaxy(rng, lib, galaxy_type="irregular", tracer="ELG", z=rng.uniform(0.1, 0.9),
                         logm=rng.uniform(8.0, 9.3), sfr_offset=rng.uniform(0.8, 1.4))
    r_half_kpc = rng.uniform(0.3, 1.0)
    scale = float(lib.interp_z(lib.kpc_per_arcsec, galaxy.z))
    galaxy = replace(galaxy, r_half_kpc=r_half_kpc, r_half_arcsec=r_half_kpc / scale, q=rng.uniform(0.5, 1.0),
                     n_knots=int(rng.integers(0, 4)), knot_fraction=rng.uniform(0.0, 0.3), a_halpha=rng.uniform(0, 0.4),
                     sigma_gas=rng.uniform(30, 80), log_oiii_hbeta=rng.uniform(0.6, 0.9),
                     log_nii_halpha=rng.uniform(-1.8, -1.3), log_oii_hbeta=rng.uniform(0.0, 0.35))
    continuum = galaxy_total_sed(lib, galaxy, np.zeros(len(LINE_NAMES)))
    ew_oiii = 10 ** rng.uniform(2.5, 3.4)  # rest-frame A
    oiii_flux = ew_oiii * (1 + galaxy.z) * continuum_at(continuum, lib, LINES["OIII_5008"], galaxy.z)
    ratios = intrinsic_ratios(galaxy.log_oiii_hbeta, galaxy.log_nii_halpha, galaxy.log_oii_hbeta)
    line_fluxes = oiii_flux * ratios / ratios[LINE_NAMES.index("OIII_5008")]
    halpha_intrinsic = line_fluxes[LINE_NAMES.index("Halpha")] * 10 ** (0.4 * galaxy.a_halpha)
    luminosity = halpha_intrinsic * 4 * np.pi * float(lib.interp_z(lib.dl_cm, galaxy.z)) ** 2
    galaxy = replace(galaxy, logsfr=float(np.log10(luminosity) - LOG_HALPHA_PER_SFR))
    draft = galaxy_draft(ctx, rng, galaxy, line_fluxes)
    halpha_continuum = continuum_at(continuum, lib, LINES["Halpha"], galaxy.z)  # NaN beyond 9824 A
    draft.params = {"ew_oiii_rest": float(ew_oiii), "oiii_flux": float(oiii_flux / 1e-17),
                    "ew_halpha_rest": float(line_fluxes[LINE_NAMES.index("Halpha")] / halpha_continuum / (1 + galaxy.z))}
    return draft


BUILDERS: dict[str, Callable[[Context, np.random.Generator], Draft]] = {
    "none": build_normal,
    "image_artefact": build_image_artefact,
    "spectrum_artefact": build_spectrum_artefact,
    "qso_agn": build_qso_agn,
    "strong_lens": build_strong_lens,
    "mispaired": build_mispaired,
    "merger": build_merger,
    "star": build_star,
    "extreme_emitter": build_extreme_emitter,
}
