"""Checkpoints: a round trip restores everything; a damaged newest checkpoint is named and the
newest intact one is used; a crafted state.pt is refused without running its code."""

from __future__ import annotations

import json
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from alignloop.runstack.checkpoint import Checkpointer, CheckpointError, NumpyState
from alignloop.runstack.distributed import DistributedContext
from alignloop.runstack.layout import MANIFEST, META, STATE, RunLayout
from alignloop.runstack.optim import make_optimizer, make_scheduler


class Normaliser:
    """Holds numpy arrays in its state, as control's observation normaliser does."""

    def __init__(self) -> None:
        self.mean = np.zeros(3)

    def state_dict(self) -> dict[str, np.ndarray]:
        return {"mean": self.mean}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        assert isinstance(state["mean"], np.ndarray)
        self.mean = state["mean"]


def build() -> tuple[torch.nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    optimizer = make_optimizer(model, lr=0.1)
    return model, optimizer, make_scheduler(optimizer, "cosine", 1, 10)


def take_steps(model, optimizer, scheduler, n: int) -> None:
    for _ in range(n):
        model(torch.randn(4, 3)).square().mean().backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()


def save_three(tmp_path: Path) -> Checkpointer:
    """Checkpoints of steps 1, 2 and 3 (keep 3); the model's weight is filled with the step."""
    model = torch.nn.Linear(2, 1)
    ckpt = Checkpointer(tmp_path, keep=3)
    for step in (1, 2, 3):
        with torch.no_grad():
            model.weight.fill_(step)
        ckpt.save(step, {"model": model}, extra={"epoch": 0, "step_seen": step})
    return ckpt


def restored_weight(tmp_path: Path) -> tuple[int, float]:
    model = torch.nn.Linear(2, 1)
    step, extra = Checkpointer(tmp_path, keep=3).restore({"model": model})
    assert extra["step_seen"] == step
    return step, float(model.weight.detach()[0, 0])


def test_round_trip_restores_every_state_and_every_generator(tmp_path: Path):
    model, optimizer, scheduler = build()
    take_steps(model, optimizer, scheduler, 3)
    norm = Normaliser()
    norm.mean = np.array([1.5, -2.0, 3.25])
    ckpt = Checkpointer(tmp_path, keep=2)
    random.seed(5)
    np.random.seed(6)
    torch.manual_seed(7)
    path = ckpt.save(
        3,
        {"model": model},
        {"opt": optimizer},
        {"sched": scheduler},
        {"lagrange": [1.0, 2]},
        {"norm": NumpyState(norm)},
    )
    assert path == RunLayout(tmp_path).checkpoint(3)
    assert sorted(p.name for p in path.iterdir()) == sorted([STATE, META, MANIFEST])
    draws = (random.random(), float(np.random.rand()), float(torch.rand(())))
    torch.load(path / STATE, weights_only=True)  # plain: tensors and Python values only
    take_steps(model, optimizer, scheduler, 2)  # move everything on, then restore

    model2, optimizer2, scheduler2 = build()
    norm2 = Normaliser()
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    step, extra = ckpt.restore(
        {"model": model2}, {"opt": optimizer2}, {"sched": scheduler2}, {"norm": NumpyState(norm2)}
    )
    assert (step, extra) == (3, {"lagrange": [1.0, 2]})
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == draws
    np.testing.assert_array_equal(norm2.mean, [1.5, -2.0, 3.25])
    assert scheduler2.last_epoch == 3
    # the restored optimiser continues exactly like the original one did from step 3
    model3, optimizer3, scheduler3 = build()
    ckpt.load(path, {"model": model3}, {"opt": optimizer3}, {"sched": scheduler3})
    torch.manual_seed(11)
    take_steps(model2, optimizer2, scheduler2, 2)
    torch.manual_seed(11)
    take_steps(model3, optimizer3, scheduler3, 2)
    for a, b in zip(model2.parameters(), model3.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), "truncated"),
        (lambda p: p.write_bytes(p.read_bytes()[:-9] + bytes(9)), "corrupted"),
        (lambda p: p.unlink(), "missing"),
    ],
    ids=["truncated", "corrupted", "missing"],
)
def test_damaged_newest_checkpoint_falls_back_to_the_newest_intact(tmp_path, capsys, damage, reason):
    save_three(tmp_path)
    state = RunLayout(tmp_path).checkpoint(3) / STATE
    damage(state)
    assert restored_weight(tmp_path) == (2, 2.0)
    err = capsys.readouterr().err
    assert f"{state}: {reason}" in err
    assert "resuming from" in err and "step_00000002" in err


def test_a_checkpoint_without_manifest_is_passed_over(tmp_path, capsys):
    save_three(tmp_path)
    (RunLayout(tmp_path).checkpoint(3) / MANIFEST).unlink()  # a save killed before its manifest
    (RunLayout(tmp_path).checkpoint(2) / META).write_text("{}")  # and a corrupted meta.json
    assert restored_weight(tmp_path) == (1, 1.0)
    err = capsys.readouterr().err
    assert "manifest.json: missing" in err and "meta.json: truncated" in err


def test_no_intact_checkpoint_is_an_error_naming_the_folder(tmp_path, capsys):
    with pytest.raises(CheckpointError, match="no checkpoint to resume from"):
        Checkpointer(tmp_path).restore({"model": torch.nn.Linear(2, 1)})
    save_three(tmp_path)
    for step in (1, 2, 3):
        (RunLayout(tmp_path).checkpoint(step) / STATE).write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"none of its 3 checkpoint\(s\) is intact"):
        restored_weight(tmp_path)


class RunsCode:
    """Unpickling this would call `Path.touch` on a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_crafted_state_file_is_refused_without_running_its_code(tmp_path, capsys):
    save_three(tmp_path)
    newest = RunLayout(tmp_path).checkpoint(3)
    marker = tmp_path / "code-ran"
    torch.save({"models": {"model": RunsCode(marker)}}, newest / STATE)
    with pytest.raises(pickle.UnpicklingError):  # sanity: the file does carry code
        torch.load(newest / STATE, weights_only=True)
    # a forger who rewrites the manifest too gets past the checksum, not past weights_only
    manifest = json.loads((newest / MANIFEST).read_text())
    manifest[STATE]["size"] = (newest / STATE).stat().st_size
    import hashlib

    manifest[STATE]["sha256"] = hashlib.sha256((newest / STATE).read_bytes()).hexdigest()
    (newest / MANIFEST).write_text(json.dumps(manifest))
    assert restored_weight(tmp_path) == (2, 2.0)
    assert not marker.exists()
    assert f"{newest / STATE}: cannot be loaded safely" in capsys.readouterr().err


def test_resuming_with_another_process_count_is_refused(tmp_path):
    save_three(tmp_path)
    two = Checkpointer(tmp_path, ctx=DistributedContext(rank=0, world_size=2))
    with pytest.raises(
        CheckpointError, match=r"saved by 1 process\(es\), resumed with 2; resume with one process"
    ):
        two.restore({"model": torch.nn.Linear(2, 1)})


def test_a_state_that_does_not_fit_the_model_is_named(tmp_path):
    save_three(tmp_path)
    with pytest.raises(CheckpointError, match="the saved model 'model' does not fit this run"):
        Checkpointer(tmp_path).restore({"model": torch.nn.Linear(3, 1)})


def test_keeps_the_newest_and_clears_a_half_written_save(tmp_path):
    ckpt = save_three(tmp_path)
    ckpt.keep = 2
    layout = RunLayout(tmp_path)
    layout.checkpoint_tmp(4).mkdir()  # a save killed half-way
    ckpt.save(4, {"model": torch.nn.Linear(2, 1)})
    assert [p.name for p in ckpt.all()] == ["step_00000003", "step_00000004"]
    assert not layout.checkpoint_tmp(4).exists()
    assert ckpt.clear() == 2 and ckpt.all() == []
