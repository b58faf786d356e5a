"""The object view's first screen at 10,000 objects, in Chromium: cold (every panel drawn on request)
against drawn ahead (the app draws the first screen of a list page's objects in the background while
the list is shown: `fmb.app.render.DrawAhead`), measured side by side in one run on one server.

First screen: from the navigation's start (performance.now() = 0) until the page has its object
(the RGB panel, the four bands and the spectrum all loaded and decoded) — what a user waits for
before looking, stricter than the browser's first paint. It is timed in the page: a script installed
before the page's own (Playwright's init script) notes performance.now() when the last of the six
images has loaded and `decode()` has resolved. Also printed, the figure as timed before (the
condition polled by Playwright once `goto` returns): that adds Playwright's wait for the load event
and its round trips to the browser, tens of ms on a loaded machine. Cold: the last object of each of 40 list pages, opened
directly (the draw-ahead the page's own list request starts begins at the page's first object, 47
objects away). Ahead: 40 objects of one list page, opened one after another as soon as the last
one's first screen is in, after that page was shown and its objects drawn. Next: the same on another
list page, with `--pause` seconds on each object (a user looking at it before pressing "n"), in which
the page asks for the next object's images (`prefetchNext` in static/object.js). The similarity index
is built before any is measured (a one-off of the run).

    python benchmarks/app_first_paint.py [--n 10000] [--root DIR] [--objects 40] [--pause 1.0]

The survey and its run (synth, index, adapt, embed and detect with the pixel reference) are built
under --root once and reused. Goal (issue 31): p95 <= 150 ms drawn ahead.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.app.live import LiveServer  # noqa: E402  (the tests' real `fmb app` process)

PAGE = 48  # the list page's size, the object page's default
CHROMIUM = "/usr/bin/chromium"
PROJECT = """\
name: bench
data: {{source: data/synth}}
synth: {{n: {n}, anomaly_rate: 0.05, workers: 2}}
run: {{models: [pixels]}}
detect: {{folds: 2, pca_components: 8, flow: {{hidden: 16, min_steps: 60, max_steps: 60}}}}
models:
  pixels: {{components: 8, image_size: 8, embed: {{num_workers: 0}}, adapt: {{num_workers: 0}}}}
"""
#: Installed before the page's scripts: notes when the first screen's six images are loaded and decoded.
FIRST_SCREEN_TIMER = """(() => {
  const check = () => {
    const images = [...document.querySelectorAll('#panels img'), document.getElementById('spectrum')];
    if (window.__firstScreen !== undefined || images.length < 6
        || !images.every(image => image && image.complete && image.naturalWidth > 0)) return;
    window.__firstScreen = null;
    Promise.all(images.map(image => image.decode())).then(() => {
      window.__firstScreen = performance.now();
      // where the time went: the page's HTML in, the first image asked for, the last image's bytes in
      const own = new Set(images.map(image => image.currentSrc));
      const fetched = performance.getEntriesByType('resource').filter(entry => own.has(entry.name));
      window.__phases = [performance.getEntriesByType('navigation')[0].responseEnd,
                         Math.min(...fetched.map(entry => entry.requestStart)),
                         Math.max(...fetched.map(entry => entry.responseEnd))];
    });
  };
  document.addEventListener('load', check, true);  // every image's load event, seen in the capture phase
})();"""
LOADED = """() => {
  const images = [...document.querySelectorAll('#panels img'), document.getElementById('spectrum')];
  return images.length >= 6 && images.every(image => image.complete && image.naturalWidth > 0)
    ? performance.now() : false;
}"""


def build(project: Path, n: int) -> None:
    from typer.testing import CliRunner

    from fmb.cli import app

    if (project / "runs/bench/scores/pixels.parquet").is_file():
        return
    project.mkdir(parents=True, exist_ok=True)
    (project / "fmb.yaml").write_text(PROJECT.format(n=n))
    cwd = os.getcwd()
    os.chdir(project)
    try:
        for command in (["data", "synth"], ["data", "index"], ["adapt", "pixels"], ["embed", "pixels"], ["detect"]):
            started = time.perf_counter()
            result = CliRunner().invoke(app, command)
            if result.exit_code:
                raise SystemExit(f"fmb {' '.join(command)} failed: {result.output[-2000:]}")
            print(f"fmb {' '.join(command)}: {time.perf_counter() - started:.0f} s", flush=True)
    finally:
        os.chdir(cwd)


def first_screen(page, url: str) -> tuple[float, float, list[float]]:
    """(in the page, as polled by Playwright, the phases): ms from the navigation's start."""
    page.goto(url)
    polled = float(page.wait_for_function(LOADED, timeout=120_000).json_value())
    shown = float(page.wait_for_function("() => window.__firstScreen", timeout=120_000).json_value())
    return shown, polled, page.evaluate("() => window.__phases")


def settle(cache: Path, quiet_s: float = 3.0) -> int:
    """Wait until the draw-ahead thread has stopped adding images to the cache; how many there are."""
    count, since = -1, time.monotonic()
    while time.monotonic() - since < quiet_s:
        now = len(list(cache.glob("*.png")))
        if now != count:
            count, since = now, time.monotonic()
        time.sleep(0.2)
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / "fmb-bench-first-paint")
    parser.add_argument("--objects", type=int, default=40)
    parser.add_argument("--pause", type=float, default=1.0, help="seconds on each object in the 'next' run")
    options = parser.parse_args()
    build(options.root, options.n)
    from playwright.sync_api import sync_playwright

    from fmb.config import load_config
    from fmb.detect.scores import frame_headline, ranked

    config = load_config(root=options.root)
    cache = config.layout.app.cache
    scores = pd.read_parquet(config.layout.scores.table("pixels"))
    ids = [str(i) for i in ranked(scores, frame_headline(scores)).object_id]  # the order the app lists
    shutil.rmtree(cache, ignore_errors=True)  # cold: nothing drawn yet
    with LiveServer(options.root) as server, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.add_init_script(FIRST_SCREEN_TIMER)
        page.goto(f"{server.url}/object/{ids[-1]}")  # the similarity index is built once, before measuring
        page.wait_for_selector(".neighbour img", timeout=600_000)
        settle(cache)

        cold = [first_screen(page, f"{server.url}/object/{ids[PAGE * k + PAGE - 1]}?pos={PAGE * k + PAGE - 1}")
                for k in range(1, options.objects)]
        settle(cache)
        page.goto(f"{server.url}/?page=0")  # the list page: its objects are drawn ahead while it shows
        page.wait_for_selector(".card")
        drawn = settle(cache)
        ahead = [first_screen(page, f"{server.url}/object/{ids[i]}?pos={i}") for i in range(options.objects)]
        page.goto(f"{server.url}/?page=2")  # objects neither run above opened
        page.wait_for_selector(".card")
        settle(cache)
        following = []
        for i in range(2 * PAGE, 2 * PAGE + options.objects):
            following.append(first_screen(page, f"{server.url}/object/{ids[i]}?pos={i}"))
            time.sleep(options.pause)
        browser.close()
    report(cold, ahead, options, drawn)
    report_next(following, options)
    server_side(config, ids[:options.objects])


def server_side(config, ids: list[str]) -> None:
    """The same first screens' requests (the object's page, its RGB, four bands and spectrum) answered by
    the app in this process, one after another, from the cache the browser run left: the server's share."""
    from fastapi.testclient import TestClient

    from fmb.app.server import create_app

    client = TestClient(create_app(config), base_url="http://127.0.0.1")
    contrast = "stretch=asinh&low=1&high=99.5"
    times = []
    for object_id in ids:
        urls = [f"/object/{object_id}", f"/img/{object_id}/rgb.png?{contrast}",
                *[f"/img/{object_id}/band/{band}.png?{contrast}" for band in range(4)],
                f"/img/{object_id}/spectrum.png?frame=rest&smooth=2"]
        started = time.perf_counter()
        for url in urls:
            assert client.get(url).status_code == 200, url
        times.append(1000 * (time.perf_counter() - started))
    print(f"server side, the same {len(ids)} objects' 7 requests one after another (cached): "
          f"p50 {np.percentile(times, 50):.0f} ms, p95 {np.percentile(times, 95):.0f} ms")


def report_next(following: list[tuple], options) -> None:
    shown = [f[0] for f in following]
    polled = [f[1] for f in following]
    print(f"next, {options.pause:g} s on each object, {len(shown)} objects: p50 {np.percentile(shown, 50):.0f}, "
          f"p95 {np.percentile(shown, 95):.0f} [{np.percentile(polled, 50):.0f}, {np.percentile(polled, 95):.0f}]; "
          f"goal p95 <= 150 ms: {'met' if np.percentile(shown, 95) <= 150 else 'NOT met'}")
    print(phases_line(following))


def phases_line(runs: list[tuple]) -> str:
    """Where a first screen's time went (p50 / p95 over the objects): the page's HTML in, its first
    image asked for, its last image's bytes in, and the six images decoded and shown."""
    phases = np.array([[*run[2], run[0]] for run in runs])
    names = ("HTML in", "first image asked", "last image in", "shown")
    return "  phases, ms from the navigation's start (p50 / p95): " + ", ".join(
        f"{name} {np.percentile(column, 50):.0f} / {np.percentile(column, 95):.0f}" for name, column in zip(names, phases.T))


def report(cold: list[tuple], ahead: list[tuple], options, drawn: int) -> None:
    def stats(values):
        return np.percentile(values, 50), np.percentile(values, 95)

    (cold50, cold95), (ahead50, ahead95) = stats([c[0] for c in cold]), stats([a[0] for a in ahead])
    (polled_cold50, polled_cold95), (polled50, polled95) = stats([c[1] for c in cold]), stats([a[1] for a in ahead])
    print(f"objects: {options.n}; first screen (RGB, 4 bands, spectrum loaded and decoded), ms from navigation start, "
          "timed in the page [as polled by Playwright after the load event]")
    print(f"cold (drawn on request), {len(cold)} objects: p50 {cold50:.0f}, p95 {cold95:.0f} "
          f"[{polled_cold50:.0f}, {polled_cold95:.0f}]")
    print(f"drawn ahead, {len(ahead)} objects: p50 {ahead50:.0f}, p95 {ahead95:.0f} [{polled50:.0f}, {polled95:.0f}] "
          f"({drawn} images in the cache after the list page)")
    print(phases_line(ahead))
    print(f"ratio cold / ahead: p50 {cold50 / ahead50:.1f}x, p95 {cold95 / ahead95:.1f}x; "
          f"goal p95 <= 150 ms drawn ahead: {'met' if ahead95 <= 150 else 'NOT met'}")


if __name__ == "__main__":
    main()
