"""The GRPO family's baselines and losses against values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from alignloop.core.advantages import (
    GROUP_STD_EPS,
    WHITEN_EPS,
    constrained_group_advantages,
    discounted_returns,
    group_advantages,
    informative_groups,
    kl_penalised_scores,
    naive_group_advantages,
    reinforce_pp_advantages,
    remax_advantages,
    rloo_advantages,
)
from alignloop.core.losses import GRPO_LOSSES, LossTotals, dapo_loss, dr_grpo_loss, grpo_loss

RTOL = 1e-5
ATOL = 1e-6


def close(actual: torch.Tensor, expected: list | float | torch.Tensor) -> None:
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), rtol=RTOL, atol=ATOL)


# Group [1, 2, 3, 6]: mean 3, deviations [-2, -1, 0, 3], unbiased variance (4 + 1 + 0 + 9) / 3
# = 14/3, std 2.1602469, plus eps 1e-4 = 2.1603469.
SCORES = torch.tensor([[1.0, 2.0, 3.0, 6.0], [5.0, 5.0, 5.0, 5.0]])
STD = math.sqrt(14 / 3) + GROUP_STD_EPS


def test_group_advantages_grpo_and_dr_grpo() -> None:
    # row 0: [-2, -1, 0, 3] / 2.1603469 = [-0.925777, -0.462889, 0, 1.388666]; row 1: all equal -> 0
    close(group_advantages(SCORES, scale=True), [[-2 / STD, -1 / STD, 0.0, 3 / STD], [0.0] * 4])
    close(group_advantages(SCORES, scale=True)[0], [-0.925777, -0.462889, 0.0, 1.388666])
    # Dr. GRPO: the deviations alone
    close(group_advantages(SCORES, scale=False), [[-2.0, -1.0, 0.0, 3.0], [0.0] * 4])


def test_rloo_leaves_each_response_out_of_its_baseline() -> None:
    # baselines (12 - r_i) / 3 = [11/3, 10/3, 3, 2] -> A = [-8/3, -4/3, 0, 4] = 4/3 * deviations
    close(rloo_advantages(SCORES), [[-8 / 3, -4 / 3, 0.0, 4.0], [0.0] * 4])


def test_remax_subtracts_the_greedy_score() -> None:
    scores = torch.tensor([[1.0, 3.0], [0.0, 2.0]])
    close(remax_advantages(scores, torch.tensor([2.0, 1.0])), [[-1.0, 1.0], [-1.0, 1.0]])
    with pytest.raises(ValueError, match="one per prompt"):
        remax_advantages(scores, torch.tensor([2.0]))


def test_group_functions_reject_bad_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(B, G\)"):
        group_advantages(torch.ones(4), scale=True)
    with pytest.raises(ValueError, match="at least 2"):
        rloo_advantages(torch.ones(3, 1))
    with pytest.raises(ValueError, match="at least 2"):
        group_advantages(torch.ones(3, 1), scale=True)
    close(group_advantages(torch.ones(3, 1), scale=False), torch.zeros(3, 1))  # G = 1: nothing to compare


def test_informative_groups() -> None:
    assert informative_groups(torch.tensor([[1.0, 1.0], [1.0, 2.0], [0.0, -0.5]])).tolist() == [
        False,
        True,
        True,
    ]


def test_kl_penalised_scores() -> None:
    # row 0: 1 - 0.5 * (0.1 + 0.2) = 0.85; row 1: 2 - 0.5 * 0.3 = 1.85 (the 9 is padding)
    kl = torch.tensor([[0.1, 0.2], [0.3, 9.0]])
    mask = torch.tensor([[True, True], [True, False]])
    close(kl_penalised_scores(torch.tensor([1.0, 2.0]), kl, mask, 0.5), [0.85, 1.85])


def test_reinforce_pp_by_hand() -> None:
    # kl_coef 0.5, gamma 1. Per-token rewards -0.5 kl, end score on the last response token:
    #   row 0: [-0.05, -0.10, -0.15 + 1] = [-0.05, -0.10, 0.85] -> returns [0.70, 0.75, 0.85]
    #   row 1: [-0.25, 0 - 1] (token 2 padding)                  -> returns [-1.25, -1.00]
    # over the 5 tokens: mean 0.05 / 5 = 0.01; deviations [0.69, 0.74, 0.84, -1.26, -1.01];
    # squares sum 0.4761 + 0.5476 + 0.7056 + 1.5876 + 1.0201 = 4.337; unbiased var 1.08425
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.5, 0.0, 9.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    end = torch.tensor([1.0, -1.0])
    close(discounted_returns(torch.tensor([[-0.05, -0.10, 0.85], [-0.25, -1.0, 7.0]]), mask),
          [[0.70, 0.75, 0.85], [-1.25, -1.0, 0.0]])  # fmt: skip
    std = math.sqrt(1.08425 + WHITEN_EPS)
    expected = [[0.69 / std, 0.74 / std, 0.84 / std], [-1.26 / std, -1.01 / std, 0.0]]
    close(reinforce_pp_advantages(end, kl, mask, kl_coef=0.5), expected)


# Safe GRPO: reward [1, 2, 3, 6] as above; cost [0, 0, 1, 1]: mean 0.5, deviations +-0.5,
# unbiased variance 1/3, std 0.5773503 + 1e-4 = 0.5774503, so Z_C = +-0.5 / 0.5774503 = +-0.865876.
REWARD = SCORES[:1]
COST = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
Z_R = [-2 / STD, -1 / STD, 0.0, 3 / STD]
Z_C = [-0.5 / (math.sqrt(1 / 3) + GROUP_STD_EPS)] * 2 + [0.5 / (math.sqrt(1 / 3) + GROUP_STD_EPS)] * 2


def test_constrained_group_advantages_by_hand() -> None:
    # lam = 1: (Z_R - Z_C) / 2; lam = 3: (Z_R - 3 Z_C) / 4; lam = 0: Z_R (GRPO)
    for lam in (0.0, 1.0, 3.0):
        expected = [[(r - lam * c) / (1 + lam) for r, c in zip(Z_R, Z_C, strict=True)]]
        close(constrained_group_advantages(REWARD, COST, lam), expected)
    close(
        constrained_group_advantages(REWARD, COST, 1.0)[0, :2],
        [(-0.925777 + 0.865876) / 2, (-0.462889 + 0.865876) / 2],
    )


def test_naive_group_advantages_by_hand() -> None:
    # S = R - C = [1, 2, 2, 5]: mean 2.5, deviations [-1.5, -0.5, -0.5, 2.5], variance (2.25 + 0.25
    # + 0.25 + 6.25) / 3 = 3, std 1.7320508 + 1e-4
    std = math.sqrt(3.0) + GROUP_STD_EPS
    close(naive_group_advantages(REWARD, COST, 1.0), [[-1.5 / std, -0.5 / std, -0.5 / std, 2.5 / std]])


def test_constrained_mix_keeps_lambda_meaning_when_the_cost_scale_changes() -> None:
    """arXiv 2602.05863's point: the scalarised advantage does not depend on the units of the
    cost (nor of the reward), so lambda alone sets the trade-off; standardising R - lam C does."""
    gen = torch.Generator().manual_seed(1)
    reward, cost = torch.randn(8, 6, generator=gen), torch.randn(8, 6, generator=gen)
    a = constrained_group_advantages(reward, cost, 2.0, eps=0.0)
    torch.testing.assert_close(
        constrained_group_advantages(3 * reward + 1, 10 * cost - 4, 2.0, eps=0.0), a, rtol=RTOL, atol=1e-5
    )
    naive = naive_group_advantages(reward, cost, 2.0)
    assert (naive_group_advantages(reward, 10 * cost, 2.0) - naive).abs().max() > 0.1


def test_lambda_must_be_finite_and_non_negative() -> None:
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="lam"):
            constrained_group_advantages(REWARD, COST, bad)


# --------------------------------------------------------------------------- losses
# Old log-probs [[-1, -2, -3], [-1, -1, -1]]; the current policy has ratio 1.5 on token (0, 0)
# and 0.5 on token (1, 0), 1 elsewhere; advantages [2, -1]; token (0, 2) is padding.
#   (0, 0): A = 2,  ratio 1.5 > 1.2: max(-3, -2.4) = -2.4 (clipped; 1.28 with eps_high 0.28: -2.56)
#   (0, 1): -2, plus the KL term 0.1 * k3 with ref / pi = 0.5: k3 = 0.5 - log 0.5 - 1 = 0.1931472
#   (1, 0): A = -1, ratio 0.5 < 0.8: max(0.5, 0.8) = 0.8 (clipped)
#   (1, 1), (1, 2): 1
OLD = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, -1.0]])
SHIFT = torch.tensor([[math.log(1.5), 0.0, 0.0], [math.log(0.5), 0.0, 0.0]])
MASK = torch.tensor([[True, True, False], [True, True, True]])
ADV = torch.tensor([2.0, -1.0])
K3 = 0.5 - math.log(0.5) - 1.0


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    logprobs = (OLD + SHIFT).requires_grad_(True)
    ref = logprobs.detach() - torch.tensor([[0.0, math.log(2.0), 0.0], [0.0, 0.0, 0.0]])
    return logprobs, ref


def test_grpo_loss_by_hand() -> None:
    logprobs, ref = _inputs()
    loss, metrics = grpo_loss(logprobs, OLD, ADV, MASK, ref_logprobs=ref, kl_coef=0.1)
    # sequence means: (-2.4 - 2 + 0.01931472) / 2 = -2.19034264 and (0.8 + 1 + 1) / 3 = 0.9333333
    close(loss, ((-2.4 - 2 + 0.1 * K3) / 2 + 2.8 / 3) / 2)
    close(metrics["clip_ratio/high"], 0.2)
    close(metrics["clip_ratio/low"], 0.2)
    close(metrics["kl_ref"], K3 / 5)
    loss.backward()
    assert logprobs.grad is not None
    assert logprobs.grad[0, 0] == 0 and logprobs.grad[1, 0] == 0  # clipped: no gradient
    close(logprobs.grad[1, 1], 1.0 / 3 / 2)  # d/dlogp of -A ratio / |o| / N = -A / 3 / 2 with A = -1


def test_dr_grpo_loss_by_hand() -> None:
    logprobs, ref = _inputs()
    loss, _ = dr_grpo_loss(logprobs, OLD, ADV, MASK, ref_logprobs=ref, kl_coef=0.1)
    # token sum -2.4 - 2 + 0.01931472 + 0.8 + 1 + 1 = -1.58068528, divided by 2 sequences x 3 tokens
    close(loss, (-2.4 - 2 + 0.1 * K3 + 2.8) / 6)
    totals = LossTotals(sequences=2, tokens=5, max_length=16)
    close(dr_grpo_loss(logprobs, OLD, ADV, MASK, ref_logprobs=ref, kl_coef=0.1, totals=totals)[0],
          (-2.4 - 2 + 0.1 * K3 + 2.8) / 32)  # fmt: skip


def test_dapo_loss_by_hand() -> None:
    logprobs, ref = _inputs()
    loss, metrics = dapo_loss(logprobs, OLD, ADV, MASK, ref_logprobs=ref, kl_coef=0.1)
    # clip-higher 0.28: token (0, 0) gives -2.56; token sum -1.74068528 over 5 tokens
    close(loss, (-2.56 - 2 + 0.1 * K3 + 2.8) / 5)
    close(metrics["clip_ratio/high"], 0.2)
    # without the KL term, eps_high 0.6 leaves token (0, 0) unclipped: -3
    loss_wide, _ = dapo_loss(logprobs, OLD, ADV, MASK, clip_eps_high=0.6)
    close(loss_wide, (-3 - 2 + 2.8) / 5)


def test_per_token_advantages_are_accepted() -> None:
    logprobs, _ = _inputs()
    per_token = ADV[:, None].expand(2, 3)
    for loss_fn in GRPO_LOSSES.values():
        close(loss_fn(logprobs, OLD, per_token, MASK)[0], loss_fn(logprobs, OLD, ADV, MASK)[0])


@pytest.mark.parametrize("name", sorted(GRPO_LOSSES))
def test_micro_batches_with_totals_add_up_to_the_batch(name: str) -> None:
    """Gradient accumulation: each micro-batch divided by the whole step's totals sums to the
    loss of the whole batch, for every normalisation."""
    gen = torch.Generator().manual_seed(2)
    old = -torch.rand(6, 7, generator=gen) * 3
    logprobs = old + 0.3 * torch.randn(6, 7, generator=gen)
    adv = torch.randn(6, generator=gen)
    mask = torch.arange(7)[None, :] < torch.tensor([7, 3, 1, 5, 6, 2])[:, None]
    loss_fn = GRPO_LOSSES[name]
    whole, _ = loss_fn(logprobs, old, adv, mask, totals=LossTotals(6, float(mask.sum()), 7))
    parts = sum(
        loss_fn(logprobs[rows], old[rows], adv[rows], mask[rows], totals=LossTotals(6, float(mask.sum()), 7))[
            0
        ]
        for rows in (slice(0, 2), slice(2, 6))
    )
    close(parts, whole)
    close(whole, loss_fn(logprobs, old, adv, mask)[0])  # the defaults are this batch's counts


def test_a_batch_with_nothing_left_gives_zero() -> None:
    logprobs, _ = _inputs()
    empty = torch.zeros_like(MASK)
    for loss_fn in GRPO_LOSSES.values():
        loss, metrics = loss_fn(logprobs, OLD, ADV, empty, totals=LossTotals(0, 0.0, 3))
        assert float(loss.detach()) == 0.0 and float(metrics["ratio_mean"]) == 0.0
