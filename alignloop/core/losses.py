"""Losses shared by every alignloop trainer, as pure functions on tensors.

Every loss returns ``(loss, metrics)``: ``loss`` is a scalar tensor that carries gradient,
``metrics`` a dict of detached scalar tensors for logging (nothing is read back from them).

Shapes: ``B`` is the batch, ``T`` the sequence (tokens, or environment steps), ``V`` the
vocabulary. Sequence log-probabilities ``*_logps`` are the sum over the response tokens of
log pi(token | context), shape ``(B,)``. A ``mask`` is True on an element that counts
(for language models: a response token); ``None`` means everything counts.

The preference losses report the reward each one implies (for DPO, ``beta * (log pi(y|x) -
log ref(y|x))``): its mean over chosen and rejected responses (``rewards/chosen``,
``rewards/rejected``), the mean margin (``rewards/margin``) and the fraction of pairs where the
chosen one strictly wins (``rewards/accuracy``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from alignloop.core.advantages import kl_k3, masked_mean

__all__ = [
    "DPO_LOSSES",
    "GRPO_LOSSES",
    "LossTotals",
    "bradley_terry_loss",
    "cost_model_loss",
    "dpo_hinge_loss",
    "dpo_ipo_loss",
    "dpo_loss",
    "dpo_robust_loss",
    "dpo_sigmoid_loss",
    "dapo_loss",
    "dr_grpo_loss",
    "entropy_from_logits",
    "grpo_loss",
    "kto_loss",
    "orpo_loss",
    "plackett_luce_loss",
    "ppo_policy_loss",
    "simpo_loss",
    "step_cost_loss",
    "value_loss",
]

Metrics = dict[str, Tensor]

ORPO_MAX_MEAN_LOGP = -1e-6
"""`orpo_loss` clamps the per-token mean log-probability to at most this value, so that a
response with probability 1 (infinite odds) gives a finite loss instead of NaN."""


def _check_same_shape(**tensors: Tensor) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
        raise ValueError(f"these tensors must have the same shape: {listed}")


def _check_positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")


def _pair_metrics(chosen_rewards: Tensor, rejected_rewards: Tensor) -> Metrics:
    """Mean reward of chosen and rejected, mean margin and accuracy; inputs (B,)."""
    chosen_rewards, rejected_rewards = chosen_rewards.detach(), rejected_rewards.detach()
    return {
        "rewards/chosen": chosen_rewards.mean(),
        "rewards/rejected": rejected_rewards.mean(),
        "rewards/margin": (chosen_rewards - rejected_rewards).mean(),
        "rewards/accuracy": (chosen_rewards > rejected_rewards).float().mean(),
    }


def _score_l2(score_l2: float, *scores: Tensor) -> Tensor:
    """``score_l2`` times the mean squared score over every score given (each (B,))."""
    return score_l2 * torch.cat([s.reshape(-1) for s in scores]).square().mean()


# --- reward and cost models ------------------------------------------------------------------


def bradley_terry_loss(
    chosen_scores: Tensor,
    rejected_scores: Tensor,
    *,
    margin: Tensor | float | None = None,
    score_l2: float = 0.0,
) -> tuple[Tensor, Metrics]:
    """Bradley-Terry reward-model loss (Ouyang et al. 2022, InstructGPT, eq. 1):

        loss = -mean log sigmoid(r_chosen - r_rejected - margin) + score_l2 * mean(r^2)

    ``margin`` (a float or a (B,) tensor) is the preference-strength margin of Llama 2
    (Touvron et al. 2023, eq. 2); ``None`` means 0. ``score_l2`` adds the mean of the squared
    scores over all 2B scores (the score regulariser of Safe RLHF's reward model), which pins
    the otherwise free offset of the scores near 0.

    Args:
        chosen_scores: (B,) score of the preferred response.
        rejected_scores: (B,) score of the other response.
    """
    _check_same_shape(chosen_scores=chosen_scores, rejected_scores=rejected_scores)
    diff = chosen_scores - rejected_scores  # (B,)
    if margin is not None:
        diff = diff - margin
    loss = -F.logsigmoid(diff).mean()
    if score_l2:
        loss = loss + _score_l2(score_l2, chosen_scores, rejected_scores)
    return loss, _pair_metrics(chosen_scores, rejected_scores)


def cost_model_loss(
    unsafer_costs: Tensor,
    safer_costs: Tensor,
    unsafer_sign: Tensor,
    safer_sign: Tensor,
    *,
    ranked: Tensor | None = None,
    score_l2: float = 0.0,
) -> tuple[Tensor, Metrics]:
    """Safe RLHF cost-model loss (Dai et al. 2023, "Safe RLHF", sec. 3.2, eq. 6):

        loss = -mean[ log sigmoid(c_unsafer - c_safer)
                      + log sigmoid(s_safer * c_safer) + log sigmoid(s_unsafer * c_unsafer) ]
               + score_l2 * mean(c^2)

    with the safety sign s = +1 for a response labelled unsafe and -1 for a safe one. The first
    term ranks the pair (Bradley-Terry); the two sign terms push unsafe costs above 0 and safe
    costs below 0, so cost 0 is the safe/unsafe boundary (and a cost limit of 0 means "safe").

    Args:
        unsafer_costs: (B,) cost of the response judged less safe.
        safer_costs: (B,) cost of the response judged safer.
        unsafer_sign: (B,) +1 / -1 safety sign of the less safe response.
        safer_sign: (B,) +1 / -1 safety sign of the safer response.
        ranked: optional (B,) bool; where False the pair is a tie (neither is safer), so only
            its two sign terms count and the ranking term is left out for that row.

    Raises:
        ValueError: a sign other than +1 / -1, or an inconsistent ranked pair (the safer
            response labelled unsafe while the less safe one is labelled safe).
    """
    _check_same_shape(
        unsafer_costs=unsafer_costs, safer_costs=safer_costs, unsafer_sign=unsafer_sign, safer_sign=safer_sign
    )
    for name, sign in (("unsafer_sign", unsafer_sign), ("safer_sign", safer_sign)):
        if not bool(((sign == 1) | (sign == -1)).all()):
            raise ValueError(f"{name} must hold only +1 (unsafe) or -1 (safe), got {sign.tolist()}")
    if ranked is None:
        ranked = torch.ones_like(unsafer_costs, dtype=torch.bool)
    _check_same_shape(unsafer_costs=unsafer_costs, ranked=ranked)
    inconsistent = (safer_sign == 1) & (unsafer_sign == -1) & ranked  # (B,)
    if bool(inconsistent.any()):
        rows = inconsistent.nonzero().flatten().tolist()
        raise ValueError(
            f"inconsistent safety labels in rows {rows}: the safer response is labelled unsafe "
            "while the less safe one is labelled safe"
        )
    s_unsafer = unsafer_sign.to(unsafer_costs.dtype)  # (B,)
    s_safer = safer_sign.to(safer_costs.dtype)  # (B,)
    per_pair = (
        -F.logsigmoid(unsafer_costs - safer_costs) * ranked.to(unsafer_costs.dtype)
        - F.logsigmoid(s_safer * safer_costs)
        - F.logsigmoid(s_unsafer * unsafer_costs)
    )  # (B,)
    loss = per_pair.mean()
    if score_l2:
        loss = loss + _score_l2(score_l2, unsafer_costs, safer_costs)
    costs = torch.cat([unsafer_costs, safer_costs]).detach()  # (2B,)
    signs = torch.cat([s_unsafer, s_safer]).detach()  # (2B,)
    metrics = {
        "costs/unsafer": unsafer_costs.detach().mean(),
        "costs/safer": safer_costs.detach().mean(),
        "costs/margin": (unsafer_costs - safer_costs).detach()[ranked].mean(),  # ranked pairs only
        "costs/accuracy": (unsafer_costs > safer_costs).detach()[ranked].float().mean(),
        # a cost is on the right side of 0 when its sign matches the label
        "costs/sign_accuracy": (torch.sign(costs) == signs).float().mean(),
    }
    return loss, metrics


def plackett_luce_loss(
    scores: Tensor,
    ranks: Tensor,
    mask: Tensor | None = None,
    *,
    score_l2: float = 0.0,
) -> tuple[Tensor, Metrics]:
    """Plackett-Luce reward-model loss over rankings of up to K candidates (Plackett 1975;
    Luce 1959; as the ranking objective of Rafailov et al. 2023, "DPO", appendix A.3):

        loss = -mean_b sum_{i} [ r_i - log( exp(r_i) + sum_{j: rank_j > rank_i} exp(r_j) ) ]
               + score_l2 * mean(r^2)

    A ranking is a sequence of choices: the best candidate is chosen from all of them, the next
    from those left, and so on; the last term is 0. Equal ranks (ties) say nothing about the
    order of the tied candidates, as a tie says nothing anywhere in alignloop (it gives no
    preference pair, `feedback.pairs`): each tied candidate is chosen against the candidates
    ranked below it, not against its tied peers. Without ties this is the exact Plackett-Luce
    likelihood; a tie of two gives 0, like a tied pair; for two candidates without a tie it is
    Bradley-Terry, ``-log sigmoid(r_winner - r_loser)``, and a batch of untied pairs goes through
    `bradley_terry_loss` itself (score_l2 over the winners' then the losers' scores), so that a
    pairwise project trains on exactly what a Bradley-Terry reward model trains on. Each ranking's terms are summed (a
    ranking of k says k - 1 choices) and rankings are averaged.

    Args:
        scores: (B, K) score of each candidate.
        ranks: (B, K) integer rank of each candidate, 1 = best; equal ranks are ties.
        mask: optional (B, K) bool, True on a candidate that exists (rankings of fewer than K
            candidates are padded); None means every candidate counts.

    Metrics: ``rewards/accuracy``, the share of the implied pairs (different ranks) whose
    better candidate scores strictly higher, and ``rewards/margin``, their mean score gap.
    """
    _check_same_shape(scores=scores, ranks=ranks)
    if scores.dim() != 2:
        raise ValueError(f"scores must be (B, K), got shape {tuple(scores.shape)}")
    if mask is None:
        mask = torch.ones_like(scores, dtype=torch.bool)
    _check_same_shape(scores=scores, mask=mask)
    if scores.shape[1] == 2 and bool(mask.all()) and bool((ranks[:, 0] != ranks[:, 1]).all()):
        # untied pairs: Bradley-Terry, computed as `bradley_terry_loss` computes it (the same
        # loss and gradients to the last bit, not only the same function)
        first_better = ranks[:, 0] < ranks[:, 1]  # (B,)
        better = torch.where(first_better, scores[:, 0], scores[:, 1])
        worse = torch.where(first_better, scores[:, 1], scores[:, 0])
        loss, metrics = bradley_terry_loss(better, worse, score_l2=score_l2)
        return loss, {k: metrics[k] for k in ("rewards/accuracy", "rewards/margin")}
    # compete[b, i, j]: candidate j is among those candidate i is chosen against (itself included)
    compete = mask[:, None, :] & (ranks[:, None, :] > ranks[:, :, None])  # (B, K, K) ranked below i
    compete = compete | torch.eye(scores.shape[1], dtype=torch.bool, device=scores.device)
    others = scores[:, None, :].expand_as(compete).masked_fill(~compete, float("-inf"))  # (B, K, K)
    terms = scores - torch.logsumexp(others, dim=-1)  # (B, K) log P(i chosen from its set)
    loss = -torch.where(mask, terms, torch.zeros_like(terms)).sum(-1).mean()
    if score_l2:
        loss = loss + score_l2 * scores[mask].square().mean()
    with torch.no_grad():
        better = mask[:, :, None] & mask[:, None, :] & (ranks[:, :, None] < ranks[:, None, :])  # (B, K, K)
        gap = scores[:, :, None] - scores[:, None, :]  # (B, K, K) score of i minus score of j
        pairs = better.sum().clamp(min=1)
        metrics = {
            "rewards/accuracy": ((gap > 0) & better).sum() / pairs,
            "rewards/margin": torch.where(better, gap, torch.zeros_like(gap)).sum() / pairs,
        }
    return loss, metrics


def step_cost_loss(
    step_costs: Tensor, step_unsafe: Tensor, mask: Tensor | None = None
) -> tuple[Tensor, Metrics]:
    """The sign terms of the Safe RLHF cost loss (`cost_model_loss`), one per labelled step:

        loss = -mean_t log sigmoid(s_t * c_t),   s_t = +1 for a step labelled unsafe, -1 safe

    the cross-entropy of a per-step unsafe logit ``c_t`` with per-step labels, such as those of
    a mark on a clip (`feedback.pairs.step_labels`: the steps from the marked frame on are
    unsafe, every step of a clip marked safe throughout is safe). Cost 0 stays the boundary.

    Args:
        step_costs: (..., T) per-step cost (logit of "this step is unsafe").
        step_unsafe: (..., T) labels, 1 / True = unsafe, 0 / False = safe.
        mask: optional (..., T) bool, True on a labelled step; None means every step.
    """
    _check_same_shape(step_costs=step_costs, step_unsafe=step_unsafe)
    sign = 2.0 * step_unsafe.to(step_costs.dtype) - 1.0  # +1 unsafe, -1 safe
    per_step = -F.logsigmoid(sign * step_costs)
    loss = _mean(per_step, mask)
    with torch.no_grad():
        right = ((step_costs > 0) == step_unsafe.bool()).to(step_costs.dtype)
        metrics = {"costs/step_sign_accuracy": _mean(right, mask)}
    return loss, metrics


# --- the DPO family --------------------------------------------------------------------------


def _dpo_logits(
    pi_chosen_logps: Tensor, pi_rejected_logps: Tensor, ref_chosen_logps: Tensor, ref_rejected_logps: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """h = (log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l)); all (B,)."""
    _check_same_shape(
        pi_chosen_logps=pi_chosen_logps,
        pi_rejected_logps=pi_rejected_logps,
        ref_chosen_logps=ref_chosen_logps,
        ref_rejected_logps=ref_rejected_logps,
    )
    chosen_logratios = pi_chosen_logps - ref_chosen_logps  # (B,)
    rejected_logratios = pi_rejected_logps - ref_rejected_logps  # (B,)
    return chosen_logratios - rejected_logratios, chosen_logratios, rejected_logratios


def dpo_sigmoid_loss(
    pi_chosen_logps: Tensor,
    pi_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float,
    label_smoothing: float = 0.0,
) -> tuple[Tensor, Metrics]:
    """DPO (Rafailov et al. 2023, "Direct Preference Optimization", eq. 7):

        loss = -mean log sigmoid(beta * h),   h = log-ratio(chosen) - log-ratio(rejected)

    With ``label_smoothing = eps > 0`` this is conservative DPO (cDPO; Mitchell 2023, "A note on
    DPO with noisy preferences"): the label is taken as flipped with probability eps, giving the
    cross-entropy against the smoothed label,
    ``-(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h)``.
    All inputs (B,) summed sequence log-probs.
    """
    _check_positive("beta", beta)
    if not 0.0 <= label_smoothing <= 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5], got {label_smoothing}")
    h, chosen_lr, rejected_lr = _dpo_logits(
        pi_chosen_logps, pi_rejected_logps, ref_chosen_logps, ref_rejected_logps
    )
    losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(
        -beta * h
    )  # (B,)
    return losses.mean(), _pair_metrics(beta * chosen_lr, beta * rejected_lr)


def dpo_ipo_loss(
    pi_chosen_logps: Tensor,
    pi_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float,
    label_smoothing: float = 0.0,
) -> tuple[Tensor, Metrics]:
    """IPO (Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human
    Preferences", eq. 17, with tau = ``beta``):

        loss = mean (h - 1 / (2 beta))^2

    ``h`` is formed from the log-probs as given. The paper uses sequence log-probs; to regress
    per-token averages instead (as some implementations do, making beta independent of the
    response length), pass log-probs divided by the response lengths. ``label_smoothing`` must
    be 0 (IPO has no smoothed form here); it is accepted so that every ``DPO_LOSSES`` entry
    takes the same arguments.
    """
    _check_positive("beta", beta)
    if label_smoothing != 0.0:
        raise ValueError(f"label_smoothing is not defined for the 'ipo' loss; got {label_smoothing}, use 0")
    h, chosen_lr, rejected_lr = _dpo_logits(
        pi_chosen_logps, pi_rejected_logps, ref_chosen_logps, ref_rejected_logps
    )
    losses = (h - 1 / (2 * beta)) ** 2  # (B,)
    return losses.mean(), _pair_metrics(beta * chosen_lr, beta * rejected_lr)


def dpo_hinge_loss(
    pi_chosen_logps: Tensor,
    pi_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float,
    label_smoothing: float = 0.0,
) -> tuple[Tensor, Metrics]:
    """Hinge loss on the reference-adjusted log-ratio, after SLiC (Zhao et al. 2023,
    "SLiC-HF", eq. 1, the rank calibration loss max(0, delta - log pi(y_w) + log pi(y_l))):

        loss = mean max(0, 1 - beta * h)

    Deviation from SLiC-HF: the log-probs are taken relative to the reference (``h`` as in DPO)
    and the margin is delta = 1 / beta; SLiC-HF's cross-entropy regulariser is not included
    (add an SFT term in the trainer if wanted). ``label_smoothing`` must be 0.
    """
    _check_positive("beta", beta)
    if label_smoothing != 0.0:
        raise ValueError(f"label_smoothing is not defined for the 'hinge' loss; got {label_smoothing}, use 0")
    h, chosen_lr, rejected_lr = _dpo_logits(
        pi_chosen_logps, pi_rejected_logps, ref_chosen_logps, ref_rejected_logps
    )
    losses = torch.relu(1 - beta * h)  # (B,)
    return losses.mean(), _pair_metrics(beta * chosen_lr, beta * rejected_lr)


def dpo_robust_loss(
    pi_chosen_logps: Tensor,
    pi_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float,
    label_smoothing: float = 0.0,
) -> tuple[Tensor, Metrics]:
    """Robust DPO, rDPO (Chowdhury et al. 2024, "Provably Robust DPO: Aligning Language Models
    with Noisy Feedback", sec. 3, the de-biased loss), with ``label_smoothing = eps`` the rate at
    which preference labels are flipped:

        loss = mean [ -(1 - eps) log sigmoid(beta h) + eps log sigmoid(-beta h) ] / (1 - 2 eps)

    Unlike cDPO (``dpo_sigmoid_loss`` with label smoothing), this is an unbiased estimate of the
    clean-label DPO loss under flips at rate eps. It needs eps in [0, 0.5); eps = 0 is DPO.
    """
    _check_positive("beta", beta)
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(
            f"label_smoothing (the flip rate) must be in [0, 0.5) for 'robust', got {label_smoothing}"
        )
    h, chosen_lr, rejected_lr = _dpo_logits(
        pi_chosen_logps, pi_rejected_logps, ref_chosen_logps, ref_rejected_logps
    )
    eps = label_smoothing
    losses = (-(1 - eps) * F.logsigmoid(beta * h) + eps * F.logsigmoid(-beta * h)) / (1 - 2 * eps)  # (B,)
    return losses.mean(), _pair_metrics(beta * chosen_lr, beta * rejected_lr)


class DPOLoss(Protocol):
    def __call__(
        self,
        pi_chosen_logps: Tensor,
        pi_rejected_logps: Tensor,
        ref_chosen_logps: Tensor,
        ref_rejected_logps: Tensor,
        *,
        beta: float,
        label_smoothing: float = 0.0,
    ) -> tuple[Tensor, Metrics]: ...


DPO_LOSSES: dict[str, DPOLoss] = {
    "sigmoid": dpo_sigmoid_loss,
    "ipo": dpo_ipo_loss,
    "hinge": dpo_hinge_loss,
    "robust": dpo_robust_loss,
}
"""The DPO-family losses by name (the ``variant`` of `dpo_loss`)."""


def dpo_loss(
    pi_chosen_logps: Tensor,
    pi_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float,
    variant: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> tuple[Tensor, Metrics]:
    """The DPO-family loss named by ``variant`` (a key of `DPO_LOSSES`); inputs (B,)."""
    if variant not in DPO_LOSSES:
        raise ValueError(f"unknown DPO variant {variant!r}; allowed: {', '.join(DPO_LOSSES)}")
    return DPO_LOSSES[variant](
        pi_chosen_logps,
        pi_rejected_logps,
        ref_chosen_logps,
        ref_rejected_logps,
        beta=beta,
        label_smoothing=label_smoothing,
    )


def simpo_loss(
    pi_chosen_logps: Tensor,
    pi_rejected_logps: Tensor,
    chosen_lengths: Tensor,
    rejected_lengths: Tensor,
    *,
    beta: float,
    gamma: float,
    label_smoothing: float = 0.0,
) -> tuple[Tensor, Metrics]:
    """SimPO (Meng et al. 2024, "SimPO: Simple Preference Optimization with a Reference-Free
    Reward", eq. 6): no reference model; the reward is the length-normalised log-likelihood
    ``beta / |y| * log pi(y|x)`` and the chosen reward must beat the rejected by a margin gamma:

        z = beta * logp_w / |y_w| - beta * logp_l / |y_l| - gamma
        loss = mean[ -(1 - eps) log sigmoid(z) - eps log sigmoid(-z) ]

    ``label_smoothing = eps`` is the conservative (cDPO-style) smoothing; 0 gives eq. 6.

    Args:
        pi_chosen_logps, pi_rejected_logps: (B,) summed response log-probs.
        chosen_lengths, rejected_lengths: (B,) number of response tokens (> 0).
    """
    _check_positive("beta", beta)
    if not 0.0 <= label_smoothing <= 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5], got {label_smoothing}")
    _check_same_shape(
        pi_chosen_logps=pi_chosen_logps,
        pi_rejected_logps=pi_rejected_logps,
        chosen_lengths=chosen_lengths,
        rejected_lengths=rejected_lengths,
    )
    chosen_rewards = beta * pi_chosen_logps / chosen_lengths  # (B,)
    rejected_rewards = beta * pi_rejected_logps / rejected_lengths  # (B,)
    z = chosen_rewards - rejected_rewards - gamma  # (B,)
    losses = -(1 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)  # (B,)
    return losses.mean(), _pair_metrics(chosen_rewards, rejected_rewards)


def _log1mexp(x: Tensor) -> Tensor:
    """log(1 - exp(x)) for x < 0, accurate on both sides of -log 2 (Maechler 2012)."""
    return torch.where(x < -math.log(2), torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def orpo_loss(
    pi_chosen_logps: Tensor,
    pi_rejected_logps: Tensor,
    chosen_lengths: Tensor,
    rejected_lengths: Tensor,
    chosen_nll: Tensor,
    *,
    lam: float,
) -> tuple[Tensor, Metrics]:
    """ORPO (Hong et al. 2024, "ORPO: Monolithic Preference Optimization without Reference
    Model", eqs. 4-7):

        loss = L_SFT + lam * mean -log sigmoid( log odds(y_w) - log odds(y_l) )
        odds(y) = P(y) / (1 - P(y)),  log P(y) = logp(y) / |y|  (per-token mean, eq. 4)

    so ``log odds = m - log(1 - exp(m))`` with m the mean token log-prob. ``chosen_nll`` is the
    SFT negative log-likelihood of the chosen responses (a scalar, or (B,) averaged here); it is
    computed by the caller, who chooses its token averaging. Deviation: m is clamped to at most
    `ORPO_MAX_MEAN_LOGP` so that a probability-1 response does not give inf - inf.

    Args:
        pi_chosen_logps, pi_rejected_logps: (B,) summed response log-probs.
        chosen_lengths, rejected_lengths: (B,) number of response tokens (> 0).
        chosen_nll: () or (B,) SFT loss on the chosen responses.
    """
    _check_positive("lam", lam)
    _check_same_shape(
        pi_chosen_logps=pi_chosen_logps,
        pi_rejected_logps=pi_rejected_logps,
        chosen_lengths=chosen_lengths,
        rejected_lengths=rejected_lengths,
    )
    chosen_mean_logp = (pi_chosen_logps / chosen_lengths).clamp(max=ORPO_MAX_MEAN_LOGP)  # (B,)
    rejected_mean_logp = (pi_rejected_logps / rejected_lengths).clamp(max=ORPO_MAX_MEAN_LOGP)  # (B,)
    log_odds_ratio = (chosen_mean_logp - _log1mexp(chosen_mean_logp)) - (
        rejected_mean_logp - _log1mexp(rejected_mean_logp)
    )  # (B,)
    log_sigmoid_ratio = F.logsigmoid(log_odds_ratio)  # (B,)
    sft = chosen_nll.mean()
    loss = sft - lam * log_sigmoid_ratio.mean()
    metrics = _pair_metrics(lam * chosen_mean_logp, lam * rejected_mean_logp)
    metrics["nll"] = sft.detach()
    metrics["log_odds_ratio"] = log_odds_ratio.detach().mean()
    metrics["log_sigmoid_odds_ratio"] = log_sigmoid_ratio.detach().mean()
    return loss, metrics


def kto_loss(
    pi_logps: Tensor,
    ref_logps: Tensor,
    desirable: Tensor,
    kl_ref: Tensor | float,
    *,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[Tensor, Metrics]:
    """KTO (Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic Optimization",
    eq. 7) on unpaired examples, each marked desirable or undesirable:

        r = log pi(y|x) - log ref(y|x),   z0 = max(kl_ref, 0)  (no gradient)
        v = lambda_D sigmoid(beta (r - z0))   if desirable
            lambda_U sigmoid(beta (z0 - r))   if undesirable
        loss = mean (lambda_y - v)

    ``kl_ref`` is the reference point z0, an estimate of KL(pi || ref) that the caller forms as
    the paper does: the mean of ``log pi - log ref`` over mismatched (x, y') pairs from the same
    batch. It is detached and clamped at 0 here (a KL cannot be negative).

    Args:
        pi_logps, ref_logps: (B,) summed response log-probs under the policy and the reference.
        desirable: (B,) bool, True = a desirable example.
        kl_ref: scalar reference point.
    """
    _check_positive("beta", beta)
    _check_same_shape(pi_logps=pi_logps, ref_logps=ref_logps, desirable=desirable)
    z0 = torch.as_tensor(kl_ref, dtype=pi_logps.dtype, device=pi_logps.device).detach().clamp(min=0.0)
    logratios = pi_logps - ref_logps  # (B,)
    good = desirable.bool()  # (B,) True = desirable
    losses = torch.where(
        good,
        desirable_weight * (1 - torch.sigmoid(beta * (logratios - z0))),
        undesirable_weight * (1 - torch.sigmoid(beta * (z0 - logratios))),
    )  # (B,)
    rewards = beta * logratios.detach()  # (B,)
    n_good = good.sum()
    n_bad = (~good).sum()
    nan = torch.full_like(z0, float("nan"))
    metrics = {
        # NaN when the batch holds no example of that kind
        "rewards/chosen": torch.where(n_good > 0, (rewards * good).sum() / n_good.clamp(min=1), nan),
        "rewards/rejected": torch.where(n_bad > 0, (rewards * ~good).sum() / n_bad.clamp(min=1), nan),
        "kl_ref": z0,
        "desirable_fraction": good.float().mean(),
    }
    return losses.mean(), metrics


# --- PPO -------------------------------------------------------------------------------------


def _mean(x: Tensor, mask: Tensor | None) -> Tensor:
    return x.mean() if mask is None else masked_mean(x, mask)


def _clipped_surrogate(ratio: Tensor, advantages: Tensor, clip_low: float, clip_high: float) -> Tensor:
    """The clipped surrogate per element, as a loss: ``max(-A ratio, -A clip(ratio, 1 - low, 1 + high))``."""
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip_low, 1 + clip_high)
    return torch.max(unclipped, clipped)


def ppo_policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor | None = None,
    *,
    clip_eps: float,
) -> tuple[Tensor, Metrics]:
    """PPO clipped surrogate (Schulman et al. 2017, "Proximal Policy Optimization Algorithms",
    eq. 7), as a loss to minimise, averaged over the elements where ``mask`` is True:

        ratio = exp(logprobs - old_logprobs)
        loss  = mean max(-A ratio, -A clip(ratio, 1 - eps, 1 + eps))

    Metrics: ``clip_frac``, the fraction of elements where the clipped term is the larger one
    (its gradient is cut); ``approx_kl``, the k3 estimate of KL(old || new) from the samples of
    the old policy, mean of (ratio - 1) - log ratio; ``ratio_mean``.

    Args:
        logprobs: (B, T) log pi_theta(a_t | s_t) under the current policy (carries gradient).
        old_logprobs: (B, T) log-probs under the policy that sampled the actions.
        advantages: (B, T) advantage estimates.
        mask: (B, T) True = an element that counts (language models: a response token).
    """
    _check_positive("clip_eps", clip_eps)
    _check_same_shape(logprobs=logprobs, old_logprobs=old_logprobs, advantages=advantages)
    old_logprobs, advantages = old_logprobs.detach(), advantages.detach()
    log_ratio = logprobs - old_logprobs  # (B, T)
    ratio = torch.exp(log_ratio)  # (B, T)
    per_element = _clipped_surrogate(ratio, advantages, clip_eps, clip_eps)  # (B, T)
    loss = _mean(per_element, mask)
    with torch.no_grad():
        metrics = {
            "clip_frac": _mean((per_element > -advantages * ratio).to(ratio.dtype), mask),
            "approx_kl": _mean(kl_k3(old_logprobs, logprobs), mask),
            "ratio_mean": _mean(ratio, mask),
        }
    return loss, metrics


# --- GRPO family -----------------------------------------------------------------------------


@dataclass(frozen=True)
class LossTotals:
    """What a GRPO-family loss divides by, counted over one whole optimiser step (every
    micro-batch of it), so that accumulation and data parallelism give the loss of one batch.

    Under data parallelism each process passes the counts over all processes divided by the
    number of processes: DDP averages the processes' gradients.
    """

    sequences: float
    """Sequences that count (GRPO's 1/G and Dr. GRPO's batch size)."""
    tokens: float
    """Response tokens that count (DAPO's token-level normaliser)."""
    max_length: int
    """The longest a response may be (Dr. GRPO's constant), e.g. ``max_new_tokens``."""


def _grpo_token_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_eps_low: float,
    clip_eps_high: float,
    ref_logprobs: Tensor | None,
    kl_coef: float,
) -> tuple[Tensor, Metrics]:
    """Per-token loss ``(B, T)`` of the GRPO family (0 where ``mask`` is False) and its metrics:

        ratio  = exp(log pi - log pi_old)
        l_t    = max(-A ratio, -A clip(ratio, 1 - eps_low, 1 + eps_high)) + kl_coef * k3_t

    ``k3_t = ref/pi - log(ref/pi) - 1`` on the sampled token (`kl_k3`), the KL to the reference
    as a loss term (DeepSeekMath eq. 4); with ``kl_coef = 0`` or no ``ref_logprobs`` there is none.
    ``advantages`` is ``(B,)`` (one per sequence) or ``(B, T)``."""
    _check_positive("clip_eps_low", clip_eps_low)
    _check_positive("clip_eps_high", clip_eps_high)
    _check_same_shape(logprobs=logprobs, old_logprobs=old_logprobs, mask=mask)
    if kl_coef < 0:
        raise ValueError(f"kl_coef must be >= 0, got {kl_coef}")
    advantages = advantages.detach()
    if advantages.dim() == 1:
        advantages = advantages[:, None]  # (B, 1): the sequence's advantage on each of its tokens
    advantages = advantages.expand_as(logprobs)  # (B, T)
    valid = mask.bool()  # (B, T) True = response token that counts
    ratio = torch.exp(logprobs - old_logprobs.detach())  # (B, T)
    per_token = _clipped_surrogate(ratio, advantages, clip_eps_low, clip_eps_high)  # (B, T)
    kl = None
    if ref_logprobs is not None and kl_coef > 0:
        kl = kl_k3(logprobs, ref_logprobs.detach())  # (B, T) KL(pi || ref), carries gradient
        per_token = per_token + kl_coef * kl
    per_token = torch.where(valid, per_token, torch.zeros_like(per_token))
    with torch.no_grad():
        if valid.any():
            low = (ratio < 1 - clip_eps_low) & (advantages < 0)
            high = (ratio > 1 + clip_eps_high) & (advantages > 0)
            metrics = {
                "clip_ratio/low": masked_mean(low.to(ratio.dtype), valid),
                "clip_ratio/high": masked_mean(high.to(ratio.dtype), valid),
                "approx_kl": masked_mean(kl_k3(old_logprobs.detach(), logprobs), valid),
                "ratio_mean": masked_mean(ratio, valid),
            }
            if kl is not None:
                metrics["kl_ref"] = masked_mean(kl, valid)
        else:  # every sequence dropped (e.g. by dynamic sampling)
            zero = logprobs.new_zeros(())
            metrics = {k: zero for k in ("clip_ratio/low", "clip_ratio/high", "approx_kl", "ratio_mean")}
    return per_token, metrics


def grpo_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_eps_low: float = 0.2,
    clip_eps_high: float = 0.2,
    ref_logprobs: Tensor | None = None,
    kl_coef: float = 0.0,
    totals: LossTotals | None = None,
) -> tuple[Tensor, Metrics]:
    """GRPO's loss (Shao et al. 2024, "DeepSeekMath", eq. 3): the mean of each sequence's
    per-token mean,

        loss = (1 / N) sum_i (1 / |o_i|) sum_t l_it

    with ``l_it`` as in `_grpo_token_loss` and ``N = totals.sequences`` (default: this batch's
    rows). Each sequence weighs the same whatever its length, so a token of a short response
    weighs more than one of a long response (the length bias Dr. GRPO removes).

    Args:
        logprobs: (B, T) log-probs of the sampled tokens under the current policy.
        old_logprobs: (B, T) log-probs under the policy that sampled them.
        advantages: (B,) or (B, T).
        mask: (B, T) True = a response token that counts.
        clip_eps_low, clip_eps_high: the ratio clip range [1 - low, 1 + high].
        ref_logprobs: (B, T) log-probs under the reference, for the k3 KL term.
        kl_coef: weight of the KL term (beta).
        totals: counts over the whole optimiser step.
    """
    per_token, metrics = _grpo_token_loss(
        logprobs, old_logprobs, advantages, mask,
        clip_eps_low=clip_eps_low, clip_eps_high=clip_eps_high, ref_logprobs=ref_logprobs, kl_coef=kl_coef,
    )  # fmt: skip
    per_sequence = masked_mean(per_token, mask, dim=-1)  # (B,)
    sequences = totals.sequences if totals is not None else mask.shape[0]
    return per_sequence.sum() / max(sequences, 1), metrics


def dr_grpo_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_eps_low: float = 0.2,
    clip_eps_high: float = 0.2,
    ref_logprobs: Tensor | None = None,
    kl_coef: float = 0.0,
    totals: LossTotals | None = None,
) -> tuple[Tensor, Metrics]:
    """Dr. GRPO's loss (Liu et al. 2025, "Understanding R1-Zero-Like Training", eq. 3): the
    token sum divided by a constant, the number of sequences times the longest a response may be,

        loss = sum_i sum_t l_it / (N * L)

    ``N = totals.sequences``, ``L = totals.max_length`` (default: this batch's rows and width).
    No length normalisation per sequence (and, with `group_advantages(scale=False)`, no std
    normalisation). Arguments as `grpo_loss`."""
    per_token, metrics = _grpo_token_loss(
        logprobs, old_logprobs, advantages, mask,
        clip_eps_low=clip_eps_low, clip_eps_high=clip_eps_high, ref_logprobs=ref_logprobs, kl_coef=kl_coef,
    )  # fmt: skip
    if totals is None:
        totals = LossTotals(sequences=mask.shape[0], tokens=float(mask.sum()), max_length=mask.shape[1])
    return per_token.sum() / max(totals.sequences * totals.max_length, 1), metrics


def dapo_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_eps_low: float = 0.2,
    clip_eps_high: float = 0.28,
    ref_logprobs: Tensor | None = None,
    kl_coef: float = 0.0,
    totals: LossTotals | None = None,
) -> tuple[Tensor, Metrics]:
    """DAPO's token-level loss (Yu et al. 2025, "DAPO", eq. 8): every response token of the
    batch weighs the same,

        loss = sum_i sum_t l_it / sum_i |o_i|

    the denominator ``totals.tokens`` (default: this batch's). DAPO pairs it with clip-higher,
    a wider upper clip (``clip_eps_high`` 0.28 against ``clip_eps_low`` 0.2) that leaves room to
    raise unlikely tokens. Arguments as `grpo_loss`."""
    per_token, metrics = _grpo_token_loss(
        logprobs, old_logprobs, advantages, mask,
        clip_eps_low=clip_eps_low, clip_eps_high=clip_eps_high, ref_logprobs=ref_logprobs, kl_coef=kl_coef,
    )  # fmt: skip
    tokens = totals.tokens if totals is not None else float(mask.sum())
    return per_token.sum() / max(tokens, 1.0), metrics


class GRPOLoss(Protocol):
    def __call__(
        self,
        logprobs: Tensor,
        old_logprobs: Tensor,
        advantages: Tensor,
        mask: Tensor,
        *,
        clip_eps_low: float = ...,
        clip_eps_high: float = ...,
        ref_logprobs: Tensor | None = None,
        kl_coef: float = 0.0,
        totals: LossTotals | None = None,
    ) -> tuple[Tensor, Metrics]: ...


GRPO_LOSSES: dict[str, GRPOLoss] = {"grpo": grpo_loss, "dr-grpo": dr_grpo_loss, "dapo": dapo_loss}
"""The GRPO-family loss normalisations by name (``--loss``)."""


def value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor | None = None,
    *,
    clip_eps: float | None = None,
) -> tuple[Tensor, Metrics]:
    """Value loss of PPO, half the squared error to the returns, with the optional clipping
    of the value change used by the PPO baselines (Schulman et al. 2017; see Andrychowicz et al.
    2021, "What Matters in On-Policy RL", sec. 3.5):

        loss = 0.5 * mean max((V - R)^2, (V_old + clip(V - V_old, -eps, eps) - R)^2)

    and ``0.5 * mean (V - R)^2`` when ``clip_eps`` is None. Metrics: ``vf_clip_frac`` (fraction
    where the clipped error is the larger one), ``value_mean``, ``value_mse``.

    Args:
        values: (B, T) current value predictions (carry gradient).
        old_values: (B, T) predictions when the rollout was collected.
        returns: (B, T) regression targets.
        mask: (B, T) True = an element that counts.
    """
    _check_same_shape(values=values, old_values=old_values, returns=returns)
    old_values, returns = old_values.detach(), returns.detach()
    unclipped = (values - returns) ** 2  # (B, T)
    if clip_eps is None:
        per_element = unclipped
        clip_frac = torch.zeros((), dtype=values.dtype, device=values.device)
    else:
        _check_positive("clip_eps", clip_eps)
        clipped_values = old_values + torch.clamp(values - old_values, -clip_eps, clip_eps)  # (B, T)
        clipped = (clipped_values - returns) ** 2  # (B, T)
        per_element = torch.max(unclipped, clipped)
        clip_frac = _mean((clipped > unclipped).to(values.dtype), mask).detach()
    loss = 0.5 * _mean(per_element, mask)
    with torch.no_grad():
        metrics = {
            "vf_clip_frac": clip_frac,
            "value_mean": _mean(values, mask),
            "value_mse": _mean(unclipped, mask),
        }
    return loss, metrics


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of the categorical distribution softmax(logits) over the last dimension:
    H = logsumexp(z) - sum softmax(z) * z. ``logits`` (B, T, V) -> (B, T) (any leading shape)."""
    probs = torch.softmax(logits, dim=-1)  # (B, T, V)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(dim=-1)  # (B, T)
