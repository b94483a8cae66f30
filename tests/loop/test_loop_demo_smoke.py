"""`alignloop loop --demo cheetah --preset smoke`, as documented: a real server, two scripted
annotators judging clips, two rounds; and quiet logs (no library progress bars, MuJoCo's
deprecation warning once). The toy-world smoke demo runs in test_loop_http.py, killed twice."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_the_cheetah_smoke_demo_runs_its_rounds(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "alignloop.cli", "loop", "--demo", "cheetah", "--preset", "smoke"]
    command += ["--run-dir", str(run_dir), "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    state = json.loads((run_dir / "loop.json").read_text())
    assert state["phases"] == {"1": "evaluated", "2": "evaluated"}
    assert state["metrics"]["2"]["judgements"] == 40  # 20 pairs a round, each judged once
    assert (run_dir / "report.md").is_file()
    assert output.count("settotalmass") == 1, output  # said once, not once per env built
    for bar in ("Loading weights", "Writing model shards", "Saving the dataset"):
        assert bar not in output
    assert not (tmp_path / "MUJOCO_LOG.TXT").exists()  # MuJoCo's own handler would write it there
