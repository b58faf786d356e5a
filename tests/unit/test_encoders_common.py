"""What every encoder promises through the common interface (tiny presets, real code)."""

import pytest
import torch

from fmb.config import load_config
from fmb.data.validate import RowChecker
from fmb.models.aion import AionEncoder
from fmb.models.astroclip import AstroCLIPEncoder
from fmb.models.astropt import AstroPTEncoder
from tests.conftest import tagged_row

ENCODERS = {"aion": AionEncoder, "astropt": AstroPTEncoder, "astroclip": AstroCLIPEncoder}


def settings(name, root):
    section = getattr(load_config(root=root).models, name).model_copy(update={"preset": "tiny"})
    return section.model_copy(update={"image_size": 32}) if name == "astropt" else section


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_fresh_loads_embed_identically_and_batch_order_does_not_matter(name, tmp_path):
    checker = RowChecker()
    samples = [checker.check(tagged_row(50 + i, size=40, seed=i))[0] for i in range(5)]
    a, b = (ENCODERS[name].load(settings(name, tmp_path)).eval() for _ in range(2))
    with torch.inference_mode():
        first = a.embed(a.preprocessor(samples))
        second = b.embed(b.preprocessor(samples[::-1]))
    assert set(first) == {"image", "spectrum", "joint"}
    for modality in first:
        assert first[modality].shape[0] == 5 and torch.isfinite(first[modality]).all()
        torch.testing.assert_close(first[modality], second[modality].flip(0), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_objects_without_the_needed_modality_are_refused_by_name(name, tmp_path):
    row = tagged_row(7)
    row["spectrum"] = None
    sample, _ = RowChecker().check(row)
    reason = ENCODERS[name].load(settings(name, tmp_path)).preprocessor.usable(sample)
    assert reason == f"no usable spectrum (needed by {name})"
