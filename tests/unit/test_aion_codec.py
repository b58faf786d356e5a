"""The native AION codec route (`aion_codec`): the image codec reads and writes the four Euclid
bands, its encoder and decoder adapt through the shared trainer, its quantiser never changes, and
its tokens are ones the frozen transformer reads (tiny random-weight configs, real package code)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fmb.config import AdaptSettings, load_config
from fmb.data.tasks import index
from fmb.data.validate import RowChecker
from fmb.embed import store
from fmb.embed.extract import embed
from fmb.models import tasks as model_tasks
from fmb.models.aion import AionEncoder, AionSection, IMAGE_TOKEN_KEY
from fmb.models.aion_codec import AionCodecEncoder, AionCodecSection, route_losses
from fmb.models.base import WeightsError
from fmb.models.trainer import Trainer
from tests.conftest import tagged_row, write_rows

TINY = AionCodecSection(preset="tiny")


def batch_of(encoder, n=4):
    checker = RowChecker()
    return encoder.preprocessor([checker.check(tagged_row(10 + i, size=40, seed=i))[0] for i in range(n)])


def frozen_state(encoder: AionCodecEncoder) -> dict:
    """Everything the route must never change: the transformer, the spectrum codec, the codec's HSC
    band maps and its quantiser (levels, and the latent every one of its codes decodes to)."""
    codec = encoder.image_codec
    state = {f"aion.{k}": v for k, v in encoder.aion.state_dict().items()}
    state |= {f"spectrum.{k}": v for k, v in encoder.spectrum_codec.state_dict().items()}
    state |= {f"hsc.{k}": v for k, v in [*codec.subsample_in.state_dict().items(), *codec.subsample_out.state_dict().items()]}
    codes = torch.arange(int(codec.quantizer.codebook_size))[None]
    return state | {"levels": codec.quantizer.levels, "codebook": codec.quantizer.decode(codes)}


def snapshot(state: dict) -> dict:
    return {k: v.detach().clone() for k, v in state.items()}


def test_only_the_codec_encoder_and_decoder_adapt(tmp_path: Path):
    encoder = AionCodecEncoder.load(TINY)
    native, codec = encoder.euclid_codec, encoder.image_codec
    trainable = {id(p) for p in encoder.trainable_parameters()}
    expected = [native.bands_in, native.bands_out, codec.model, codec.pre_quant_proj, codec.post_quant_proj]
    assert trainable == {id(p) for m in expected for p in m.parameters()}
    assert {id(p) for p in encoder.parameters() if p.requires_grad} == trainable
    assert not any(p.requires_grad for m in (encoder.aion, encoder.spectrum_codec, codec.subsample_in) for p in m.parameters())
    assert not list(codec.quantizer.parameters())  # FSQ: nothing a step could change
    bands_only = AionCodecEncoder.load(TINY.model_copy(update={"codec_train": "bands"}))
    assert {id(p) for p in bands_only.trainable_parameters()}.isdisjoint(id(p) for p in bands_only.image_codec.model.parameters())

    batch, before = batch_of(encoder), snapshot(frozen_state(encoder))
    adapted_before = snapshot(encoder.adapted_state())
    settings = AdaptSettings(epochs=6, lr=3e-4, weight_decay=0.0, warmup_fraction=0.0, patience=6)
    history = Trainer(encoder, settings, tmp_path).fit(lambda epoch: [batch], None, steps_per_epoch=1, log=lambda _: None)
    losses = [e["train_loss"] for e in history.epochs]
    assert len(losses) == 6 and all(b < a for a, b in zip(losses, losses[1:])), losses  # one batch, six steps
    for key, value in frozen_state(encoder).items():
        assert torch.equal(value, before[key]), key
    after = encoder.adapted_state()
    assert all(not torch.equal(after[k], adapted_before[k]) for k in after if k.endswith("weight") and "bands" in k)


def test_tokens_are_codes_the_transformer_reads_and_both_routes_embed_alike():
    codec_route = AionCodecEncoder.load(TINY).eval()
    adapter_route = AionEncoder.load(AionSection(preset="tiny")).eval()
    batch = batch_of(codec_route)
    vocabulary = codec_route.aion.encoder_embeddings[IMAGE_TOKEN_KEY].token_emb.num_embeddings
    with torch.no_grad():
        tokens = codec_route.image_tokens(batch["euclid"])
        assert tokens.shape == adapter_route.image_tokens(batch["euclid"]).shape == (4, 576)
        assert not tokens.is_floating_point() and 0 <= tokens.min() and tokens.max() < vocabulary == 4375
        # what the training graph reconstructs is exactly what these tokens decode to
        torch.testing.assert_close(codec_route.reconstruct(batch["euclid"]),
                                   codec_route.euclid_codec.tokens_to_euclid(tokens), rtol=1e-5, atol=1e-5)
        native, adapter = codec_route.embed(batch), adapter_route.embed(batch)
    assert {k: v.shape for k, v in native.items()} == {k: v.shape for k, v in adapter.items()} == {
        m: (4, 64) for m in ("image", "spectrum", "joint")}
    torch.testing.assert_close(native["spectrum"], adapter["spectrum"])  # the same transformer and spectrum codec
    assert not torch.allclose(native["image"], adapter["image"])


def test_the_untrained_band_maps_are_the_hsc_path_of_the_band_mix():
    """At the start Euclid enters the codec as the HSC bands of the adapters' nearest-wavelength mix."""
    from aion.codecs.preprocessing.band_to_index import BAND_TO_INDEX

    from fmb.models.aion import EUCLID_TO_HSC, HSC_BANDS

    encoder = AionCodecEncoder.load(TINY)
    codec = encoder.image_codec
    compressed = codec._range_compress(torch.rand(2, 4, 8, 8) * 20)
    hsc = torch.einsum("hc,bcyx->bhyx", EUCLID_TO_HSC, compressed)
    padded, mask = codec.image_padder.forward(hsc, HSC_BANDS)
    assert mask[0].nonzero().flatten().tolist() == [BAND_TO_INDEX[b] for b in HSC_BANDS]
    with torch.no_grad():
        torch.testing.assert_close(encoder.euclid_codec.bands_in(compressed), codec.subsample_in(padded, mask))


def test_adapted_state_round_trips_strictly():
    trained = AionCodecEncoder.load(TINY)
    with torch.no_grad():
        for p in trained.trainable_parameters():
            p.add_(0.01)
    state = trained.adapted_state()
    fresh = AionCodecEncoder.load(TINY).eval()
    fresh.load_adapted_state(state)
    batch = batch_of(fresh)
    with torch.no_grad():
        assert torch.equal(fresh.image_tokens(batch["euclid"]), trained.eval().image_tokens(batch["euclid"]))
    with pytest.raises(WeightsError, match="unexpected"):
        AionCodecEncoder.load(TINY.model_copy(update={"codec_train": "bands"})).load_adapted_state(state)


def test_adapt_embed_and_compare_the_routes_end_to_end(project: Path):
    write_rows(project / "survey" / "part-0.parquet", [tagged_row(700 + i, size=40, seed=i) for i in range(16)])
    tiny = {"preset": "tiny", "adapt.epochs": 2, "adapt.batch_size": 4, "adapt.num_workers": 0,
            "adapt.val_fraction": 0.25, "adapt.lr": 3e-4, "embed.num_workers": 0, "embed.batch_size": 8}
    sets = ["data.source=survey", "models.aion.adapter_hidden=4"]
    sets += [f"models.{model}.{key}={value}" for model in ("aion", "aion_codec") for key, value in tiny.items()]
    config = load_config(root=project, sets=sets)
    index(config)
    model_tasks.adapt(config, "aion_codec", log=lambda _: None)
    history = json.loads(config.layout.model("aion_codec").history.read_text())
    assert len(history["epochs"]) == 2 and np.isfinite(history["best_val_loss"])
    embed(config, "aion_codec")
    ids, vectors = store.load_embeddings(config.layout.embeddings("aion_codec").dir)
    assert sorted(ids) == list(range(700, 716)) and {k: v.shape for k, v in vectors.items()} == {
        m: (16, 64) for m in ("image", "spectrum", "joint")}
    manifest = json.loads(config.layout.embeddings("aion_codec").manifest.read_text())
    assert "AION image codec on VIS/Y/J/H" in json.dumps(manifest)

    losses = route_losses(config)  # the adapter route not adapted in this run: its initial adapters
    assert set(losses) == {"adapter", "codec"} and losses["adapter"]["objects"] == losses["codec"]["objects"] > 0
    assert losses["codec"]["weights"] == str(config.layout.model("aion_codec").best)
    assert losses["adapter"]["weights"] == "initial" and np.isfinite(losses["adapter"]["loss"])
    assert losses["adapter"]["zero_loss"] == pytest.approx(losses["codec"]["zero_loss"])  # the same objects
    held_out = history["best_val_loss"]  # the trainer's validation objects are the ones compared
    assert losses["codec"]["loss"] == pytest.approx(held_out, rel=1e-4)
