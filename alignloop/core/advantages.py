"""Advantage estimation, masked statistics and KL estimators.

Every function here is a pure function on tensors. Sequences lie on dim 1: a batch of
``B`` rows, each ``T`` steps long, shape ``(B, T)``. The same code serves

- language-model policies, where a step is a token and ``mask`` is True on response tokens
  (prompt and padding tokens are skipped);
- control policies, where a step is an environment step and ``terminated`` / ``truncated``
  mark the ends of episodes inside a rollout.

The critic-free baselines of the GRPO family work on a score per sampled response, laid out
``(B, G)``: ``B`` prompts, ``G`` responses sampled for each (a group). Their advantage is one
number per response, the same on each of its tokens.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "CONSTRAINED_MIXES",
    "GROUP_STD_EPS",
    "constrained_group_advantages",
    "discounted_returns",
    "gae",
    "group_advantages",
    "informative_groups",
    "kl_penalised_scores",
    "kl_shaped_rewards",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "naive_group_advantages",
    "reinforce_pp_advantages",
    "remax_advantages",
    "rloo_advantages",
]

WHITEN_EPS = 1e-8
"""Added to the variance before dividing by the standard deviation in `masked_whiten`."""


def _check_shape(name: str, x: Tensor | None, shape: torch.Size) -> None:
    if x is not None and x.shape != shape:
        raise ValueError(f"{name} has shape {tuple(x.shape)}, expected {tuple(shape)} (the shape of rewards)")


def gae(
    rewards: Tensor,
    values: Tensor,
    *,
    gamma: float,
    lam: float,
    mask: Tensor | None = None,
    next_values: Tensor | None = None,
    terminated: Tensor | None = None,
    truncated: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016, "High-Dimensional Continuous
    Control Using Generalized Advantage Estimation", eq. 16), computed by the backward recursion

        delta_t = r_t + gamma * (1 - term_t) * V(s_{t+1}) - V(s_t)
        A_t     = delta_t + gamma * lam * (1 - end_t) * A_{t+1}

    where ``end_t = term_t or trunc_t``.

    Args:
        rewards: ``(B, T)`` reward received after step t.
        values: ``(B, T)`` V(s_t) from the critic.
        gamma: discount factor in [0, 1].
        lam: GAE lambda in [0, 1].
        mask: ``(B, T)`` bool, True = a step that counts (for language models: a response
            token). Masked steps get advantage 0 and are skipped by the recursion: a valid step
            takes its ``A_{t+1}`` and, by default, its ``V(s_{t+1})`` from the next *valid* step
            of the same row. ``None`` means every step counts.
        next_values: ``(B, T)`` V(s_{t+1}) for each step. By default the value of the next
            valid step of the row, and 0 after the row's last valid step (a language-model
            response ends with no bootstrap). For control the caller passes the values shifted
            left, with V(final observation) at truncated steps and V(s_T) at the last column.
        terminated: ``(B, T)`` bool, True where the episode terminated after step t: no
            bootstrap from ``next_values`` and no carry of ``A_{t+1}`` across the boundary.
        truncated: ``(B, T)`` bool, True where the episode was cut (time limit) after step t:
            bootstrap from ``next_values[:, t]`` but no carry of ``A_{t+1}`` across the boundary.
            Terminated wins where both are set.

    Flags on masked steps are ignored (they are read at valid steps only).

    Returns:
        ``(advantages, returns)``, both ``(B, T)``. ``advantages`` is 0 on masked steps and
        ``returns = advantages + values`` everywhere (so it equals ``values`` on masked steps,
        and a value loss there is 0). Neither carries gradient.
    """
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be (B, T), got shape {tuple(rewards.shape)}")
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    shape = rewards.shape
    for name, x in (
        ("values", values),
        ("mask", mask),
        ("next_values", next_values),
        ("terminated", terminated),
        ("truncated", truncated),
    ):
        _check_shape(name, x, shape)

    rewards = rewards.detach()
    values = values.detach().to(rewards.dtype)
    batch, horizon = shape
    no_flag = torch.zeros(shape, dtype=torch.bool, device=rewards.device)
    valid = no_flag.logical_not() if mask is None else mask.bool()  # (B, T) True = step counts
    term = no_flag if terminated is None else terminated.bool()  # (B, T)
    trunc = no_flag if truncated is None else truncated.bool()  # (B, T)
    keep_bootstrap = term.logical_not().to(rewards.dtype)  # (B, T) 1 - term_t
    keep_carry = (term | trunc).logical_not().to(rewards.dtype)  # (B, T) 1 - end_t

    advantages = torch.zeros_like(rewards)  # (B, T)
    next_adv = rewards.new_zeros(batch)  # (B,) A at the next valid step, 0 past the end
    next_value = rewards.new_zeros(batch)  # (B,) V at the next valid step, 0 past the end
    for t in range(horizon - 1, -1, -1):
        v_next = next_value if next_values is None else next_values[:, t].detach().to(rewards.dtype)
        delta = rewards[:, t] + gamma * keep_bootstrap[:, t] * v_next - values[:, t]  # (B,)
        adv_t = delta + gamma * lam * keep_carry[:, t] * next_adv  # (B,)
        valid_t = valid[:, t]  # (B,)
        advantages[:, t] = torch.where(valid_t, adv_t, 0.0)
        next_adv = torch.where(valid_t, adv_t, next_adv)
        next_value = torch.where(valid_t, values[:, t], next_value)
    returns = advantages + values  # (B, T)
    return advantages, returns


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``x`` over the entries where ``mask`` is True (``mask`` bool, broadcastable to
    ``x``). Masked entries are never read, so padding may hold inf or NaN.

    With ``dim=None`` the mean is over all valid entries, and an all-False mask raises
    ValueError (there is nothing to average). With ``dim`` set, the mean is taken along that
    dimension; a row with no valid entry gets 0 rather than NaN.
    """
    x, valid = torch.broadcast_tensors(x, mask.bool())
    kept = torch.where(valid, x, torch.zeros_like(x))
    if dim is None:
        count = int(valid.sum().item())
        if count == 0:
            raise ValueError("masked_mean: the mask selects no element")
        return kept.sum() / count
    return kept.sum(dim) / valid.sum(dim).clamp(min=1).to(x.dtype)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of ``x`` over the entries where ``mask`` is True, as a scalar.

    ``unbiased=True`` applies Bessel's correction n / (n - 1), which needs at least two valid
    entries; fewer raise ValueError (never NaN).
    """
    x, valid = torch.broadcast_tensors(x, mask.bool())
    count = int(valid.sum().item())
    needed = 2 if unbiased else 1
    if count < needed:
        kind = "unbiased" if unbiased else "biased"
        raise ValueError(
            f"masked_var: the mask selects {count} element(s); {kind} variance needs at least {needed}"
        )
    mean = torch.where(valid, x, torch.zeros_like(x)).sum() / count
    squared = torch.where(valid, (x - mean) ** 2, torch.zeros_like(x))
    var = squared.sum() / (count - 1 if unbiased else count)
    return var


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True) -> Tensor:
    """Standardise ``x`` with the mean and unbiased variance of its valid entries:
    ``(x - mean) / sqrt(var + WHITEN_EPS)``; with ``shift_mean=False`` the mean is added back
    (only the scale changes, as for cost advantages that must keep their sign).

    Entries where ``mask`` is False are set to 0. Needs at least two valid entries.
    """
    x, valid = torch.broadcast_tensors(x, mask.bool())
    mean = masked_mean(x, valid)
    var = masked_var(x, valid, unbiased=True)
    whitened = (x - mean) * torch.rsqrt(var + WHITEN_EPS)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(valid, whitened, torch.zeros_like(whitened))


# KL(pi || ref) estimators from samples a ~ pi (J. Schulman, "Approximating KL Divergence",
# 2020, http://joschu.net/blog/kl-approx.html). With log_ratio = log pi(a) - log ref(a) and
# r = ref(a) / pi(a) = exp(-log_ratio):
#   k1 = -log r = log_ratio                 unbiased, high variance, can be negative
#   k2 = (log r)^2 / 2                      biased, low variance, >= 0
#   k3 = (r - 1) - log r                    unbiased, low variance, >= 0


def kl_k1(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k1 = log pi(a) - log ref(a), element-wise (same shape as the inputs, e.g. ``(B, T)``)."""
    return logprobs - ref_logprobs


def kl_k2(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k2 = (log pi(a) - log ref(a))^2 / 2, element-wise."""
    return 0.5 * (logprobs - ref_logprobs) ** 2


def kl_k3(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k3 = (r - 1) - log r with r = ref(a) / pi(a), element-wise; computed as
    ``expm1(-d) + d`` with ``d = log pi(a) - log ref(a)`` for precision near 0, and clamped at 0
    so rounding never makes it negative."""
    log_ratio = logprobs - ref_logprobs
    return (torch.expm1(-log_ratio) + log_ratio).clamp(min=0.0)


# ------------------------------------------------------------------------ rewards per token
def kl_shaped_rewards(end_scores: Tensor, kl: Tensor, response_mask: Tensor, kl_coef: float) -> Tensor:
    """Per-token rewards ``(B, T)``: ``-kl_coef * kl`` on every response token plus the end score
    ``(B,)`` on the last one (``response_mask`` True = response token; a negative ``kl_coef``
    gives Safe RLHF's cost stream ``+beta * kl``). Rows need at least one response token."""
    rewards = -kl_coef * kl * response_mask  # (B, T)
    last = response_mask.long().cumsum(-1).argmax(-1)  # (B,) index of the last response token
    return rewards.scatter_add(1, last[:, None], end_scores[:, None].to(rewards.dtype))


def discounted_returns(rewards: Tensor, mask: Tensor, *, gamma: float = 1.0) -> Tensor:
    """``G_t = sum_{s >= t} gamma^(s - t) r_s`` over the valid steps of each row ``(B, T)``
    (GAE with zero values and lambda 1); 0 on masked steps."""
    returns, _ = gae(rewards, torch.zeros_like(rewards), gamma=gamma, lam=1.0, mask=mask)
    return returns


def kl_penalised_scores(end_scores: Tensor, kl: Tensor, mask: Tensor, kl_coef: float) -> Tensor:
    """Sequence scores with the KL penalty in the reward: ``r - kl_coef * sum_t kl_t`` over the
    response tokens (``mask`` True); ``end_scores`` ``(B,)``, ``kl`` ``(B, T)`` -> ``(B,)``.
    This is how RLOO (Ahmadian et al. 2024) and TRL's `RLOOTrainer` put the KL in the reward."""
    return end_scores - kl_coef * (kl * mask).sum(-1)


# ------------------------------------------------------------------------ critic-free baselines
GROUP_STD_EPS = 1e-4
"""Added to the group's standard deviation before dividing by it (as DeepSeekMath's GRPO and
TRL's `GRPOTrainer`), so a group whose scores are all equal gets advantage 0, not NaN."""


def _check_groups(name: str, scores: Tensor, min_size: int) -> None:
    if scores.dim() != 2:
        raise ValueError(
            f"{name} must be (B, G): B prompts, G responses each; got shape {tuple(scores.shape)}"
        )
    if scores.shape[1] < min_size:
        raise ValueError(f"{name}: groups of {scores.shape[1]} response(s); this needs at least {min_size}")


def _standardise_groups(scores: Tensor, eps: float) -> Tensor:
    """``(s - mean_g s) / (std_g s + eps)`` within each row, the unbiased std (``(B, G)``)."""
    return (scores - scores.mean(-1, keepdim=True)) / (scores.std(-1, keepdim=True) + eps)


def group_advantages(scores: Tensor, *, scale: bool, eps: float = GROUP_STD_EPS) -> Tensor:
    """Group-relative advantages ``(B, G)`` of ``scores`` ``(B, G)``.

    GRPO (Shao et al. 2024, "DeepSeekMath", sec. 4.1.2, outcome supervision), ``scale=True``:

        A_ig = (r_ig - mean_j r_ij) / (std_j r_ij + eps)

    with the unbiased standard deviation over the group. Dr. GRPO (Liu et al. 2025,
    "Understanding R1-Zero-Like Training", sec. 3.2), ``scale=False``: ``A_ig = r_ig - mean_j r_ij``,
    without the division, which favours groups whose scores barely differ.
    """
    _check_groups("scores", scores, 2 if scale else 1)
    if scale:
        return _standardise_groups(scores, eps)
    return scores - scores.mean(-1, keepdim=True)


def rloo_advantages(scores: Tensor) -> Tensor:
    """REINFORCE Leave-One-Out (Kool et al. 2019; Ahmadian et al. 2024, "Back to Basics", eq. 6):
    each response's baseline is the mean score of the *other* responses to its prompt,

        A_ig = r_ig - (sum_j r_ij - r_ig) / (G - 1)   =   G / (G - 1) * (r_ig - mean_j r_ij)

    ``scores`` ``(B, G)`` with ``G >= 2`` -> ``(B, G)``."""
    _check_groups("scores", scores, 2)
    group = scores.shape[1]
    return scores - (scores.sum(-1, keepdim=True) - scores) / (group - 1)


def remax_advantages(scores: Tensor, greedy_scores: Tensor) -> Tensor:
    """ReMax (Li et al. 2024, "ReMax", Algorithm 1): the baseline of a sampled response is the
    score of the greedy response to the same prompt, ``A_ig = r_ig - r_i(greedy)``.
    ``scores`` ``(B, G)``, ``greedy_scores`` ``(B,)`` -> ``(B, G)``."""
    _check_groups("scores", scores, 1)
    if greedy_scores.shape != scores.shape[:1]:
        raise ValueError(
            f"greedy_scores has shape {tuple(greedy_scores.shape)}, expected ({scores.shape[0]},): one per prompt"
        )
    return scores - greedy_scores[:, None]


def reinforce_pp_advantages(
    end_scores: Tensor, kl: Tensor, mask: Tensor, *, kl_coef: float, gamma: float = 1.0
) -> Tensor:
    """REINFORCE++ (Hu 2025, "REINFORCE++", sec. 3): the KL is a per-token reward, and the
    baseline is the whole batch's, not the group's. With ``r_t = -kl_coef * kl_t`` on every
    response token plus the end score on the last,

        G_t = sum_{s >= t} gamma^(s - t) r_s,        A_t = (G_t - mean G) / sqrt(var G + eps)

    the mean and variance taken over every response token of the batch (global advantage
    normalisation). ``end_scores`` ``(B,)``, ``kl`` and ``mask`` ``(B, T)`` -> ``(B, T)``, 0 on
    masked tokens."""
    returns = discounted_returns(kl_shaped_rewards(end_scores, kl, mask, kl_coef), mask, gamma=gamma)
    return masked_whiten(returns, mask)


def informative_groups(scores: Tensor) -> Tensor:
    """``(B,)`` True where a group's scores ``(B, G)`` are not all equal. DAPO's dynamic sampling
    (Yu et al. 2025, "DAPO", sec. 3.2) keeps only these: a group of equal scores has advantage
    0 under any group baseline and would only dilute the loss's normalisation."""
    _check_groups("scores", scores, 1)
    return scores.amax(-1) > scores.amin(-1)


def _check_lambda(lam: float | Tensor) -> float:
    value = float(lam)
    if not (value >= 0 and value < float("inf")):
        raise ValueError(f"lam must be a finite number >= 0; got {lam}")
    return value


def constrained_group_advantages(
    reward: Tensor, cost: Tensor, lam: float | Tensor, *, eps: float = GROUP_STD_EPS
) -> Tensor:
    """Constrained GRPO's scalarised advantage (Girgis et al. 2026, "Constrained Group Relative
    Policy Optimization", arXiv 2602.05863, sec. 4): standardise reward and cost *separately*
    within each group, then combine the standardised advantages with the multiplier,

        Z_R = (R - mean_g R) / (std_g R + eps),   Z_C = (C - mean_g C) / (std_g C + eps)
        A   = (Z_R - lam * Z_C) / (1 + lam)

    The paper writes ``A = lam_R Z_R - sum_k lam_k Z_Ck``; with one constraint, the reward's
    weight 1 and both weights divided by their sum ``1 + lam`` (as Safe RLHF normalises its
    mixed advantage), the advantage keeps a scale below 1 however large lam grows, and the
    ratio of the two terms is exactly lam, whatever the spread of reward and cost in the
    group. That ratio is what the Lagrangian asks for; `naive_group_advantages` loses it.
    ``reward``, ``cost`` ``(B, G)``, ``G >= 2``; ``lam >= 0``. -> ``(B, G)``."""
    _check_groups("reward", reward, 2)
    if cost.shape != reward.shape:
        raise ValueError(f"cost has shape {tuple(cost.shape)} but reward has shape {tuple(reward.shape)}")
    value = _check_lambda(lam)
    z_reward = _standardise_groups(reward, eps)  # (B, G)
    z_cost = _standardise_groups(cost, eps)  # (B, G)
    return (z_reward - value * z_cost) / (1.0 + value)


def naive_group_advantages(
    reward: Tensor, cost: Tensor, lam: float | Tensor, *, eps: float = GROUP_STD_EPS
) -> Tensor:
    """The naive combination that arXiv 2602.05863 shows breaks the Lagrangian trade-off
    ("scalarised rewards", its Theorem 4.1): mix first, ``S = R - lam * C``, then standardise
    ``S`` within each group as GRPO does, ``A = (S - mean_g S) / (std_g S + eps)``.

    Written out, ``A = (sigma_R Z_R - lam sigma_C Z_C) / sigma_S``: the cost's effective weight
    is ``lam * sigma_C / sigma_R``, so where the cost barely varies within a group (most groups,
    once the policy is mostly safe) lam must grow far beyond its Lagrangian value to act.
    Kept to measure that difference. Shapes and arguments as `constrained_group_advantages`."""
    _check_groups("reward", reward, 2)
    if cost.shape != reward.shape:
        raise ValueError(f"cost has shape {tuple(cost.shape)} but reward has shape {tuple(reward.shape)}")
    return _standardise_groups(reward - _check_lambda(lam) * cost, eps)


CONSTRAINED_MIXES = {"constrained": constrained_group_advantages, "naive": naive_group_advantages}
"""How Safe GRPO combines reward and cost into one advantage: ``--advantage-mix``."""
