"""One typed configuration with one precedence rule.

    CLI flags  >  task file(s) (--config, later files win)  >  project file (fmb.yaml in the root)  >  defaults

Every relative path is resolved under the project root (the directory holding `fmb.yaml`, else the
current directory) and every output goes under the run root `runs/<name>/`. Nothing here touches the
disk until asked: loading a config never creates directories.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fmb.errors import ConfigError

PROJECT_FILE = "fmb.yaml"
DEFAULT_HF_DATASET = "msiudek/astroPT_euclid_Q1_desi_dr1_dataset"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    source: str = Field(
        "data/synth",
        description="where rows come from: a directory of Parquet files, 'hf:<dataset id or local "
        "dataset dir>', or 'desi:<directory of DESI coadd FITS>' (with data.cutouts)",
    )
    splits: list[str] = Field(["train", "test"], description="dataset splits to read (hf sources)")
    streaming: bool = Field(False, description="stream an hf source instead of caching it (no fetch by id)")
    cutouts: str | None = Field(None, description="directory of <TARGETID>.fits Euclid cutouts (desi sources)")
    catalog: str | None = Field(
        None, description="catalog file (TARGETID, Z, LOGM, LOGSFR, SPECTYPE); default <source>/catalog.parquet"
    )
    spectrum_length: int = Field(7781, gt=0, description="expected number of spectrum pixels")
    min_cutout_px: int = Field(16, gt=0, description="smallest accepted cutout side, pixels")
    max_cutout_px: int = Field(1024, gt=0, description="largest accepted cutout side, pixels")
    max_bad_pixel_fraction: float = Field(
        0.25, ge=0, le=1, description="images with more non-finite pixels than this are dropped"
    )
    max_masked_spectrum_fraction: float = Field(
        0.5, ge=0, le=1, description="spectra with more masked pixels than this are dropped"
    )
    on_invalid: Literal["skip", "error"] = Field(
        "skip", description="skip invalid objects (recorded in rejects) or stop at the first one"
    )


class SynthConfig(_Section):
    n: int = Field(2000, gt=0, description="number of objects")
    out: str = Field("data/synth", description="output directory (Parquet parts, catalog, truth)")
    cutout_px: int = Field(64, ge=32, description="cutout side in pixels (0.1 arcsec/px)")
    anomaly_rate: float = Field(0.0075, ge=0, le=0.12, description="fraction of objects in each anomaly class")
    workers: int = Field(2, ge=1, description="worker processes")
    shard_size: int = Field(1024, gt=0, description="objects per Parquet part")


class ShowConfig(_Section):
    object_id: int | None = Field(None, description="object to draw; default: the first indexed object")
    smooth_px: float = Field(2.0, ge=0, description="Gaussian smoothing of the spectrum, pixels")


class AdaptSettings(_Section):
    """Stage 1: light adaptation of a model to Euclid x DESI (the shared trainer's settings)."""

    epochs: int = Field(3, ge=1, description="passes over the training objects")
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimiser steps")
    max_objects: int | None = Field(None, ge=2, description="train on at most this many objects")
    batch_size: int = Field(16, ge=1)
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimiser step")
    lr: float = Field(1e-4, gt=0, description="peak learning rate")
    weight_decay: float = Field(0.01, ge=0)
    grad_clip: float = Field(1.0, ge=0, description="clip the gradient norm (0 = off)")
    warmup_fraction: float = Field(0.05, ge=0, le=1, description="share of steps in linear warm-up")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="cosine decays to lr * this")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="objects held out for validation (by id hash)")
    patience: int = Field(3, ge=1, description="epochs without validation improvement before stopping")
    min_delta: float = Field(1e-4, ge=0)
    amp: Literal["auto", "bf16", "fp16", "off"] = Field("auto", description="autocast: auto = bf16 on GPU")
    num_workers: int = Field(1, ge=0, description="DataLoader worker processes")


class EmbedSettings(_Section):
    """Stage 2: embedding extraction."""

    weights: Literal["adapted", "base"] = Field("adapted", description="use the adapted weights when they exist")
    batch_size: int = Field(32, ge=1)
    num_workers: int = Field(1, ge=0, description="DataLoader worker processes (0 = in the main process)")
    prefetch: int = Field(4, ge=1, description="batches prefetched per worker")
    rows_per_shard: int = Field(2048, ge=1, description="objects per output Parquet part (the unit of resume)")
    amp: Literal["auto", "bf16", "fp16", "off"] = Field("auto", description="autocast: auto = bf16 on GPU")


class ModelSection(_Section):
    preset: Literal["full", "tiny"] = Field("full", description="architecture: released size, or tiny for tests")
    weights: str | None = Field(
        None, description="hub id or local file of pretrained weights; default: the released weights "
        "(full) or random (tiny); 'random' forces random initialisation"
    )
    device: str = Field("auto", description="auto (cuda if available), cpu, cuda, cuda:1, ...")
    adapt: AdaptSettings = AdaptSettings()
    embed: EmbedSettings = EmbedSettings()


class AionSection(ModelSection):
    adapter_hidden: int = Field(16, ge=4, description="width of the Euclid<->HSC U-Net adapters")
    codec_grad: Literal["ste", "full"] = Field("ste", description="straight-through or full codec gradient")
    image_size: int = Field(96, ge=96, description="Euclid bands are resized to this (the codec crops 96)")
    max_abs: float = Field(100.0, gt=0, description="clamp of the nanomaggy fluxes")


class AstroPTSection(ModelSection):
    image_size: int = Field(224, ge=16, description="RGB resized to this (multiple of the 16 px patch)")
    layer: Literal["middle", "last"] = Field("middle", description="read embeddings after the middle block or ln_f")
    adapt: AdaptSettings = AdaptSettings(lr=3e-5, batch_size=8, grad_accum=4)


class AstroCLIPSection(ModelSection):
    image_size: int = Field(144, description="AstroDINO input size")
    learnable_scale: bool = Field(True, description="learn the CLIP temperature (as exp of its log)")
    finetune_spectrum: bool = Field(True, description="also adapt the spectrum head (backbones stay frozen)")
    adapt: AdaptSettings = AdaptSettings(lr=3e-5, batch_size=64, weight_decay=0.05)


class PixelsSection(ModelSection):
    image_size: int = Field(32, ge=8, description="bands resized to this before PCA")
    components: int = Field(64, ge=6, description="dimensions per modality: PCA components, then log fluxes "
                            "(4 for the image bands, 1 for the spectrum)")
    fit_objects: int = Field(5000, ge=10, description="objects sampled to fit the PCA")


class ModelsConfig(_Section):
    aion: AionSection = AionSection()
    astropt: AstroPTSection = AstroPTSection()
    astroclip: AstroCLIPSection = AstroCLIPSection()
    pixels: PixelsSection = PixelsSection()


class FlowConfig(_Section):
    transforms: int = Field(5, ge=1, description="MAF transforms")
    hidden: int = Field(128, ge=8, description="hidden units per layer of each transform")
    epochs: int = Field(30, ge=1, description="passes over the fit data, counted in steps within [min_steps, max_steps]")
    batch_size: int = Field(512, ge=16)
    lr: float = Field(1e-3, gt=0)
    patience: int = Field(4, ge=1, description="held-out checks without improvement before stopping")
    min_steps: int = Field(800, ge=1, description="optimiser steps per flow at least")
    max_steps: int = Field(2000, ge=1, description="optimiser steps per flow at most")
    check_every: int = Field(100, ge=1, description="steps between held-out checks")


class MismatchConfig(_Section):
    """The contrastive image-spectrum critic behind the `mismatch` score."""

    hidden: int = Field(128, ge=8, description="hidden units of each modality's tower")
    dim: int = Field(64, ge=2, description="dimension of the shared space")
    epochs: int = Field(40, ge=1, description="passes over the fit data, counted in steps within [min_steps, max_steps]")
    min_steps: int = Field(300, ge=1)
    max_steps: int = Field(3000, ge=1)
    batch_size: int = Field(256, ge=8, description="pairs per step: each is contrasted with the others in its batch")
    lr: float = Field(1e-3, gt=0)
    references: int = Field(4096, ge=16, description="fit objects kept to estimate the marginals when scoring")
    check_every: int = Field(50, ge=1, description="steps between checks of the held-out (10 %) contrastive loss")
    patience: int = Field(5, ge=1, description="checks without improvement before training stops (best state kept)")


class DetectConfig(_Section):
    """Stage 3: anomaly scores per model and modality, misalignment and fusion."""

    models: list[str] | None = Field(None, description="models to score; default: every model with embeddings")
    methods: list[Literal["flow", "iforest", "lof", "knn", "ecod"]] = Field(
        ["flow", "iforest", "lof", "knn", "ecod"], description="density flow and PyOD baselines")
    pca_components: int = Field(64, ge=2, description="PCA components before every detector")
    folds: int = Field(5, ge=2, description="cross-fitting folds: each object is scored by a model that never saw it")
    max_fit: int = Field(50_000, ge=100, description="objects sampled to fit the detectors")
    fusion_method: Literal["flow", "iforest", "lof", "knn", "ecod"] = Field(
        "flow", description="which method's image/spectrum/joint percentiles are fused")
    flow: FlowConfig = FlowConfig()
    mismatch: MismatchConfig = MismatchConfig()


class EvaluateConfig(_Section):
    truth: str | None = Field(None, description="truth table; default <data.source>/truth.parquet (synthetic survey)")


class AgreementConfig(_Section):
    """How much the anomaly rankings of different (model, modality, method) systems agree."""

    methods: list[str] = Field(["flow", "mismatch", "fused_geo"], description="score families compared: "
                               "a detect method (per modality), 'mismatch', or a fused_* column")
    top_pct: float = Field(1.0, gt=0, lt=100, description="top-k percent for Jaccard and disagreement")
    retention_pcts: list[float] = Field([1.0, 10.0], description="retention@k percent levels")
    beyond_pct: float = Field(50.0, gt=0, lt=100, description="a disagreement: top in one system, beyond this in another")


class SimilarityConfig(_Section):
    """Nearest-neighbour search on cosine similarity of the embeddings (faiss)."""

    k: int = Field(10, ge=1, description="neighbours returned per query")
    exact_max: int = Field(100_000, ge=1, description="up to this many objects the index is exact (flat)")
    nprobe: int = Field(32, ge=1, description="inverted lists visited per query by a compressed index")
    queries: list[int] = Field([], description="object ids to show; default: the top fused anomalies")
    n_examples: int = Field(3, ge=0, description="example queries drawn when none are given")


class ProbesConfig(_Section):
    """Decodability of physical parameters from the embeddings."""

    targets: list[str] = Field(["Z", "LOGM", "LOGSFR"], description="catalog columns to predict")
    folds: int = Field(5, ge=2, description="cross-validation folds")
    bootstraps: int = Field(50, ge=0, description="bootstrap resamples for the PR / PR90 / EPD errors")
    max_objects: int = Field(20_000, ge=50, description="objects sampled per probe")
    lightgbm: bool = Field(True, description="also fit LightGBM (non-linear decodability and SHAP)")
    shap_max: int = Field(2000, ge=50, description="held-out objects explained by SHAP per fold")


class FiguresConfig(_Section):
    """Stage-5 figures: UMAP maps, score distributions, outlier galleries."""

    color_by: str = Field("Z", description="catalog column colouring the UMAP maps: a number (Z, LOGM) on a colour "
                          "scale, or a class (SPECTYPE) with one colour per class")
    umap_neighbors: int = Field(15, ge=2)
    umap_min_dist: float = Field(0.1, ge=0)
    umap_max_objects: int = Field(50_000, ge=100, description="objects sampled for UMAP")
    mosaic_cells: int = Field(12, ge=2, description="thumbnail mosaic: cells per side")
    gallery_size: int = Field(12, ge=1, description="top-ranked objects per outlier gallery")
    gallery_score: str = Field("fused_geo", description="score column ranking the galleries")


class AnalyzeConfig(_Section):
    agreement: AgreementConfig = AgreementConfig()
    similarity: SimilarityConfig = SimilarityConfig()
    probes: ProbesConfig = ProbesConfig()
    figures: FiguresConfig = FiguresConfig()


class RunConfig(_Section):
    """`fmb run`: which stages the pipeline holds."""

    synth: bool = Field(False, description="generate the synthetic survey (the synth section) as the first stage")
    models: list[Literal["pixels", "aion", "astropt", "astroclip"]] = Field(
        ["pixels", "aion", "astropt", "astroclip"], description="models adapted and embedded")


class FmbConfig(_Section):
    name: str = Field("default", pattern=r"^[A-Za-z0-9._-]+$", description="run name: outputs go to runs/<name>/")
    seed: int = Field(42, description="seed for everything random")
    data: DataConfig = DataConfig()
    synth: SynthConfig = SynthConfig()
    show: ShowConfig = ShowConfig()
    models: ModelsConfig = ModelsConfig()
    detect: DetectConfig = DetectConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    analyze: AnalyzeConfig = AnalyzeConfig()
    run: RunConfig = RunConfig()


class ResolvedConfig:
    """A validated `FmbConfig` plus the project root and where each value came from."""

    def __init__(self, values: FmbConfig, root: Path, origins: dict[str, str]):
        self.values = values
        self.root = root
        self.origins = origins

    def __getattr__(self, name: str) -> Any:
        return getattr(self.values, name)

    def path(self, relative: str | Path) -> Path:
        """A configured path, resolved under the project root."""
        path = Path(relative).expanduser()
        return path if path.is_absolute() else self.root / path

    @property
    def run_dir(self) -> Path:
        return self.root / "runs" / self.values.name

    def explain(self) -> list[tuple[str, Any, str]]:
        """(dotted key, value, origin) for every leaf value, in schema order."""
        return [(key, value, self.origins.get(key, "default")) for key, value in _flatten(self.values.model_dump())]


def find_root(start: Path | None = None) -> Path:
    """The nearest directory at or above `start` holding fmb.yaml, else `start` itself."""
    start = (start or Path.cwd()).resolve()
    for directory in (start, *start.parents):
        if (directory / PROJECT_FILE).is_file():
            return directory
    return start


def load_config(
    task_files: Path | list[Path] | None = None,
    cli: dict[str, Any] | None = None,
    sets: list[str] | None = None,
    root: Path | None = None,
) -> ResolvedConfig:
    """Merge defaults < project file < task file < CLI (explicit flags and `--set key=value`)."""
    root = find_root(root)
    layers: list[tuple[str, dict]] = []
    project_file = root / PROJECT_FILE
    if project_file.is_file():
        layers.append((f"project file {project_file.name}", _read_yaml(project_file)))
    if isinstance(task_files, (str, Path)):
        task_files = [Path(task_files)]
    for task_file in task_files or []:
        layers.append((f"task file {task_file}", _read_yaml(task_file)))
    cli_values = {key: value for key, value in (cli or {}).items() if value is not None}
    cli_values.update(parse_sets(sets or []))
    if cli_values:
        layers.append(("command line", _unflatten(cli_values)))

    merged: dict = {}
    origins: dict[str, str] = {}
    for origin, layer in layers:
        _deep_merge(merged, layer)
        origins.update({key: origin for key, _ in _flatten(layer)})
    try:
        values = FmbConfig.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, origins)) from None
    return ResolvedConfig(values, root, origins)


def parse_sets(items: list[str]) -> dict[str, Any]:
    """`--set data.source=hf:x --set synth.n=100` as {dotted key: YAML-parsed value}."""
    parsed = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects KEY=VALUE (e.g. synth.n=500), got {item!r}")
        parsed[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
    return parsed


def _read_yaml(path: Path) -> dict:
    try:
        content = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if not isinstance(content, dict):
        raise ConfigError(f"config file {path} must be a mapping of keys to values")
    return content


def _deep_merge(into: dict, layer: dict) -> None:
    for key, value in layer.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _deep_merge(into[key], value)
        else:
            into[key] = value


def _flatten(tree: dict, prefix: str = "") -> list[tuple[str, Any]]:
    items = []
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            items.extend(_flatten(value, dotted + "."))
        else:
            items.append((dotted, value))
    return items


def _unflatten(flat: dict[str, Any]) -> dict:
    tree: dict = {}
    for dotted, value in flat.items():
        *parents, leaf = dotted.split(".")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def _describe(exc: ValidationError, origins: dict[str, str]) -> str:
    lines = ["invalid configuration:"]
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"])
        lines.append(f"  {key}: {error['msg']} (from {origins.get(key, 'defaults')})")
    return "\n".join(lines)
