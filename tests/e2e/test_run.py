"""`fmb run` end to end, on the session's shared pipeline run (tests/conftest.py: a synthetic survey
with the pixel reference and a tiny AstroCLIP, made by `fmb run` from a task file): every stage ran
once and wrote the report; an unchanged rerun skips them all, and a changed detection setting reruns
detection and only the stages downstream of it."""

from pathlib import Path

from fmb.config import load_config
from tests.conftest import run_cli

DOWNSTREAM_OF_DETECT = {"detect", "evaluate", "agreement", "similarity", "figures", "report"}


def statuses(output: str) -> dict[str, str]:
    """stage -> status from the log lines '[stage] running' / '[stage] unchanged, skipped'."""
    found = {}
    for line in output.splitlines():
        if line.startswith("[") and "]" in line:
            stage, rest = line[1:].split("]", 1)
            found[stage] = "ran" if rest.strip() == "running" else rest.strip()
    return found


def invoke(project: Path, *extra: str) -> dict[str, str]:
    result = run_cli(project, "run", "--run", "pipeline", *extra)
    assert result.exit_code == 0, result.output
    return statuses(result.output)


def test_every_stage_ran_once_and_wrote_a_self_contained_report(pipeline: Path):
    layout = load_config(cli={"name": "pipeline"}, root=pipeline).layout
    state = __import__("json").loads(layout.state.read_text())
    assert {"synth", "index", "adapt:pixels", "embed:astroclip", "probes", *DOWNSTREAM_OF_DETECT} <= set(state)
    assert {entry["status"] for entry in state.values() if "status" in entry} == {"done"}
    page = layout.report.read_text()
    for section in ("Data", "Models and embeddings", "Detection quality", "Top anomalies", "Agreement between systems",
                    "Physical-parameter probes", "Similarity search", "Embedding maps", "Timings"):
        assert f">{section}</h2>" in page
    assert "src='http" not in page and 'src="http' not in page  # self-contained: figures are inlined
    assert "href='https://sky.esa.int" in page  # what leaves the page: links to the sky at the top anomalies
    assert page.count("data:image/png;base64,") + page.count("data:image/jpeg;base64,") >= 8


def test_rerun_skips_everything_and_one_changed_setting_reruns_only_downstream(pipeline_copy: Path):
    assert set(invoke(pipeline_copy).values()) == {"unchanged, skipped"}
    changed = invoke(pipeline_copy, "--set", "detect.flow.hidden=24")
    assert {stage for stage, status in changed.items() if status == "ran"} == DOWNSTREAM_OF_DETECT


def test_stages_run_at_once_with_the_same_outputs_and_records(pipeline: Path, pipeline_copy: Path):
    """run.parallel=2: with the analysis stages' outputs removed, those stages run two at a time in
    worker processes (their windows overlap), each recorded as done under the key it had, they
    write what the run in order wrote, and the report, which reads them, starts only after them
    (it reruns where a figure's bytes differ from the run in order's, else it is unchanged)."""
    import json
    import shutil

    import pandas as pd

    layouts = [load_config(cli={"name": "pipeline"}, root=root).layout for root in (pipeline, pipeline_copy)]
    analysis = {"evaluate": "evaluation", "agreement": "agreement", "similarity": "similarity", "figures": "figures"}
    for directory in analysis.values():
        shutil.rmtree(getattr(layouts[1], directory).dir)
    ran = invoke(pipeline_copy, "--set", "run.parallel=2")
    assert set(analysis) <= {stage for stage, status in ran.items() if status == "ran"} <= {*analysis, "report"}
    before, after = (json.loads(layout.state.read_text()) for layout in layouts)
    windows = {stage: (after[stage]["finished"] - after[stage]["seconds"], after[stage]["finished"]) for stage in analysis}
    assert all(after[stage]["status"] == "done" and after[stage]["key"] == before[stage]["key"] for stage in analysis)
    assert any(a[0] < b[1] and b[0] < a[1] for s, a in windows.items() for t, b in windows.items() if s < t), windows
    if ran.get("report") == "ran":
        assert after["report"]["finished"] - after["report"]["seconds"] >= max(end for _, end in windows.values())
    pd.testing.assert_frame_equal(*(pd.read_csv(layout.evaluation.metrics) for layout in layouts))
