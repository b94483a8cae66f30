"""Soft actor-critic (Haarnoja et al. 2018, "Soft Actor-Critic Algorithms and Applications") and
its Lagrangian variant, as pure functions on tensors.

SAC keeps two Q critics and their slowly moving copies (`polyak_update`), fits the critics to
the soft Bellman target (`soft_q_target`), moves a tanh-squashed Gaussian policy
(`squashed_gaussian_logprob`) toward ``exp(Q / alpha)`` (`sac_actor_loss`) and tunes the
temperature alpha so the policy's entropy stays near a target (`temperature_loss`).
SAC-Lagrangian (Ha et al. 2020, "Learning to Walk in the Real World with Minimal Human Effort";
OmniSafe's SACLag) adds a cost critic and ascends ``Q_r - lambda Q_c`` with the multiplier of
`alignloop.core.lagrange`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "polyak_update",
    "sac_actor_loss",
    "soft_q_target",
    "squashed_gaussian_logprob",
    "temperature_loss",
]

Metrics = dict[str, Tensor]
_LOG_2PI = math.log(2 * math.pi)


def squashed_gaussian_logprob(u: Tensor, mu: Tensor, log_std: Tensor) -> Tensor:
    """log pi(a | s) of ``a = tanh(u)``, ``u ~ N(mu, sigma)`` (Haarnoja et al. 2018, appendix C):

        log pi(a) = sum_i [ log N(u_i; mu_i, sigma_i) - log(1 - tanh(u_i)^2) ]

    with ``log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u))``, exact and stable for large
    ``|u|``. ``u``, ``mu``, ``log_std`` (B, A) -> (B,). A rescaling of ``a`` to the action bounds
    adds a constant that cancels in every SAC loss and is left out."""
    z = (u - mu) * torch.exp(-log_std)  # (B, A)
    gauss = -0.5 * z.pow(2) - log_std - 0.5 * _LOG_2PI
    log_det = 2 * (math.log(2.0) - u - F.softplus(-2 * u))  # log(1 - tanh(u)^2)
    return (gauss - log_det).sum(-1)


def soft_q_target(
    rewards: Tensor,
    next_q1: Tensor,
    next_q2: Tensor,
    next_logprobs: Tensor,
    terminated: Tensor,
    *,
    gamma: float,
    alpha: float | Tensor,
) -> Tensor:
    """The soft Bellman target of both Q critics (Haarnoja et al. 2018, eq. 3 with the clipped
    double-Q of Fujimoto et al. 2018):

        y = r + gamma * (1 - terminated) * (min(Q1'(s', a'), Q2'(s', a')) - alpha * log pi(a' | s'))

    with ``a' ~ pi(. | s')`` and the target critics ``Q'``. A time-limit truncation is not a
    termination: it is bootstrapped. All (B,) -> (B,), without gradient."""
    with torch.no_grad():
        soft_v = torch.min(next_q1, next_q2) - alpha * next_logprobs
        return rewards + gamma * (1.0 - terminated.to(rewards.dtype)) * soft_v


def sac_actor_loss(
    logprobs: Tensor,
    q: Tensor,
    alpha: float | Tensor,
    q_cost: Tensor | None = None,
    lam: float = 0.0,
) -> tuple[Tensor, Metrics]:
    """The policy loss of SAC, ``mean(alpha log pi(a|s) - Q(s, a))`` for reparameterised
    ``a ~ pi(.|s)`` and ``Q = min(Q1, Q2)`` (Haarnoja et al. 2018, eq. 7); with a cost critic
    the Lagrangian's, normalised as PPO-Lagrangian's advantage is (OmniSafe's SACLag):

        mean(alpha log pi - Q + lam Q_c) / (1 + lam)

    ``logprobs``, ``q``, ``q_cost`` (B,); ``alpha`` and ``lam`` are constants here."""
    alpha = alpha.detach() if isinstance(alpha, Tensor) else alpha
    loss = (alpha * logprobs - q).mean()
    if q_cost is not None:
        loss = (loss + lam * q_cost.mean()) / (1.0 + lam)
    with torch.no_grad():
        metrics = {"entropy": -logprobs.mean(), "q": q.mean()}
        if q_cost is not None:
            metrics["q_cost"] = q_cost.mean()
    return loss, metrics


def temperature_loss(log_alpha: Tensor, logprobs: Tensor, target_entropy: float) -> Tensor:
    """The temperature's loss (Haarnoja et al. 2018, eq. 18, on ``log alpha`` as
    Stable-Baselines3 and most implementations do): ``-mean(log alpha * (log pi + H_target))``,
    which raises alpha while the entropy ``-log pi`` is below ``target_entropy`` (``-|A|`` by
    default) and lowers it above."""
    return -(log_alpha * (logprobs.detach() + target_entropy)).mean()


@torch.no_grad()
def polyak_update(targets: Iterable[Tensor], sources: Iterable[Tensor], tau: float) -> None:
    """``target <- (1 - tau) target + tau source`` for each pair, in place (the target critics'
    exponential moving average; tau 0.005 in the SAC paper)."""
    targets, sources = list(targets), list(sources)
    if len(targets) != len(sources):
        raise ValueError(f"{len(targets)} targets but {len(sources)} sources")
    torch._foreach_lerp_(targets, sources, tau)
