"""SEP's give-up on a pathological cutout (more pixels above threshold than its pixel stack holds, a
very large or very bright source): the deblender measures the cutout as undetected rather than
failing the whole embedding run."""

from __future__ import annotations

import numpy as np
import sep

from fmb.models.measure.deblend import find_central


def _bright_galaxy() -> np.ndarray:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[:64, :64]
    band = 100.0 * np.exp(-((x - 31.5) ** 2 + (y - 31.5) ** 2) / 200.0) + rng.normal(0.0, 1.0, (64, 64))
    return np.stack([band] * 4)


def test_a_cutout_sep_gives_up_on_is_measured_as_undetected_not_an_error():
    bands = _bright_galaxy()
    assert find_central(bands).segment.any()  # SEP's usual pixel stack detects it
    limit = sep.get_extract_pixstack()
    sep.set_extract_pixstack(50)  # the galaxy alone now overflows it, as a huge source does the default
    try:
        central = find_central(bands)
    finally:
        sep.set_extract_pixstack(limit)
    assert not central.segment.any() and not central.neighbours.any()
    assert central.centre == (31.5, 31.5)
    assert central.covariates[0] == 0  # no neighbours counted
    assert np.isfinite(central.cleaned(bands)).all()
