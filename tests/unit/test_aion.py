"""AION through the real `polymathic-aion` package: hub loading from a planted offline cache (pinned
to a revision), a local snapshot, strict key errors, the true token count, adapter training and
embedding (tiny configs)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fmb.config import load_config
from fmb.data.tasks import index
from fmb.data.validate import RowChecker
from fmb.embed import store
from fmb.embed.extract import embed
from fmb.models import tasks as model_tasks
from fmb.models.aion import AionEncoder, AionSection, _random_parts
from fmb.models.aion_codec import AionCodecEncoder, AionCodecSection
from fmb.models.base import WeightsError
from tests.conftest import plant_hf_file, tagged_row, write_rows

REPO = "polymathic-ai/aion-base"


def save_snapshot(directory: Path, break_codec: bool = False, scale: float = 1.5):
    """Tiny AION + HSC image and DESI spectrum codecs saved the way the hub repository lays them out;
    one tensor of each part scaled by `scale` (distinguishable from a fresh random init, and from
    snapshots saved with another scale). Returns the three parts."""
    from aion.modalities import DESISpectrum, HSCImage

    model, image_codec, spectrum_codec = parts = _random_parts()
    with torch.no_grad():
        for part in parts:
            next(part.parameters()).mul_(scale)
    model.save_pretrained(directory)
    image_codec.save_pretrained(directory, modality=HSCImage)
    spectrum_codec.save_pretrained(directory, modality=DESISpectrum)
    if break_codec:
        from safetensors.torch import load_file, save_file

        path = directory / "codecs" / "image" / "model.safetensors"
        state = load_file(path)
        state.pop(next(iter(state)))
        save_file(state, path)
    return parts


def plant(hf_home: Path, commit: str = "0" * 40, **kwargs):
    """A snapshot of the AION repo at `commit` in the offline hub cache (main then points to it)."""
    saved = []
    plant_hf_file(hf_home, REPO, "config.json", lambda path: saved.extend(save_snapshot(path.parent, **kwargs)),
                  commit=commit)
    return saved


def same_weights(encoder: AionEncoder, saved) -> bool:
    loaded = (encoder.aion, encoder.image_codec, encoder.spectrum_codec)
    return all(torch.equal(next(a.parameters()), next(b.parameters())) for a, b in zip(loaded, saved))


def samples(n=4):
    checker = RowChecker()
    return [checker.check(tagged_row(10 + i, size=40, seed=i))[0] for i in range(n)]


def test_hub_weights_load_strictly_through_the_package(offline_hub):
    saved = plant(offline_hub)
    encoder = AionEncoder.load(AionSection())  # preset full -> polymathic-ai/aion-base
    assert same_weights(encoder, saved)
    assert not any(p.requires_grad for p in encoder.aion.parameters())
    assert {id(p) for p in encoder.trainable_parameters()} == {
        id(p) for m in (encoder.euclid_to_hsc, encoder.hsc_to_euclid) for p in m.parameters()}


def test_the_native_codec_route_loads_the_same_snapshot_and_maps_euclid_from_its_hsc_bands(offline_hub):
    saved = plant(offline_hub)
    encoder = AionCodecEncoder.load(AionCodecSection())  # the same hub repository and loading code
    assert same_weights(encoder, saved) and encoder.describe()["weights"] == f"{REPO}@{'0' * 40}"
    assert encoder.euclid_codec.codec is encoder.image_codec  # the loaded codec, not a fresh one
    # the Euclid band maps derive from the loaded HSC maps (which `save_snapshot` scaled by 1.5)
    fresh = AionCodecEncoder.load(AionCodecSection(preset="tiny"))
    torch.testing.assert_close(encoder.euclid_codec.bands_in.weight, 1.5 * fresh.euclid_codec.bands_in.weight)
    with torch.no_grad():
        assert encoder.embed(encoder.preprocessor(samples(2)))["joint"].shape == (2, 64)


def test_hub_weights_come_from_one_commit_of_the_revision_and_record_it(offline_hub):
    a, b = "a" * 40, "b" * 40
    at_a = plant(offline_hub, commit=a)
    encoder = AionEncoder.load(AionSection())  # no revision: main, which points to a
    assert same_weights(encoder, at_a) and encoder.describe()["weights"] == f"{REPO}@{a}"
    at_b = plant(offline_hub, commit=b, scale=2.0)  # a push: main now points to b
    for revision, commit, saved in [(b, b, at_b), (a, a, at_a), (None, b, at_b)]:
        encoder = AionEncoder.load(AionSection(revision=revision))
        assert same_weights(encoder, saved), revision  # the model and both codecs
        assert encoder.describe()["weights"] == f"{REPO}@{commit}"


def test_an_unknown_revision_is_a_one_line_error_naming_it(offline_hub):
    plant(offline_hub)
    expected = f"cannot load aion weights: config.json of hub repo {REPO} at revision 'v9'"
    with pytest.raises(WeightsError, match=expected) as error:
        AionEncoder.load(AionSection(revision="v9"))
    assert "\n" not in str(error.value)


def test_broken_codec_weights_are_an_error_not_random_weights(offline_hub):
    plant(offline_hub, break_codec=True)
    with pytest.raises(WeightsError):
        AionEncoder.load(AionSection())


def test_local_snapshot_directory(tmp_path: Path):
    saved = save_snapshot(tmp_path / "aion-local")
    encoder = AionEncoder.load(AionSection(weights=str(tmp_path / "aion-local"), revision="ignored"))
    assert same_weights(encoder, saved) and encoder.describe()["weights"] == str(tmp_path / "aion-local")
    save_snapshot(tmp_path / "broken", break_codec=True)
    with pytest.raises(WeightsError, match="missing"):
        AionEncoder.load(AionSection(weights=str(tmp_path / "broken")))


def test_joint_embedding_uses_every_token():
    encoder = AionEncoder.load(AionSection(preset="tiny")).eval()
    batch = encoder.preprocessor(samples())
    with torch.no_grad():
        joint = encoder.embed(batch)["joint"]
        image = encoder._hsc_tokens(encoder.euclid_to_hsc(batch["euclid"]))
        spectrum = encoder._spectrum_tokens(batch)
        tokens = {"tok_image_hsc": image, "tok_spectrum_desi": spectrum}
        assert image.shape[1] + spectrum.shape[1] == 576 + 273
        truncated = encoder.aion.encode(tokens).mean(1)  # the package default keeps 256 tokens
    assert not torch.allclose(joint, truncated)
    torch.testing.assert_close(joint, encoder.aion.encode(tokens, num_encoder_tokens=849).mean(1))


def test_codec_round_trip_in_hsc_undoes_the_zero_point():
    encoder = AionEncoder.load(AionSection(preset="tiny")).eval()
    hsc = torch.rand(2, 5, 96, 96) * 5
    with torch.no_grad():
        decoded = encoder._codec_round_trip(hsc)
    assert decoded.shape == hsc.shape and torch.isfinite(decoded).all()
    # the package's own HSC decode would raise AttributeError; ours is the inverse zero-point scale
    from aion.codecs.preprocessing.image import RescaleToLegacySurvey

    x = torch.rand(1, 5, 4, 4)
    forward = RescaleToLegacySurvey().forward(x.clone(), "HSC")
    torch.testing.assert_close(encoder.image_codec.rescaler.backward(forward, "HSC"), x)


def test_untrained_adapters_hand_the_codec_euclid_nanomaggies():
    """The codec divides HSC counts (zero point 27) by 63.1; the adapters start with that factor, so
    what the codec's network sees is the band mix of the Euclid nanomaggies, and the way back undoes it."""
    from fmb.models.aion import EUCLID_TO_HSC, HSC_TO_EUCLID

    encoder = AionEncoder.load(AionSection(preset="tiny")).eval()
    euclid = torch.rand(2, 4, 96, 96) * 3
    with torch.no_grad():
        hsc = encoder.euclid_to_hsc(euclid)
        seen = encoder.image_codec.rescaler.forward(hsc.clone(), "HSC")
        torch.testing.assert_close(seen, torch.einsum("hc,bcyx->bhyx", EUCLID_TO_HSC, euclid))
        back = encoder.hsc_to_euclid(encoder.image_codec.rescaler.backward(seen, "HSC"))
    torch.testing.assert_close(back, torch.einsum("ch,hd,bdyx->bcyx", HSC_TO_EUCLID, EUCLID_TO_HSC, euclid))


def test_adapters_train_and_embed_end_to_end(project: Path):
    write_rows(project / "survey" / "part-0.parquet", [tagged_row(700 + i, size=40, seed=i) for i in range(16)])
    sets = ["data.source=survey", "models.aion.preset=tiny", "models.aion.adapter_hidden=4", "models.aion.adapt.epochs=2",
            "models.aion.adapt.batch_size=4", "models.aion.adapt.num_workers=0", "models.aion.adapt.val_fraction=0.25",
            "models.aion.embed.num_workers=0", "models.aion.embed.batch_size=8"]
    config = load_config(root=project, sets=sets)
    index(config)
    before = AionEncoder.load(config.models.aion).adapted_state()
    model_tasks.adapt(config, "aion", log=lambda _: None)
    history = json.loads(config.layout.model("aion").history.read_text())
    assert len(history["epochs"]) == 2 and np.isfinite(history["best_val_loss"])
    after = torch.load(config.layout.model("aion").best, weights_only=False)["model"]
    assert any(not torch.equal(before[k], after[k]) for k in before)
    embed(config, "aion")
    ids, m = store.load_embeddings(config.layout.embeddings("aion").dir)
    assert sorted(ids) == list(range(700, 716)) and {k: v.shape for k, v in m.items()} == {
        "image": (16, 64), "spectrum": (16, 64), "joint": (16, 64)}
