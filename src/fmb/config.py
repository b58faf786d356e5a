"""One typed configuration with one precedence rule.

    CLI flags  >  task file(s) (--config, later files win)  >  the run's own settings  >  project file
    (fmb.yaml in the root)  >  defaults

A run remembers its settings: every stage writes the resolved configuration it ran with into
``runs/<name>/run/settings.json`` (`run_settings`), and every later command on that run starts
from what its task files and command lines gave (`executor.*` and `detect.models` excepted: where
a command runs and which models it scores are its own business), so `fmb app --run demo` needs no
other flag. `ResolvedConfig.run_changes` says which result-changing keys differ from what the run
last ran with.

Every relative path is resolved under the project root (the directory holding `fmb.yaml`, else the
current directory) and every output goes under the run root `runs/<name>/`. Nothing here touches the
disk until asked: loading a config never creates directories.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from fmb.errors import ConfigError
from fmb.layout import RunLayout

PROJECT_FILE = "fmb.yaml"
DEFAULT_HF_DATASET = "msiudek/astroPT_euclid_Q1_desi_dr1_dataset"


class Section(BaseModel):
    """A config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


RUNTIME_ONLY = "runtime_only"


def runtime_only(default: Any, description: str = "", **constraints: Any):
    """A setting that changes how fast or where a stage runs, never what it writes (batch sizes of
    inference, worker counts of order-free work, devices): it is left out of stage keys, so changing
    it does not invalidate adapted weights or embeddings."""
    return Field(default, description=description, json_schema_extra={RUNTIME_ONLY: True}, **constraints)


def result_values(section: Any) -> Any:
    """A section's values (JSON) without its `runtime_only` settings, at every depth."""
    if not isinstance(section, BaseModel):
        return _json_value(section)
    values = {}
    for name, info in type(section).model_fields.items():
        if (info.json_schema_extra or {}).get(RUNTIME_ONLY):
            continue
        values[name] = result_values(getattr(section, name))
    return values


def _json_value(value: Any) -> Any:
    from pydantic import TypeAdapter

    return TypeAdapter(Any).dump_python(value, mode="json")


class DataConfig(Section):
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
    spectrum_length: int = Field(7781, gt=0, le=1_000_000, description="expected number of spectrum pixels")
    min_cutout_px: int = Field(16, gt=0, le=65536, description="smallest accepted cutout side, pixels")
    max_cutout_px: int = Field(1024, gt=0, le=65536, description="largest accepted cutout side, pixels")
    max_bad_pixel_fraction: float = Field(
        0.25, ge=0, le=1, description="a 4-band image is dropped when any one band has more bad pixels "
        "(NaN, inf, beyond float32) than this fraction"
    )
    max_masked_spectrum_fraction: float = Field(
        0.5, ge=0, le=1, description="spectra with more masked pixels than this are dropped"
    )
    on_invalid: Literal["skip", "error"] = Field(
        "skip", description="skip invalid objects (recorded in rejects) or stop at the first one"
    )


class SkyConfig(Section):
    """The nuisances of a real sky around every synthetic object (fmb.data.synth.sky): not anomalies."""

    enabled: bool = Field(True, description="draw the nuisances; false: a clean survey (one galaxy per cutout)")
    field_galaxies: float = Field(2.0, ge=0, le=1000, allow_inf_nan=False,
                                  description="mean number of faint (VIS 23.5-26.5) field galaxies per cutout")
    neighbour_rate: float = Field(0.15, ge=0, le=1, description="probability of a bright neighbour")
    blend_fraction: float = Field(0.3, ge=0, le=1, description="fraction of the neighbours blended with the object")
    star_rate: float = Field(0.06, ge=0, le=1, description="probability of a field star (with its halo) in or near "
                             "the cutout")
    edge_rate: float = Field(0.03, ge=0, le=1, description="probability that a detector edge truncates the cutout")
    nisp_correlated_noise: bool = Field(True, description="NISP noise correlated by resampling 0.3\" pixels to 0.1\"")
    sky_residual: float = Field(1.0, ge=0, le=1000, allow_inf_nan=False,
                                description="scale of the sky-line and telluric residuals in the spectra (0: none)")


class SynthConfig(Section):
    n: int = Field(2000, gt=0, le=100_000_000, description="number of objects")
    out: str = Field("data/synth", description="output directory (Parquet parts, catalog, truth)")
    cutout_px: int = Field(64, ge=32, le=4096, description="cutout side in pixels (0.1 arcsec/px)")
    anomaly_rate: float = Field(0.0075, ge=0, le=0.12, description="fraction of objects in each anomaly class")
    psf_scale: float = Field(1.0, gt=0, le=1000, allow_inf_nan=False,
                             description="multiplies the FWHM of the VIS and NISP PSFs (> 1: blurrier images)")
    noise_scale: float = Field(1.0, gt=0, le=1000, allow_inf_nan=False,
                               description="multiplies the noise sigma of every image band and of the spectrum "
                               "(> 1: a shallower survey)")
    # the keys are fmb.data.synth.population.TRACERS, spelled out: config sits below fmb.data
    population_mix: dict[Literal["BGS", "LRG", "ELG"], float] | None = Field(
        None, description="relative weights of the BGS, LRG and ELG tracers (renormalised); default: the DESI-like mix"
    )
    workers: int = runtime_only(2, "worker processes (the survey is the same for any number)", ge=1, le=1024)
    shard_size: int = Field(1024, gt=0, le=10_000_000, description="objects per Parquet part")
    sky: SkyConfig = SkyConfig()

    @field_validator("population_mix")
    @classmethod
    def _normalise_mix(cls, mix: dict[str, float] | None) -> dict[str, float] | None:
        """Fractions that sum to 1, so equal mixes written differently give the same stage key."""
        if mix is None:
            return None
        for name, weight in mix.items():
            if not 0 <= weight < float("inf"):
                raise ValueError(f"the weight of {name} must be finite and >= 0, got {weight}")
        total = sum(mix.values())
        if total <= 0:
            raise ValueError("the weights must have a positive sum")
        return {name: weight / total for name, weight in mix.items()}


class ShowConfig(Section):
    object_id: int | None = Field(None, description="object to draw; default: the first indexed object")
    smooth_px: float = Field(2.0, ge=0, le=1000, description="Gaussian smoothing of the spectrum, pixels")


class AdaptSettings(Section):
    """Stage 1: light adaptation of a model to Euclid x DESI (the shared trainer's settings)."""

    epochs: int = Field(3, ge=1, le=100_000, description="passes over the training objects")
    max_steps: int | None = Field(None, ge=1, le=1_000_000_000, description="stop after this many optimiser steps")
    max_objects: int | None = Field(None, ge=2, le=1_000_000_000, description="train on at most this many objects")
    batch_size: int = Field(16, ge=1, le=1_000_000, description="objects per optimiser micro-step over all processes "
                            "(under torchrun each takes batch_size / processes)")
    grad_accum: int = Field(1, ge=1, le=100_000, description="micro-batches per optimiser step")
    lr: float = Field(1e-4, gt=0, description="peak learning rate")
    weight_decay: float = Field(0.01, ge=0)
    grad_clip: float = Field(1.0, ge=0, description="clip the gradient norm (0 = off)")
    warmup_fraction: float = Field(0.05, ge=0, le=1, description="share of steps in linear warm-up")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="cosine decays to lr * this")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="objects held out for validation (by id hash)")
    patience: int = Field(3, ge=1, le=100_000, description="epochs without validation improvement before stopping")
    min_delta: float = Field(1e-4, ge=0)
    amp: Literal["auto", "bf16", "fp16", "fp32", "off"] = Field(
        "auto", description="autocast dtype: auto = bf16 on GPUs that compute it natively, else fp32; fp16 with "
        "a gradient scaler; off = fp32")
    # runtime_only: the recomputation replays the same operations and random state, so results do not change
    gradient_checkpointing: bool = runtime_only(False, "recompute the model's blocks in the backward pass instead of "
                                                "keeping their activations: less memory, one more forward of them")
    # not runtime_only: workers read units in turn, so their number changes the order of training batches
    num_workers: int = Field(1, ge=0, le=1024, description="DataLoader worker processes (changes the batch order)")


class EmbedSettings(Section):
    """Stage 2: embedding extraction."""

    weights: Literal["adapted", "base"] = Field("adapted", description="use the adapted weights when they exist")
    batch_size: int = runtime_only(32, "objects per forward pass", ge=1, le=1_000_000)
    num_workers: int = runtime_only(1, "DataLoader worker processes (0 = in the main process)", ge=0, le=1024)
    prefetch: int = runtime_only(4, "batches prefetched per worker", ge=1, le=1024)
    rows_per_shard: int = Field(2048, ge=1, le=10_000_000, description="objects per output Parquet part (the unit of resume)")
    amp: Literal["auto", "bf16", "fp16", "off"] = Field("auto", description="autocast: auto = bf16 on GPU")


class ModelSection(Section):
    preset: Literal["full", "tiny"] = Field("full", description="architecture: released size, or tiny for tests")
    weights: str | None = Field(
        None, description="hub id or local file of pretrained weights; default: the released weights "
        "(full) or random (tiny); 'random' forces random initialisation"
    )
    revision: str | None = Field(
        None, description="hub revision (commit sha, tag or branch) of hub weights; default main. The commit it "
        "resolves to is recorded with the embeddings (weights: repo@commit), so a moved branch is never mixed in"
    )
    device: str = runtime_only("auto", "auto (cuda if available), cpu, cuda, cuda:1, ...")
    adapt: AdaptSettings = AdaptSettings()
    embed: EmbedSettings = EmbedSettings()


def models_config_class() -> type[Section]:
    """`models.<name>` for every registered encoder, each its encoder's own section class, found
    through the registry without importing the encoder (`fmb.plugins.section_class`), so a new model
    needs no line here and loading a config imports no model code."""
    from pydantic import create_model

    from fmb.plugins import encoder_names, section_class

    sections = {name: section_class("encoder", name) for name in encoder_names()}
    return create_model("ModelsConfig", __base__=Section, __doc__="Per-model settings (one section per encoder).",
                        **{name: (section, Field(default_factory=section)) for name, section in sections.items()})


#: The hyper-parameters of the misalignment critic behind ``detect.mismatch`` (not a per-modality
#: detector, so not in the registry).
MISMATCH_SECTION = "fmb.detect.sections:MismatchSection"


class DetectSettings(Section):
    """Stage 3: anomaly scores per model and modality, misalignment and fusion."""

    models: list[str] | None = Field(None, description="models to score; default: every model with embeddings")
    methods: list[str] = Field(["flow", "iforest", "lof", "knn", "ecod"],
                               description="registered detectors run on each modality (density flow, PyOD baselines)")
    pca_components: int = Field(64, ge=2, le=4096, description="PCA components before every detector")
    folds: int = Field(5, ge=2, le=100, description="cross-fitting folds: each object is scored by a model that never saw it")
    max_fit: int = Field(50_000, ge=100, le=100_000_000, description="objects sampled to fit the detectors")
    fusion_method: str = Field("ensemble", description="whose image/spectrum/joint percentiles the original's "
                               "percentile fusions (fused_geo, ...) read: 'ensemble' (the calibrated combination of "
                               "`methods`) or one of `methods`")
    tail: float = Field(0.05, gt=0, lt=0.5, description="share of the reference scores whose exceedances fit the "
                        "exponential tail of the calibrated tail probabilities")

    @field_validator("methods")
    @classmethod
    def _registered(cls, value: list[str]) -> list[str]:
        from fmb.plugins import check_names

        check_names("detector", value, "detect.methods")
        return value

    @field_validator("fusion_method")
    @classmethod
    def _fusable(cls, value: str, info: ValidationInfo) -> str:
        methods = info.data.get("methods") or []
        if value != "ensemble" and value not in methods:
            raise ValueError(f"detect.fusion_method {value!r} is neither 'ensemble' nor one of detect.methods {methods}")
        return value


def detect_config_class() -> type[DetectSettings]:
    """`DetectSettings` plus ``detect.<name>`` for every registered detector and ``detect.mismatch``,
    each its detector's section class found through the registry without importing the detector
    (`fmb.plugins.section_class`), so a new detector needs no line here. Rebuilt when the detector
    registry changes."""
    from fmb.plugins import DETECTOR_SECTIONS, DETECTORS

    return _detect_config(tuple(DETECTORS.items()), tuple(DETECTOR_SECTIONS.items()))


@cache
def _detect_config(detectors: tuple, _sections: tuple) -> type[DetectSettings]:
    from pydantic import create_model

    from fmb.plugins import import_target, section_class

    clashing = [name for name, _ in detectors if name in DetectSettings.model_fields or name == "mismatch"]
    if clashing:
        raise ConfigError(f"detector name(s) {', '.join(clashing)} clash with keys of the detect section")
    sections = {name: section_class("detector", name) for name, _ in detectors}
    sections["mismatch"] = import_target(MISMATCH_SECTION)
    return create_model("DetectConfig", __base__=DetectSettings, __doc__=DetectSettings.__doc__,
                        **{name: (section, Field(default_factory=section)) for name, section in sections.items()})


class EvaluateConfig(Section):
    truth: str | None = Field(None, description="truth table; default <data.source>/truth.parquet (synthetic survey)")
    max_objects: int = Field(2_000_000, ge=100, le=10_000_000_000, description="objects evaluated at most: above it, a seeded share of "
                             "the truth table's ids, so memory stays bounded; the metrics are then estimates")


class AgreementConfig(Section):
    """How much the anomaly rankings of different (model, modality, method) systems agree."""

    methods: list[str] = Field(["ensemble", "mismatch", "fused_cauchy"], description="score families compared: "
                               "a detect method (per modality), 'mismatch', or a fused_* column")
    top_pct: float = Field(1.0, gt=0, lt=100, description="top-k percent for Jaccard and disagreement")
    retention_pcts: list[float] = Field([1.0, 10.0], description="retention@k percent levels")
    beyond_pct: float = Field(50.0, gt=0, lt=100, description="a disagreement: top in one system, beyond this in another")
    max_objects: int = Field(2_000_000, ge=100, le=10_000_000_000, description="objects compared at most: above it, a seeded share of "
                             "the ids (the same objects in every table) is read, so memory stays bounded whatever "
                             "the survey's size; the figures are then estimates and the disagreements come from "
                             "that share")


class SimilarityConfig(Section):
    """Nearest-neighbour search on cosine similarity of the embeddings (faiss)."""

    k: int = Field(10, ge=1, le=10_000, description="neighbours returned per query")
    exact_max: int = Field(100_000, ge=1, le=1_000_000_000, description="up to this many objects the index is exact (flat)")
    nprobe: int = Field(32, ge=1, le=65536, description="inverted lists visited per query by a compressed index")
    queries: list[int] = Field([], description="object ids to show; default: the top fused anomalies")
    n_examples: int = Field(3, ge=0, le=1000, description="example queries drawn when none are given")


class ProbesConfig(Section):
    """Decodability of physical parameters from the embeddings."""

    targets: list[str] = Field(["Z", "LOGM", "LOGSFR"], description="catalog columns to predict")
    folds: int = Field(5, ge=2, le=100, description="cross-validation folds")
    bootstraps: int = Field(50, ge=0, le=100_000, description="bootstrap resamples for the PR / PR90 / EPD errors")
    max_objects: int = Field(20_000, ge=50, le=1_000_000_000, description="objects sampled per probe")
    lightgbm: bool = Field(True, description="also fit LightGBM (non-linear decodability and SHAP)")
    shap_max: int = Field(2000, ge=50, le=10_000_000, description="held-out objects explained by SHAP per fold")


class FiguresConfig(Section):
    """Stage-5 figures: UMAP maps, score distributions, outlier galleries."""

    color_by: str = Field("Z", description="catalog column colouring the UMAP maps: a number (Z, LOGM) on a colour "
                          "scale, or a class (SPECTYPE) with one colour per class")
    umap_neighbors: int = Field(15, ge=2, le=10_000)
    umap_min_dist: float = Field(0.1, ge=0)
    umap_max_objects: int = Field(50_000, ge=100, le=100_000_000, description="objects sampled for UMAP")
    mosaic_cells: int = Field(12, ge=2, le=1000, description="thumbnail mosaic: cells per side")
    gallery_size: int = Field(12, ge=1, le=10_000, description="top-ranked objects per outlier gallery")
    gallery_score: str | None = Field(None, description="score column ranking the galleries; default: fmb's "
                                      "default ranking (fused_cauchy, see fmb.detect.scores)")


class AnalyzeConfig(Section):
    agreement: AgreementConfig = AgreementConfig()
    similarity: SimilarityConfig = SimilarityConfig()
    probes: ProbesConfig = ProbesConfig()
    figures: FiguresConfig = FiguresConfig()


class RunConfig(Section):
    """`fmb run`: which stages the pipeline holds."""

    synth: bool = Field(False, description="generate the synthetic survey (the synth section) as the first stage")
    models: list[str] = Field(["pixels", "aion", "astropt", "astroclip"],
                              description="models adapted, embedded and analysed (registered encoders)")
    parallel: int = runtime_only(1, "stages run at once (local executor), each in its own process once the stages it "
                                 "comes after are done, the cores shared out among them; 1: one after another",
                                 ge=1, le=64)

    @field_validator("models")
    @classmethod
    def _registered(cls, models: list[str]) -> list[str]:
        from fmb.plugins import check_names

        check_names("encoder", models, "run.models")
        return models


class SlurmSettings(Section):
    """SLURM job arrays through submitit (`--executor slurm`): one array task per shard."""

    partition: str | None = Field(None, description="partition (-p); default: the cluster's default")
    account: str | None = Field(None, description="account to charge (-A)")
    qos: str | None = Field(None, description="quality of service (--qos)")
    gpus_per_task: int = Field(0, ge=0, le=64, description="GPUs per array task (one shard uses them in turn)")
    cpus_per_task: int = Field(4, ge=1, le=4096, description="CPUs per array task (data-loading workers + 1)")
    mem_gb: float = Field(16, gt=0, le=100_000, description="memory per array task, GB")
    timeout_min: int = Field(240, ge=1, le=525_600, description="wall time per task; a task that runs out is requeued and "
                             "resumes its shard")
    max_requeues: int = Field(3, ge=0, le=1000, description="times a timed-out or preempted task is requeued")
    array_parallelism: int = Field(64, ge=1, le=1_000_000, description="tasks of one array running at once (%N)")
    max_array_size: int | None = Field(None, ge=1, le=10_000_000, description="largest array the cluster accepts; default: "
                                       "MaxArraySize from `scontrol show config`")
    additional: dict[str, str | int] = Field({}, description="extra #SBATCH options, e.g. {constraint: a100}")
    setup: list[str] = Field([], description="shell lines run before each task (module load ..., source "
                             ".venv/bin/activate)")
    poll_s: float = Field(15, gt=0, le=3600, description="seconds between checks of running jobs")


class ExecutorConfig(Section):
    """Where the shards of a stage run. Never part of a stage's key: the outputs are the same."""

    kind: Literal["local", "slurm"] = Field("local", description="local: this machine; slurm: job arrays")
    workers: int = Field(1, ge=1, le=4096, description="local: shards run at once, each in its own process "
                         "(one per GPU on a multi-GPU node)")
    shards: int | None = Field(None, ge=1, le=10_000_000, description="shards per stage; default: local, one per worker; "
                               "slurm, one per work unit")
    merge_memory_gb: float = Field(2.0, gt=0, le=100_000, description="memory the steps that see every object at once (ranks, "
                                   "percentiles, the consensus join) may hold; the rest spills to disk under the run")
    slurm: SlurmSettings = SlurmSettings()


class FmbConfig(Section):
    name: str = Field("default", pattern=r"^[A-Za-z0-9._-]+$", max_length=100,
                      description="run name: outputs go to runs/<name>/ (letters, digits, . _ -; not . or ..; "
                      "at most 100 characters)")
    seed: int = Field(42, ge=0, le=2**63 - 1, description="seed for everything random (numpy seeds are >= 0)")
    data: DataConfig = DataConfig()
    synth: SynthConfig = SynthConfig()
    show: ShowConfig = ShowConfig()
    models: Section | None = None  # built from the encoder registry by `build_schema`
    detect: DetectSettings | None = None  # built from the detector registry by `build_schema`
    evaluate: EvaluateConfig = EvaluateConfig()
    analyze: AnalyzeConfig = AnalyzeConfig()
    run: RunConfig = RunConfig()
    executor: ExecutorConfig = ExecutorConfig()

    @field_validator("name")
    @classmethod
    def _inside_runs(cls, value: str) -> str:
        if value in (".", ".."):
            raise ValueError(f"run name {value!r} would put outputs outside runs/; choose a name")
        return value


def build_schema() -> type[FmbConfig]:
    """The root config class with one section per registered plugin (encoders under ``models``),
    rebuilt when a registry changes so that a model registered at run time gets its section."""
    from fmb.plugins import DETECTOR_SECTIONS, DETECTORS, ENCODER_SECTIONS, ENCODERS

    return _schema(tuple(ENCODERS.items()), tuple(DETECTORS.items()), tuple(ENCODER_SECTIONS.items()),
                   tuple(DETECTOR_SECTIONS.items()))


@cache
def _schema(_encoders: tuple, _detectors: tuple, _encoder_sections: tuple, _detector_sections: tuple) -> type[FmbConfig]:
    from pydantic import create_model

    models = models_config_class()  # encoder sections (models.<name>)
    detect = detect_config_class()  # detector sections (detect.<name>, detect.mismatch)
    return create_model("FmbConfig", __base__=FmbConfig, models=(models, Field(default_factory=models)),
                        detect=(detect, Field(default_factory=detect)))


class ResolvedConfig:
    """A validated `FmbConfig` plus the project root and where each value came from; `remembered`
    is the run's own settings record (`run_settings`) it started from, if the run had one."""

    def __init__(self, values: FmbConfig, root: Path, origins: dict[str, str], remembered: dict | None = None):
        self.values = values
        self.root = root
        self.origins = origins
        self.remembered = remembered

    def __getattr__(self, name: str) -> Any:
        if name == "values":  # not set yet (a copy being unpickled): no recursion through __getattr__
            raise AttributeError(name)
        return getattr(self.values, name)

    def __reduce__(self):
        # the root model class is built at run time from the registries (`build_schema`), so it cannot
        # be pickled by name: a copy (for a worker process, a SLURM task) travels as its JSON values
        # and is validated again on arrival, against the same registries
        return (_rebuilt, (self.values.model_dump(mode="json"), self.root, self.origins))

    def path(self, relative: str | Path) -> Path:
        """A configured path, resolved under the project root."""
        path = Path(relative).expanduser()
        return path if path.is_absolute() else self.root / path

    @property
    def layout(self) -> RunLayout:
        """Every path of this run (runs/<name>/...)."""
        return RunLayout.of(self.root, self.values.name)

    @property
    def run_dir(self) -> Path:
        return self.layout.root

    def section(self, dotted: str) -> Any:
        """The config value at a dotted key ("models.aion", "detect.flow.hidden")."""
        value: Any = self.values
        for part in dotted.split("."):
            value = getattr(value, part)
        return value

    def explain(self) -> list[tuple[str, Any, str]]:
        """(dotted key, value, origin) for every leaf value, in schema order."""
        return [(key, value, self.origins.get(key, "default")) for key, value in _flatten(self.values.model_dump())]

    def run_changes(self) -> list[str]:
        """The keys that change results (`runtime_only` ones aside) whose values differ from those
        the run's stages last ran with, as "key: old -> new (origin)"; empty for a new run."""
        if not self.remembered:
            return []
        before = dict(_flatten(self.remembered.get("results", {})))
        now = dict(_flatten(result_values(self.values)))
        return [f"{key}: {before.get(key)!r} -> {now.get(key)!r} ({self.origins.get(key, 'default')})"
                for key in sorted(set(before) | set(now)) if before.get(key) != now.get(key) and not _own(key)]


def _rebuilt(values: dict, root: Path, origins: dict[str, str]) -> "ResolvedConfig":
    return ResolvedConfig(build_schema().model_validate(values), root, origins)


def run_settings(config: ResolvedConfig) -> dict:
    """What a run remembers of the configuration a stage ran with (`RunLayout.settings`): every
    value, where each came from, and the values that change results."""
    return {"values": config.values.model_dump(mode="json"), "origins": config.origins,
            "results": result_values(config.values)}


#: Keys a run does not carry over to the next command on it: where a command runs, which models one
#: `fmb detect --model M` scored and which object one `fmb data show` drew are that command's own
#: choice. (`fmb data validate --strict` is no key at all: a stricter run of the same stage.)
_NOT_REMEMBERED = ("executor", "name", "detect.models", "show")
_REMEMBERED_ORIGINS = ("task file", "command line", "run ")


def _own(key: str) -> bool:
    """A key that is each command's own choice (`_NOT_REMEMBERED`): it never differs from the run's."""
    return any(key == own or key.startswith(own + ".") for own in _NOT_REMEMBERED)


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
    remember: bool = True,
) -> ResolvedConfig:
    """Merge defaults < project file < the run's own settings < task file < CLI (explicit flags and
    `--set key=value`); `remember=False` leaves the run's settings out."""
    root = find_root(root)
    project: list[tuple[str, dict]] = []
    project_file = root / PROJECT_FILE
    if project_file.is_file():
        project.append((f"project file {project_file.name}", _read_yaml(project_file)))
    if isinstance(task_files, (str, Path)):
        task_files = [Path(task_files)]
    given = [(f"task file {task_file}", _read_yaml(task_file)) for task_file in task_files or []]
    cli_values = {key: value for key, value in (cli or {}).items() if value is not None}
    cli_values.update(parse_sets(sets or []))
    if cli_values:
        given.append(("command line", _unflatten(cli_values)))
    remembered = _remembered(root, _merge(project + given)[0].get("name")) if remember else None
    layers = project + (_remembered_layers(remembered) if remembered else []) + given
    merged, origins = _merge(layers)
    schema = build_schema()
    try:
        values = schema.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, origins, schema)) from None
    return ResolvedConfig(values, root, origins, remembered)


def _merge(layers: list[tuple[str, dict]]) -> tuple[dict, dict[str, str]]:
    """The layers merged in order (later wins), and the origin of every leaf key."""
    merged: dict = {}
    origins: dict[str, str] = {}
    for origin, layer in layers:
        _deep_merge(merged, layer)
        origins.update({key: origin for key, _ in _flatten(layer)})
    return merged, origins


def _remembered(root: Path, name: Any) -> dict | None:
    """The run's settings record, when the run exists and has one (a name that is not a valid run
    name has none: validation says what is wrong with it)."""
    from fmb.io import read_json_object

    name = FmbConfig.model_fields["name"].default if name is None else name
    try:
        FmbConfig.model_validate({"name": name})
    except ValidationError:
        return None
    path = RunLayout.of(root, name).settings
    if not path.is_file():
        return None
    record = read_json_object(path, "delete it to start the run's settings afresh from the command line")
    if not isinstance(record.get("values"), dict) or not isinstance(record.get("origins"), dict):
        raise ConfigError(f"{path} is not a settings record fmb wrote (no values or origins); delete it to start "
                          "the run's settings afresh from the command line")
    return record


def _remembered_layers(record: dict) -> list[tuple[str, dict]]:
    """The keys a run's earlier commands gave (task files, command lines), as config layers, one
    per origin ("run demo: task file configs/tasks/demo.yaml")."""
    by_origin: dict[str, dict] = {}
    for key, value in _flatten(record["values"]):
        origin = str(record["origins"].get(key, ""))
        if origin.startswith(_REMEMBERED_ORIGINS) and not _own(key):
            label = origin if origin.startswith("run ") else f"run {record['values'].get('name')}: {origin}"
            by_origin.setdefault(label, {})[key] = value
    return [(label, _unflatten(keys)) for label, keys in by_origin.items()]


def parse_sets(items: list[str]) -> dict[str, Any]:
    """`--set data.source=hf:x --set synth.n=100` as {dotted key: YAML-parsed value}."""
    parsed = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects KEY=VALUE (e.g. synth.n=500), got {item!r}")
        try:
            parsed[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as exc:  # a broken [list, a tag such as !!python/object
            raise ConfigError(f"--set {key.strip()}: {raw[:80]!r} is not a YAML value ({_one_line(exc)}); quote "
                              "a plain string, close brackets, and use no !!tags") from None
    return parsed


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())[:200]


def _read_yaml(path: Path) -> dict:
    try:
        content = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text (a YAML file is)") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {_one_line(exc)}") from None
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


def _describe(exc: ValidationError, origins: dict[str, str], schema: type[BaseModel]) -> str:
    problems = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"])
        origin = origins.get(key) or next((where for given, where in origins.items() if given.startswith(f"{key}.")),
                                          "defaults")
        problems.append(f"{key}: {_problem(error, schema)} (from {origin})")
    return f"invalid configuration: {'; '.join(problems)}"


def _problem(error: dict, schema: type[BaseModel]) -> str:
    """What is wrong with one value, said for a config file's reader: an unknown key with the keys
    beside it (the closest first), a list given as one word with the list it meant."""
    import difflib

    if error["type"] == "extra_forbidden":
        known = sorted(_fields_at(schema, [str(part) for part in error["loc"][:-1]]))
        close = difflib.get_close_matches(str(error["loc"][-1]), known, n=1)
        return "no such key" + (f"; did you mean {close[0]}?" if close else f"; keys here: {', '.join(known)}")
    if error["type"] == "list_type" and isinstance(error.get("input"), str):
        return f"{error['msg']}: write [{error['input']}]"
    return error["msg"]


def _fields_at(schema: type[BaseModel], path: list[str]) -> set[str]:
    """The keys of the config section at `path` (a dotted key's parts); empty where it is no section."""
    model = schema
    for part in path:
        field = model.model_fields.get(part)
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return set()
        model = annotation
    return set(model.model_fields)
