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
