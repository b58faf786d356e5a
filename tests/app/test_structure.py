"""Issue 31's shape of the app package: no module of fmb.app over 400 lines, one function in the code
base that draws a spectrum (the app, the report's galleries and `fmb data show` all call it), and
re-rankers registered in `fmb.plugins` like encoders and detectors."""

import ast
from pathlib import Path

import fmb
from fmb.app.rerankers.base import Reranker
from fmb.plugins import RERANKERS, reranker_class

SOURCE = Path(fmb.__file__).parent
MAX_LINES = 400


def test_no_module_of_the_app_is_over_400_lines():
    sizes = {path.relative_to(SOURCE).as_posix(): len(path.read_text().splitlines())
             for path in (SOURCE / "app").rglob("*.py")}
    assert {name: size for name, size in sizes.items() if size > MAX_LINES} == {}


def test_one_function_draws_spectra():
    """A spectrum is drawn where a function both plots and reads wavelengths: only in fmb.viz.spectrum."""
    drawers = []
    for path in SOURCE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef):
                text = ast.unparse(node)
                if "wavelength" in text and (".plot(" in text or "fill_between(" in text):
                    drawers.append(f"{path.relative_to(SOURCE).as_posix()}:{node.name}")
    assert drawers == ["viz/spectrum.py:draw_spectrum"]


def test_the_rerankers_are_plugins_one_module_each():
    modules = {target.split(":")[0] for target in RERANKERS.values()}
    assert len(modules) == len(RERANKERS) and all(module.startswith("fmb.app.rerankers.") for module in modules)
    assert all(issubclass(reranker_class(name), Reranker) and reranker_class(name).summary for name in RERANKERS)
