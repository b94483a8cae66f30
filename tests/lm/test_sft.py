"""SFT: learns, resumes exactly, accumulates exactly, runs from the command line."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from alignloop.lm.models import load_causal_lm
from alignloop.lm.sft import SFTConfig, train
from alignloop.lm.training import read_metrics

SMALL = dict(
    toy_train_size=256, toy_eval_size=32, batch_size=16, warmup_steps=2, progress=False, eval_every=4
)


def params(path: Path) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in load_causal_lm(path).state_dict().items()}


def assert_params_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=atol, msg=k)


@pytest.mark.slow
def test_sft_lowers_loss(tmp_path: Path) -> None:
    cfg = SFTConfig(output_dir=tmp_path, max_steps=80, **{**SMALL, "toy_train_size": 1280, "eval_every": 80})
    assert train(cfg) == 0
    first = next(read_metrics(tmp_path, "train"))["loss"]
    final = [r["loss"] for r in read_metrics(tmp_path, "eval")][-1]
    # from a uniform guess over 150 words (ln 150 = 5.0) to well below half of it
    assert first > 4.0
    assert final < 0.5 * first, (first, final)
    assert (tmp_path / "final" / "model.safetensors").is_file()
    assert (tmp_path / "final" / "tokenizer.json").is_file()


def test_resumed_run_equals_uninterrupted_run(tmp_path: Path) -> None:
    base = SFTConfig(max_steps=6, total_steps=6, grad_accum=2, save_every=2, **SMALL)
    train(dataclasses.replace(base, output_dir=tmp_path / "full"))
    # "killed" after step 3, before its checkpoint: the newest one left is step 2
    train(dataclasses.replace(base, output_dir=tmp_path / "cut", max_steps=3))
    shutil.rmtree(tmp_path / "cut" / "checkpoints" / "step_00000003")
    shutil.rmtree(tmp_path / "cut" / "final")
    train(dataclasses.replace(base, output_dir=tmp_path / "cut", resume=True))
    assert_params_equal(params(tmp_path / "full" / "final"), params(tmp_path / "cut" / "final"), atol=1e-6)
    full = [(r["step"], r["split"], r["loss"]) for r in read_metrics(tmp_path / "full")]
    cut = [(r["step"], r["split"], r["loss"]) for r in read_metrics(tmp_path / "cut")]
    # metrics.jsonl reads as one run: the lines the killed run wrote after step 2 are replaced
    assert [(s, split) for s, split, _ in cut] == [(s, split) for s, split, _ in full]
    for (_, _, a), (_, _, b) in zip(full, cut, strict=True):
        assert abs(a - b) < 1e-5


def test_gradient_accumulation_matches_one_big_batch(tmp_path: Path) -> None:
    base = SFTConfig(max_steps=3, **SMALL)
    train(dataclasses.replace(base, output_dir=tmp_path / "one"))
    train(dataclasses.replace(base, output_dir=tmp_path / "four", grad_accum=4))
    assert_params_equal(params(tmp_path / "one" / "final"), params(tmp_path / "four" / "final"), atol=1e-5)


@pytest.mark.slow
def test_sft_then_cost_model_from_the_command_line(tmp_path: Path) -> None:
    config = tmp_path / "sft.yaml"
    config.write_text(f"output_dir: {tmp_path / 'sft'}\nmax_steps: 2\ntoy_train_size: 64\ntoy_eval_size: 8\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cli = [sys.executable, "-m", "alignloop.cli", "train"]
    run = subprocess.run(
        [*cli, "sft", "--config", str(config), "--batch-size", "8", "--no-progress"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert json.loads((tmp_path / "sft" / "metrics.jsonl").read_text().splitlines()[0])["step"] == 1
    run = subprocess.run(
        [*cli, "cost", "--model", str(tmp_path / "sft" / "final"), "--output-dir", str(tmp_path / "cost"),
         "--max-steps", "2", "--batch-size", "8", "--toy-train-size", "64", "--toy-eval-size", "8", "--no-progress"],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    config = json.loads((tmp_path / "cost" / "final" / "config.json").read_text())
    assert config["architectures"] == ["LlamaForSequenceClassification"]


def test_warmup_then_cosine_schedule_by_hand() -> None:
    from alignloop.lm.training import make_scheduler

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = make_scheduler(opt, "cosine", warmup_steps=2, total_steps=6)
    lrs = []
    for _ in range(7):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    # warm-up (s+1)/2 for s < 2; then 0.5 (1 + cos(pi (s-2)/4)): s=2 1, s=3 0.8536, s=4 0.5, s=5 0.1464, s=6 0
    expected = [0.5, 1.0, 1.0, 0.5 * (1 + 2**-0.5), 0.5, 0.5 * (1 - 2**-0.5), 0.0]
    assert lrs == pytest.approx(expected, rel=1e-6, abs=1e-12)


def test_checkpointer_keeps_newest_and_ignores_a_partial_save(tmp_path: Path) -> None:
    from alignloop.lm.training import Checkpointer

    model = torch.nn.Linear(2, 1)
    ckpt = Checkpointer(tmp_path, keep=2)
    for step in (1, 2, 3):
        with torch.no_grad():
            model.weight.fill_(step)
        ckpt.save(step, {"model": model}, extra={"epoch": 0})
    draw_after_save = torch.rand(3)  # drawn from the RNG state saved at step 3
    (tmp_path / "checkpoints" / ".tmp_step_00000004").mkdir()  # a save killed half-way
    assert [p.name for p in ckpt.all()] == ["step_00000002", "step_00000003"]
    latest = ckpt.latest()
    assert latest is not None and latest.name == "step_00000003"
    with torch.no_grad():
        model.weight.zero_()
    torch.manual_seed(123)
    step, extra = ckpt.load(latest, {"model": model})
    assert (step, extra) == (3, {"epoch": 0})
    assert model.weight.eq(3).all()
    assert torch.equal(torch.rand(3), draw_after_save)
