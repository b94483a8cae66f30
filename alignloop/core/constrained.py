"""First-order constrained policy optimisation and safety-budget augmentation, as pure functions.

- FOCOPS (Zhang, Vuong and Ross 2020, "First Order Constrained Optimization in Policy Space"):
  the policy is fitted to the optimal non-parametric update by minimising a per-state KL minus
  a tempered advantage, only on states still inside the trust region (`focops_loss`);
- CUP (Yang et al. 2022, "Constrained Update Projection Approach to Safe Policy Optimization"):
  after a PPO step on the reward, a projection step lowers the cost surrogate while staying
  close to the improved policy (`cup_projection_loss`);
- Sauté RL (Sootla et al. 2022, "Sauté RL: Almost Surely Safe Reinforcement Learning Using
  State Augmentation"): the remaining safety budget joins the state, and once it is spent every
  reward is replaced by a fixed unsafe reward (`saute_budget`, `saute_next_budget`,
  `saute_reward`). Those three work on floats, numpy arrays and tensors alike.

The losses return ``(loss, metrics)`` like `alignloop.core.losses`.
"""

from __future__ import annotations

from typing import TypeVar

import torch
from torch import Tensor

__all__ = [
    "cup_projection_loss",
    "focops_loss",
    "saute_budget",
    "saute_next_budget",
    "saute_reward",
]

Metrics = dict[str, Tensor]
Value = TypeVar("Value")  # a float, a numpy array or a tensor


def focops_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    kl: Tensor,
    advantages: Tensor,
    *,
    temperature: float,
    kl_bound: float,
) -> tuple[Tensor, Metrics]:
    """The FOCOPS policy loss (Zhang et al. 2020, eq. 11 and their Algorithm 1), per state
    ``s`` and sampled action ``a``:

        loss = mean [ (KL(pi_theta || pi_k)[s] - ratio(s, a) * A(s, a) / temperature) * 1{KL[s] <= kl_bound} ]

    with ``ratio = exp(logprobs - old_logprobs)`` and ``A`` the advantage of the Lagrangian
    (``A_r - nu A_c``; the caller mixes it). States whose KL already exceeds ``kl_bound`` (the
    paper's ``delta``; its code calls it ``eta``) are left out of the gradient. ``temperature``
    is the paper's ``lambda``.

    Args:
        logprobs: (B,) log-probs of the actions under the current policy (carry gradient).
        old_logprobs: (B,) under the policy that collected them.
        kl: (B,) KL(pi_theta(s) || pi_k(s)) per state (carries gradient).
        advantages: (B,) the mixed advantages.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    ratio = torch.exp(logprobs - old_logprobs.detach())  # (B,)
    inside = (kl.detach() <= kl_bound).to(kl.dtype)  # (B,) 1 = still in the trust region
    loss = ((kl - ratio * advantages.detach() / temperature) * inside).mean()
    with torch.no_grad():
        metrics = {"kl": kl.mean(), "inside_frac": inside.mean(), "ratio_mean": ratio.mean()}
    return loss, metrics


def cup_projection_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    kl: Tensor,
    cost_advantages: Tensor,
    *,
    lam: float,
    gamma: float,
    gae_lambda: float,
) -> tuple[Tensor, Metrics]:
    """CUP's projection step (Yang et al. 2022, eq. 16, as OmniSafe implements it):

        loss = mean [ lam * (1 - gamma * gae_lambda) / (1 - gamma) * ratio * A_c + KL(pi_theta || pi_old)[s] ]

    where ``pi_old`` is the policy after the reward step, ``ratio = exp(logprobs -
    old_logprobs)`` is taken against the policy that collected the data, and ``lam`` is the
    Lagrange multiplier of the cost constraint. The factor ``(1 - gamma gae_lambda) / (1 -
    gamma)`` turns GAE cost advantages into the scale of the discounted cost.

    Args:
        logprobs: (B,) log-probs under the current policy (carry gradient).
        old_logprobs: (B,) under the collecting policy.
        kl: (B,) KL(pi_theta(s) || pi_old(s)) (carries gradient).
        cost_advantages: (B,) A_c.
    """
    if not 0 <= gamma < 1:
        raise ValueError(f"gamma must be in [0, 1), got {gamma}")
    coef = (1 - gamma * gae_lambda) / (1 - gamma)
    ratio = torch.exp(logprobs - old_logprobs.detach())  # (B,)
    loss = (lam * coef * ratio * cost_advantages.detach() + kl).mean()
    with torch.no_grad():
        metrics = {"kl": kl.mean(), "cost_surrogate": (ratio * cost_advantages).mean()}
    return loss, metrics


def saute_budget(cost_limit: float, gamma: float, horizon: int) -> float:
    """The discounted safety budget Sauté tracks for an episode-cost limit: the discounted sum
    of ``cost_limit`` spread evenly over ``horizon`` steps,

        cost_limit * (1 - gamma^horizon) / ((1 - gamma) * horizon)

    (OmniSafe's ``SauteAdapter``; ``cost_limit`` itself when ``gamma == 1``)."""
    if cost_limit <= 0:
        raise ValueError(f"the safety budget must be > 0, got {cost_limit}")
    if gamma == 1.0:
        return float(cost_limit)
    return float(cost_limit * (1 - gamma**horizon) / ((1 - gamma) * horizon))


def saute_next_budget(z: Value, cost: Value, budget: float, gamma: float) -> Value:
    """The remaining budget after a step of cost ``cost``, normalised so an episode starts at
    ``z = 1`` (Sootla et al. 2022, eq. 5, divided by the budget):

        z' = (z - cost / budget) / gamma
    """
    return (z - cost / budget) / gamma  # type: ignore[operator,return-value]


def saute_reward(reward: Value, z: Value, unsafe_reward: float) -> Value:
    """The reward Sauté trains on: the task's reward while budget remains (``z > 0``, ``z``
    after the step), else ``unsafe_reward`` (Sootla et al. 2022, eq. 6; their ``-n``)."""
    return reward * (z > 0) + unsafe_reward * (z <= 0)  # type: ignore[operator,return-value]
