"""One module knows the run layout: no other module (the report and these tests included) spells a
run-directory path. Checked on the syntax tree of every source and test file."""

import ast
from pathlib import Path

from fmb.layout import RunLayout, SurveyLayout

ROOT = Path(__file__).resolve().parents[2]
#: Paths that are not run or survey paths: the layout of a model repository and of the dataset cache
#: on the hub, of a `datasets.save_to_disk` folder, package data, a user's directory of DESI cutouts (<TARGETID>.fits), and a cache's names
#: for its own entries inside the directory the layout gives it.
NOT_RUN_PATHS = {"src/fmb/models/aion.py", "src/fmb/data/sources/hf.py", "src/fmb/data/synth/library.py", "src/fmb/data/sources/desi.py", "src/fmb/viz/umap_map.py",
                  "src/fmb/data/sources/arrow.py",
                  "src/fmb/app/export.py"}  # `fmb export --objects`: one FITS file per object in the user's directory


def _names_of_the_layout() -> set[str]:
    """Every directory and file name the layout gives (a run's and a survey's), as path parts."""
    run = RunLayout(Path("R"))
    paths = [run.data.index, run.data.index_meta, run.data.rejects, run.data.validation, run.object_figure(1),
             run.model("m").best, run.model("m").checkpoint, run.model("m").history, run.model("m").history_plot,
             run.embeddings("m").manifest, run.embeddings("m").part(0), run.scores.table("m"), run.scores.detectors("m"),
             run.scores.summary, run.evaluation.metrics, run.evaluation.summary, run.evaluation.heatmap,
             run.agreement.summary, run.agreement.disagreement, run.probes.results, run.probes.predictions,
             run.similarity.neighbours, run.similarity.neighbour_ranks, run.figures.umap, run.figures.scores,
             run.cache("umap"), run.report, run.state, run.searches.neighbours,
             *SimilarityFilesOf(run), SurveyLayout(Path("S")).truth, SurveyLayout(Path("S")).catalog,
             SurveyLayout(Path("S")).summary, RunLayout.of(Path("P"), "n").root]
    return {part for path in paths for part in path.parts if part not in ("R", "S", "P", "m", "n")}


def SimilarityFilesOf(run: RunLayout):
    return run.similarity.index_files(run.similarity.index_dir("m", "image"))


def _string(node) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value for v in node.values if isinstance(v, ast.Constant))
    return None


def _path_joins(path: Path) -> list[tuple[int, str, str]]:
    """(line, literal, the other operand's source) of every `x / "literal"` or `"literal" / x` in a file."""
    source = path.read_text()
    found = []
    for node in ast.walk(ast.parse(source, str(path))):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            for side, other in ((node.left, node.right), (node.right, node.left)):
                text = _string(side)
                if text is not None:
                    found.append((node.lineno, text, ast.get_source_segment(source, other) or ""))
    return found


def test_no_source_module_but_the_layout_joins_a_path_from_a_literal():
    offenders = []
    for path in sorted((ROOT / "src/fmb").rglob("*.py")):
        relative = str(path.relative_to(ROOT))
        if relative == "src/fmb/layout.py" or relative in NOT_RUN_PATHS:
            continue
        offenders += [f"{relative}:{line}: / {text!r}" for line, text, _ in _path_joins(path)]
    assert offenders == []


#: Names the tests' own fixtures use for their inputs too (a survey in tmp/"data", an "image" array):
#: a join with one of these is a run path only when it is made on a run directory.
FIXTURE_NAMES = {"data", "image", "index", "models", "run", "figures", "umap", "cache"}


def test_no_test_spells_a_run_directory_path():
    names = _names_of_the_layout() - FIXTURE_NAMES
    offenders = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        if path.name == "test_layout.py":
            continue
        for line, text, other in _path_joins(path):
            parts = set(Path(text).parts) | {text.rsplit("_", 1)[0]}
            if parts & names or "run_dir" in other or "layout.root" in other:
                offenders.append(f"{path.relative_to(ROOT)}:{line}: / {text!r}")
        if "runs/" in path.read_text():
            offenders.append(f"{path.relative_to(ROOT)}: 'runs/'")
    assert offenders == []


def test_the_layout_is_the_one_described_in_its_module_doc():
    run = RunLayout.of(Path("/project"), "demo")
    assert run.root == Path("/project/runs/demo")
    assert run.data.index.parent == run.data.dir and run.data.index.suffix == ".parquet"
    assert run.scores.detectors("aion").parent.parent == run.scores.dir
    assert {run.evaluation.dir.parent, run.agreement.dir.parent, run.probes.dir.parent, run.similarity.dir.parent,
            run.figures.dir.parent} == {run.analysis_dir}
    assert run.embeddings("pixels").part(3).name == "part-00003.parquet"
