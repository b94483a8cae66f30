"""The one --resume rule, run.json, and the check of what a resumed run may change."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from alignloop.runstack.checkpoint import CheckpointError
from alignloop.runstack.layout import RunLayout
from alignloop.runstack.run import ResumeError, Run, check_schedule


@dataclass(frozen=True)
class Inner:
    hidden: tuple[int, ...] = (64, 64)
    lr: float = 1e-3


@dataclass(frozen=True)
class Config:
    env: str = "Hopper-v5"
    output_dir: Path = Path("runs/x")
    seed: int = 0
    resume: bool = False
    inner: Inner = field(default_factory=Inner)


MUST_MATCH = ("env", "inner.hidden")


def start(tmp_path: Path, cfg: Config) -> Run:
    return Run.start(tmp_path, command="test", config=cfg, resume=cfg.resume, must_match=MUST_MATCH)


def test_a_fresh_run_writes_its_config_and_a_resume_needs_a_checkpoint(tmp_path: Path):
    run = start(tmp_path, Config())
    record = json.loads(RunLayout(tmp_path).config.read_text())
    assert record["command"] == "test"
    assert record["config"] == {"env": "Hopper-v5", "output_dir": "runs/x", "seed": 0, "resume": False,
                                "inner": {"hidden": [64, 64], "lr": 1e-3}}  # fmt: skip
    assert run.restore({"model": torch.nn.Linear(1, 1)}) == (0, {})
    with pytest.raises(
        CheckpointError,
        match=rf"--resume: {tmp_path}: it holds no checkpoint; start the run without --resume",
    ):
        start(tmp_path, Config(resume=True))


def test_resume_refuses_another_model_and_notes_other_changes(tmp_path: Path, capsys):
    run = start(tmp_path, Config())
    run.checkpointer.save(1, {"model": torch.nn.Linear(1, 1)})
    with pytest.raises(ResumeError) as refused:
        start(tmp_path, Config(env="Walker2d-v5", resume=True, inner=Inner(hidden=(32,))))
    message = str(refused.value)
    assert "--env 'Hopper-v5' -> 'Walker2d-v5'" in message and "--inner.hidden [64, 64] -> [32]" in message
    resumed = start(tmp_path, Config(seed=3, resume=True, inner=Inner(lr=2e-3)))
    assert "--inner.lr 0.001 -> 0.002; --seed 0 -> 3" in capsys.readouterr().err
    assert resumed.restore({"model": torch.nn.Linear(1, 1)})[0] == 1


def test_a_fresh_run_removes_an_earlier_runs_checkpoints(tmp_path: Path, capsys):
    run = start(tmp_path, Config())
    for step in (4, 8):
        run.checkpointer.save(step, {"model": torch.nn.Linear(1, 1)})
    start(tmp_path, Config())
    assert RunLayout(tmp_path).checkpoint_dirs() == []
    assert "removed 2 checkpoint(s) of an earlier run" in capsys.readouterr().err


def test_the_schedule_length_is_kept_unless_total_steps_says(tmp_path: Path, capsys):
    check_schedule(tmp_path, 8, 8, explicit=False, constant=False)
    check_schedule(tmp_path, 8, 16, explicit=False, constant=True)  # nothing to keep
    with pytest.raises(
        ResumeError, match="pass --total-steps 8 to keep the run's schedule .* --total-steps 16"
    ):
        check_schedule(tmp_path, 8, 16, explicit=False, constant=False)
    check_schedule(tmp_path, 8, 16, explicit=True, constant=False)
    assert "stretched from 8 to 16 steps" in capsys.readouterr().err
    with pytest.raises(ResumeError, match="decays over 8 steps .* resume with the run's length"):
        check_schedule(tmp_path, 8, 16, explicit=False, constant=False, length_option=None)  # control


def test_a_refused_resume_leaves_run_json_as_it_was(tmp_path: Path):
    """run.json is the run's record: a resume writes it only once the checkpoint is in, so a
    resume refused on the way (a checkpoint that does not load, another schedule length) does not
    leave its options there for the next --resume to be checked against."""
    run = start(tmp_path, Config())
    run.checkpointer.save(2, {"model": torch.nn.Linear(1, 1)}, extra={"schedule_steps": 8})
    original = RunLayout(tmp_path).config.read_text()
    tried = start(tmp_path, Config(seed=5, resume=True))
    assert RunLayout(tmp_path).config.read_text() == original  # nothing written before the restore
    with pytest.raises(CheckpointError):
        tried.restore({"model": torch.nn.Linear(3, 3)})  # the shapes do not fit
    assert RunLayout(tmp_path).config.read_text() == original
    tried = start(tmp_path, Config(seed=5, resume=True))
    with pytest.raises(ResumeError, match="pass --total-steps 8"):
        tried.restore_checked(
            {"model": torch.nn.Linear(1, 1)}, schedule_steps=16, explicit=False, constant=False
        )
    assert RunLayout(tmp_path).config.read_text() == original
    resumed = start(tmp_path, Config(seed=5, resume=True))
    step, _ = resumed.restore_checked(
        {"model": torch.nn.Linear(1, 1)}, schedule_steps=8, explicit=False, constant=False
    )
    assert step == 2 and json.loads(RunLayout(tmp_path).config.read_text())["config"]["seed"] == 5
