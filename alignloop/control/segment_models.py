"""The learned models of segments that preference-based RL fits: a reward ensemble of per-step
nets (Bradley-Terry on summed rewards), a cost model of per-step unsafe logits scored by a
noisy-or over a segment (the Safe RLHF cost-model loss, optionally per-step labels from marks),
the threshold that turns its logits into a per-step count (the math of both in
`alignloop.core.segments`), and the query-selection scores.
`alignloop.control.pbrl` (the training loop) and `alignloop.loop.control` (the human loop) both
fit and use them; the module docstring of `alignloop.control.pbrl` explains the choices."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from alignloop.control.nets import CostModel, StepModel
from alignloop.core.losses import bradley_terry_loss, cost_model_loss, step_cost_loss
from alignloop.core.segments import count_threshold, segment_cost_logit
from alignloop.core.selection import sign_uncertainty

__all__ = [
    "SELECTIONS",
    "cost_sign_uncertainty",
    "fit_cost_model",
    "fit_reward_models",
    "label_steps",
    "new_models",
]


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
