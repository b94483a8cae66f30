"""Data parallelism changes nothing but speed, and a resume under it continues exactly.

Every language-model trainer (sft, reward, cost, dpo, aligner, ppo, ppo-lag, and the
critic-free grpo, rloo, reinforce-pp, remax and grpo-lag) runs under
`torchrun --nproc_per_node=2` (gloo on CPU) with --strategy fsdp and ends where one process on
the whole batch ends; ddp and fsdp-grad-op are checked for some of them. Under fsdp each
trainer of `ALL` is also stopped at its checkpoint after 2 of 3 steps and resumed, and must end
exactly where the uninterrupted run ends (the critic-free trainers share one loop, which Safe
GRPO, with lambda's state, stands for); and every one of the 12 trainers is killed (SIGKILL of
the whole launch) after its first checkpoint and resumed in the next launch, and must end
exactly where an uninterrupted two-process run ends.

A launch costs seconds of Python start-up, so the runs are grouped: one launch
(`torchrun_plan.py`) runs every uninterrupted and stopped-and-resumed run in sequence, and the
kills are chained (each launch resumes the run the previous one was killed in, then starts the
next). Single-process references run in this process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from alignloop.config import from_mapping
from alignloop.lm.dpo import DPOConfig
from alignloop.lm.dpo import train as train_dpo
from alignloop.lm.models import ScoreModel
from alignloop.lm.toyworld import build_policy, build_tokenizer, tiny_config
from alignloop.runstack.checkpoint import Checkpointer
from alignloop.runstack.metrics import read_metrics

sys.path.insert(0, str(Path(__file__).parent))
from torchrun_plan import trainer as command  # noqa: E402

torch.set_num_threads(1)
PLAN = Path(__file__).parent / "torchrun_plan.py"
SUPERVISED = dict(
    toy_train_size=80, toy_eval_size=16, batch_size=8, max_steps=3, eval_every=3, save_every=100,
    warmup_steps=0, lr=5e-3, threads=1, progress=False,
)  # fmt: skip
RL = dict(
    train_size=64, rollout_batch_size=8, batch_size=4, max_new_tokens=5, eval_size=0, max_steps=3,
    save_every=100, threads=1, progress=False,
)  # fmt: skip
ALL = ("sft", "reward", "cost", "dpo", "aligner", "ppo", "ppo-lag", "grpo-lag")
DDP = ("sft", "reward", "cost", "dpo", "ppo")
CRITIC_FREE = ("grpo", "rloo", "reinforce-pp", "remax")  # fsdp against one process only
GRAD_OP = ("sft", "ppo-lag")
# Long enough that a run is still going when the test sees its first checkpoint (a supervised
# step takes milliseconds, an RL step a rollout).
KILLED = {
    **{t: {"max_steps": 40, "save_every": 2} for t in ("sft", "reward", "cost", "dpo", "aligner")},
    **{t: {"max_steps": 8, "save_every": 2} for t in ("ppo", "ppo-lag", *CRITIC_FREE, "grpo-lag")},
}


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the final model folder (backbone, and score head when there is one)."""
    out: dict[str, torch.Tensor] = {}
    for file in sorted((run_dir / "final").glob("*.safetensors")):
        out.update({f"{file.stem}.{k}": v for k, v in load_file(str(file)).items()})
    assert out, f"no weights in {run_dir / 'final'}"
    return out


def relative_difference(a: Path, b: Path) -> float:
    """|a - b| / |a| over all weights together.

    The runs sum gradients in a different order (and pad the per-process batches differently),
    and Adam scales a near-zero gradient's rounding noise up to a full step, so a handful of
    elements may differ by ~1e-4 while the rest agree to 1e-6: measured ~3e-5 at most, while
    training moves the weights by ~0.1 |a|, so a real disagreement (a lost or double-counted
    gradient, a process sampling other tokens) is far above the bound of 2e-4.
    """
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    diff = sum(float((wa[k] - wb[k]).square().sum()) for k in wa) ** 0.5
    return diff / sum(float(wa[k].square().sum()) for k in wa) ** 0.5


def assert_identical(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name
    train_a = [(r["step"], r["loss"] if "loss" in r else r["policy_loss"]) for r in read_metrics(a, "train")]
    train_b = [(r["step"], r["loss"] if "loss" in r else r["policy_loss"]) for r in read_metrics(b, "train")]
    assert train_a == train_b


def options(trainer: str, models: Path, out: Path, **extra) -> dict:
    if trainer.startswith("ppo"):
        base = {**RL, "policy": str(models / "policy"), "reward_model": str(models / "reward")}
        if trainer == "ppo-lag":
            base |= {"cost_model": str(models / "cost"), "cost_limit": -1.0}
    elif trainer in (*CRITIC_FREE, "grpo-lag"):  # groups of 4, a learning rate that moves the weights
        base = {**RL, "policy": str(models / "policy"), "reward_model": [str(models / "reward")]}
        base |= {"group_size": 4, "batch_size": 16, "rollout_batch_size": 8, "lr": 1e-3}
        if trainer == "grpo-lag":  # DAPO's token-level loss and dynamic sampling
            base |= {"cost_model": [str(models / "cost")], "cost_limit": -1.0, "loss": "dapo"}
    else:
        base = dict(SUPERVISED)
        if trainer == "aligner":
            base |= {"toy_eval_size": 4, "max_new_tokens": 8}
    return {**base, "output_dir": str(out), **extra}


def launch(plan: list[dict], path: Path, *, background: bool = False) -> subprocess.Popen:
    path.write_text(json.dumps(plan))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    command += [str(PLAN), str(path)]
    out = subprocess.DEVNULL if background else subprocess.PIPE
    proc = subprocess.Popen(command, env=env, stdout=out, stderr=out, text=True, start_new_session=True)
    if not background:
        stdout, stderr = proc.communicate(timeout=900)
        assert proc.returncode == 0, stdout[-2000:] + stderr[-6000:]
    return proc


def kill_after_first_checkpoint(proc: subprocess.Popen, run_dir: Path) -> int:
    """SIGKILL the whole launch once `run_dir` holds a complete checkpoint; returns its step."""
    deadline = time.monotonic() + 600
    while not Checkpointer(run_dir).all():
        assert proc.poll() is None, f"the launch ended before {run_dir} had a checkpoint"
        assert time.monotonic() < deadline, f"no checkpoint in {run_dir} within 600 s"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    steps = [p.name for p in Checkpointer(run_dir).all()]
    assert not (run_dir / "final").exists(), f"{run_dir} finished before it was killed ({steps})"
    return len(steps)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained tiny policy and two untrained score models on the toy tokenizer (PPO)."""
    root = tmp_path_factory.mktemp("dist_models")
    tokenizer = build_tokenizer()
    build_policy(tokenizer, seed=0).save_pretrained(str(root / "policy"))
    tokenizer.save_pretrained(str(root / "policy"))
    for i, name in enumerate(("reward", "cost")):
        ScoreModel.from_backbone_config(tiny_config(tokenizer), seed=i + 1).save_pretrained(
            root / name, tokenizer
        )
    return root


@pytest.fixture(scope="module")
def runs(models: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Single-process references here, then one launch of every two-process run."""
    root = tmp_path_factory.mktemp("dist_runs")
    for name in (*ALL, *CRITIC_FREE):
        config_cls, train = command(name)
        assert train(from_mapping(config_cls, options(name, models, root / f"{name}-one"))) == 0
    plan = []
    for trainer in ALL:
        plan.append(
            {
                "trainer": trainer,
                "options": options(trainer, models, root / f"{trainer}-fsdp", strategy="fsdp"),
            }
        )
        split = options(trainer, models, root / f"{trainer}-split", strategy="fsdp")
        plan.append(
            {"trainer": trainer, "options": {**split, "max_steps": 2, "total_steps": 3, "save_every": 2}}
        )
        plan.append({"trainer": trainer, "options": {**split, "resume": True}})
    plan += [
        {"trainer": t, "options": options(t, models, root / f"{t}-fsdp", strategy="fsdp")}
        for t in CRITIC_FREE
    ]
    plan += [{"trainer": t, "options": options(t, models, root / f"{t}-ddp", strategy="ddp")} for t in DDP]
    plan += [
        {"trainer": t, "options": options(t, models, root / f"{t}-grad-op", strategy="fsdp-grad-op")}
        for t in GRAD_OP
    ]
    for trainer, extra in KILLED.items():  # the uninterrupted twins of the killed runs
        plan.append(
            {
                "trainer": trainer,
                "options": options(trainer, models, root / f"{trainer}-whole", strategy="fsdp", **extra),
            }
        )
    launch(plan, root / "plan.json")
    return root


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("trainer", ALL + CRITIC_FREE)
def test_fsdp_on_two_processes_matches_one(runs: Path, trainer: str):
    assert relative_difference(runs / f"{trainer}-one", runs / f"{trainer}-fsdp") < 2e-4
    if trainer in CRITIC_FREE:
        return
    state = torch.load(Checkpointer(runs / f"{trainer}-split").latest() / "state.pt", weights_only=True)  # type: ignore[operator]
    assert all(
        type(t) is torch.Tensor
        for t in state["models"]["model" if "model" in state["models"] else "policy"].values()
    )


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("trainer", ALL)
def test_fsdp_run_stopped_and_resumed_equals_an_uninterrupted_one(runs: Path, trainer: str):
    assert_identical(runs / f"{trainer}-fsdp", runs / f"{trainer}-split")


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize(
    ("trainer", "strategy"), [(t, "ddp") for t in DDP] + [(t, "grad-op") for t in GRAD_OP]
)
def test_ddp_and_fsdp_grad_op_match_one_process(runs: Path, trainer: str, strategy: str):
    assert relative_difference(runs / f"{trainer}-one", runs / f"{trainer}-{strategy}") < 2e-4


@pytest.mark.slow
@pytest.mark.distributed
def test_killed_runs_resume_exactly(runs: Path, models: Path):
    """Every trainer in turn: each launch is SIGKILLed after the run's first checkpoint (the next
    run starts only once the previous one has resumed and finished)."""
    trainers = list(KILLED)
    plans = [[] for _ in range(len(trainers) + 1)]
    for i, trainer in enumerate(trainers):
        run = options(trainer, models, runs / f"{trainer}-killed", strategy="fsdp", **KILLED[trainer])
        plans[i].append({"trainer": trainer, "options": run})
        plans[i + 1].insert(0, {"trainer": trainer, "options": {**run, "resume": True}})
    for i, trainer in enumerate(trainers):
        proc = launch(plans[i], runs / f"kill-{i}.json", background=True)
        kill_after_first_checkpoint(proc, runs / f"{trainer}-killed")
    launch(plans[-1], runs / "kill-last.json")
    for trainer in trainers:
        assert_identical(runs / f"{trainer}-whole", runs / f"{trainer}-killed")


def test_gradient_accumulation_matches_one_batch(tmp_path: Path):
    for name, extra in (("one", {}), ("accum", {"grad_accum": 2})):
        assert (
            train_dpo(from_mapping(DPOConfig, {**SUPERVISED, "output_dir": str(tmp_path / name), **extra}))
            == 0
        )
    assert relative_difference(tmp_path / "one", tmp_path / "accum") < 2e-4
