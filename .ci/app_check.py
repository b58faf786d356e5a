"""CI's check of the app a user opens after `make demo`: `fmb app --run demo` started as a user
starts it, driven in Debian's Chromium (Playwright): the list draws, one object page draws, a label
given with the keyboard is stored and read back from the server, then undone.

    .venv/bin/python .ci/app_check.py demo
Exits non-zero, saying why, when any step fails."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WAIT_MS = 60_000


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def check(run: str) -> None:
    from playwright.sync_api import sync_playwright

    port = free_port()
    fmb = Path(sys.executable).with_name("fmb")
    app = subprocess.Popen([str(fmb), "app", "--run", run, "--port", str(port)], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    try:
        said = app.stdout.readline()
        print(f"fmb app said: {said.strip()}")
        url = f"http://127.0.0.1:{port}/"
        if url not in said:
            raise SystemExit(f"fmb app did not say its address {url}: {said}{app.stdout.read() if app.poll() else ''}")
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS, timeout=WAIT_MS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(WAIT_MS)
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            # locators and selectors only: the app's CSP forbids the eval that string waits would need
            page.goto(url)  # the app answers once uvicorn is up; goto waits for the first response
            page.wait_for_selector(".card")
            first = page.locator(".card").first.get_attribute("data-id")
            print(f"list: {page.locator('.card').count()} objects on the first page")
            page.click(f".card[data-id='{first}']")
            page.wait_for_selector("#interest-buttons button")
            page.wait_for_load_state("networkidle")  # the object's images and panels drawn
            page.keyboard.press("4")
            page.locator("#status", has_text="saved").wait_for()
            stored = get_json(f"{url}api/object/{first}")["label"]
            if not stored or stored.get("interest") != 4:
                raise SystemExit(f"object {first}: the label given in the page was not stored ({stored})")
            print(f"object {first}: labelled 4 in the page, read back from the server: {stored}")
            page.keyboard.press("u")  # leave the demo run's labels as they were
            page.locator("#status", has_text="undone").wait_for()
            browser.close()
        if errors:
            raise SystemExit(f"the pages raised: {errors}")
    finally:
        app.terminate()
        app.wait(timeout=30)
    print("app check passed")


if __name__ == "__main__":
    check(sys.argv[1] if len(sys.argv) > 1 else "demo")
