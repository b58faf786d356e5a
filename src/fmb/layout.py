"""Every path of a run directory, and of a survey directory, in one place.

    runs/<name>/
      data/          index.parquet, index.json, rejects.parquet, validation.json
      figures/       object_<id>.png                       (`fmb data show`)
      models/<m>/    best.pt, checkpoint.pt, history.json, history.png
      embeddings/<m>/ part-NNNNN.parquet, manifest.json
      scores/        <m>.parquet, <m>/detectors.pt, summary.json
      analysis/      evaluation/ agreement/ probes/ similarity/ figures/
      searches/      one-off similarity searches
      cache/         umap/
      run/           state.json (the stage engine), settings.json (the configuration it last ran with),
                     staging/<stage>/ (a stage's outputs until it finishes)
      report.html

No other module spells one of these names: they ask a `RunLayout` (``config.layout``). A survey
directory (what `fmb data synth` writes and a Parquet source reads) has a `SurveyLayout`.
This module imports nothing of fmb, so every layer may use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

RUNS_DIR = "runs"
LOCK_FILE = "fmb.lock.json"  # beside fmb.yaml: the hub commits and file hashes `fmb setup download` fetched
OWNER_MARKER = ".fmb-made"  # in every directory fmb makes outside runs/<name>/ (a synthetic survey)


def owner_marker(directory: Path) -> Path:
    """The file that says fmb made `directory` and may delete it and everything in it."""
    return directory / OWNER_MARKER


def made_by_fmb(path: Path, run_root: Path) -> bool:
    """Whether fmb may delete `path`: it lies under the run directory, or is a directory fmb marked."""
    resolved, run = path.resolve(), run_root.resolve()
    inside_run = resolved.is_relative_to(run) and resolved != run
    return inside_run or (path.is_dir() and owner_marker(path).is_file())


@dataclass(frozen=True)
class _Directory:
    dir: Path

    def _file(self, name: str) -> Path:
        return self.dir / name


class DataFiles(_Directory):
    """runs/<name>/data: what the data stage writes."""

    @property
    def index(self) -> Path:
        return self._file("index.parquet")

    @property
    def index_meta(self) -> Path:
        return self._file("index.json")

    @property
    def rejects(self) -> Path:
        return self._file("rejects.parquet")

    @property
    def validation(self) -> Path:
        return self._file("validation.json")


class ModelFiles(_Directory):
    """runs/<name>/models/<model>: adapted weights, the resumable checkpoint and the history."""

    @property
    def best(self) -> Path:
        return self._file("best.pt")

    @property
    def checkpoint(self) -> Path:
        return self._file("checkpoint.pt")

    @property
    def history(self) -> Path:
        return self._file("history.json")

    @property
    def history_plot(self) -> Path:
        return self._file("history.png")


class EmbeddingFiles(_Directory):
    """runs/<name>/embeddings/<model>: Parquet parts, a small record beside each, what made them
    (signature.json), and the manifest merging the records once every part is there."""

    @property
    def manifest(self) -> Path:
        return self._file("manifest.json")

    @property
    def signature(self) -> Path:
        return self._file("signature.json")

    def part(self, unit_id: int) -> Path:
        return self._file(f"part-{unit_id:05d}.parquet")

    def unit_record(self, unit_id: int) -> Path:
        return self._file(f"part-{unit_id:05d}.json")

    def unit_records(self) -> list[Path]:
        return sorted(self.dir.glob("part-*.json"))

    def parts(self) -> list[Path]:
        return sorted(self.dir.glob("part-*.parquet"))


class ScoreFiles(_Directory):
    """runs/<name>/scores: one score table per model and the detectors that made it."""

    def table(self, model: str) -> Path:
        return self._file(f"{model}.parquet")

    def detectors(self, model: str) -> Path:
        return self.dir / model / "detectors.pt"

    def fit_record(self, model: str) -> Path:
        """What fitting the detectors took: objects, the fit sample, seconds per method."""
        return self.dir / model / "fit.json"

    def merge_record(self, model: str) -> Path:
        """What the merge of the model's table counted (objects, common set, seconds): summary.json's entry."""
        return self.dir / model / "merge.json"

    def part(self, model: str, unit: int) -> Path:
        """The scores of one embedding part (a shard's output), before the merge into `table`."""
        return self.dir / model / "parts" / f"part-{unit:05d}.parquet"

    def part_record(self, model: str, unit: int) -> Path:
        """Written after its part: row count and seconds; a part without it is redone."""
        return self.dir / model / "parts" / f"part-{unit:05d}.json"

    @property
    def summary(self) -> Path:
        return self._file("summary.json")

    @property
    def spill(self) -> Path:
        """Where the out-of-core merge spills what does not fit in memory; removed after each merge."""
        return self.dir / "spill"

    def merge_files(self, model: str) -> "MergeFiles":
        return MergeFiles(self.spill / model)

    @property
    def consensus(self) -> Path:
        """The cross-model consensus ranking (one row per object of any embedded model)."""
        return self._file("consensus.parquet")


class MergeFiles(_Directory):
    """scores/spill/<model>: the merge's temporary files, removed when it ends."""

    def ranks(self, position: int) -> Path:
        """The ranks of the model's `position`-th score column, in the parts' row order."""
        return self._file(f"rank-{position}.parquet")

    @property
    def fused_geo(self) -> Path:
        return self._file("fused_geo.parquet")

    @property
    def fused_geo_ranks(self) -> Path:
        return self._file("rank-fused_geo.parquet")


class EvaluationFiles(_Directory):
    @property
    def metrics(self) -> Path:
        return self._file("metrics.csv")

    @property
    def trivial(self) -> Path:
        """Per-object trivial scores (spectrum median S/N, total flux) that every score is set beside."""
        return self._file("trivial_scores.parquet")

    @property
    def summary(self) -> Path:
        return self._file("summary.md")

    @property
    def heatmap(self) -> Path:
        return self._file("ap_by_class.png")


class AgreementFiles(_Directory):
    MATRICES = ("spearman", "jaccard")  # each a CSV table and a clustered heatmap

    @property
    def summary(self) -> Path:
        return self._file("summary.json")

    def matrix(self, name: str) -> Path:
        return self._file(f"{name}.csv")

    def figure(self, name: str) -> Path:
        """spearman, jaccard, retention or displacement."""
        return self._file(f"{name}.png")

    @property
    def disagreement(self) -> Path:
        return self._file("disagreement.csv")


class ProbeFiles(_Directory):
    @property
    def results(self) -> Path:
        return self._file("results.csv")

    @property
    def predictions(self) -> Path:
        return self._file("predictions.parquet")

    @property
    def importances(self) -> Path:
        return self._file("importances.parquet")

    @property
    def summary(self) -> Path:
        return self._file("summary.md")

    @property
    def r2_plot(self) -> Path:
        return self._file("r2.png")

    @property
    def pareto_plot(self) -> Path:
        return self._file("pareto.png")

    def scatter_plot(self, target: str) -> Path:
        return self._file(f"scatter_{target}.png")

    def scatter_plots(self) -> list[Path]:
        return sorted(self.dir.glob("scatter_*.png"))


class SimilarityFiles(_Directory):
    def index_dir(self, model: str, modality: str) -> Path:
        """A persisted faiss index: index.faiss, ids.npy, meta.json."""
        return self.dir / "index" / model / modality

    @staticmethod
    def index_files(directory: Path) -> tuple[Path, Path, Path]:
        return directory / "index.faiss", directory / "ids.npy", directory / "meta.json"

    @property
    def neighbours(self) -> Path:
        return self._file("neighbours.csv")

    @property
    def examples_dir(self) -> Path:
        return self.dir / "figures"

    def example(self, model: str, modality: str, query: int | str) -> Path:
        return self.examples_dir / f"{model}_{modality}_{query}.png"

    def examples(self) -> list[Path]:
        return sorted(self.examples_dir.glob("*.png"))

    @property
    def neighbour_ranks(self) -> Path:
        return self._file("neighbour_ranks.csv")

    @property
    def neighbour_ranks_summary(self) -> Path:
        return self._file("neighbour_ranks_summary.csv")

    @property
    def neighbour_ranks_plot(self) -> Path:
        return self._file("neighbour_ranks.png")


class FigureFiles(_Directory):
    @property
    def scores(self) -> Path:
        return self._file("scores.png")

    @property
    def umap(self) -> Path:
        return self._file("umap.png")

    def gallery(self, model: str) -> Path:
        return self._file(f"gallery_{model}.png")

    def galleries(self) -> list[Path]:
        return sorted(self.dir.glob("gallery_*.png"))


class AppFiles(_Directory):
    """runs/<name>/app: the discovery app's label log, its cache of drawn images and plots, the
    re-ranked lists (the app's and `fmb rerank`'s) and the nearest-neighbour graphs they learn on."""

    @property
    def labels_db(self) -> Path:
        """The append-only label event log (SQLite, WAL: a -wal and -shm file beside it)."""
        return self._file("labels.sqlite")

    @property
    def cache(self) -> Path:
        return self.dir / "cache"

    def reranked(self, name: str) -> Path:
        return self.dir / "rerank" / f"{name}.parquet"

    def graph(self, key: str) -> Path:
        """A re-ranker's k-nearest-neighbour graph, by the key of what it was built from."""
        return self.dir / "graphs" / f"knn-{key}.npz"

    def samp_table(self, run: str) -> Path:
        """The table the app last sent over SAMP (a SAMP client loads a table from a URL: a file here)."""
        return self.dir / "samp" / f"{run}-candidates.vot"


def lock_file(project_root: Path) -> Path:
    """The project's lock of hub revisions and file hashes (`fmb setup download` writes it, `fmb setup
    check` verifies the cache against it)."""
    return project_root / LOCK_FILE


def crash_logs(project_root: Path) -> Path:
    """Where the full traceback of an unexpected failure goes (a dot name: never a run's name)."""
    return project_root / RUNS_DIR / ".crash-logs"


@dataclass(frozen=True)
class RunLayout:
    """runs/<name>/ and everything under it (nothing is created until a stage writes)."""

    root: Path

    @classmethod
    def of(cls, project_root: Path, name: str) -> "RunLayout":
        return cls(project_root / RUNS_DIR / name)

    # -- stage 0 ----------------------------------------------------------------------------------
    @property
    def data(self) -> DataFiles:
        return DataFiles(self.root / "data")

    def object_figure(self, object_id: int) -> Path:
        return self.root / "figures" / f"object_{object_id}.png"

    # -- stages 1-3 -------------------------------------------------------------------------------
    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    def model(self, model: str) -> ModelFiles:
        return ModelFiles(self.models_dir / model)

    @property
    def embeddings_dir(self) -> Path:
        return self.root / "embeddings"

    def embeddings(self, model: str) -> EmbeddingFiles:
        return EmbeddingFiles(self.embeddings_dir / model)

    @property
    def scores(self) -> ScoreFiles:
        return ScoreFiles(self.root / "scores")

    # -- stages 4-5 -------------------------------------------------------------------------------
    @property
    def analysis_dir(self) -> Path:
        return self.root / "analysis"

    @property
    def evaluation(self) -> EvaluationFiles:
        return EvaluationFiles(self.analysis_dir / "evaluation")

    @property
    def agreement(self) -> AgreementFiles:
        return AgreementFiles(self.analysis_dir / "agreement")

    @property
    def probes(self) -> ProbeFiles:
        return ProbeFiles(self.analysis_dir / "probes")

    @property
    def similarity(self) -> SimilarityFiles:
        return SimilarityFiles(self.analysis_dir / "similarity")

    @property
    def figures(self) -> FigureFiles:
        return FigureFiles(self.analysis_dir / "figures")

    @property
    def searches(self) -> SimilarityFiles:
        """One-off searches (`fmb analyze similarity --vector/--model/--modality`): not a stage's output."""
        return SimilarityFiles(self.root / "searches")

    def cache(self, name: str) -> Path:
        return self.root / "cache" / name

    def shards(self, stage: str) -> ShardFiles:
        """Per-shard records of a stage run through an executor (`fmb.run.executors`)."""
        return ShardFiles(self.shards_dir / stage.replace(":", "-"))

    @property
    def shards_dir(self) -> Path:
        return self.root / "shards"

    @property
    def app(self) -> AppFiles:
        """The discovery app (`fmb app`, `fmb rerank`)."""
        return AppFiles(self.root / "app")

    @property
    def report(self) -> Path:
        return self.root / "report.html"

    @property
    def state(self) -> Path:
        return self.root / "run" / "state.json"

    def staging(self, stage: str) -> "StagingFiles":
        """Where a stage writes its outputs before they replace the old ones (`fmb.run.staging`)."""
        return StagingFiles(self.root / "run" / "staging" / stage.replace(":", "-"))

    @property
    def settings(self) -> Path:
        """The resolved configuration the run's stages last ran with (values and where each came
        from): every later command on the run starts from it."""
        return self.root / "run" / "settings.json"


class StagingFiles(_Directory):
    """runs/<name>/run/staging/<stage>: the staging copies of a stage's outputs inside the run (by
    their path under the run), the key they are made for, and the names beside an output outside
    the run (a survey directory) of its staging copy and of the old output being replaced."""

    @property
    def key(self) -> Path:
        return self._file("key.json")

    def copy(self, relative: Path) -> Path:
        return self.dir / "out" / relative

    @staticmethod
    def beside(output: Path) -> Path:
        return output.parent / f".fmb-staging-{output.name}"

    @staticmethod
    def replaced(output: Path) -> Path:
        return output.parent / f".fmb-replaced-{output.name}"


class ShardFiles(_Directory):
    """runs/<name>/shards/<stage>: one status record per shard, and the executor's job files and
    logs (submitit's folder: <job>_<task>_log.out/.err)."""

    def status(self, shard: int) -> Path:
        return self._file(f"shard-{shard:05d}.json")

    def statuses(self) -> list[Path]:
        return sorted(self.dir.glob("shard-*.json"))

    @property
    def plan(self) -> Path:
        """The last plan submitted: its key, shard count and executor."""
        return self._file("plan.json")

    @property
    def job_logs(self) -> Path:
        """submitit's folder per job (it fills in %j): submission, logs and results of each task."""
        return self.dir / "jobs" / "%j"


@dataclass(frozen=True)
class SurveyLayout:
    """A survey directory: Parquet parts beside its catalog, truth table and generator summary."""

    dir: Path

    @property
    def catalog(self) -> Path:
        return self.dir / "catalog.parquet"

    @property
    def truth(self) -> Path:
        return self.dir / "truth.parquet"

    @property
    def summary(self) -> Path:
        return self.dir / "synth.json"

    def part(self, number: int) -> Path:
        return self.dir / f"part-{number:05d}.parquet"
