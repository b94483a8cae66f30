"""People's feedback on a navigation task: `alignloop control pbrl` and the loop's control domain
run a tiny round on SafetyPointGoal1-v0, and the loop's clips are rendered from saved states
that carry each episode's own layout."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from alignloop.control.envs import make_env
from alignloop.feedback.schema import Judgement
from alignloop.loop.control import PRESETS, ControlDomain
from alignloop.loop.domain import Judged

ENV = "SafetyPointGoal1-v0"


@pytest.mark.slow
def test_cli_pbrl_runs_a_round_on_a_navigation_task(tmp_path: Path) -> None:
    args = ["pbrl", "--env", ENV, "--feedback", "20", "--queries-per-round", "10", "--total-env-steps", "400"]
    args += ["--segment-length", "20", "--fit-steps", "5", "--output-dir", str(tmp_path / "p")]
    args += ["--ppo.num-steps", "200", "--ppo.minibatch-size", "100", "--ppo.epochs", "1", "--no-progress"]
    result = subprocess.run(
        [sys.executable, "-m", "alignloop.cli", "control", *args],
        env=dict(os.environ, OMP_NUM_THREADS="1"),
        timeout=300,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["queries"] == 20 and report["time/env_steps"] == 400
    assert "train/lambda" in report  # the task's own cost: PPO-Lagrangian on a learned cost


def _judge(run_dir: Path, candidates: list) -> list[Judged]:
    """A scripted annotator: the higher true return is better, the fewer true unsafe steps safer."""
    rows = {}
    for line in (run_dir / "oracle.jsonl").read_text().splitlines():
        row = json.loads(line)
        rows[row["key"]] = row
    judged = []
    for i, c in enumerate(candidates):
        row = rows[c.key]
        ret = sum(row["rewards_a"]), sum(row["rewards_b"])
        cost = sum(row["costs_a"]), sum(row["costs_b"])
        answers = {
            "better": "A" if ret[0] >= ret[1] else "B",
            "safer": "tie" if cost[0] == cost[1] else "AB"[int(cost[1] < cost[0])],
            "is_safe": [{"safe": k == 0, "harms": [], "severity": None} for k in cost],
        }
        judged.append(Judged(i + 1, 1, Judgement(c.item, answers, "1")))
    return judged


@pytest.mark.slow
def test_the_loop_runs_a_round_on_a_navigation_task_with_clips_of_its_layouts(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    domain = ControlDomain(**{**PRESETS["smoke"], "env": ENV, "progress": False})
    assert domain.safe and domain.prompt == f"Which clip does the {ENV} task better?"
    domain.setup(tmp_path)
    rd = tmp_path / "round-001"
    candidates = domain.propose(rd, 1, 4, "uniform")
    base = make_env(ENV).unwrapped
    with np.load(rd / "segments.npz") as seg:
        qpos = seg["qpos"]  # (K, H, nq + 2 * 9): the robot's and the boxes' joints, then the layout
        assert qpos.shape[2] == base.state_size[0] == base.model.nq + 18  # type: ignore[attr-defined]
        layout = qpos[:, :, base.model.nq :]  # type: ignore[attr-defined]
        assert np.all(layout == layout[:, :1])  # a segment keeps its episode's layout
        assert not np.array_equal(layout[0, 0], layout[-1, 0])  # the two sampled episodes differ
    for c in candidates:
        for media in (x.media for x in c.item.candidates):
            assert media is not None and (tmp_path / media).read_bytes()[:4] == b"GIF8"
    learn = domain.learn(rd, 1, _judge(tmp_path, candidates))
    assert learn["reward/train_pairs"] > 0 and learn["cost/train_pairs"] > 0
    assert domain.align(rd, 1)["align/steps"] == 512
    metrics = domain.evaluate(rd, 1)
    assert metrics["episode_length"] == 100  # the smoke preset's episodes
    assert all(math.isfinite(metrics[k]) for k in ("return", "cost", "learned_reward", "learned_cost"))
