"""AstroCLIP re-implementation: loading the three released checkpoint formats through the explicit
key mapping (planted offline, written in the upstream layouts, hub items recorded with their commit),
strict errors, CLIP loss, adapt + embed."""

import json
import math
import sys
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
from fmb.models.astroclip import AstroCLIPEncoder, AstroCLIPSection, clip_loss, slice_spectrum
from fmb.errors import ConfigError
from fmb.models.base import WeightsError
from fmb.models.trainer import Trainer
from tests.conftest import plant_hf_file, tagged_row, write_rows

TINY = AstroCLIPSection(preset="tiny")


def perturbed_tiny() -> AstroCLIPEncoder:
    encoder = AstroCLIPEncoder.load(TINY)
    with torch.no_grad():
        for p in encoder.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return encoder


def unimportable_object(tmp_path: Path):
    """An instance of a class whose module will be gone at load time (like pickled lightning/dinov2 objects)."""
    (tmp_path / "gone_pkg.py").write_text("class Encoder:\n    def __init__(self):\n        self.x = 1\n")
    sys.path.insert(0, str(tmp_path))
    import gone_pkg

    obj = gone_pkg.Encoder()
    yield_back = lambda: (sys.path.remove(str(tmp_path)), sys.modules.pop("gone_pkg"))
    return obj, yield_back


def upstream_state(encoder: AstroCLIPEncoder) -> dict:
    """The encoder's weights named as in astroclip.ckpt: chunked DINO blocks, no log_scale."""
    state = {}
    for key, value in encoder.state_dict().items():
        if key == "log_scale":
            continue
        if key.startswith("image_encoder.backbone.blocks."):
            index = int(key.split(".")[3])
            key = key.replace(f"blocks.{index}.", f"blocks.{index // 1}.{index}.", 1)
        state[key] = value.clone()
    return state


def test_astroclip_checkpoint_from_the_hub_cache(offline_hub, tmp_path: Path):
    source = perturbed_tiny()
    obj, cleanup = unimportable_object(tmp_path)
    plant_hf_file(offline_hub, "polymathic-ai/astroclip", "astroclip.ckpt", lambda p: torch.save(
        {"state_dict": upstream_state(source), "hyper_parameters": {"image_encoder": obj, "temperature": 15.5}}, p))
    cleanup()
    loaded = AstroCLIPEncoder.load(AstroCLIPSection(preset="tiny", weights="polymathic-ai/astroclip"))
    for key, value in source.state_dict().items():
        if key != "log_scale":
            assert torch.equal(loaded.state_dict()[key], value), key
    assert loaded.log_scale.item() == pytest.approx(math.log(15.5))
    assert loaded.describe()["weights"] == "polymathic-ai/astroclip@" + "0" * 40


def test_astrodino_and_specformer_checkpoints_fill_the_backbones(offline_hub, tmp_path: Path):
    """A local astrodino checkpoint and specformer from the hub (as repo:file): each hub item is
    downloaded at the revision and recorded with its commit, local files as given."""
    source = perturbed_tiny()
    state = upstream_state(source)
    teacher = {k.replace("image_encoder.", "", 1): v for k, v in state.items() if k.startswith("image_encoder.backbone.")}
    teacher["dino_head.mlp.0.weight"] = torch.zeros(3, 3)
    torch.save({"teacher": teacher}, tmp_path / "astrodino.ckpt")
    spec = {k.replace("spectrum_encoder.backbone.", "", 1): v for k, v in state.items() if k.startswith("spectrum_encoder.backbone.")}
    commit = "c" * 40
    plant_hf_file(offline_hub, "polymathic-ai/specformer", "specformer.ckpt",
                  lambda p: torch.save({"state_dict": spec, "hyper_parameters": {"embed_dim": 32}}, p), commit=commit)
    weights = f"{tmp_path}/astrodino.ckpt, polymathic-ai/specformer:specformer.ckpt"
    loaded = AstroCLIPEncoder.load(AstroCLIPSection(preset="tiny", weights=weights, revision=commit))
    for key, value in source.state_dict().items():
        same = torch.equal(loaded.state_dict()[key], value)
        assert same == (".backbone." in key), key  # backbones loaded, heads untouched
    assert loaded.describe()["weights"] == (
        f"{tmp_path}/astrodino.ckpt,polymathic-ai/specformer:specformer.ckpt@{commit}")
    with pytest.raises(WeightsError, match="specformer.ckpt of hub repo polymathic-ai/specformer at revision 'v9'"):
        AstroCLIPEncoder.load(AstroCLIPSection(preset="tiny", weights=weights, revision="v9"))


def test_incomplete_or_foreign_checkpoints_are_errors(tmp_path: Path):
    state = upstream_state(perturbed_tiny())
    state.pop("spectrum_encoder.mlp.decoder.bias")
    torch.save({"state_dict": state}, tmp_path / "partial.ckpt")
    with pytest.raises(WeightsError, match="1 missing.*spectrum_encoder.mlp.decoder.bias"):
        AstroCLIPEncoder.load(AstroCLIPSection(preset="tiny", weights=str(tmp_path / "partial.ckpt")))
    torch.save({"state_dict": {"something.else": torch.zeros(1)}}, tmp_path / "foreign.ckpt")
    with pytest.raises(WeightsError, match="not an astroclip, astrodino or specformer"):
        AstroCLIPEncoder.load(AstroCLIPSection(preset="tiny", weights=str(tmp_path / "foreign.ckpt")))


def test_missing_hub_checkpoint_offline_is_a_clear_error(offline_hub):
    with pytest.raises(WeightsError, match="cannot load astroclip weights"):
        AstroCLIPEncoder.load(AstroCLIPSection(preset="tiny", weights="polymathic-ai/astroclip"))


def test_spectrum_slicing_matches_specformer():
    flux = torch.randn(2, 7781, dtype=torch.float64) * 3 + 5
    tokens = slice_spectrum(flux)
    assert tokens.shape == (2, 778, 22)
    z = (flux - flux.mean(1, keepdim=True)) / flux.std(1, keepdim=True)
    torch.testing.assert_close(tokens[:, 1, 2:], z[:, 0:20])
    torch.testing.assert_close(tokens[:, 777, 2:], z[:, 7760:7780])
    torch.testing.assert_close(tokens[:, 0, 0], (flux.mean(1) - 2) / 2)


def test_clip_loss_exponentiates_the_learnable_log_temperature():
    image, spectrum = torch.randn(8, 16), torch.randn(8, 16)
    log_scale = torch.tensor(math.log(15.5), requires_grad=True)
    loss = clip_loss(image, spectrum, log_scale)
    zi, zs = torch.nn.functional.normalize(image, dim=-1), torch.nn.functional.normalize(spectrum, dim=-1)
    logits = 15.5 * zi @ zs.T
    expected = (torch.nn.functional.cross_entropy(logits, torch.arange(8)) + torch.nn.functional.cross_entropy(logits.T, torch.arange(8))) / 2
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert log_scale.grad is not None and log_scale.grad != 0


def test_only_heads_and_temperature_adapt_and_embeddings_come_out(project: Path):
    encoder = AstroCLIPEncoder.load(TINY)
    trainable = {id(p) for p in encoder.trainable_parameters()}
    assert not any(id(p) in trainable for p in encoder.image_encoder.backbone.parameters())
    assert id(encoder.log_scale) in trainable
    write_rows(project / "survey" / "part-0.parquet", [tagged_row(900 + i, size=40, seed=i) for i in range(20)])
    sets = ["data.source=survey", "models.astroclip.preset=tiny", "models.astroclip.adapt.epochs=2",
            "models.astroclip.adapt.batch_size=4", "models.astroclip.adapt.num_workers=0",
            "models.astroclip.adapt.val_fraction=0.2", "models.astroclip.embed.num_workers=0"]
    config = load_config(root=project, sets=sets)
    index(config)
    model_tasks.adapt(config, "astroclip", log=lambda _: None)
    history = json.loads(config.layout.model("astroclip").history.read_text())
    assert len(history["epochs"]) == 2 and all(np.isfinite(e["train_loss"]) for e in history["epochs"])
    embed(config, "astroclip")
    ids, m = store.load_embeddings(config.layout.embeddings("astroclip").dir)
    assert len(ids) == 20 and m["image"].shape == (20, 64) and m["spectrum"].shape == (20, 64)
    np.testing.assert_allclose(np.linalg.norm(m["joint"], axis=1), 1, rtol=1e-4)


@pytest.mark.parametrize("backbone", ["none", "spectrum", "both"])
def test_finetune_backbone_chooses_which_backbones_train_beyond_the_heads(backbone, tmp_path: Path):
    encoder = AstroCLIPEncoder.load(TINY.model_copy(update={"finetune_backbone": backbone}))
    specformer, dino = encoder.spectrum_encoder.backbone, encoder.image_encoder.backbone
    trainable = {id(p) for p in encoder.trainable_parameters()}
    used = {"none": [], "spectrum": [specformer], "both": [specformer, dino]}[backbone]
    unused = {"head.weight", "head.bias", "cls_token", "pos_embed", "mask_token"}  # never in AstroCLIP's forward
    tuned = {id(p) for m in used for name, p in m.named_parameters() if name not in unused}
    frozen = {id(p) for m in (specformer, dino) for p in m.parameters()} - tuned
    assert tuned <= trainable and not frozen & trainable
    assert {id(p) for p in encoder.parameters() if p.requires_grad} == trainable
    assert any(k.startswith("spectrum_encoder.backbone.") for k in encoder.adapted_state()) == (backbone != "none")

    checker = RowChecker()
    batch = encoder.preprocessor([checker.check(tagged_row(60 + i, size=40, seed=i))[0] for i in range(4)])
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    Trainer(encoder, AdaptSettings(epochs=1, lr=1e-3, warmup_fraction=0.0), tmp_path).fit(
        lambda epoch: [batch], None, steps_per_epoch=1, log=lambda _: None)
    changed = {k for k, v in encoder.state_dict().items() if not torch.equal(v, before[k])}
    changed_backbones = {k.split(".backbone.")[0] for k in changed if ".backbone." in k}
    assert changed_backbones == {"none": set(), "spectrum": {"spectrum_encoder"},
                                 "both": {"spectrum_encoder", "image_encoder"}}[backbone]  # gradients reach them
    assert "spectrum_encoder.backbone.head.weight" not in changed


def test_a_spectrum_backbone_under_a_frozen_spectrum_head_is_a_config_error(project: Path):
    with pytest.raises(ConfigError) as error:
        load_config(root=project, sets=["models.astroclip.finetune_backbone=spectrum",
                                        "models.astroclip.finetune_spectrum=false"])
    assert "finetune_spectrum" in str(error.value) and "\n" not in str(error.value)


def test_a_weights_file_that_is_not_a_checkpoint_is_one_line(tmp_path: Path):
    """`models.astroclip.weights=evil.pt` of plain bytes: named, not an unexpected RuntimeError."""
    from fmb.models.astroclip import read_checkpoint
    from fmb.models.base import WeightsError

    path = tmp_path / "evil.pt"
    path.write_bytes(b"plain bytes, not a checkpoint" * 10)
    with pytest.raises(WeightsError, match="evil.pt: not a readable astroclip checkpoint") as error:
        read_checkpoint(path)
    assert "\n" not in str(error.value)
