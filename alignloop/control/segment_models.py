"""The learned models of segments that preference-based RL fits: a reward ensemble of per-step
nets (Bradley-Terry on summed rewards), a cost model of per-step unsafe logits scored by a
noisy-or over a segment (the Safe RLHF cost-model loss, optionally per-step labels from marks),
the threshold that turns its logits into a per-step count, and the query-selection scores.
`alignloop.control.pbrl` (the training loop) and `alignloop.loop.control` (the human loop) both
fit and use them; the module docstring of `alignloop.control.pbrl` explains the choices."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from alignloop.control.nets import CostModel, StepModel
from alignloop.core.losses import bradley_terry_loss, cost_model_loss, step_cost_loss
from alignloop.core.selection import sign_uncertainty

__all__ = [
    "SELECTIONS",
    "cost_sign_uncertainty",
    "count_threshold",
    "fit_cost_model",
    "fit_reward_models",
    "label_steps",
    "new_models",
    "segment_cost_logit",
]


def segment_cost_logit(step_logits: Tensor) -> Tensor:
    """``(..., H)`` per-step unsafe logits -> ``(...)`` log-odds that some step is unsafe
    (noisy-or): with ``S = sum_t softplus(z_t) = -log prod_t (1 - sigmoid(z_t))``,
    ``C = log(1 - e^-S) - log(e^-S) = S + log(-expm1(-S))``; S is floored at 1e-6."""
    total = F.softplus(step_logits).sum(-1).clamp(min=1e-6)
    return total + torch.log(-torch.expm1(-total))


def _pair_probs(models: list[StepModel], obs: Tensor, actions: Tensor) -> Tensor:
    """P(segment 0 better than 1) under each member; obs (P, 2, H, D) -> (members, P)."""
    with torch.no_grad():
        scores = torch.stack([m(obs, actions).sum(-1) for m in models])  # (M, P, 2)
    return torch.sigmoid(scores[..., 0] - scores[..., 1])


def _select_uniform(models: list[StepModel], obs: Tensor, actions: Tensor) -> Tensor:
    return torch.rand(obs.shape[0])


def _select_disagreement(models: list[StepModel], obs: Tensor, actions: Tensor) -> Tensor:
    return _pair_probs(models, obs, actions).std(0)  # (P,) spread of the members' P(0 > 1)


def _select_entropy(models: list[StepModel], obs: Tensor, actions: Tensor) -> Tensor:
    p = _pair_probs(models, obs, actions).mean(0).clamp(1e-6, 1 - 1e-6)  # (P,)
    return -(p * p.log() + (1 - p) * (1 - p).log())


SELECTIONS: dict[str, Callable[[list[StepModel], Tensor, Tensor], Tensor]] = {
    "uniform": _select_uniform,
    "disagreement": _select_disagreement,
    "entropy": _select_entropy,
}
"""Query selection: a score per candidate pair; the highest-scoring pairs are asked."""


def fit_reward_models(
    models: list[StepModel],
    optimizers: Sequence[torch.optim.Optimizer],
    obs: Tensor,
    actions: Tensor,
    chosen: Tensor,
    steps: int,
    batch_size: int,
    gen: torch.Generator,
) -> float:
    """Bradley-Terry fit of each member on its own bootstrap resample of the labelled pairs.
    obs (P, 2, H, D), actions (P, 2, H, A), chosen (P,) index of the preferred segment.
    Returns the mean training accuracy of the ensemble."""
    rows = torch.arange(len(chosen))
    accuracy = 0.0
    for model, optimizer in zip(models, optimizers, strict=True):
        boot = torch.randint(len(chosen), (len(chosen),), generator=gen)  # own bootstrap
        for _ in range(steps):
            idx = boot[torch.randint(len(boot), (min(batch_size, len(boot)),), generator=gen)]
            scores = model(obs[idx], actions[idx]).sum(-1)  # (B, 2) summed per-step rewards
            loss, _ = bradley_terry_loss(
                scores[rows[: len(idx)], chosen[idx]], scores[rows[: len(idx)], 1 - chosen[idx]]
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            scores = model(obs, actions).sum(-1)  # (P, 2)
            accuracy += float((scores.argmax(-1) == chosen).float().mean()) / len(models)
    return accuracy


def fit_cost_model(
    model: CostModel,
    optimizer: torch.optim.Optimizer,
    obs: Tensor,
    actions: Tensor,
    safer: Tensor,
    is_safe: Tensor,
    ranked: Tensor,
    steps: int,
    batch_size: int,
    gen: torch.Generator,
    calibrate_last: int | None = None,
    step_unsafe: Tensor | None = None,
    step_known: Tensor | None = None,
) -> float:
    """Safe RLHF cost-model fit on segment scores `segment_cost_logit`, each member of the
    ensemble on its own bootstrap resample of the pairs. obs (P, 2, H, D), safer (P,) index of
    the safer segment, is_safe (P, 2) bool, ranked (P,) bool: False for a tie, whose two safety
    labels still count (a safe segment says every one of its steps is safe) but which ranks
    nothing. With per-step labels ``step_unsafe`` (P, 2, H) bool, from marks
    (`feedback.pairs.step_labels`), each step's logit is also fitted to its label
    (`core.losses.step_cost_loss`, added to the pair loss with weight 1); ``step_known`` (P,)
    bool says which pairs have them (None: all). Then sets each
    member's step-counting threshold (`count_threshold`, on the step labels too when given) on
    the same pairs, or on the last ``calibrate_last`` of them (pairs in the order they were
    asked: the policy's current states). Returns the sign accuracy of the members' mean logit."""
    rows = torch.arange(len(safer))
    sign = torch.where(is_safe, -1.0, 1.0)  # (P, 2): +1 unsafe, -1 safe
    for member in model.models:
        boot = torch.randint(len(safer), (len(safer),), generator=gen)  # own bootstrap
        for _ in range(steps):
            idx = boot[torch.randint(len(boot), (min(batch_size, len(boot)),), generator=gen)]
            r = rows[: len(idx)]
            step_logits = member(obs[idx], actions[idx])  # (B, 2, H)
            score = segment_cost_logit(step_logits)  # (B, 2)
            s, u = safer[idx], 1 - safer[idx]
            loss, _ = cost_model_loss(
                score[r, u], score[r, s], sign[idx][r, u], sign[idx][r, s], ranked=ranked[idx], score_l2=1e-3
            )
            known = None if step_known is None else step_known[idx][:, None, None].expand_as(step_logits)
            if step_unsafe is not None and (known is None or bool(known.any())):
                loss = loss + step_cost_loss(step_logits, step_unsafe[idx], known)[0]
            optimizer.zero_grad(set_to_none=True)  # the other members' parameters stay untouched
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        step_logits = model.member_logits(obs, actions)  # (K, P, 2, H)
        last = slice(-calibrate_last if calibrate_last else None, None)
        labels = None if step_unsafe is None else step_unsafe[last]
        known = None if step_known is None else step_known[last]
        for k, z in enumerate(step_logits):
            model.threshold[k] = count_threshold(
                z[last], is_safe[last], safer[last], ranked[last], labels, step_known=known
            )
        return float(((segment_cost_logit(step_logits.mean(0)) > 0) == ~is_safe).float().mean())


def count_threshold(
    step_logits: Tensor,
    is_safe: Tensor,
    safer: Tensor,
    ranked: Tensor,
    step_unsafe: Tensor | None = None,
    candidates: int = 256,
    *,
    step_known: Tensor | None = None,
) -> float:
    """The per-step threshold b for which counting the steps with logit above b best
    reproduces the teacher's labels of judged pairs: a segment is unsafe when its count is at
    least 1; of a ranked pair the less safe has the larger count, and a tie has equal counts;
    with per-step labels (from marks), a step is counted exactly when it is labelled unsafe.
    step_logits (P, 2, H); is_safe (P, 2) bool; safer (P,) index; ranked (P,) bool;
    step_unsafe (P, 2, H) bool or None, step_known (P,) bool: the pairs that have step labels
    (None: all). The three agreements are shares, added with weight 1.

    The noisy-or fit ranks steps well but its probabilities under-count: an unsafe segment is
    explained by a few steps of moderate probability. Counting against a threshold fitted to
    the labels keeps the cost in the constraint's unit, one per unsafe step. Candidates are
    quantiles of the logits; among the best, the lowest (the most steps counted unsafe)."""
    z = step_logits.detach().flatten(0, 1)  # (2P, H)
    qs = torch.linspace(0.0, 1.0, candidates, dtype=z.dtype)
    flat = z.flatten()
    if flat.numel() > 1_000_000:  # quantile's input limit; a strided subsample is as good here
        flat = flat[:: flat.numel() // 1_000_000 + 1]
    bs = torch.quantile(flat, qs).unique()  # (K,) ascending
    counts = (z.unsqueeze(0) > bs[:, None, None]).sum(-1).view(len(bs), -1, 2)  # (K, P, 2)
    sign_ok = ((counts > 0) == ~is_safe).float().mean((1, 2))  # (K,)
    rows = torch.arange(len(safer))
    n_safer, n_other = counts[:, rows, safer], counts[:, rows, 1 - safer]  # (K, P)
    order_ok = torch.where(ranked, n_other > n_safer, n_other == n_safer).float().mean(1)  # (K,)
    agreement = sign_ok + order_ok  # (K,)
    known = torch.ones(len(safer), dtype=torch.bool) if step_known is None else step_known
    if step_unsafe is not None and bool(known.any()):
        labels = step_unsafe[known].flatten(0, 1)  # (2P', H)
        counted = z.view(-1, 2, z.shape[-1])[known].flatten(0, 1)  # (2P', H)
        agreement = agreement + ((counted.unsqueeze(0) > bs[:, None, None]) == labels).float().mean((1, 2))
    best = int(torch.nonzero(agreement >= agreement.max() - 1e-9)[0])  # the lowest of the best
    return float(bs[best])


def cost_sign_uncertainty(cost_model: CostModel, obs: Tensor, actions: Tensor) -> Tensor:
    """How unsure the cost model is whether a pair's segments are safe: the larger
    `sign_uncertainty` of the two segments' scores. obs (P, 2, H, D) -> (P,) in [0, 1]."""
    with torch.no_grad():
        score = segment_cost_logit(cost_model(obs, actions))  # (P, 2)
    return sign_uncertainty(score).max(-1).values


def new_models(
    obs_dim: int, act_dim: int, ensemble: int, segment_length: int, cost_ensemble: int = 1
) -> tuple[list[StepModel], CostModel]:
    """Untrained reward ensemble and cost model. The cost model starts from the prior that each
    step is unsafe with probability about 1 / (2H), so a segment of H steps about 40% of the
    time; its counting threshold starts at logit 0 (P = 1/2) until the first fit sets it."""
    reward_models = [StepModel(obs_dim, act_dim) for _ in range(ensemble)]
    cost_model = CostModel(obs_dim, act_dim, cost_ensemble)
    for member in cost_model.models:
        torch.nn.init.constant_(member.net.last.bias, -math.log(2 * segment_length))
    return reward_models, cost_model


@torch.no_grad()
def label_steps(
    reward_models: list[StepModel], cost_model: CostModel | None, obs: Tensor, actions: Tensor
) -> tuple[np.ndarray, np.ndarray]:
    """Learned per-step rewards (ensemble mean) and costs (1 for a step counted unsafe,
    `CostModel.step_costs`; 0 without a cost model) of steps obs (..., D), actions (..., A);
    both (...) float64."""
    rewards = torch.stack([m(obs, actions) for m in reward_models]).mean(0).numpy()
    if cost_model is None:
        return rewards.astype(np.float64), np.zeros(rewards.shape)
    costs = cost_model.step_costs(obs, actions).numpy()
    return rewards.astype(np.float64), costs.astype(np.float64)
