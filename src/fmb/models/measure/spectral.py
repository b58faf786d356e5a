"""Standard measurements of a batch of spectra at their redshifts, vectorised over the batch.

Every window is a rest-frame wavelength range moved to each object's observed frame; its pixels
are gathered at once for the whole batch (a (B, K) block per window), so the cost is a few array
operations per window whatever the batch size. Means are inverse-variance weighted over the
window's observed pixels (masked pixels have ivar 0), so sky-line pixels count little.

* D4000: the narrow 4000 A break (Balogh et al. 1999), <f_nu> 4000-4100 / <f_nu> 3850-3950;
* Lick/Balmer indices (Worthey et al. 1994; Worthey & Ottaviani 1997 for HdeltaA, HgammaA): the
  equivalent width of the central band against the straight line through the two pseudo-continua,
  EW = W (1 - <F>_central / F_c(centre)), rest-frame Angstrom;
* emission lines: flux (continuum-subtracted sum over the line window, 1e-17 erg/s/cm^2), rest
  equivalent width, and for the main lines the width (sigma, km/s) and the shape (velocity offset,
  km/s, and skewness) from the moments of the positive excess. A line is *detected* when its flux
  is at least `DETECTION_SNR` times its error; a measurement of a line not detected is noise and
  carries no information about the line, so it is not kept: its flux is the upper limit
  (`DETECTION_SNR` x error), its equivalent width 0 (the line's absence) and its width and shape
  NaN (not measured: the reference's standardisation sets them to the median, a neutral value);
* line ratios: log10 of the two lines' fluxes as above (a detection against an upper limit is a
  limit, kept); NaN when neither line is detected (a ratio of two upper limits says nothing);
* continuum colours: 2.5 log10 of <f_nu> ratios of line-free rest-frame windows, and the level
  (log10 <f_lambda> at 4150-4250 A rest).

A quantity whose windows fall outside the spectrum (or hold no observed pixel) is NaN.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

C_KMS = 299_792.458
DETECTION_SNR = 3.0  # the conventional 3-sigma detection of a line


@dataclass(frozen=True)
class Index:
    name: str
    central: tuple[float, float]
    blue: tuple[float, float]
    red: tuple[float, float]


#: Lick/IDS and Balmer indices (rest, air wavelengths as published; the 0.1% vacuum offset is far
#: below the windows' widths).
INDICES = (
    Index("HdeltaA", (4083.500, 4122.250), (4041.600, 4079.750), (4128.500, 4161.000)),
    Index("HgammaA", (4319.750, 4363.500), (4283.500, 4319.750), (4367.250, 4419.750)),
    Index("Hbeta_index", (4847.875, 4876.625), (4827.875, 4847.875), (4876.625, 4891.625)),
    Index("Mgb", (5160.125, 5192.625), (5142.625, 5161.375), (5191.375, 5206.375)),
    Index("Fe5270", (5245.650, 5285.650), (5233.150, 5248.150), (5285.650, 5318.150)),
    Index("Fe5335", (5312.125, 5352.125), (5304.625, 5315.875), (5353.375, 5363.375)),
    Index("NaD", (5876.875, 5909.375), (5860.625, 5875.625), (5922.125, 5948.125)),
)
D4000_BLUE, D4000_RED = (3850.0, 3950.0), (4000.0, 4100.0)


@dataclass(frozen=True)
class Line:
    name: str
    centre: float  # rest, vacuum Angstrom (the DESI wavelength grid is in vacuum)
    window: tuple[float, float]  # rest range summed as the line
    continuum: tuple[tuple[float, float], tuple[float, float]]  # rest side bands
    main: bool = False  # width and shape measured too


LINES = (
    Line("OII_3727", 3728.5, (3718.0, 3739.0), ((3690.0, 3710.0), (3750.0, 3770.0)), True),
    Line("Hdelta", 4102.9, (4094.0, 4112.0), ((4060.0, 4080.0), (4125.0, 4145.0))),
    Line("Hgamma", 4341.7, (4333.0, 4351.0), ((4300.0, 4320.0), (4365.0, 4385.0))),
    Line("Hbeta", 4862.7, (4853.0, 4873.0), ((4820.0, 4840.0), (4885.0, 4905.0)), True),
    Line("OIII_4960", 4960.3, (4952.0, 4969.0), ((4925.0, 4945.0), (4975.0, 4990.0))),
    Line("OIII_5008", 5008.2, (4999.0, 5018.0), ((4975.0, 4990.0), (5025.0, 5045.0)), True),
    Line("OI_6302", 6302.0, (6294.0, 6311.0), ((6265.0, 6285.0), (6320.0, 6340.0))),
    Line("NII_6550", 6549.9, (6543.0, 6557.0), ((6480.0, 6530.0), (6600.0, 6640.0))),
    Line("Halpha", 6564.6, (6557.0, 6572.0), ((6480.0, 6530.0), (6600.0, 6640.0)), True),
    Line("NII_6585", 6585.3, (6578.0, 6593.0), ((6480.0, 6530.0), (6600.0, 6640.0)), True),
    Line("SII_6718_6733", 6725.5, (6710.0, 6742.0), ((6680.0, 6700.0), (6750.0, 6770.0)), True),
)
RATIOS = (("OIII_5008", "Hbeta"), ("NII_6585", "Halpha"), ("SII_6718_6733", "Halpha"), ("OII_3727", "Hbeta"),
          ("Halpha", "Hbeta"))
#: Line-free rest windows (Angstrom) whose f_nu ratios are the continuum colours, blue to red.
COLOUR_WINDOWS = ((3580.0, 3680.0), (4150.0, 4250.0), (5050.0, 5150.0), (5550.0, 5650.0), (6050.0, 6150.0),
                  (7000.0, 7100.0))
LEVEL_WINDOW = (4150.0, 4250.0)


def feature_names() -> list[str]:
    names = ["D4000", *(index.name for index in INDICES)]
    for line in LINES:
        names += [f"{line.name}_log_flux", f"{line.name}_ew"]
        if line.main:
            names += [f"{line.name}_sigma_kms", f"{line.name}_offset_kms", f"{line.name}_skew"]
    names += [f"log_{a}_{b}" for a, b in RATIOS]
    names += [f"colour_{int(a[0])}_{int(b[0])}" for a, b in zip(COLOUR_WINDOWS[:-1], COLOUR_WINDOWS[1:])]
    return [*names, "log_level"]


def measure_spectra(flux: np.ndarray, ivar: np.ndarray, wave: np.ndarray, z: np.ndarray) -> np.ndarray:
    """(B, len(feature_names())) measurements of spectra (B, L) with observed wavelengths (B, L) or
    (L,) in Angstrom and redshifts (B,); NaN where a quantity cannot be measured."""
    batch = _Batch(np.asarray(flux), np.asarray(ivar), np.asarray(wave), np.asarray(z, np.float64))
    columns = [batch.mean_fnu(*D4000_RED) / batch.mean_fnu(*D4000_BLUE)]
    columns += [_index(batch, index) for index in INDICES]
    lines = {}
    for line in LINES:
        measured = _detected_only(_line(batch, line))
        lines[line.name] = measured
        columns += [np.log10(measured["flux"]), measured["ew"]]
        if line.main:
            columns += [measured["sigma_kms"], measured["offset_kms"], measured["skew"]]
    for a, b in RATIOS:
        either = lines[a]["detected"] | lines[b]["detected"]
        columns.append(np.where(either, np.log10(lines[a]["flux"] / lines[b]["flux"]), np.nan))
    fnu = [batch.mean_fnu(*window) for window in COLOUR_WINDOWS]
    columns += [2.5 * np.log10(np.abs(red) / np.abs(blue)) for blue, red in zip(fnu[:-1], fnu[1:])]
    columns.append(np.log10(np.abs(batch.mean_flambda(*LEVEL_WINDOW))))
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.stack(columns, axis=1)
    return np.where(np.isfinite(out), out, np.nan)


class _Batch:
    """Spectra of a batch and the gathering of their pixels in rest-frame windows. The spectra stay in
    the dtype they came in; the pixels of each window are gathered, then computed on in float64 (the
    same numbers as converting the whole spectra first, at a fraction of the memory traffic)."""

    def __init__(self, flux: np.ndarray, ivar: np.ndarray, wave: np.ndarray, z: np.ndarray):
        self.flux, self.ivar, self.z = np.ascontiguousarray(flux), np.ascontiguousarray(ivar), z
        self.shared_grid = wave.ndim == 1 or bool((wave == wave[:1]).all())
        # the grid searched, and each pixel's width, once per batch (every window of every line reads them)
        self.grid = (wave if wave.ndim == 1 else wave[0]).astype(np.float64) if self.shared_grid else wave.astype(np.float64)
        self.step = np.gradient(self.grid, axis=-1)
        # each spectrum's first pixel in the flattened arrays: a window is one gather of each array (a
        # third of the time of take_along_axis)
        self.row_starts = (np.arange(len(self.flux)) * self.flux.shape[1])[:, None]

    def window(self, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(flux, ivar, observed wavelength, pixel width) of the pixels of rest [lo, hi) per object,
        (B, K) float64 blocks with ivar 0 beyond the window or the spectrum, or where it is not finite."""
        scale = 1.0 + self.z
        start = self._searchsorted(lo * scale)
        stop = self._searchsorted(hi * scale)
        width = int(max(1, (stop - start).max(initial=1)))
        index = start[:, None] + np.arange(width)[None, :]
        inside = index < stop[:, None]
        index = np.minimum(index, self.flux.shape[1] - 1)
        flat_index = index + self.row_starts
        grid_index = index if self.shared_grid else flat_index
        take = lambda array, at: array.ravel().take(at).astype(np.float64, copy=False)  # noqa: E731
        ivar = take(self.ivar, flat_index)
        return (take(self.flux, flat_index), np.where(inside & np.isfinite(ivar), ivar, 0.0), take(self.grid, grid_index),
                take(self.step, grid_index))

    def _searchsorted(self, edges: np.ndarray) -> np.ndarray:
        if self.shared_grid:
            return np.searchsorted(self.grid, edges)
        return np.array([np.searchsorted(row, edge) for row, edge in zip(self.grid, edges)])

    def mean_flambda(self, lo: float, hi: float) -> np.ndarray:
        flux, ivar, _, _ = self.window(lo, hi)
        return _weighted_mean(flux, ivar)

    def mean_fnu(self, lo: float, hi: float) -> np.ndarray:
        flux, ivar, wave, _ = self.window(lo, hi)
        return _weighted_mean(flux * wave**2, ivar / np.maximum(wave, 1.0) ** 4)


def _weighted_mean(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    total = weights.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (values * weights).sum(1) / np.where(total > 0, total, 1.0), np.nan)


def _index(batch: _Batch, index: Index) -> np.ndarray:
    """Equivalent width (rest Angstrom) of an index against its straight pseudo-continuum."""
    blue, red = batch.mean_flambda(*index.blue), batch.mean_flambda(*index.red)
    blue_mid, red_mid, mid = np.mean(index.blue), np.mean(index.red), np.mean(index.central)
    continuum = blue + (red - blue) * (mid - blue_mid) / (red_mid - blue_mid)
    central = batch.mean_flambda(*index.central)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (index.central[1] - index.central[0]) * (1.0 - central / continuum)


def _detected_only(measured: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A line's measurements with those of an undetected line (flux < DETECTION_SNR error, or an
    absorption of any depth: an emission line's flux is floored at the limit) replaced as the module
    doc says; "detected" added."""
    limit = DETECTION_SNR * measured["error"]
    with np.errstate(invalid="ignore"):
        detected = measured["flux"] >= limit
    out = {"detected": detected, "flux": np.where(detected, measured["flux"], limit),
           "ew": np.where(detected | np.isnan(measured["ew"]), measured["ew"], 0.0)}
    for shape in ("sigma_kms", "offset_kms", "skew"):
        if shape in measured:
            out[shape] = np.where(detected, measured[shape], np.nan)
    return out


def _line(batch: _Batch, line: Line) -> dict[str, np.ndarray]:
    """Flux, error, rest EW, and (main lines) width, offset and skewness of one emission line."""
    sides = [batch.window(*band) for band in line.continuum]
    side_flux = np.concatenate([side[0] for side in sides], axis=1)
    side_ivar = np.concatenate([side[1] for side in sides], axis=1)
    continuum = _weighted_mean(side_flux, side_ivar)
    flux, ivar, wave, step = batch.window(*line.window)
    observed = ivar > 0
    excess = np.where(observed, flux - continuum[:, None], 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        # masked pixels inside the window are filled by the continuum (zero excess): the flux of the
        # pixels seen, with the error of the pixels seen
        total = (excess * step).sum(1)
        error = np.sqrt(np.where(observed, step**2 / np.where(observed, ivar, 1.0), 0.0).sum(1))
        error = np.where(observed.any(1), error, np.nan)
        total = np.where(observed.any(1), total, np.nan)
        ew = total / continuum / (1.0 + batch.z)
        out = {"flux": total, "error": error, "ew": ew}
        if line.main:
            weight = np.clip(excess, 0.0, None) * step
            norm = weight.sum(1)
            expected = line.centre * (1.0 + batch.z)
            mean = (weight * wave).sum(1) / norm
            variance = (weight * (wave - mean[:, None]) ** 2).sum(1) / norm
            third = (weight * (wave - mean[:, None]) ** 3).sum(1) / norm
            out["sigma_kms"] = C_KMS * np.sqrt(variance) / expected
            out["offset_kms"] = C_KMS * (mean - expected) / expected
            out["skew"] = third / np.maximum(variance, 1e-12) ** 1.5
    return out
