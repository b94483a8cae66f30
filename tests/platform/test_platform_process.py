"""A process that starts the platform server (and any child through `tied_popen`) takes it with
it when it dies: SIGKILL the parent and the server ends, instead of holding its port, its
database and a core. Linux only (PR_SET_PDEATHSIG)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")

PARENT = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from alignloop.platform.process import ServerProcess, tied_popen

    work = Path(sys.argv[1])
    server = ServerProcess(f"sqlite:///{work / 'platform.db'}", work)
    server.start()
    sleeper = tied_popen([sys.executable, "-c", "import time; time.sleep(600)"])
    print(server.process.pid, sleeper.pid, flush=True)
    time.sleep(600)
    """
)


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, dead but not yet reaped by its new parent, counts as ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_children_end_when_the_process_that_started_them_is_killed(tmp_path: Path, sig: signal.Signals):
    children: list[int] = []
    with subprocess.Popen(
        [sys.executable, "-c", PARENT, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    ) as parent:
        try:
            line = parent.stdout.readline()  # type: ignore[union-attr]
            assert line, (
                f"the parent printed nothing; server log: {(tmp_path / 'server.log').read_text()[-2000:]}"
            )
            children = [int(pid) for pid in line.split()]
            assert all(alive(pid) for pid in children)
            parent.send_signal(sig)
            parent.wait(timeout=30)
            deadline = time.monotonic() + 30
            while any(alive(pid) for pid in children) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not [pid for pid in children if alive(pid)], "children outlived the killed parent"
        finally:
            parent.kill()
            for pid in children:
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)
