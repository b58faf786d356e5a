"""The no-foundation-model reference: PCA of pixels and of continuum-normalised spectra.

Every benchmark asks first whether a foundation model finds more than this does.

* image:    the central source only: the cutout is detected and deblended (`fmb.models.measure.
            deblend`) and its neighbours' pixels replaced, so that a field star or a bright
            neighbour does not make an ordinary galaxy look odd; then the four bands resized to
            `image_size`, each divided by its robust noise level (MAD) and asinh-stretched,
            standardised per feature and projected on PCA components; four more dimensions are the
            bands' fluxes in a central aperture (log, floored at the aperture's noise): the
            photometry, which the stretched pixels carry only non-linearly. The crowding (neighbour
            count, flux ratio and distance, blend and edge flags) is kept as nuisance covariates,
            stored beside the embeddings (`covariate_key`), never in them;
* spectrum: inverse-variance-weighted means of 4-pixel bins (half the noise, lines still resolved) over
            the spectrum's median level, so the continuum shape is kept but not the brightness (empty
            bins 0), standardised per bin and projected on PCA components; one more dimension is that
            median level (log), because a fibre's flux must agree with the galaxy's brightness in
            the image even when its shape does not say so (AstroCLIP's spectrum encoder keeps the
            level as a token for the same reason);
            these level dimensions are standardised and weighted like an average PCA component;
* joint:    both projections side by side, each scaled to unit total variance so that neither
            modality dominates by its number of components or units.

Beside each embedding the reference gives its noise-weighted reconstruction residual, what its
components cannot hold (`residual_key`): for the spectrum the inverse-variance-weighted chi^2 per
observed bin of the binned shape minus its PCA reconstruction; for the image the chi^2 per pixel of
the stretched bands (in units of the pixel noise, after resizing) minus theirs, per band, averaged
over the bands. Both are computed in the PCA's own (unreduced) feature space, which detect never sees.

"Adaptation" for this model is fitting the PCA on a sample of objects; the fitted means, scales and
components are buffers of the module and are saved like any other weights.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F


from fmb.data.validate import Sample
from fmb.models.base import FittedEncoder, Preprocessor, covariate_key, residual_key
from fmb.models.measure.deblend import COVARIATES, find_central
from fmb.models.sections import PixelsSection

_SPECTRUM_BIN_PX = 4  # 3.2 A: noise halved, emission lines (a few pixels wide) still resolved
_SPECTRUM_LENGTH = 7781


class PixelsPreprocessor(Preprocessor):
    model = "pixels"
    needs = frozenset({"bands", "spectrum"})

    def __call__(self, samples: list[Sample]) -> dict[str, torch.Tensor]:
        images, fluxes, crowding = zip(*(self._image(s.bands) for s in samples))
        shapes, levels, bin_ivars = zip(*(_binned_shape(s.spectrum.flux, s.spectrum.ivar) for s in samples))
        ids = torch.tensor([s.object_id for s in samples], dtype=torch.int64)
        # area resizing averages (H W / size^2) pixels: the noise variance of a resized pixel, in noise units
        resized_variance = [self.image_size**2 / (s.bands.shape[-2] * s.bands.shape[-1]) for s in samples]
        return {"object_id": ids, "image": torch.stack(images).flatten(1), "image_log_flux": torch.stack(fluxes),
                "image_noise_variance": torch.tensor(resized_variance, dtype=torch.float32),
                "spectrum": torch.from_numpy(np.stack(shapes)),
                "spectrum_ivar": torch.from_numpy(np.stack(bin_ivars)),
                "spectrum_log_level": torch.tensor(np.log10(levels), dtype=torch.float32)[:, None],
                "crowding": torch.tensor(np.stack(crowding), dtype=torch.float32)}

    def _image(self, bands: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        """(stretched, resized bands of the central source; log10 flux per band in a central
        aperture; the crowding covariates)."""
        central = find_central(bands)
        centred = torch.from_numpy(central.cleaned(bands.astype(np.float64), subtract_median=True)).float()
        noise = torch.from_numpy(central.noise).float().clamp_min(1e-12)
        scaled = torch.asinh(centred / noise[:, None, None])
        aperture = _central_aperture(centred.shape[-2], centred.shape[-1])
        aperture_noise = noise * float(aperture.sum()) ** 0.5
        log_flux = torch.log10(torch.maximum((centred * aperture).sum((1, 2)), aperture_noise))
        resized = F.interpolate(scaled[None], size=(self.image_size, self.image_size), mode="area")[0]
        return resized, log_flux, central.covariates


@functools.lru_cache(maxsize=8)  # one per cutout shape, not one per object
def _central_aperture(height: int, width: int) -> torch.Tensor:
    """A disc of radius a quarter of the cutout: most of a galaxy's light, little of its neighbours'.
    Shared between calls: read it, never write to it."""
    y, x = torch.meshgrid(torch.arange(height) - (height - 1) / 2, torch.arange(width) - (width - 1) / 2, indexing="ij")
    return (x**2 + y**2 <= (min(height, width) / 4) ** 2).float()


def _binned_shape(flux: np.ndarray, ivar: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
    """(inverse-variance-weighted bin means over their median absolute level, that level, the bins'
    inverse variance in those units); masked pixels have ivar 0.

    The median, not the mean, sets the level so that strong lines or spikes do not rescale the rest
    of the spectrum; a noise-only spectrum gets its noise level. Unlike a continuum-subtracted
    spectrum this keeps the continuum shape, which carries most of what separates stars, quasars
    and galaxies at different redshifts.
    """
    n_bins = len(flux) // _SPECTRUM_BIN_PX
    values = flux[: n_bins * _SPECTRUM_BIN_PX].astype(np.float64).reshape(n_bins, _SPECTRUM_BIN_PX)
    weights = ivar[: n_bins * _SPECTRUM_BIN_PX].astype(np.float64).reshape(n_bins, _SPECTRUM_BIN_PX)
    total = weights.sum(1)
    observed = total > 0
    if not observed.any():  # validation rejects such spectra; this only keeps the function total
        return np.zeros(n_bins, dtype=np.float32), 1.0, np.zeros(n_bins, dtype=np.float32)
    binned = np.where(observed, (values * weights).sum(1) / np.where(observed, total, 1.0), 0.0)
    level = np.median(np.abs(binned[observed])) + 1e-12
    return (binned / level).astype(np.float32), float(level), (total * level**2).astype(np.float32)


class _FittedPCA(torch.nn.Module):
    """Standardise then project; parameters are buffers filled by `fit`."""

    def __init__(self, n_features: int, n_components: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("scale", torch.ones(n_features))
        self.register_buffer("components", torch.zeros(n_components, n_features))
        self.register_buffer("total_variance", torch.ones(()))

    def fit(self, x: torch.Tensor, seed: int) -> None:
        x = x.double()
        self.mean.copy_(x.mean(0))
        self.scale.copy_(x.std(0).clamp_min(1e-6))
        z = (x - self.mean.double()) / self.scale.double()
        k = min(self.components.shape[0], *z.shape)
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        _, singular, v = torch.pca_lowrank(z, q=k, center=False, niter=6)
        torch.random.set_rng_state(generator_state)
        self.components.zero_()
        self.components[:k] = v[:, :k].T.float()
        projected_variance = (singular[:k] ** 2).sum() / max(1, len(z) - 1)
        self.total_variance.copy_(projected_variance.clamp_min(1e-12))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ((x - self.mean) / self.scale) @ self.components.T

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """x minus its reconstruction from the components, in the units of x."""
        standardised = (x - self.mean) / self.scale
        return (standardised - (standardised @ self.components.T) @ self.components) * self.scale


class _ShapeAndLevels(torch.nn.Module):
    """PCA components of the features, then a few level values (log fluxes) standardised and scaled
    to the spread of an average component, so a brightness counts like one more component."""

    def __init__(self, n_features: int, n_levels: int, n_dims: int):
        super().__init__()
        self.pca = _FittedPCA(n_features, n_dims - n_levels)
        self.register_buffer("level_mean", torch.zeros(n_levels))
        self.register_buffer("level_std", torch.ones(n_levels))

    def fit(self, features: torch.Tensor, levels: torch.Tensor, seed: int) -> None:
        self.pca.fit(features, seed)
        self.level_mean.copy_(levels.double().mean(0))
        self.level_std.copy_(levels.double().std(0).clamp_min(1e-6))

    def component_variance(self) -> torch.Tensor:
        return self.pca.total_variance / self.pca.components.shape[0]

    def total_variance(self) -> torch.Tensor:
        return self.pca.total_variance + len(self.level_mean) * self.component_variance()

    def forward(self, features: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
        standardised = (levels.float() - self.level_mean) / self.level_std
        return torch.cat([self.pca(features.float()), standardised * self.component_variance().sqrt()], dim=1)


class PixelsEncoder(FittedEncoder):
    name = "pixels"
    label = "pixel PCA"
    aligned = False
    section = PixelsSection
    residual_modalities = ("image", "spectrum")
    covariates = tuple(f"crowding_{name}" for name in COVARIATES)

    def __init__(self, settings: PixelsSection):
        super().__init__()
        self.settings = settings
        self.preprocessor = PixelsPreprocessor(settings.image_size)
        self.image_part = _ShapeAndLevels(4 * settings.image_size**2, 4, settings.components)
        self.spectrum_part = _ShapeAndLevels(_SPECTRUM_LENGTH // _SPECTRUM_BIN_PX, 1, settings.components)
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    @classmethod
    def load(cls, settings: PixelsSection) -> "PixelsEncoder":
        return cls(settings)  # no pretrained weights: the fitted PCA is this run's adapted state

    def fit(self, batch: Mapping[str, torch.Tensor], seed: int = 0) -> None:
        self.image_part.fit(batch["image"], batch["image_log_flux"], seed)
        self.spectrum_part.fit(batch["spectrum"], batch["spectrum_log_level"], seed + 1)
        self.fitted.fill_(True)

    def embed(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if not bool(self.fitted):
            raise RuntimeError("the pixel reference is not fitted: run `fmb adapt pixels` first")
        image = self.image_part(batch["image"], batch["image_log_flux"])
        spectrum = self.spectrum_part(batch["spectrum"], batch["spectrum_log_level"])
        joint = torch.cat([image / self.image_part.total_variance().sqrt(),
                           spectrum / self.spectrum_part.total_variance().sqrt()], dim=1)
        return {"image": image, "spectrum": spectrum, "joint": joint,
                residual_key("image"): self._image_chi2(batch), residual_key("spectrum"): self._spectrum_chi2(batch),
                **{covariate_key(name): batch["crowding"][:, k] for k, name in enumerate(self.covariates)}}

    def _image_chi2(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """chi^2 per pixel of each band's reconstruction residual, averaged over the bands."""
        residual = self.image_part.pca.residual(batch["image"].float())
        per_band = residual.reshape(len(residual), 4, -1).square().mean(2)
        return (per_band / batch["image_noise_variance"][:, None]).mean(1)

    def _spectrum_chi2(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Inverse-variance-weighted chi^2 per observed bin of the spectrum's reconstruction residual."""
        residual = self.spectrum_part.pca.residual(batch["spectrum"].float())
        ivar = batch["spectrum_ivar"]
        observed = (ivar > 0).sum(1).clamp_min(1)
        return (residual.square() * ivar).sum(1) / observed

    def describe(self) -> dict:
        s = self.settings
        return {
            "model": "pixels",
            "weights": "PCA fitted on this run's objects",
            "preprocessing": f"bands: central source deblended (SEP), neighbours replaced, median-subtracted, /MAD "
            f"noise, asinh, area-resized to {s.image_size}px, plus log aperture flux per band; "
            f"spectrum: ivar-weighted {_SPECTRUM_BIN_PX}-px bins over their median level, plus log level",
            "pooling": "PCA projection (standardised features)",
            "layer": "n/a",
            "dims": {"image": s.components, "spectrum": s.components, "joint": 2 * s.components},
            "covariates": list(self.covariates),
        }
