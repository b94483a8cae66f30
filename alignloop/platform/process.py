"""`alignloop serve` as a child process on a free loopback port: for the loop's demos and tests.

server = ServerProcess("sqlite:///run/platform.db", Path("run"), args=["--create-admin", "admin", ...])
server.start()          # returns once the login page answers
...                     # talk to server.url
server.stop()           # SIGTERM (SIGKILL after a grace period); server.kill() is SIGKILL at once

Children started here (`tied_popen`: the server, and the loop demo's scripted annotators) are
tied to their parent on Linux: the kernel sends them SIGTERM when the process that started
them dies, however it dies (SIGKILL, SIGTERM, a crash), so a killed loop leaves no server or
annotator running behind it. Elsewhere they are stopped only by `stop`.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from alignloop.platform.pgcluster import free_port

_PR_SET_PDEATHSIG = 1
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None


def _tie_to(parent: int) -> None:
    """In the child, between fork and exec: SIGTERM when `parent` dies (and at once if it
    already has, the race between the fork and this call)."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:
            os._exit(1)


def tied_popen(command: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """`subprocess.Popen` of a child that ends when this process does (Linux; see the module
    docstring). Call it from the thread that lives as long as the child should: the kernel ties
    the child to the thread that started it."""
    parent = os.getpid()
    return subprocess.Popen(command, preexec_fn=lambda: _tie_to(parent), **kwargs)


class ServerProcess:
    def __init__(self, db_url: str, workdir: Path, *, workers: int = 1, args: Sequence[str] = ()):
        self.db_url, self.workdir, self.workers, self.args = db_url, Path(workdir), workers, list(args)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = self.workdir / "server.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> None:
        """Start the server (again, on the same port and database) and wait until it answers."""
        command = [
            sys.executable, "-m", "alignloop.cli", "serve",
            "--db", self.db_url, "--port", str(self.port), "--workers", str(self.workers),
            "--media-dir", str((self.workdir / "media").resolve()), "--log-level", "warning",
            *self.args,
        ]  # fmt: skip
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log:
            self.process = tied_popen(
                command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"}
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the platform server exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/login", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"the platform server did not start within {timeout:.0f} s; see {self.log}")

    def kill(self) -> None:
        """SIGKILL: no shutdown, no flushing, whatever was in flight is lost."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited within `grace` seconds."""
        stop_process(self.process, grace)


def stop_process(process: subprocess.Popen[bytes] | None, grace: float = 10.0) -> None:
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
