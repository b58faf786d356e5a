"""A real app server for the tests: `fmb app` (uvicorn) in its own process on a free loopback port,
started, waited for, and stopped or killed like any process."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

STARTUP_S = 90.0
#: `fmb app`, the command a user runs, from this interpreter's environment.
FMB = Path(sys.executable).with_name("fmb")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class LiveServer:
    """`with LiveServer(project) as server:` a server answering on `server.url`."""

    def __init__(self, project: Path):
        self.project = project
        self.port, self.url = 0, ""
        self.process: subprocess.Popen | None = None

    def start(self) -> LiveServer:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen([str(FMB), "app", "--port", str(self.port)], cwd=self.project,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + STARTUP_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited: {self.process.stdout.read().decode()[-3000:]}")
            if self._answers():
                return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the server did not answer within {STARTUP_S:.0f} s")

    def _answers(self) -> bool:
        try:
            return raw_get(self.port, "/api/choices")[0] == 200
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL: no shutdown handler, no flush, nothing runs after it."""
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> LiveServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def raw_get(port: int, path: str) -> tuple[int, bytes]:
    """GET `path` exactly as written (no client normalises dot segments or percent escapes)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.putrequest("GET", path, skip_accept_encoding=True)
        connection.endheaders()
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def post_json(port: int, path: str, body: dict) -> tuple[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        connection.close()


def private_copy(project: Path, destination: Path, app_dir: Path) -> Path:
    """A copy of a scored project without its app directory (`app_dir`): its own labels and cache."""
    shutil.copytree(project, destination, ignore=lambda directory, names: [
        name for name in names if Path(directory, name) == app_dir])
    return destination
