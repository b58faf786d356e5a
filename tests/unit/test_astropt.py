"""AstroPT through the real `astropt` package: released-weight loading (planted offline, pinned to a
revision, read without running code), spectra added strictly, adaptation steps and embeddings on
tiny configurations."""

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
from fmb.errors import FmbError
from fmb.models.astropt import DEFAULT_WEIGHTS, AstroPTEncoder, AstroPTSection
from fmb.models.base import WeightsError
from tests.conftest import plant_hf_file, tagged_row, write_rows
from tests.e2e.test_untrusted_files import malicious

TINY = ["models.astropt.preset=tiny", "models.astropt.image_size=32"]
REPO, FILE = "smith42/astropt_v2.0", "astropt/095M/ckpt.pt"  # DEFAULT_WEIGHTS


def images_only_checkpoint(path: Path, extra_key: bool = False, seed: int = 5) -> dict:
    """A tiny images-only AstroPT checkpoint in the format `load_astropt` reads."""
    from astropt.model import GPT, GPTConfig, ModalityConfig, ModalityRegistry

    torch.manual_seed(seed)
    registry = ModalityRegistry([ModalityConfig("images", 768, 1, 16, True)])
    args = dict(block_size=1024, n_layer=2, n_head=2, n_embd=32, dropout=0.0, bias=False, attn_type="causal", tokeniser="aim")
    model = GPT(GPTConfig(**args), registry, master_process=False)
    state = model.state_dict()
    if extra_key:
        state["transformer.stray.weight"] = torch.zeros(3)
    torch.save({"model": state, "model_args": args, "modality_registry": registry}, path)
    return {"model": model}


def samples(n=6):
    checker = RowChecker()
    return [checker.check(tagged_row(100 + i, size=40, seed=i))[0] for i in range(n)]


def test_released_weights_load_from_the_hub_cache_and_spectra_are_added(offline_hub):
    saved = {}
    plant_hf_file(offline_hub, "smith42/astropt_v2.0", "config.json", lambda p: p.write_text("{}"))
    plant_hf_file(offline_hub, "smith42/astropt_v2.0", "astropt/095M/ckpt.pt",
                  lambda p: saved.update(images_only_checkpoint(p)))
    encoder = AstroPTEncoder.load(AstroPTSection(image_size=32))  # preset full -> the released default id
    original = saved["model"]
    state = encoder.gpt.state_dict()
    for key, value in original.state_dict().items():
        assert torch.equal(state[key], value), key
    assert {k for k in state if k not in original.state_dict()} == {
        k for k in state if k.startswith(("transformer.wte.spectra", "transformer.wpe.spectra", "lm_head.spectra"))}
    # images come first and attention is causal: image embeddings equal the images-only model's
    batch = encoder.preprocessor(samples())
    ours = encoder.eval().embed(batch)["image"]
    with torch.no_grad():
        reference = original.eval().get_embeddings({"images": batch["images"], "images_positions": batch["images_positions"]})
    torch.testing.assert_close(ours, reference["images"].mean(1))


def test_local_checkpoint_and_strict_key_errors(tmp_path: Path):
    images_only_checkpoint(tmp_path / "ckpt.pt")
    encoder = AstroPTEncoder.load(AstroPTSection(image_size=32, weights=str(tmp_path / "ckpt.pt")))
    assert "spectra" in encoder.gpt.modality_registry.names()
    images_only_checkpoint(tmp_path / "bad.pt", extra_key=True)
    with pytest.raises(WeightsError, match="do not fit"):
        AstroPTEncoder.load(AstroPTSection(image_size=32, weights=str(tmp_path / "bad.pt")))


def plant_release(hf_home: Path, commit: str, seed: int) -> torch.nn.Module:
    """The default release at `commit` in the offline hub cache (main then points to it); its model."""
    saved = {}
    plant_hf_file(hf_home, REPO, FILE, lambda p: saved.update(images_only_checkpoint(p, seed=seed)), commit=commit)
    return saved["model"]


def loads(encoder: AstroPTEncoder, model: torch.nn.Module) -> bool:
    state = encoder.gpt.state_dict()
    return all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_hub_checkpoints_come_from_the_commit_of_the_revision_and_record_it(offline_hub):
    a, b = "a" * 40, "b" * 40
    at_a = plant_release(offline_hub, a, seed=5)
    encoder = AstroPTEncoder.load(AstroPTSection(image_size=32))  # no revision: main, which points to a
    assert loads(encoder, at_a) and encoder.describe()["weights"] == f"{DEFAULT_WEIGHTS}@{a}"
    at_b = plant_release(offline_hub, b, seed=6)  # a push: main now points to b
    encoder = AstroPTEncoder.load(AstroPTSection(image_size=32, revision=b))
    assert loads(encoder, at_b) and not loads(encoder, at_a)
    assert encoder.describe()["weights"] == f"{DEFAULT_WEIGHTS}@{b}"
    assert loads(AstroPTEncoder.load(AstroPTSection(image_size=32, revision=a)), at_a)
    expected = f"cannot load astropt weights: {FILE} of hub repo {REPO} at revision 'v9'"
    with pytest.raises(WeightsError, match=expected) as error:
        AstroPTEncoder.load(AstroPTSection(image_size=32, revision="v9"))
    assert "\n" not in str(error.value)


def test_a_moved_branch_is_not_mixed_into_a_resumed_embedding_run(project: Path, offline_hub):
    write_rows(project / "survey" / "part-0.parquet", [tagged_row(300 + i, size=40, seed=i) for i in range(4)])
    a, b = "a" * 40, "b" * 40
    plant_release(offline_hub, a, seed=5)
    sets = ["data.source=survey", "models.astropt.image_size=32", "models.astropt.embed.num_workers=0"]
    config = load_config(root=project, sets=sets)
    index(config)
    assert embed(config, "astropt")["weights"] == f"base ({DEFAULT_WEIGHTS}@{a})"
    plant_release(offline_hub, b, seed=6)
    with pytest.raises(FmbError, match=r"made differently \(weights, weights_sha256 changed\)"):
        embed(config, "astropt")
    pinned = load_config(root=project, sets=sets + [f"models.astropt.revision={a}"])
    assert embed(pinned, "astropt")["units_done_now"] == 0  # same commit: the finished run is resumed


def test_a_checkpoint_that_would_run_code_is_refused_from_the_hub_and_from_a_file(offline_hub, tmp_path: Path):
    """A planted checkpoint `load_astropt` would open with weights_only=False, so its payload would run."""
    from astropt.model import ModalityConfig, ModalityRegistry

    marker = tmp_path / "code-ran"
    registry = ModalityRegistry([ModalityConfig("images", 768, 1, 16, True)])
    checkpoint = lambda payload: {"model": {}, "model_args": {}, "modality_registry": registry, "extra": payload}
    local = malicious(tmp_path / "evil.pt", marker, wrap=checkpoint)
    plant_hf_file(offline_hub, REPO, FILE, lambda p: malicious(p, marker, wrap=checkpoint))
    for weights in (str(local), DEFAULT_WEIGHTS):
        with pytest.raises(FmbError, match="refusing to load it as an astropt checkpoint.*posix.system"):
            AstroPTEncoder.load(AstroPTSection(image_size=32, weights=weights))
    assert not marker.exists()


def test_missing_hub_weights_offline_is_a_clear_error(offline_hub):
    with pytest.raises(WeightsError, match="cannot load astropt weights"):
        AstroPTEncoder.load(AstroPTSection(image_size=32))


def test_adapt_a_few_steps_then_embed_deterministically(project: Path):
    write_rows(project / "survey" / "part-0.parquet", [tagged_row(500 + i, size=40, seed=i) for i in range(24)])
    sets = TINY + ["data.source=survey", "models.astropt.adapt.epochs=2", "models.astropt.adapt.batch_size=4",
                   "models.astropt.adapt.grad_accum=1", "models.astropt.adapt.num_workers=0",
                   "models.astropt.adapt.val_fraction=0.25", "models.astropt.embed.num_workers=0",
                   "models.astropt.embed.rows_per_shard=10"]
    config = load_config(root=project, sets=sets)
    index(config)
    summary = model_tasks.adapt(config, "astropt", log=lambda _: None)
    history = json.loads(config.layout.model("astropt").history.read_text())
    assert summary["epochs"] == 2 and len(history["steps"]) >= 2 and np.isfinite(history["best_val_loss"])
    assert embed(config, "astropt")["weights"] == str(config.layout.model("astropt").best)
    ids, first = store.load_embeddings(config.layout.embeddings("astropt").dir)
    assert sorted(ids) == list(range(500, 524)) and first["image"].shape == (24, 64) and first["joint"].shape == (24, 64)
    again = load_config(root=project, sets=sets + ["name=again"])
    again.layout.root.mkdir(parents=True)
    import shutil

    shutil.copytree(config.layout.data.dir, again.layout.data.dir)
    shutil.copytree(config.layout.models_dir, again.layout.models_dir)
    embed(again, "astropt")
    _, second = store.load_embeddings(again.layout.embeddings("astropt").dir)
    for modality in first:
        np.testing.assert_array_equal(first[modality], second[modality])
    # the adapted weights were used, not the base ones
    base = load_config(root=project, sets=sets + ["name=base", "models.astropt.embed.weights=base"])
    shutil.copytree(config.layout.data.dir, base.layout.data.dir)
    assert embed(base, "astropt")["weights"] == "base (random tiny)"
    _, untrained = store.load_embeddings(base.layout.embeddings("astropt").dir)
    assert not np.allclose(untrained["image"], first["image"])


def test_random_tiny_weights_are_reproducible():
    a = AstroPTEncoder.load(AstroPTSection(preset="tiny", image_size=32))
    b = AstroPTEncoder.load(AstroPTSection(preset="tiny", image_size=32))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
