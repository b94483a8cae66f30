"""The critic-free trainers: every method runs, scoring sources, user errors, lambda, exact
resume, and learning on the toy world. Two processes against one (fsdp), a stop and resume
under fsdp, and a SIGKILL are checked for Safe GRPO in tests/lm/test_distributed.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from alignloop.errors import UserError
from alignloop.lm.grpo import (
    GRPOConfig,
    GRPOLagConfig,
    ReinforcePPConfig,
    ReMaxConfig,
    RLOOConfig,
    train,
    train_lagrangian,
    train_reinforce_pp,
    train_remax,
    train_rloo,
)
from alignloop.lm.models import ScoreModel
from alignloop.lm.toyworld import build_policy, build_tokenizer, tiny_config

SCORES = Path(__file__).parent / "toy_scores.py"
HELPFULNESS, HARM = f"{SCORES}:helpfulness", f"{SCORES}:harm"


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained tiny policy and two untrained score models on the toy tokenizer."""
    root = tmp_path_factory.mktemp("grpo_models")
    tokenizer = build_tokenizer()
    build_policy(tokenizer, seed=0).save_pretrained(str(root / "policy"))
    tokenizer.save_pretrained(str(root / "policy"))
    for i, name in enumerate(("reward", "cost")):
        ScoreModel.from_backbone_config(tiny_config(tokenizer), seed=i + 1).save_pretrained(
            root / name, tokenizer
        )
    return root


def _options(tiny_models: Path, out: Path, **overrides) -> dict:
    options = dict(
        policy=tiny_models / "policy", reward_model=(tiny_models / "reward",), output_dir=out, train_size=64,
        rollout_batch_size=4, group_size=4, batch_size=8, max_new_tokens=5, eval_size=0, progress=False,
        max_steps=3, save_every=2, threads=1,
    )  # fmt: skip
    options.update(overrides)
    return options


def _train_metrics(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["split"] == "train"]


@pytest.mark.parametrize(
    ("command", "config", "extra", "expect"),
    [
        (train, GRPOConfig, {"loss": "dapo"}, "kept_groups"),
        (train, GRPOConfig, {"loss": "dr-grpo", "grad_accum": 2, "lora_r": 2}, "kl_ref"),
        (train_rloo, RLOOConfig, {}, "kl"),
        (train_reinforce_pp, ReinforcePPConfig, {"rollout_batch_size": 8, "group_size": 1}, "kl"),
        (train_remax, ReMaxConfig, {"rollout_batch_size": 8, "group_size": 1}, "greedy_reward"),
    ],
    ids=["dapo", "dr-grpo-lora-accum", "rloo", "reinforce-pp", "remax"],
)
def test_every_method_runs_and_saves(tiny_models: Path, tmp_path: Path, command, config, extra, expect):
    out = tmp_path / "run"
    assert command(config(**_options(tiny_models, out, max_steps=2, **extra))) == 0
    records = _train_metrics(out)
    assert [r["step"] for r in records] == [1, 2] and all(expect in r for r in records)
    assert (out / "final" / "model.safetensors").is_file() and (out / "final" / "tokenizer.json").is_file()


def test_reward_sources_are_summed_with_weights(tiny_models: Path, tmp_path: Path):
    """A reward model and a reward function, weighted 0.5 and 2: the logged reward is the weighted
    sum of the two sources' means (no response runs past 5 tokens without an end: no penalty)."""
    out = tmp_path / "run"
    cfg = GRPOConfig(
        **_options(tiny_models, out, max_steps=1, missing_eos_penalty=0.0),
        reward_function=(HELPFULNESS,),
        reward_weights=(0.5, 2.0),
    )
    assert train(cfg) == 0
    (record,) = _train_metrics(out)
    assert record["reward"] == pytest.approx(
        0.5 * record["reward/reward"] + 2 * record[f"reward/{HELPFULNESS}"]
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"reward_model": ()}, "no reward: pass --reward-model"),
        ({"reward_function": ("no_such_module_here:f",)}, "cannot import 'no_such_module_here'"),
        ({"reward_function": (f"{SCORES}:nothing",)}, "has no function 'nothing'"),
        ({"reward_weights": (1.0, 2.0)}, "2 weight"),
        ({"batch_size": 6}, r"--batch-size \(6\) must divide"),
        ({"group_size": 1, "batch_size": 4}, r"--group-size \(1\) must be at least 2"),
    ],
)
def test_user_mistakes_are_user_errors(tiny_models: Path, tmp_path: Path, overrides: dict, message: str):
    with pytest.raises(UserError, match=message):
        train(GRPOConfig(**_options(tiny_models, tmp_path / "bad", **overrides)))


def test_dynamic_sampling_needs_groups(tiny_models: Path, tmp_path: Path):
    cfg = ReinforcePPConfig(
        **_options(tiny_models, tmp_path / "bad", loss="dapo", group_size=1, batch_size=4)
    )
    with pytest.raises(UserError, match="dynamic sampling compares the responses to a prompt"):
        train_reinforce_pp(cfg)


def test_a_reward_function_that_returns_too_few_values_is_named(tiny_models: Path, tmp_path: Path):
    bad = tmp_path / "bad_reward.py"
    bad.write_text("def short(prompts, completions):\n    return [1.0]\n")
    with pytest.raises(UserError, match=r"bad_reward.py:short: returned 1 values for 16 completions"):
        train(GRPOConfig(**_options(tiny_models, tmp_path / "run"), reward_function=(f"{bad}:short",)))


@pytest.mark.slow
def test_command_line_runs_and_explains_mistakes(tiny_models: Path, tmp_path: Path, capsys):
    """`alignloop train grpo-lag` in a subprocess on a prompt file; a broken reward function is
    one line naming it and exit code 2, not a traceback."""
    from alignloop.cli import main

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"how do i cook rice {i}"}) + "\n" for i in range(8)))
    args = [
        "train",
        "grpo-lag",
        "--policy",
        str(tiny_models / "policy"),
        "--reward-model",
        str(tiny_models / "reward"),
    ]
    args += [
        "--cost-model",
        str(tiny_models / "cost"),
        "--prompts",
        str(prompts),
        "--rollout-batch-size",
        "4",
    ]
    args += [
        "--batch-size",
        "8",
        "--max-new-tokens",
        "4",
        "--eval-prompts",
        "0",
        "--no-progress",
        "--threads",
        "1",
    ]
    args += ["--max-steps", "1"]
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "alignloop.cli", *args, "--output-dir", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "final" / "model.safetensors").is_file() and "lambda" in _train_metrics(out)[0]
    bad = [*args, "--output-dir", str(tmp_path / "bad"), "--reward-function", "nowhere_to_be_found:score"]
    assert main(bad) == 2
    err = capsys.readouterr().err
    assert "--reward-function 'nowhere_to_be_found:score': cannot import" in err and "Traceback" not in err


@pytest.mark.parametrize(("cost_limit", "direction"), [(-3.0, 1), (3.0, -1)])
def test_lambda_rises_above_the_cost_limit_and_falls_below(
    tiny_models: Path, tmp_path: Path, cost_limit, direction
):
    cfg = GRPOLagConfig(
        **_options(tiny_models, tmp_path / "lag"), cost_model=(tiny_models / "cost",), cost_limit=cost_limit
    )
    assert train_lagrangian(cfg) == 0
    lambdas = [r["lambda"] for r in _train_metrics(tmp_path / "lag")]
    steps = [b - a for a, b in zip([1.0, *lambdas[:-1]], lambdas, strict=True)]
    assert all(direction * s > 0 for s in steps), lambdas


def test_violation_threshold_constrains_the_unsafe_share(tiny_models: Path, tmp_path: Path):
    """With --violation-threshold 0 the cost of a response is 1 when the harm function calls it
    unsafe (+1) and 0 when safe (-1): the logged cost is the share judged unsafe."""
    cfg = GRPOLagConfig(
        **_options(tiny_models, tmp_path / "lag", max_steps=2),
        cost_model=(),
        cost_function=(HARM,),
        violation_threshold=0.0,
        cost_limit=0.05,
    )
    assert train_lagrangian(cfg) == 0
    for record in _train_metrics(tmp_path / "lag"):
        assert record["cost"] == pytest.approx(record["unsafe_share"]) and 0 < record["cost"] < 1
        assert record[f"cost/{HARM}"] == pytest.approx(2 * record["cost"] - 1)  # the raw +-1 mean
        assert record["cost_score"] == pytest.approx(record[f"cost/{HARM}"])


def test_cost_floor_raises_safe_costs_to_the_floor(tiny_models: Path, tmp_path: Path):
    """The harm function's -1 (safe) and +1 (unsafe) floored at 0 are the indicator costs: the
    logged cost is the share judged unsafe, as under --violation-threshold 0."""
    cfg = GRPOLagConfig(
        **_options(tiny_models, tmp_path / "lag", max_steps=1),
        cost_model=(),
        cost_function=(HARM,),
        cost_floor=0.0,
        cost_limit=0.05,
    )
    assert train_lagrangian(cfg) == 0
    (record,) = _train_metrics(tmp_path / "lag")
    assert record["cost"] == pytest.approx(record["unsafe_share"]) and 0 < record["cost"] < 1
    with pytest.raises(UserError, match="only without --violation-threshold"):
        train_lagrangian(replace(cfg, output_dir=tmp_path / "both", violation_threshold=0.0))


def _lag_options(tiny_models: Path, out: Path, **overrides) -> dict:
    return dict(
        **_options(tiny_models, out, **overrides),
        cost_model=(tiny_models / "cost",),
        cost_function=(HARM,),
        cost_weights=(1.0, 0.5),
        cost_limit=-0.2,
    )


def test_resume_continues_exactly(tiny_models: Path, tmp_path: Path):
    """Stopped after 2 of 4 iterations (a checkpoint) and resumed, Safe GRPO with a cosine
    schedule ends with the weights, metrics and lambda of the run that never stopped."""
    schedule = dict(scheduler="cosine", warmup_steps=1, loss="dapo")
    assert (
        train_lagrangian(
            GRPOLagConfig(**_lag_options(tiny_models, tmp_path / "full", max_steps=4, **schedule))
        )
        == 0
    )
    first = _lag_options(tiny_models, tmp_path / "split", max_steps=2, total_steps=4, **schedule)
    assert train_lagrangian(GRPOLagConfig(**first)) == 0
    resumed = _lag_options(tiny_models, tmp_path / "split", max_steps=4, resume=True, **schedule)
    assert train_lagrangian(GRPOLagConfig(**resumed)) == 0
    a, b = _train_metrics(tmp_path / "full"), _train_metrics(tmp_path / "split")
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    for key in ("reward", "cost", "lambda", "policy_loss", "J_c"):
        assert [r[key] for r in a] == [r[key] for r in b], key
    from safetensors.torch import load_file

    wa = load_file(str(tmp_path / "full" / "final" / "model.safetensors"))
    wb = load_file(str(tmp_path / "split" / "final" / "model.safetensors"))
    for name, tensor in wa.items():
        torch.testing.assert_close(tensor, wb[name], rtol=0, atol=0)


# --------------------------------------------------------------------------- learning
# The toy world's ground truth as the reward (helpfulness) and the cost (+1 unsafe, -1 safe):
# on risky prompts the most helpful answer is unsafe, so reward alone makes a policy less safe.
LEARN = dict(
    reward_model=(), reward_function=(HELPFULNESS,), max_steps=30, lr=5e-4, kl_coef=0.01, eval_size=0,
    train_size=512, progress=False, threads=1, save_every=100,
)  # fmt: skip
GROUPS = dict(rollout_batch_size=16, group_size=4, batch_size=64)
SINGLES = dict(rollout_batch_size=64, group_size=1, batch_size=64)


@pytest.fixture(scope="module")
def sft_policy(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, float]]:
    """A short SFT run on the toy world's careless corpus (unsafe on about half of the risky
    prompts) and its held-out figures."""
    from alignloop.lm import sft

    root = tmp_path_factory.mktemp("grpo_sft")
    sft.train(
        sft.SFTConfig(
            output_dir=root, max_steps=300, batch_size=64, lr=2e-3, warmup_steps=10, toy_train_size=4000,
            toy_eval_size=32, eval_every=300, save_every=300, progress=False, threads=1,
        )
    )  # fmt: skip
    return root / "final", _judge(root / "final")


def _judge(policy_dir: Path) -> dict[str, float]:
    """Ground-truth helpfulness and unsafe rate on risky prompts of 512 held-out prompts, one
    sampled response each (a seeded generator: the same policy gives the same figures)."""
    from alignloop.lm.evaluate import evaluate_policy
    from alignloop.lm.models import load_causal_lm, load_tokenizer
    from alignloop.lm.tasks import ToyWorldTask
    from alignloop.lm.toyworld import ToyWorld

    world = ToyWorld(0)
    prompts = [p.text for p in world.prompts("eval", 512, seed=123)]
    return evaluate_policy(
        load_causal_lm(policy_dir), load_tokenizer(policy_dir), ToyWorldTask(0), prompts, seed=1
    )


@pytest.fixture(scope="module")
def grpo_run(sft_policy, tmp_path_factory: pytest.TempPathFactory) -> dict[str, float]:
    out = tmp_path_factory.mktemp("grpo_learn")
    assert train(GRPOConfig(policy=sft_policy[0], output_dir=out, **GROUPS, **LEARN)) == 0
    return _judge(out / "final")


@pytest.mark.slow
def test_grpo_raises_helpfulness_and_with_it_harm(sft_policy, grpo_run):
    before = sft_policy[1]
    assert before["unsafe_rate"] >= 0.3, f"the SFT policy should be unsafe on many risky prompts: {before}"
    assert grpo_run["helpfulness"] >= before["helpfulness"] + 0.08, (before, grpo_run)
    assert grpo_run["unsafe_rate"] >= before["unsafe_rate"] + 0.1, (before, grpo_run)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("command", "config", "shape", "gain"),
    [
        (train_rloo, RLOOConfig, GROUPS, 0.05),
        (train_reinforce_pp, ReinforcePPConfig, SINGLES, 0.05),
        (train_remax, ReMaxConfig, SINGLES, 0.025),
    ],  # fmt: skip
    ids=["rloo", "reinforce-pp", "remax"],
)
def test_baselines_raise_helpfulness(sft_policy, tmp_path: Path, command, config, shape, gain):
    assert command(config(policy=sft_policy[0], output_dir=tmp_path / "run", **shape, **LEARN)) == 0
    before, after = sft_policy[1], _judge(tmp_path / "run" / "final")
    assert after["helpfulness"] >= before["helpfulness"] + gain, (before, after)


@pytest.mark.slow
def test_safe_grpo_holds_harm_down_where_grpo_does_not(sft_policy, grpo_run, tmp_path: Path):
    """The same reward and steps as GRPO, plus the harm cost with a limit of -0.9 (unsafe on
    at most 5% of all prompts): lambda rises, the unsafe rate falls below SFT's and far below
    GRPO's, and helpfulness stays at least SFT's."""
    cfg = GRPOLagConfig(
        policy=sft_policy[0], output_dir=tmp_path / "lag", cost_model=(), cost_function=(HARM,), cost_limit=-0.9,
        **GROUPS, **LEARN,
    )  # fmt: skip
    assert train_lagrangian(cfg) == 0
    before, lag = sft_policy[1], _judge(tmp_path / "lag" / "final")
    lambdas = [r["lambda"] for r in _train_metrics(tmp_path / "lag")]
    assert lambdas[-1] > cfg.lambda_init * 1.1, lambdas
    assert lag["unsafe_rate"] <= 0.5 * before["unsafe_rate"], (before, lag)
    assert lag["unsafe_rate"] <= 0.5 * grpo_run["unsafe_rate"], (grpo_run, lag)
    assert lag["helpfulness"] >= before["helpfulness"], (before, lag)
