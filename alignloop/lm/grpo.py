"""GRPO and its variants (Dr. GRPO, DAPO), RLOO, REINFORCE++, ReMax and Safe GRPO: the commands.

Each method is a config and a baseline, a few lines on `core.advantages`; the loop that samples,
scores, updates and saves is `alignloop.lm.critic_free.run`, the same for all of them.

- GRPO (Shao et al. 2024): each response against its group's mean, divided by the group's std;
  ``--loss dr-grpo`` (Liu et al. 2025) drops the std and the per-response length normalisation,
  ``--loss dapo`` (Yu et al. 2025) averages over tokens, clips higher and drops groups of equal
  scores.
- RLOO (Ahmadian et al. 2024): against the mean of the other responses to the same prompt, the
  KL in the reward.
- REINFORCE++ (Hu 2025): per-token KL rewards, returns whitened over the whole batch.
- ReMax (Li et al. 2024): against the reward of the prompt's greedy response.
- Safe GRPO: GRPO under ``E[cost] <= cost_limit``; reward and cost standardised apart and mixed
  by the Lagrange multiplier (Girgis et al. 2026, arXiv 2602.05863), lambda moved by the mean
  cost of recent responses (`core.lagrange`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from torch import Tensor

from alignloop.core.advantages import (
    CONSTRAINED_MIXES,
    group_advantages,
    reinforce_pp_advantages,
    remax_advantages,
    rloo_advantages,
)
from alignloop.core.lagrange import LagrangeMethod
from alignloop.lm.critic_free import Advantage, Constraint, CriticFreeConfig, Scored, implied, run


@dataclass(frozen=True)
class GRPOConfig(CriticFreeConfig):
    """GRPO: group-relative advantages, no critic (Dr. GRPO and DAPO through --loss)."""

    scale_rewards: bool | None = None
    """Divide by the group's std (GRPO); None = yes except with --loss dr-grpo."""


@dataclass(frozen=True)
class RLOOConfig(CriticFreeConfig):
    """RLOO: each response's baseline is the mean reward of the other responses to its prompt."""

    output_dir: Path = Path("runs/rloo")
    """Run folder: checkpoints/, metrics.jsonl, tb/ and the final policy in final/."""
    kl_penalty: Literal["loss", "reward"] = "reward"
    """Where the KL goes: a k3 term of the loss, or subtracted from the reward (k1)."""


@dataclass(frozen=True)
class ReinforcePPConfig(CriticFreeConfig):
    """REINFORCE++: per-token KL rewards, returns whitened over the whole batch (a global baseline)."""

    output_dir: Path = Path("runs/reinforce-pp")
    """Run folder: checkpoints/, metrics.jsonl, tb/ and the final policy in final/."""
    group_size: int = 1
    """G: responses sampled for each prompt (the baseline is the batch's, so 1 is enough)."""
    rollout_batch_size: int = 128
    """Prompts per iteration, over all processes; each gets group_size responses."""
    kl_penalty: Literal["loss", "reward"] = "reward"
    """Where the KL goes: a k3 term of the loss, or per-token rewards (k1), as REINFORCE++."""
    kl_coef: float = 0.01
    """beta: weight of the KL to the reference (0 = none, and no reference model is loaded)."""
    gamma: float = 1.0
    """Discount of the per-token returns."""


@dataclass(frozen=True)
class ReMaxConfig(CriticFreeConfig):
    """ReMax: each prompt's baseline is the reward of its greedy response."""

    output_dir: Path = Path("runs/remax")
    """Run folder: checkpoints/, metrics.jsonl, tb/ and the final policy in final/."""
    group_size: int = 1
    """G: responses sampled for each prompt, besides the greedy one."""
    rollout_batch_size: int = 128
    """Prompts per iteration, over all processes; each gets group_size responses."""


@dataclass(frozen=True)
class GRPOLagConfig(GRPOConfig):
    """Safe GRPO: GRPO with a cost model and a Lagrange multiplier holding the mean cost under a limit."""

    output_dir: Path = Path("runs/grpo-lag")
    """Run folder: checkpoints/, metrics.jsonl, tb/ and the final policy in final/."""
    cost_model: tuple[Path, ...] = (Path("runs/cost/final"),)
    """Cost model folders (`alignloop train cost`), any number; `--cost-model` alone for none."""
    cost_function: tuple[str, ...] = ()
    """Python cost functions (module:function), called as the reward functions; > 0 = unsafe."""
    cost_weights: tuple[float, ...] = ()
    """One weight per cost model, then per cost function (none = all 1); the cost is the sum."""
    cost_limit: float = 0.0
    """d: the limit on the expected cost (cost 0 is the safe/unsafe boundary); with
    --violation-threshold, the share of responses allowed to violate it."""
    violation_threshold: float | None = None
    """None: constrain the mean cost. A number: constrain the violation rate, the indicator
    costs of arXiv 2602.05863: a response costs 1 when its summed cost is above this (0 is a
    cost model's safe/unsafe boundary; below 0 leaves a margin), else 0."""
    cost_floor: float | None = None
    """Without --violation-threshold: summed costs below this are raised to it (None = none), so
    only unsafe-looking responses move the mean cost (`core.lagrange.floored_cost`)."""
    advantage_mix: Literal["constrained", "naive"] = "constrained"
    """constrained: (Z_R - lambda Z_C) / (1 + lambda) from separately standardised reward and cost
    (arXiv 2602.05863); naive: standardise R - lambda C within the group."""
    lambda_init: float = 1.0
    """Initial Lagrange multiplier."""
    lambda_lr: float = 0.1
    """Step size of the multiplier (on log lambda for the log method)."""
    lambda_max: float = 5.0
    """Upper bound on the multiplier."""
    lambda_delay: int = 0
    """Iterations before the multiplier starts to move."""
    lambda_method: LagrangeMethod = "log"
    """Multiplier update rule."""
    cost_window: int = 2
    """J_c is the mean cost of the responses of this many recent iterations."""


# ------------------------------------------------------------------------ baselines
def grpo_advantage(scale: bool) -> Advantage:
    return lambda s: group_advantages(s.sequence_reward(), scale=scale).flatten()


def rloo_advantage(s: Scored) -> Tensor:
    return rloo_advantages(s.sequence_reward()).flatten()


def remax_advantage(s: Scored) -> Tensor:
    assert s.greedy_reward is not None
    return remax_advantages(s.sequence_reward(), s.greedy_reward).flatten()


def reinforce_pp_advantage(gamma: float) -> Advantage:
    return lambda s: reinforce_pp_advantages(
        s.reward.flatten(), s.kl, s.mask, kl_coef=s.kl_in_reward, gamma=gamma
    )


def constrained_advantage(mix: str) -> Advantage:
    combine = CONSTRAINED_MIXES[mix]

    def advantage(s: Scored) -> Tensor:
        assert s.cost is not None
        return combine(s.sequence_reward(), s.cost, s.lam).flatten()

    return advantage


# ------------------------------------------------------------------------ commands
def train(cfg: GRPOConfig) -> int:
    """`alignloop train grpo`: GRPO, Dr. GRPO or DAPO with reward models and functions."""
    scale = implied(cfg, "scale_rewards", cfg.scale_rewards)
    return run(
        cfg, "train grpo", advantage=grpo_advantage(scale), description=cfg.loss.upper(), minimum_group=2
    )


def train_rloo(cfg: RLOOConfig) -> int:
    """`alignloop train rloo`: REINFORCE leave-one-out."""
    return run(cfg, "train rloo", advantage=rloo_advantage, description="RLOO", minimum_group=2)


def train_reinforce_pp(cfg: ReinforcePPConfig) -> int:
    """`alignloop train reinforce-pp`: REINFORCE++ with a global baseline."""
    return run(
        cfg, "train reinforce-pp", advantage=reinforce_pp_advantage(cfg.gamma), description="REINFORCE++"
    )


def train_remax(cfg: ReMaxConfig) -> int:
    """`alignloop train remax`: the greedy response as the baseline."""
    return run(cfg, "train remax", advantage=remax_advantage, description="ReMax", greedy_baseline=True)


def train_lagrangian(cfg: GRPOLagConfig) -> int:
    """`alignloop train grpo-lag`: Safe GRPO, GRPO under a cost limit with a Lagrange multiplier."""
    constraint = Constraint(
        models=cfg.cost_model,
        functions=cfg.cost_function,
        weights=cfg.cost_weights,
        cost_limit=cfg.cost_limit,
        lagrange={
            "method": cfg.lambda_method,
            "init": cfg.lambda_init,
            "lr": cfg.lambda_lr,
            "max_value": cfg.lambda_max,
            "delay": cfg.lambda_delay,
        },
        window=cfg.cost_window,
        violation_threshold=cfg.violation_threshold,
        floor=cfg.cost_floor,
    )
    return run(
        cfg,
        "train grpo-lag",
        advantage=constrained_advantage(cfg.advantage_mix),
        description=f"Safe GRPO ({cfg.advantage_mix})",
        minimum_group=2,
        constraint=constraint,
    )
