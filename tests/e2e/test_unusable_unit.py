"""A work unit in which no object is usable: its part is written with every column (empty), and
detection and every analysis stage after it run through to the report."""

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fmb.config import load_config
from tests.conftest import run_cli
from tests.e2e.test_run import statuses

SMALL = ["--set", "run.synth=true", "--set", "run.models=[pixels]", "--set", "synth.n=120",
         "--set", "synth.anomaly_rate=0.05", "--set", "synth.workers=1",
         "--set", "detect.folds=2", "--set", "detect.pca_components=8", "--set", "detect.flow.hidden=16",
         "--set", "detect.flow.min_steps=40", "--set", "detect.flow.max_steps=40",
         "--set", "detect.mismatch.min_steps=40", "--set", "detect.mismatch.max_steps=40",
         "--set", "models.pixels.components=8", "--set", "models.pixels.image_size=8",
         "--set", "models.pixels.embed.num_workers=0", "--set", "models.pixels.adapt.num_workers=0",
         "--set", "analyze.probes.folds=2", "--set", "analyze.probes.bootstraps=5",
         "--set", "analyze.figures.umap_neighbors=5", "--set", "analyze.similarity.n_examples=1"]
UNIT = 20  # rows per work unit: the first unit is the first 20 rows of the first file


def invoke(project: Path, *args: str):
    result = run_cli(project, *args, *SMALL, "--set", f"models.pixels.embed.rows_per_shard={UNIT}")
    assert result.exit_code == 0, result.output
    return result


def drop_spectra_of_first_unit(survey: Path) -> None:
    first = sorted(survey.glob("part-*.parquet"))[0]
    table = pq.read_table(first)
    column = table.column("spectrum").combine_chunks()
    blank = pa.array([position < UNIT for position in range(table.num_rows)])
    table = table.set_column(table.schema.get_field_index("spectrum"), "spectrum",
                             pc.if_else(blank, pa.scalar(None, column.type), column))
    pq.write_table(table, first)


def test_an_all_unusable_unit_runs_through_detect_and_analysis(tmp_path: Path):
    (tmp_path / "fmb.yaml").write_text("name: test\ndata:\n  source: data/synth\nsynth:\n  out: data/synth\n")
    invoke(tmp_path, "data", "synth")
    drop_spectra_of_first_unit(tmp_path / "data" / "synth")

    ran = statuses(invoke(tmp_path, "run", "--set", "run.synth=false").output)

    assert {"embed:pixels", "detect", "evaluate", "agreement", "probes", "similarity", "figures", "report"} <= {
        stage for stage, status in ran.items() if status == "ran"}
    layout = load_config(root=tmp_path).layout
    empty = pq.read_table(layout.embeddings("pixels").part(0))
    assert empty.num_rows == 0
    assert set(empty.column_names) == set(pq.read_table(layout.embeddings("pixels").part(1)).column_names) >= {
        "object_id", "image", "spectrum", "joint", "image_residual", "spectrum_residual"}
    scores = pq.read_table(layout.scores.table("pixels")).to_pandas()
    assert len(scores) == 120 - UNIT
    assert layout.report.is_file()
