"""Per-step logits over a segment: what a segment-level cost label says about its steps.

A cost model of per-step "this step is unsafe" logits is fitted to judgements of whole
segments (a clip of a robot, a stretch of a trajectory). Two pieces of math connect the levels:
`segment_cost_logit`, the noisy-or log-odds that some step of a segment is unsafe (the score the
Safe RLHF cost-model loss is applied to), and `count_threshold`, the logit above which a step is
counted as one unit of cost, fitted so that the counts reproduce the judged labels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["count_threshold", "segment_cost_logit"]


def segment_cost_logit(step_logits: Tensor) -> Tensor:
    """``(..., H)`` per-step unsafe logits -> ``(...)`` log-odds that some step is unsafe
    (noisy-or): with ``S = sum_t softplus(z_t) = -log prod_t (1 - sigmoid(z_t))``,
    ``C = log(1 - e^-S) - log(e^-S) = S + log(-expm1(-S))``; S is floored at 1e-6."""
    total = F.softplus(step_logits).sum(-1).clamp(min=1e-6)
    return total + torch.log(-torch.expm1(-total))


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
