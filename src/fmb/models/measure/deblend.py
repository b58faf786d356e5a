"""The central source of a cutout, not its neighbours: detection and deblending with SEP (Source
Extractor's library, Barbary 2016), the neighbours' pixels masked, and the crowding as covariates.

Detection runs on the VIS band (the sharpest), thresholded on the robust (MAD) sigma of the pixels
that hold data (a detector edge leaves exact zeros, masked); the noise the measurements use
(`Central.noise`) is then each band's robust sigma off every grown source after the local
background, the sky's alone, which a bright star or neighbour does not inflate. The central source is the segment
under the cutout's centre, else the detected source nearest to it within `CENTRAL_RADIUS_PX`. Its
neighbours' segments, grown by `MASK_GROW_PX` because the NISP PSF is ~3x wider than VIS, are
replaced by the point reflection of the cutout through its centre (the central source's own light
and noise on the other side) where that pixel is clean, and by 0 (the background) where it is not.

Crowding covariates (`COVARIATES`): the number of neighbours, the flux of the brightest one over the
central source's, the distance to the nearest one (pixels; the half-diagonal when there is none),
a blend flag (a neighbour's segment touches the central one's, or SEP split it from a merged
detection) and an edge flag (pixels without data, or the central segment reaches the border).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import sep
from scipy.ndimage import binary_dilation

DETECT_SIGMA = 1.5  # per-pixel threshold, in units of the noise
MIN_AREA_PX = 5
DEBLEND_LEVELS, DEBLEND_CONTRAST = 32, 0.005  # SExtractor's defaults
CENTRAL_RADIUS_PX = 4.0
MASK_GROW_PX = 5  # ~ the NISP PSF's FWHM (4.8 px): the neighbours' wings in Y, J and H
BACKGROUND_MESH_PX = 16
MIN_SKY_PX = 256  # sky pixels for the noise after detection (a 0.75 % error on a sigma); fewer: the first guess
COVARIATES = ("neighbours", "neighbour_flux_ratio", "neighbour_distance_px", "blended", "edge")


@dataclass
class Central:
    """One cutout's central source: its segment, the neighbours' grown mask and the covariates."""

    segment: np.ndarray  # (H, W) bool, the central source's pixels (empty when nothing was detected)
    neighbours: np.ndarray  # (H, W) bool, pixels of other sources (grown)
    blank: np.ndarray  # (H, W) bool, pixels without data
    noise: np.ndarray  # (bands,) robust sigma of the sky per band (module doc)
    background: np.ndarray  # (bands, H, W) local background (halos, neighbours' wings), every source masked
    centre: tuple[float, float]  # (x, y) of the central source (the cutout centre when undetected)
    covariates: np.ndarray  # (len(COVARIATES),) float

    @property
    def replaced(self) -> np.ndarray:
        """(H, W) bool: the pixels `cleaned` replaces, the neighbours' and those without data."""
        return self.neighbours | self.blank

    def cleaned(self, bands: np.ndarray, subtract_median: bool = False) -> np.ndarray:
        """The bands (median-subtracted if asked: the pixel reference's normalisation; cutouts are
        sky-subtracted already) with the neighbours' and the blank pixels replaced (module doc).
        `bands` may be the cutout's first k bands only."""
        centred = bands - self.background[:len(bands)]
        if subtract_median:
            centred = bands - np.array([np.median(band[~self.blank]) if (~self.blank).any() else 0.0
                                        for band in bands])[:, None, None]
        bad = self.replaced
        mirror = bad[::-1, ::-1]
        filled = np.where(bad & ~mirror, centred[:, ::-1, ::-1], 0.0)
        return np.where(bad, filled, centred)

    def cleaned_sums(self, bands: np.ndarray, region: np.ndarray) -> np.ndarray:
        """Each band's sum over the (H, W) bool `region` of `cleaned(bands)`, without making the
        cleaned bands: a clean pixel counts once for itself if it is in the region, and once more
        for its mirror if that is replaced and in the region."""
        bad = self.replaced
        weight = (~bad) * (region.astype(np.float64) + (region & bad)[::-1, ::-1])
        return (bands - self.background).reshape(len(bands), -1) @ weight.ravel()


def find_central(bands: np.ndarray) -> Central:
    """Detect and deblend the VIS band of a (bands, H, W) cutout; see the module doc."""
    height, width = bands.shape[-2:]
    blank = (bands == 0).all(0)
    vis_noise = _robust_sigma(bands[0][~blank])  # detection's; the other bands' first guesses only if needed
    vis = np.ascontiguousarray(bands[0], dtype=np.float64)
    centre = ((width - 1) / 2, (height - 1) / 2)
    sources, segmentation = detect(vis, vis_noise, blank)
    central = _central_index(sources, segmentation, centre)
    labels = np.arange(1, len(sources) + 1)
    others = labels[labels != central + 1] if central is not None else labels
    segment = segmentation == central + 1 if central is not None else np.zeros((height, width), bool)
    neighbours = binary_dilation(np.isin(segmentation, others), iterations=MASK_GROW_PX) & ~segment
    if central is not None:
        centre = (float(sources["x"][central]), float(sources["y"][central]))
    sources_or_blank = binary_dilation(segmentation > 0, iterations=MASK_GROW_PX) | blank
    background = _local_background(bands, sources_or_blank)
    noise = _sky_noise(bands - background, ~sources_or_blank, bands, blank)
    covariates = _crowding(sources, central, segment, segmentation, others, blank, centre, (height, width))
    return Central(segment, neighbours, blank, noise, background, centre, covariates)


def detect(vis: np.ndarray, noise: float, blank: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """SEP's catalogue and segmentation map of the (H, W) float64 VIS band (`noise` its robust sigma,
    `blank` its pixels without data), with the module's thresholds and deblending; none found where
    SEP gives up on a pathological image (too many pixels above threshold)."""
    try:
        return sep.extract(vis, DETECT_SIGMA, err=float(noise), mask=blank, minarea=MIN_AREA_PX,
                           deblend_nthresh=DEBLEND_LEVELS, deblend_cont=DEBLEND_CONTRAST, segmentation_map=True)
    except Exception as error:
        if "pixstack" not in str(error) and "objects" not in str(error):
            raise
        return np.zeros(0, dtype=[("x", float), ("y", float), ("flux", float), ("flag", int)]), \
            np.zeros(vis.shape, dtype=np.int32)


def _local_background(bands: np.ndarray, sources: np.ndarray) -> np.ndarray:
    """SEP's mesh background of each band (meshes of `BACKGROUND_MESH_PX`, median-filtered) with
    every source masked: the light of halos and of neighbours' wings beyond their masks, which a
    sky-subtracted cutout still holds. Where sources cover too much of a mesh SEP interpolates."""
    if sources.mean() > 0.8:  # one source fills the cutout: no sky to measure
        return np.zeros(bands.shape)
    return np.stack([sep.Background(np.ascontiguousarray(band, dtype=np.float64), mask=sources,
                                    bw=BACKGROUND_MESH_PX, bh=BACKGROUND_MESH_PX, fw=3, fh=3).back()
                     for band in bands])


def _sky_noise(residual: np.ndarray, sky: np.ndarray, bands: np.ndarray, blank: np.ndarray) -> np.ndarray:
    """Each band's robust sigma over the pixels off every source (grown) after the local background:
    the noise of the sky alone, which a bright star or neighbour in the cutout does not inflate. With
    too few such pixels, the first guess: each band's robust sigma over all its data pixels (what
    detection needs before there are segments)."""
    if sky.sum() < MIN_SKY_PX:
        return np.array([_robust_sigma(band[~blank]) for band in bands])
    return np.array([_robust_sigma(band[sky]) for band in residual])


def _robust_sigma(values: np.ndarray) -> float:
    if values.size == 0:
        return 1.0
    return float(max(1.4826 * np.median(np.abs(values - np.median(values))), 1e-12))


def _central_index(sources: np.ndarray, segmentation: np.ndarray, centre: tuple[float, float]) -> int | None:
    label = int(segmentation[int(round(centre[1])), int(round(centre[0]))])
    if label > 0:
        return label - 1
    if len(sources) == 0:
        return None
    distance = np.hypot(sources["x"] - centre[0], sources["y"] - centre[1])
    nearest = int(np.argmin(distance))
    return nearest if distance[nearest] <= CENTRAL_RADIUS_PX else None


def _crowding(sources, central, segment, segmentation, others, blank, centre, shape) -> np.ndarray:
    height, width = shape
    no_neighbour = float(np.hypot(height, width) / 2)
    neighbour_rows = others - 1
    central_flux = float(sources["flux"][central]) if central is not None else 0.0
    if len(neighbour_rows):
        fluxes = sources["flux"][neighbour_rows]
        ratio = float(fluxes.max() / max(central_flux, 1e-12 + abs(fluxes.max()) * 1e-3))
        distance = float(np.hypot(sources["x"][neighbour_rows] - centre[0], sources["y"][neighbour_rows] - centre[1]).min())
    else:
        ratio, distance = 0.0, no_neighbour
    touching = bool(segment.any() and np.isin(segmentation[binary_dilation(segment) & ~segment], others).any())
    merged = bool(central is not None and sources["flag"][central] & sep.OBJ_MERGED)
    border = segment[0].any() or segment[-1].any() or segment[:, 0].any() or segment[:, -1].any()
    edge = bool(blank.any() or border)
    return np.array([len(neighbour_rows), min(ratio, 1e3), distance, touching or merged, edge], dtype=np.float64)
