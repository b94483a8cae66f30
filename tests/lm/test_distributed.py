"""Data parallelism changes nothing but speed: two processes (torchrun, gloo on CPU), each with
half of every batch, end where one process on the whole batch ends; so does gradient
accumulation. Checked for DPO under DDP and FSDP2 (across a resume), and for SFT, the reward
model and the cost model under DDP; PPO-Lagrangian runs under torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from alignloop.config import from_mapping
from alignloop.lm.cost import CostConfig
from alignloop.lm.cost import train as train_cost
from alignloop.lm.dpo import DPOConfig
from alignloop.lm.dpo import train as train_dpo
from alignloop.lm.models import ScoreModel
from alignloop.lm.reward import RewardConfig
from alignloop.lm.reward import train as train_reward
from alignloop.lm.sft import SFTConfig
from alignloop.lm.sft import train as train_sft
from alignloop.lm.toyworld import build_policy, build_tokenizer, tiny_config

torch.set_num_threads(1)

SMALL = dict(
    toy_train_size=80, toy_eval_size=16, batch_size=8, max_steps=3, eval_every=3, save_every=100,
    warmup_steps=0, lr=5e-3, threads=1, progress=False,
)  # fmt: skip
TRAINERS = {
    "dpo": (DPOConfig, train_dpo),
    "reward": (RewardConfig, train_reward),
    "cost": (CostConfig, train_cost),
    "sft": (SFTConfig, train_sft),
}


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the final model folder (backbone, and score head when there is one)."""
    out: dict[str, torch.Tensor] = {}
    for file in sorted((run_dir / "final").glob("*.safetensors")):
        out.update({f"{file.stem}.{k}": v for k, v in load_file(str(file)).items()})
    assert out, f"no weights in {run_dir / 'final'}"
    return out


def assert_same_weights(a: Path, b: Path) -> None:
    """Equal up to float rounding, measured over all weights together.

    The runs sum gradients in a different order (and pad the per-process batches
    differently), and Adam scales a near-zero gradient's rounding noise up to a full step, so a
    handful of elements may differ by ~1e-4 while the rest agree to 1e-6. The test therefore
    bounds |a - b| / |a| over all weights: ~3e-5 here, while training moves the weights by
    ~0.1 |a|, so a real disagreement (a lost or double-counted gradient) is far above 2e-4.
    """
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    diff = sum(float((wa[k] - wb[k]).square().sum()) for k in wa) ** 0.5
    norm = sum(float(wa[k].square().sum()) for k in wa) ** 0.5
    assert diff / norm < 2e-4, f"relative weight difference {diff / norm:.2e}"


def single_process(trainer: str, out: Path, **options) -> Path:
    config_cls, train = TRAINERS[trainer]
    assert train(from_mapping(config_cls, {**SMALL, "output_dir": str(out), **options})) == 0
    return out


def two_processes(trainer: str, out: Path, base: dict | None = None, **options) -> Path:
    config = out.parent / f"{out.name}.yaml"
    config.write_text(
        yaml.safe_dump({**(SMALL if base is None else base), "output_dir": str(out), **options})
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    command += ["-m", "alignloop.cli", "train", trainer, "--config", str(config)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return out


def test_gradient_accumulation_matches_one_batch(tmp_path: Path):
    single_process("dpo", tmp_path / "one")
    single_process("dpo", tmp_path / "accum", grad_accum=2)
    assert_same_weights(tmp_path / "one", tmp_path / "accum")


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize(
    ("trainer", "options"),
    [("dpo", {}), ("reward", {}), ("cost", {}), ("sft", {})],
    ids=["dpo-ddp", "reward-ddp", "cost-ddp", "sft-ddp"],
)
def test_two_processes_match_one(tmp_path: Path, trainer: str, options: dict):
    single_process(trainer, tmp_path / "one")
    two_processes(trainer, tmp_path / "two", **options)
    assert_same_weights(tmp_path / "one", tmp_path / "two")


@pytest.mark.slow
@pytest.mark.distributed
def test_fsdp_matches_one_process_across_a_resume(tmp_path: Path):
    """FSDP2 on two processes, stopped after 2 of 3 steps and resumed, ends where one
    process ends; the checkpoint holds full tensors gathered from both processes."""
    single_process("dpo", tmp_path / "one")
    fsdp = {"strategy": "fsdp", "total_steps": 3}
    two_processes("dpo", tmp_path / "two", max_steps=2, save_every=2, **fsdp)
    state = torch.load(tmp_path / "two" / "checkpoints" / "step_00000002" / "state.pt", weights_only=False)
    assert all(type(t) is torch.Tensor for t in state["models"]["model"].values())  # not shards
    two_processes("dpo", tmp_path / "two", max_steps=3, resume=True, **fsdp)
    assert_same_weights(tmp_path / "one", tmp_path / "two")


@pytest.mark.slow
@pytest.mark.distributed
def test_ppo_lagrangian_runs_under_torchrun(tmp_path: Path):
    """Two processes share each rollout batch; lambda and the final policy come out of it."""
    tokenizer = build_tokenizer()
    policy = build_policy(tokenizer, seed=0)
    policy.save_pretrained(str(tmp_path / "policy"))
    tokenizer.save_pretrained(str(tmp_path / "policy"))
    for i, name in enumerate(("reward", "cost")):
        model = ScoreModel.from_backbone_config(tiny_config(tokenizer), seed=i + 1)
        model.save_pretrained(tmp_path / name, tokenizer)
    options = {
        "policy": str(tmp_path / "policy"),
        "reward_model": str(tmp_path / "reward"),
        "cost_model": str(tmp_path / "cost"),
        "toy_prompts": 64,
        "rollout_batch_size": 8,
        "batch_size": 4,
        "max_new_tokens": 5,
        "eval_prompts": 0,
        "max_steps": 2,
        "progress": False,
        "threads": 1,
    }
    out = two_processes("ppo-lag", tmp_path / "run", base=options)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if r.get("split") == "train"]
    assert [r["step"] for r in train_records] == [1, 2]
    # log-space rule from lambda = 1 with the limit at 0: each step moves lambda the way of J_c - 0
    lambdas = [1.0, *(r["lambda"] for r in train_records)]
    for before, r in zip(lambdas, train_records, strict=False):
        assert (r["lambda"] - before) * r["J_c"] > 0, train_records
    assert (out / "final" / "model.safetensors").is_file()
