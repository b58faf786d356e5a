"""The physical-measurements reference: what astronomers measure first, as a representation.

Beside the pixel reference and the foundation models, the baseline astronomers trust:

* image:    the central source's morphology and photometry after deblending (`fmb.models.measure.
            deblend`, `fmb.models.measure.morphology`): total fluxes in the four bands, colours,
            Petrosian radius, r50, concentration, asymmetry, smoothness, Gini, M20, Sersic index and
            effective radius, ellipticity;
* spectrum: at the catalogue redshift (`fmb.models.measure.spectral`): D4000, Lick/Balmer indices,
            fluxes, equivalent widths, widths and shapes of the main lines, line ratios, continuum
            colours and level;
* joint:    both, each scaled to unit total variance so that neither counts by its number of features.

Every measurement is standardised robustly (median, 1.4826 MAD) on a sample of the run's objects —
the reference's "adaptation" — and one that cannot be made for an object (a line outside the
spectrum, no redshift) sits at the median (0). The crowding of the cutout is kept as nuisance
covariates beside the embeddings, as the pixel reference does.

Measurements run in the preprocessor (DataLoader workers); the module only standardises.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import numpy as np
import torch

from fmb.data.validate import Sample
from fmb.models.base import FittedEncoder, Preprocessor, covariate_key
from fmb.models.measure.deblend import COVARIATES, find_central
from fmb.models.measure.morphology import FEATURES as IMAGE_FEATURES
from fmb.models.measure.morphology import measure_central
from fmb.models.measure.spectral import feature_names, measure_spectra
from fmb.models.sections import PhysicalSection

SPECTRUM_FEATURES = tuple(feature_names())
#: Standardised values beyond this are clipped: finite for every detector, still far in the tail.
CLIP = 1e3


class PhysicalPreprocessor(Preprocessor):
    model = "physical"
    needs = frozenset({"bands", "spectrum"})

    def __call__(self, samples: list[Sample]) -> dict[str, torch.Tensor]:
        image, crowding = [], []
        for sample in samples:
            central = find_central(sample.bands)
            image.append(measure_central(sample.bands, central))
            crowding.append(central.covariates)
        spectra = measure_spectra(np.stack([s.spectrum.flux for s in samples]), np.stack([s.spectrum.ivar for s in samples]),
                                  np.stack([s.spectrum.wavelength for s in samples]),
                                  np.array([s.redshift for s in samples], dtype=np.float64))
        return {"object_id": torch.tensor([s.object_id for s in samples], dtype=torch.int64),
                "image": torch.tensor(np.stack(image), dtype=torch.float64),
                "spectrum": torch.tensor(spectra, dtype=torch.float64),
                "crowding": torch.tensor(np.stack(crowding), dtype=torch.float32)}


class _RobustScale(torch.nn.Module):
    """(x - median) / (1.4826 MAD) per feature, NaN -> 0, clipped; parameters are buffers."""

    def __init__(self, n_features: int):
        super().__init__()
        self.register_buffer("median", torch.zeros(n_features, dtype=torch.float64))
        self.register_buffer("scale", torch.ones(n_features, dtype=torch.float64))

    def fit(self, x: torch.Tensor) -> None:
        values = x.double().numpy()
        with warnings.catch_warnings():  # all-NaN features (never measurable in this sample) stay at 0
            warnings.simplefilter("ignore", RuntimeWarning)
            median = np.nanmedian(values, axis=0)
            mad = 1.4826 * np.nanmedian(np.abs(values - median), axis=0)
            std = np.nanstd(values, axis=0)
        scale = np.where(mad > 0, mad, np.where(std > 0, std, 1.0))  # flags and counts: MAD can be 0
        self.median.copy_(torch.from_numpy(np.nan_to_num(median)))
        self.scale.copy_(torch.from_numpy(np.nan_to_num(scale, nan=1.0)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (x.double() - self.median) / self.scale
        return torch.nan_to_num(z, nan=0.0).clamp(-CLIP, CLIP).float()


class PhysicalEncoder(FittedEncoder):
    name = "physical"
    label = "physical measurements"
    aligned = False
    section = PhysicalSection
    covariates = tuple(f"crowding_{name}" for name in COVARIATES)

    def __init__(self, settings: PhysicalSection):
        super().__init__()
        self.settings = settings
        self.preprocessor = PhysicalPreprocessor(0)  # measurements are made at the cutout's own size
        self.image_part = _RobustScale(len(IMAGE_FEATURES))
        self.spectrum_part = _RobustScale(len(SPECTRUM_FEATURES))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    @classmethod
    def load(cls, settings: PhysicalSection) -> "PhysicalEncoder":
        return cls(settings)  # nothing pretrained: the fitted standardisation is this run's adapted state

    def fit(self, batch: Mapping[str, torch.Tensor], seed: int = 0) -> None:
        self.image_part.fit(batch["image"])
        self.spectrum_part.fit(batch["spectrum"])
        self.fitted.fill_(True)

    def embed(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if not bool(self.fitted):
            raise RuntimeError("the physical reference is not fitted: run `fmb adapt physical` first")
        image, spectrum = self.image_part(batch["image"]), self.spectrum_part(batch["spectrum"])
        joint = torch.cat([image / len(IMAGE_FEATURES) ** 0.5, spectrum / len(SPECTRUM_FEATURES) ** 0.5], dim=1)
        return {"image": image, "spectrum": spectrum, "joint": joint,
                **{covariate_key(name): batch["crowding"][:, k] for k, name in enumerate(self.covariates)}}

    def describe(self) -> dict:
        return {
            "model": "physical",
            "weights": "robust standardisation fitted on this run's objects",
            "preprocessing": "image: SEP detection and deblending, the central source's morphology and photometry with "
            "its neighbours replaced; spectrum: indices, lines and colours at the catalogue redshift",
            "pooling": "n/a (one value per measurement)",
            "layer": "n/a",
            "dims": {"image": len(IMAGE_FEATURES), "spectrum": len(SPECTRUM_FEATURES),
                     "joint": len(IMAGE_FEATURES) + len(SPECTRUM_FEATURES)},
            "features": {"image": list(IMAGE_FEATURES), "spectrum": list(SPECTRUM_FEATURES)},
            "covariates": list(self.covariates),
        }
