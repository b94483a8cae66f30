"""PPO-RLHF, PPO-Lagrangian and shaping: reward assembly, lambda wiring, exact resume, learning."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from alignloop.core.advantages import kl_shaped_rewards
from alignloop.errors import UserError
from alignloop.lm.generation import generate
from alignloop.lm.models import ScoreModel
from alignloop.lm.ppo import (
    PPOConfig,
    PPOLagConfig,
    ShapingConfig,
    train,
    train_lagrangian,
    train_shaping,
)
from alignloop.lm.rollouts import forward_logprobs, forward_values
from alignloop.lm.toyworld import build_policy, build_tokenizer, tiny_config


def test_kl_shaped_rewards_by_hand():
    kl = torch.tensor([[0.5, -0.2, 0.1, 9.0], [1.0, 2.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, True, False], [True, True, False, False]])  # True = response token
    end = torch.tensor([3.0, -1.0])
    # row 0: -0.1 * [0.5, -0.2, 0.1, (masked)] = [-0.05, 0.02, -0.01, 0]; end score 3 on token 2 -> 2.99
    # row 1: -0.1 * [1, 2] = [-0.1, -0.2]; end score -1 on token 1 -> -1.2
    expected = torch.tensor([[-0.05, 0.02, 2.99, 0.0], [-0.1, -1.2, 0.0, 0.0]])
    torch.testing.assert_close(kl_shaped_rewards(end, kl, mask, 0.1), expected, rtol=1e-5, atol=1e-6)
    # the cost stream adds +beta * kl: a negative coefficient
    expected_cost = torch.tensor([[0.05, -0.02, 3.01, 0.0], [0.1, -0.8, 0.0, 0.0]])
    torch.testing.assert_close(kl_shaped_rewards(end, kl, mask, -0.1), expected_cost, rtol=1e-5, atol=1e-6)


class Fixed(torch.nn.Module):
    """A stub model that answers every call with the same outputs."""

    def __init__(self, **outputs: torch.Tensor):
        super().__init__()
        self.outputs = SimpleNamespace(**outputs)

    def forward(self, *args, **kwargs) -> SimpleNamespace:
        return self.outputs


def test_rewards_costs_kl_and_advantages_are_assembled_as_safe_rlhf_says():
    """A fixed rollout of 2 responses (vocabulary 4: 0 pad, 1 end, 2-3 words; prompts of 2
    tokens) scored by stub models, then assembled with beta = 0.1, lambda = 0.5, gamma = 1 and
    GAE lambda = 1, so A_t = (sum of the stream from t on) - V_t. Worked by hand:

    row 0: response [3, 2, 3], no end token: end reward 3 - 2 (missing-end penalty) = 1, end cost 0.5
      kl = [0.5, -0.25, 1.0] (the reference gives every token log 1/4)
      reward stream -0.1 kl + end reward at the last token = [-0.05, 0.025, 0.9]
      cost stream  +0.1 kl + end cost at the last token   = [0.05, -0.025, 0.6]
      V_r = [0.1, 0.2, 0.3]: A_r = [0.875 - 0.1, 0.925 - 0.2, 0.9 - 0.3] = [0.775, 0.725, 0.6]
      V_c = [0.0, 0.1, -0.1]: A_c = [0.625 - 0, 0.575 - 0.1, 0.6 + 0.1] = [0.625, 0.475, 0.7]
      (A_r - 0.5 A_c) / 1.5 = [0.4625, 0.4875, 0.25] / 1.5
    row 1: response [3, 1, pad]: end reward -1 (ended), end cost 2; kl = [0.2, 0.4, -]
      reward stream [-0.02, -1.04, 0]; cost stream [0.02, 2.04, 0]
      V_r = [0.4, 0.5, -]: A_r = [-1.46, -1.54, 0]; V_c = [0.3, -0.2, -]: A_c = [1.76, 2.24, 0]
      (A_r - 0.5 A_c) / 1.5 = [-2.34, -2.66, 0] / 1.5
    """
    from alignloop.lm.generation import Rollout
    from alignloop.lm.ppo import assemble_experience
    from alignloop.lm.rollouts import score_rollout

    log_quarter = -torch.log(torch.tensor(4.0))
    kl = torch.tensor([[0.5, -0.25, 1.0], [0.2, 0.4, 0.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])  # True = response token
    rollout = Rollout(
        sequences=torch.tensor([[2, 3, 3, 2, 3], [0, 2, 3, 1, 0]]),
        attention_mask=torch.tensor([[1, 1, 1, 1, 1], [0, 1, 1, 1, 0]]),
        response_mask=mask,
        logprobs=torch.where(mask, log_quarter + kl, 0.0),
        prompt_length=2,
    )
    critic_scores = {  # (B, T): the value of response token j is the score one position before it
        "reward": torch.tensor([[9.0, 0.1, 0.2, 0.3, 9.0], [9.0, 0.4, 0.5, 0.6, 9.0]]),
        "cost": torch.tensor([[9.0, 0.0, 0.1, -0.1, 9.0], [9.0, 0.3, -0.2, 5.0, 9.0]]),
    }

    def scored(**extra):
        return score_rollout(
            rollout,
            reference=Fixed(logits=torch.zeros(2, 5, 4)),
            reward_model=Fixed(end_scores=torch.tensor([3.0, -1.0])),
            cost_model=Fixed(end_scores=torch.tensor([0.5, 2.0])),
            reward_critic=Fixed(scores=critic_scores["reward"]),
            cost_critic=Fixed(scores=critic_scores["cost"]),
            temperature=1.0,
            score_clip=10.0,
            missing_eos_penalty=2.0,
            eos_token_id=1,
            **extra,
        )

    scores = scored()
    exp, metrics = assemble_experience(
        rollout, scores, kl_coef=0.1, gamma=1.0, gae_lambda=1.0, lam=0.5, whiten=False
    )
    close = dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(exp.rewards, torch.tensor([[-0.05, 0.025, 0.9], [-0.02, -1.04, 0.0]]), **close)
    torch.testing.assert_close(exp.costs, torch.tensor([[0.05, -0.025, 0.6], [0.02, 2.04, 0.0]]), **close)
    expected = torch.tensor([[0.4625, 0.4875, 0.25], [-2.34, -2.66, 0.0]]) / 1.5
    torch.testing.assert_close(exp.advantages, expected, **close)
    torch.testing.assert_close(
        exp.reward_returns[mask], torch.tensor([0.875, 0.925, 0.9, -1.06, -1.04]), **close
    )
    assert metrics["lambda"] == 0.5 and metrics["reward"] == pytest.approx(0.0)  # mean of 1 and -1
    # plain PPO ascends A_r alone; shaping puts reward - lambda * cost at the end of the reward stream
    plain, _ = assemble_experience(rollout, scores, kl_coef=0.1, gamma=1.0, gae_lambda=1.0, whiten=False)
    torch.testing.assert_close(
        plain.advantages, torch.tensor([[0.775, 0.725, 0.6], [-1.46, -1.54, 0.0]]), **close
    )
    shaped, _ = assemble_experience(
        rollout, scores, kl_coef=0.1, gamma=1.0, gae_lambda=1.0, shaping_lambda=2.0, whiten=False
    )
    torch.testing.assert_close(
        shaped.rewards, torch.tensor([[-0.05, 0.025, -0.1], [-0.02, -5.04, 0.0]]), **close
    )

    # a cost floor of 1 raises row 0's end cost 0.5 to 1 and leaves row 1's 2
    floored = scored(cost_floor=1.0)
    assert floored.end_cost is not None
    torch.testing.assert_close(floored.end_cost, torch.tensor([1.0, 2.0]))


def test_a_cost_floor_that_is_not_finite_is_refused(tmp_path: Path):
    with pytest.raises(UserError, match="--cost-floor: inf is not a finite number"):
        train_lagrangian(PPOLagConfig(output_dir=tmp_path / "out", cost_floor=float("inf")))


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained tiny policy and two untrained score models on the toy tokenizer."""
    root = tmp_path_factory.mktemp("ppo_models")
    tokenizer = build_tokenizer()
    policy = build_policy(tokenizer, seed=0)
    policy.save_pretrained(str(root / "policy"))
    tokenizer.save_pretrained(str(root / "policy"))
    for i, name in enumerate(("reward", "cost")):
        ScoreModel.from_backbone_config(tiny_config(tokenizer), seed=i + 1).save_pretrained(
            root / name, tokenizer
        )
    return root


def test_forward_passes_align_with_the_rollout(tiny_models: Path):
    from alignloop.lm.data import PromptCollator
    from alignloop.lm.models import load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(tiny_models / "policy")
    policy = load_causal_lm(tiny_models / "policy").eval()
    batch = PromptCollator(tokenizer)(["how do i cook rice", "please tell me how to build a bomb"])
    rollout = generate(
        policy,
        batch["input_ids"],
        batch["attention_mask"],
        max_new_tokens=6,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        generator=torch.Generator().manual_seed(0),
    )
    with torch.no_grad():
        logps, logits = forward_logprobs(
            policy, rollout.sequences, rollout.attention_mask, rollout.prompt_length
        )
        critic = ScoreModel.from_pretrained(tiny_models / "reward").eval()
        values = forward_values(critic, rollout.sequences, rollout.attention_mask, rollout.prompt_length)
        scores = critic(rollout.sequences, rollout.attention_mask).scores
    mask = rollout.response_mask
    torch.testing.assert_close(logps[mask], rollout.logprobs[mask], rtol=1e-5, atol=1e-5)
    assert logits.shape[:2] == values.shape == mask.shape
    # the value of response token j is the critic's score one position before it
    P = rollout.prompt_length
    torch.testing.assert_close(values[:, 0], scores[:, P - 1])


def _rl_options(tiny_models: Path, out: Path, **overrides) -> dict:
    options = dict(
        policy=tiny_models / "policy",
        reward_model=tiny_models / "reward",
        output_dir=out,
        train_size=64,
        rollout_batch_size=8,
        batch_size=4,
        grad_accum=2,
        max_new_tokens=5,
        eval_size=0,
        progress=False,
        max_steps=3,
        save_every=2,
    )
    options.update(overrides)
    return options


def _train_metrics(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["split"] == "train"]


@pytest.mark.parametrize(("cost_limit", "direction"), [(-3.0, 1), (3.0, -1)])
def test_lambda_rises_above_the_cost_limit_and_falls_below(
    tiny_models: Path, tmp_path: Path, cost_limit, direction
):
    cfg = PPOLagConfig(
        **_rl_options(tiny_models, tmp_path / "lag"),
        cost_model=tiny_models / "cost",
        cost_limit=cost_limit,
        lambda_max=50.0,
    )
    assert train_lagrangian(cfg) == 0
    lambdas = [r["lambda"] for r in _train_metrics(tmp_path / "lag")]
    # log-space rule from lambda = 1: every step moves lambda the same way as J_c - limit
    steps = [b - a for a, b in zip([1.0, *lambdas[:-1]], lambdas, strict=True)]
    assert all(direction * s > 0 for s in steps), lambdas
    assert (tmp_path / "lag" / "final" / "config.json").is_file()


def test_cost_floor_reaches_the_constraint(tiny_models: Path, tmp_path: Path):
    """A floor above every cost (the untrained cost model's are near 0, clipped to 10) makes each
    end cost the floor: J_c is 12, and lambda rises against a limit of 11."""
    cfg = PPOLagConfig(
        **_rl_options(tiny_models, tmp_path / "lag", max_steps=2),
        cost_model=tiny_models / "cost",
        cost_floor=12.0,
        cost_limit=11.0,
    )
    assert train_lagrangian(cfg) == 0
    records = _train_metrics(tmp_path / "lag")
    assert [r["cost"] for r in records] == [12.0, 12.0] and [r["J_c"] for r in records] == [12.0, 12.0]
    assert 1.0 < records[0]["lambda"] < records[1]["lambda"]


def test_resume_continues_exactly(tiny_models: Path, tmp_path: Path):
    full = PPOLagConfig(
        **_rl_options(tiny_models, tmp_path / "full", max_steps=4), cost_model=tiny_models / "cost"
    )
    assert train_lagrangian(full) == 0
    # the same run stopped after 2 iterations (a checkpoint), then resumed to 4
    first = PPOLagConfig(
        **_rl_options(tiny_models, tmp_path / "split", max_steps=2, total_steps=4),
        cost_model=tiny_models / "cost",
    )
    assert train_lagrangian(first) == 0
    resumed = PPOLagConfig(
        **_rl_options(tiny_models, tmp_path / "split", max_steps=4, resume=True),
        cost_model=tiny_models / "cost",
    )
    assert train_lagrangian(resumed) == 0
    a, b = _train_metrics(tmp_path / "full"), _train_metrics(tmp_path / "split")
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    for key in ("reward", "cost", "lambda", "policy_loss"):
        assert [r[key] for r in a] == pytest.approx([r[key] for r in b], rel=1e-6), key
    from safetensors.torch import load_file

    wa = load_file(str(tmp_path / "full" / "final" / "model.safetensors"))
    wb = load_file(str(tmp_path / "split" / "final" / "model.safetensors"))
    for name, tensor in wa.items():
        torch.testing.assert_close(tensor, wb[name], rtol=0, atol=0)


def test_ppo_and_shaping_run_and_save(tiny_models: Path, tmp_path: Path):
    assert train(PPOConfig(**_rl_options(tiny_models, tmp_path / "ppo", max_steps=2))) == 0
    shaping = ShapingConfig(
        **_rl_options(tiny_models, tmp_path / "shape", max_steps=2), cost_model=tiny_models / "cost"
    )
    assert train_shaping(shaping) == 0
    for run in ("ppo", "shape"):
        records = _train_metrics(tmp_path / run)
        assert len(records) == 2 and all("clip_frac" in r and "kl" in r for r in records)
        assert (tmp_path / run / "final" / "tokenizer.json").is_file()
    assert "cost" in _train_metrics(tmp_path / "shape")[0]
    for run, command in (("ppo", "train ppo"), ("shape", "train reward-shaping")):
        record = json.loads((tmp_path / run / "run.json").read_text())
        assert record["command"] == command and record["config"]["reward_model"] == str(
            tiny_models / "reward"
        )
    assert "lambda_lr" not in json.loads((tmp_path / "shape" / "run.json").read_text())["config"]


def test_lora_trains_adapters_only_and_saves_a_plain_model(tiny_models: Path, tmp_path: Path):
    from safetensors.torch import load_file

    cfg = PPOConfig(**_rl_options(tiny_models, tmp_path / "lora", max_steps=2), lora_r=4, lora_alpha=8)
    assert train(cfg) == 0
    start = load_file(str(tiny_models / "policy" / "model.safetensors"))
    final = load_file(str(tmp_path / "lora" / "final" / "model.safetensors"))
    assert set(final) == set(start)  # merged: a plain folder, no adapter tensors
    changed = [name for name in start if not torch.equal(start[name], final[name])]
    # LoRA wraps the linear layers only: embeddings and norms keep their starting values
    assert changed and all("proj" in name for name in changed), changed


def test_rejects_batch_sizes_that_do_not_divide(tiny_models: Path, tmp_path: Path):
    with pytest.raises(UserError, match="rollout-batch-size"):
        train(PPOConfig(**_rl_options(tiny_models, tmp_path / "bad", rollout_batch_size=10, batch_size=4)))


@pytest.fixture(scope="module")
def trained_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A reduced toy-world pipeline: a short SFT run (unsafe on many risky prompts), then short
    reward- and cost-model runs from it."""
    from alignloop.lm import cost, reward, sft

    root = tmp_path_factory.mktemp("ppo_trained")
    quiet = dict(progress=False, threads=1)
    sft.train(
        sft.SFTConfig(
            output_dir=root / "sft", max_steps=200, batch_size=32, warmup_steps=10, toy_train_size=2000,
            toy_eval_size=32, eval_every=200, save_every=200, **quiet,
        )
    )  # fmt: skip
    for module, config, steps in ((reward, reward.RewardConfig, 60), (cost, cost.CostConfig, 80)):
        module.train(
            config(
                output_dir=root / module.__name__.rsplit(".", 1)[1], model=str(root / "sft" / "final"),
                max_steps=steps, batch_size=32, warmup_steps=5, toy_train_size=2000, toy_eval_size=32,
                eval_every=steps, save_every=steps, **quiet,
            )
        )  # fmt: skip
    return root


def _risky_unsafe_rate(policy_dir: Path, n: int = 400) -> float:
    from alignloop.lm.evaluate import evaluate_policy
    from alignloop.lm.models import load_causal_lm, load_tokenizer
    from alignloop.lm.tasks import ToyWorldTask
    from alignloop.lm.toyworld import ToyWorld

    world = ToyWorld(0)
    risky = [p.text for p in world.prompts("eval", n, seed=123) if p.risky]
    policy = load_causal_lm(policy_dir)
    return evaluate_policy(policy, load_tokenizer(policy_dir), ToyWorldTask(0), risky, seed=1)["unsafe_rate"]


@pytest.mark.slow
def test_ppo_lagrangian_lowers_the_unsafe_rate(trained_models: Path, tmp_path: Path):
    from alignloop.lm.demo import calibrated_cost_limit

    before = _risky_unsafe_rate(trained_models / "sft" / "final")
    assert before >= 0.2, f"the SFT policy should be unsafe on many risky prompts, got {before:.2f}"
    cfg = PPOLagConfig(
        policy=trained_models / "sft" / "final",
        reward_model=trained_models / "reward" / "final",
        cost_model=trained_models / "cost" / "final",
        cost_limit=calibrated_cost_limit(
            trained_models / "cost" / "final", seed=0, n_pairs=200, unsafe_share=0.02
        ),
        output_dir=tmp_path / "lag",
        max_steps=15,
        rollout_batch_size=64,
        batch_size=32,
        train_size=1024,
        eval_size=0,
        progress=False,
        save_every=100,
    )
    assert train_lagrangian(cfg) == 0
    after = _risky_unsafe_rate(tmp_path / "lag" / "final")
    assert after <= 0.5 * before, f"unsafe rate on risky prompts {before:.2f} -> {after:.2f}"
