"""alignloop.core.losses against values worked out by hand, and one-step gradient checks.

Values used in the working below (log sigmoid(x) = -log(1 + e^-x)):
    log(1 + e^-0.5) = 0.47407698418010663      log(1 + e^0.5) = 0.5 + 0.47407698... = 0.97407698418010663
    log(1 + e^-1)   = 0.31326168751822286      log(1 + e)     = 1 + 0.31326168... = 1.31326168751822286
    log(1 + e^-2)   = 0.12692801104297263      log 2          = 0.69314718055994531
    sigmoid(-1) = 1 / (1 + e)   = 0.26894142136999512
    sigmoid(-2) = 1 / (1 + e^2) = 0.11920292202211755
"""

from __future__ import annotations

import math

import pytest
import torch

from alignloop.core.losses import (
    DPO_LOSSES,
    bradley_terry_loss,
    cost_model_loss,
    dpo_loss,
    entropy_from_logits,
    kto_loss,
    orpo_loss,
    plackett_luce_loss,
    ppo_policy_loss,
    simpo_loss,
    step_cost_loss,
    value_loss,
)

RTOL = 1e-6
F64 = torch.float64


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=F64)


def close(actual: torch.Tensor | float, expected: float) -> None:
    assert float(actual) == pytest.approx(expected, rel=RTOL, abs=1e-12)


# --- Bradley-Terry -------------------------------------------------------------------------------


def test_bradley_terry_hand_values() -> None:
    chosen, rejected = t(2.0, 0.0), t(1.0, 1.0)
    # diffs = [1, -1]; loss = (log(1 + e^-1) + log(1 + e)) / 2 = (0.31326168... + 1.31326168...) / 2
    loss, metrics = bradley_terry_loss(chosen, rejected)
    close(loss, 0.81326168751822286)
    close(metrics["rewards/chosen"], 1.0)
    close(metrics["rewards/rejected"], 1.0)
    close(metrics["rewards/margin"], 0.0)
    close(metrics["rewards/accuracy"], 0.5)  # only the first pair ranks chosen above

    # margin 1: diffs = [0, -2]; loss = (log 2 + log(1 + e^2)) / 2 = (0.69314718... + 2.12692801...) / 2
    loss, _ = bradley_terry_loss(chosen, rejected, margin=1.0)
    close(loss, (0.69314718055994531 + 2.12692801104297263) / 2)
    # a per-pair margin [1, 0]: diffs = [0, -1]; loss = (log 2 + log(1 + e)) / 2
    loss, _ = bradley_terry_loss(chosen, rejected, margin=t(1.0, 0.0))
    close(loss, (0.69314718055994531 + 1.31326168751822286) / 2)

    # score_l2 0.1: mean of [2^2, 0^2, 1^2, 1^2] = 6 / 4 = 1.5, so + 0.15
    loss, _ = bradley_terry_loss(chosen, rejected, score_l2=0.1)
    close(loss, 0.81326168751822286 + 0.15)


def test_bradley_terry_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="same shape"):
        bradley_terry_loss(t(1.0, 2.0), t(1.0))


# --- cost model ----------------------------------------------------------------------------------


# --- Plackett-Luce and per-step cost labels -----------------------------------------------------


def test_plackett_luce_hand_values() -> None:
    # scores (1, 0, -1) ranked 1, 2, 3: choose the first of all three, then the second of two:
    #   term 1 = 1 - log(e + 1 + e^-1) = 1 - 1.40760596444438 = -0.40760596444438
    #   term 2 = 0 - log(1 + e^-1)     = -0.31326168751822286
    #   term 3 = -1 - log(e^-1)        = 0
    # loss = 0.40760596444438 + 0.31326168751822286 = 0.72086765196260
    scores = torch.tensor([[1.0, 0.0, -1.0]], dtype=F64)
    loss, metrics = plackett_luce_loss(scores, torch.tensor([[1, 2, 3]]))
    close(loss, 0.7208676519626032)
    close(metrics["rewards/accuracy"], 1.0)  # all 3 implied pairs ordered
    close(metrics["rewards/margin"], 4.0 / 3.0)  # gaps 1, 2, 1
    # the same candidates listed in another order, with their ranks: the same loss
    loss, _ = plackett_luce_loss(torch.tensor([[-1.0, 1.0, 0.0]], dtype=F64), torch.tensor([[3, 1, 2]]))
    close(loss, 0.7208676519626032)
    # ranked the other way round (3, 2, 1): term 1 = -1 - 1.40760596 = -2.40760596,
    # term 2 = 0 - log(1 + e) = -1.31326169; loss = 3.72086765196260
    loss, metrics = plackett_luce_loss(scores, torch.tensor([[3, 2, 1]]))
    close(loss, 2.40760596444438 + 1.31326168751822286)
    close(metrics["rewards/accuracy"], 0.0)


def test_plackett_luce_ties_say_nothing_about_the_tied_order() -> None:
    # scores (0.5, 0.5, 0) ranked (1, 1, 3): each tied candidate is chosen against C alone:
    #   term = 0.5 - log(e^0.5 + 1) = -log(1 + e^-0.5) = -0.47407698418010663, twice; C's term is 0
    # loss = 2 * 0.47407698418010663 = 0.94815396836021326
    scores = torch.tensor([[0.5, 0.5, 0.0]], dtype=F64)
    loss, metrics = plackett_luce_loss(scores, torch.tensor([[1, 1, 3]]))
    close(loss, 0.94815396836021326)
    close(metrics["rewards/accuracy"], 1.0)  # the 2 implied pairs (the tie implies none)
    # a tie at the bottom: A against B and C, then nothing: -(2 - log(e^2 + 2 e^0)) = 0.2395...
    loss, _ = plackett_luce_loss(torch.tensor([[2.0, 0.0, 0.0]], dtype=F64), torch.tensor([[1, 2, 2]]))
    close(loss, math.log(math.exp(2.0) + 2.0) - 2.0)
    # a tie of two is like a tied pair: no loss, no gradient, whatever the scores
    tied = t(1.0, -1.0).requires_grad_(True)
    loss, _ = plackett_luce_loss(tied[None], torch.tensor([[1, 1]]))
    close(loss.detach(), 0.0)
    loss.backward()
    assert tied.grad is not None and float(tied.grad.abs().sum()) == 0.0


def test_plackett_luce_of_two_is_bradley_terry_and_padding_is_ignored() -> None:
    winner, loser = t(2.0, 0.0, 0.3), t(1.0, 1.0, 0.3)
    bt, _ = bradley_terry_loss(winner, loser, score_l2=0.1)
    pl, _ = plackett_luce_loss(torch.stack([winner, loser], 1), torch.tensor([[1, 2]] * 3), score_l2=0.1)
    assert torch.equal(pl, bt)  # untied pairs go through bradley_terry_loss itself
    flipped, _ = plackett_luce_loss(torch.stack([loser, winner], 1), torch.tensor([[2, 1]] * 3), score_l2=0.1)
    assert torch.equal(flipped, bt)
    # the general formula on the same pairs (padded to 3: not the pairs' path) agrees
    padded = torch.stack([winner, loser, torch.zeros(3, dtype=F64)], 1)
    mask = torch.tensor([[True, True, False]] * 3)
    general, _ = plackett_luce_loss(padded, torch.tensor([[1, 2, 3]] * 3), mask, score_l2=0.1)
    close(general, float(bt))
    # a batch of a ranking of 3 and a pair padded to 3 (NaN where nothing is): the mean of the
    # two rankings' losses, (0.72086765196260 + log(1 + e^-1)) / 2
    scores = torch.tensor([[1.0, 0.0, -1.0], [2.0, 1.0, float("nan")]], dtype=F64)
    mask = torch.tensor([[True, True, True], [True, True, False]])
    loss, metrics = plackett_luce_loss(scores, torch.tensor([[1, 2, 3], [1, 2, 9]]), mask)
    close(loss, (0.7208676519626032 + 0.31326168751822286) / 2)
    close(metrics["rewards/accuracy"], 1.0)  # 3 + 1 implied pairs


def test_plackett_luce_matches_the_sequential_choice_product() -> None:
    # an independent reading of the model: draw the best from what is left, step by step
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(5, 6, generator=gen, dtype=F64)
    ranks = torch.stack([torch.randperm(6, generator=gen) + 1 for _ in range(5)])
    expected = 0.0
    for row, rank in zip(scores, ranks, strict=True):
        left = sorted(range(6), key=lambda i: int(rank[i]))
        while left:
            expected -= float(row[left[0]] - torch.logsumexp(row[left], 0))
            left = left[1:]
    loss, _ = plackett_luce_loss(scores, ranks)
    close(loss, expected / 5)


def test_step_cost_loss_hand_values() -> None:
    # costs (2, -1, 0.5) labelled unsafe, safe, safe: -log sigmoid(s c) with s c = 2, 1, -0.5:
    # log(1 + e^-2) = 0.12692801104297263, log(1 + e^-1) = 0.31326168751822286,
    # log(1 + e^0.5) = 0.97407698418010663; mean = 0.47142222758043406
    costs, unsafe = t(2.0, -1.0, 0.5), torch.tensor([1, 0, 0])
    loss, metrics = step_cost_loss(costs, unsafe)
    close(loss, 0.47142222758043406)
    close(metrics["costs/step_sign_accuracy"], 2.0 / 3.0)  # the last is on the wrong side of 0
    loss, metrics = step_cost_loss(costs, unsafe, torch.tensor([True, True, False]))
    close(loss, (0.12692801104297263 + 0.31326168751822286) / 2)
    close(metrics["costs/step_sign_accuracy"], 1.0)


def test_cost_model_hand_values() -> None:
    unsafer, safer = t(1.0, 0.5), t(-1.0, 1.0)
    s_unsafer, s_safer = t(1, 1), t(-1, 1)
    # pair 1: c_u = 1, c_s = -1, s_u = +1, s_s = -1
    #   -log sig(1 - (-1)) - log sig(-1 * -1) - log sig(1 * 1) = 0.12692801... + 2 * 0.31326168...
    pair1 = 0.12692801104297263 + 2 * 0.31326168751822286
    # pair 2 (both unsafe, ranked the wrong way): c_u = 0.5, c_s = 1, s_u = s_s = +1
    #   -log sig(0.5 - 1) - log sig(1) - log sig(0.5) = 0.97407698... + 0.31326168... + 0.47407698...
    pair2 = 0.97407698418010663 + 0.31326168751822286 + 0.47407698418010663
    loss, metrics = cost_model_loss(unsafer, safer, s_unsafer, s_safer)
    close(loss, (pair1 + pair2) / 2)
    close(metrics["costs/accuracy"], 0.5)  # 1 > -1 yes, 0.5 > 1 no
    close(metrics["costs/sign_accuracy"], 1.0)  # costs [1, 0.5, -1, 1] vs signs [+, +, -, +]
    close(metrics["costs/margin"], (2.0 - 0.5) / 2)
    # score_l2 0.01: mean of [1, 0.25, 1, 1] = 0.8125, so + 0.008125
    loss, _ = cost_model_loss(unsafer, safer, s_unsafer, s_safer, score_l2=0.01)
    close(loss, (pair1 + pair2) / 2 + 0.008125)


def test_cost_model_loss_leaves_the_ranking_term_out_of_ties() -> None:
    # pair 1 ranked as in the test above; pair 2 a tie of two safe costs c = -1 and c = 2,
    # labelled safe (the teacher saw no unsafe step in either): only the two sign terms count,
    #   -log sig(1) - log sig(-2) = 0.31326168... + 2.12692801...
    pair1 = 0.12692801104297263 + 2 * 0.31326168751822286
    pair2 = 0.31326168751822286 + 2.1269280110429727
    loss, metrics = cost_model_loss(
        t(1.0, -1.0), t(-1.0, 2.0), t(1, -1), t(-1, -1), ranked=torch.tensor([True, False])
    )
    close(loss, (pair1 + pair2) / 2)
    close(metrics["costs/accuracy"], 1.0)  # over the ranked pair only
    # a tie may carry any labels without being inconsistent (the safety sign is per response)
    cost_model_loss(t(1.0), t(0.0), t(-1), t(1), ranked=torch.tensor([False]))
    with pytest.raises(ValueError, match="inconsistent safety labels in rows \\[0\\]"):
        cost_model_loss(t(1.0), t(0.0), t(-1), t(1), ranked=torch.tensor([True]))


def test_cost_model_sign_at_boundary_counts_as_wrong() -> None:
    # cost 0 is the boundary: it is on neither side, so neither label is matched
    _, metrics = cost_model_loss(t(0.0), t(-1.0), t(1), t(-1))
    close(metrics["costs/sign_accuracy"], 0.5)


def test_cost_model_rejects_inconsistent_and_bad_signs() -> None:
    with pytest.raises(ValueError, match="inconsistent safety labels in rows \\[1\\]"):
        cost_model_loss(t(1.0, 1.0), t(0.0, 0.0), t(1, -1), t(-1, 1))
    with pytest.raises(ValueError, match="safer_sign must hold only"):
        cost_model_loss(t(1.0), t(0.0), t(1), t(0))


# --- DPO family ----------------------------------------------------------------------------------

# pi_c = [-1, -3], pi_r = [-2, -2], ref_c = [-1.5, -3], ref_r = [-1.5, -2]
# chosen log-ratios [0.5, 0], rejected [-0.5, 0], h = [1, 0]; with beta = 0.5, beta h = [0.5, 0]
DPO_INPUTS = (t(-1.0, -3.0), t(-2.0, -2.0), t(-1.5, -3.0), t(-1.5, -2.0))
# sigmoid: (log(1 + e^-0.5) + log 2) / 2
# cDPO eps 0.1: pair 1 0.9 * 0.47407698... + 0.1 * 0.97407698... = 0.52407698...; pair 2 log 2
# rDPO eps 0.1: pair 1 (0.9 * 0.47407698... - 0.1 * 0.97407698...) / 0.8 = 0.41157698...;
#               pair 2 (0.9 log 2 - 0.1 log 2) / 0.8 = log 2
# ipo: 1 / (2 beta) = 1; (h - 1)^2 = [0, 1]; mean 0.5
# hinge: relu(1 - beta h) = [0.5, 1]; mean 0.75
DPO_CASES = [
    ("sigmoid", 0.0, (0.47407698418010663 + 0.69314718055994531) / 2),
    ("sigmoid", 0.1, (0.9 * 0.47407698418010663 + 0.1 * 0.97407698418010663 + 0.69314718055994531) / 2),
    ("robust", 0.0, (0.47407698418010663 + 0.69314718055994531) / 2),
    (
        "robust",
        0.1,
        ((0.9 * 0.47407698418010663 - 0.1 * 0.97407698418010663) / 0.8 + 0.69314718055994531) / 2,
    ),
    ("ipo", 0.0, 0.5),
    ("hinge", 0.0, 0.75),
]


@pytest.mark.parametrize(("variant", "label_smoothing", "expected"), DPO_CASES)
def test_dpo_variants_hand_values(variant: str, label_smoothing: float, expected: float) -> None:
    loss, metrics = dpo_loss(*DPO_INPUTS, beta=0.5, variant=variant, label_smoothing=label_smoothing)
    close(loss, expected)
    # rewards beta * log-ratio: chosen [0.25, 0], rejected [-0.25, 0]
    close(metrics["rewards/chosen"], 0.125)
    close(metrics["rewards/rejected"], -0.125)
    close(metrics["rewards/margin"], 0.25)
    close(metrics["rewards/accuracy"], 0.5)  # the tie in pair 2 is not a win
    separate, _ = DPO_LOSSES[variant](*DPO_INPUTS, beta=0.5, label_smoothing=label_smoothing)
    assert float(separate) == float(loss)


def test_dpo_sigmoid_gradient_matches_paper() -> None:
    # DPO sec. 4: d loss / d log pi(y_w) = -beta sigmoid(-beta h) / B; at h = [1, 0], beta = 0.5:
    # -0.5 * [sigmoid(-0.5), 0.5] / 2, sigmoid(-0.5) = 1 / (1 + e^0.5) = 0.37754066879814541
    pi_c = DPO_INPUTS[0].clone().requires_grad_(True)
    loss, _ = dpo_loss(pi_c, *DPO_INPUTS[1:], beta=0.5)
    loss.backward()
    assert pi_c.grad is not None
    torch.testing.assert_close(pi_c.grad, t(-0.25 * 0.37754066879814541, -0.25 * 0.5), rtol=RTOL, atol=0)


def test_dpo_rejects_bad_options() -> None:
    with pytest.raises(ValueError, match="unknown DPO variant 'kto'; allowed: sigmoid, ipo, hinge, robust"):
        dpo_loss(*DPO_INPUTS, beta=0.1, variant="kto")
    with pytest.raises(ValueError, match="flip rate"):
        dpo_loss(*DPO_INPUTS, beta=0.1, variant="robust", label_smoothing=0.5)
    with pytest.raises(ValueError, match="not defined for the 'ipo'"):
        dpo_loss(*DPO_INPUTS, beta=0.1, variant="ipo", label_smoothing=0.1)
    with pytest.raises(ValueError, match="beta must be > 0"):
        dpo_loss(*DPO_INPUTS, beta=0.0)


# --- SimPO, ORPO, KTO ----------------------------------------------------------------------------


def test_simpo_hand_values() -> None:
    # per-token means: chosen [-2/2, -6/3] = [-1, -2], rejected [-6/3, -2/1] = [-2, -2]
    # beta 2: rewards chosen [-2, -4], rejected [-4, -4]; z = [2, 0] - gamma 1 = [1, -1]
    args = (t(-2.0, -6.0), t(-6.0, -2.0), t(2, 3), t(3, 1))
    loss, metrics = simpo_loss(*args, beta=2.0, gamma=1.0)
    close(loss, (0.31326168751822286 + 1.31326168751822286) / 2)
    close(metrics["rewards/chosen"], -3.0)
    close(metrics["rewards/rejected"], -4.0)
    close(metrics["rewards/margin"], 1.0)
    close(metrics["rewards/accuracy"], 0.5)
    # label smoothing 0.2 on pair 1 alone (z = 1): 0.8 * 0.31326168... + 0.2 * 1.31326168...
    loss, _ = simpo_loss(*(a[:1] for a in args), beta=2.0, gamma=1.0, label_smoothing=0.2)
    close(loss, 0.8 * 0.31326168751822286 + 0.2 * 1.31326168751822286)


def test_orpo_hand_values() -> None:
    # pair 1: chosen mean log-prob log(2/3) over 2 tokens -> odds 2, log odds  log 2;
    #         rejected log(1/3) over 1 token -> odds 1/2, log odds -log 2; ratio log 4
    #         log sig(log 4) = log(4 / 5)
    # pair 2: both mean log-prob log(1/2) -> odds 1, ratio 0, log sig(0) = -log 2
    # odds term = (log(5/4) + log 2) / 2 = log(2.5) / 2; loss = nll 1.25 + lam 0.5 * log(2.5) / 2
    pi_c = t(2 * math.log(2 / 3), 4 * math.log(0.5))
    pi_r = t(math.log(1 / 3), 3 * math.log(0.5))
    loss, metrics = orpo_loss(pi_c, pi_r, t(2, 4), t(1, 3), t(1.25), lam=0.5)
    close(loss, 1.25 + 0.5 * math.log(2.5) / 2)
    close(metrics["log_odds_ratio"], math.log(4) / 2)
    close(metrics["log_sigmoid_odds_ratio"], (math.log(0.8) - math.log(2)) / 2)
    close(metrics["nll"], 1.25)
    close(metrics["rewards/accuracy"], 0.5)


def test_orpo_is_finite_for_a_certain_response() -> None:
    # a response of probability 1 has infinite odds; the clamp keeps the loss finite
    loss, _ = orpo_loss(t(0.0), t(-1.0), t(3), t(3), t(0.0), lam=1.0)
    assert math.isfinite(float(loss))


def test_kto_hand_values() -> None:
    # r = pi - ref = [2, 1, -1]; desirable [T, F, F]; beta 1, z0 1, lambda_D 1, lambda_U 2
    #   desirable   r = 2:  1 * (1 - sig(2 - 1))  = sig(-1)           = 0.26894142...
    #   undesirable r = 1:  2 * (1 - sig(1 - 1))  = 2 * 0.5           = 1
    #   undesirable r = -1: 2 * (1 - sig(1 + 1))  = 2 * sig(-2)       = 0.23840584...
    pi, ref, desirable = t(-1.0, -2.0, -3.0), t(-3.0, -3.0, -2.0), torch.tensor([True, False, False])
    loss, metrics = kto_loss(pi, ref, desirable, 1.0, beta=1.0, undesirable_weight=2.0)
    close(loss, (0.26894142136999512 + 1.0 + 2 * 0.11920292202211755) / 3)
    close(metrics["rewards/chosen"], 2.0)
    close(metrics["rewards/rejected"], 0.0)
    close(metrics["kl_ref"], 1.0)
    # a negative KL estimate is clamped to z0 = 0:
    #   1 - sig(2) = sig(-2); 2 * (1 - sig(-1)) = 2 * sig(1) = 2 - 2 sig(-1); 2 * (1 - sig(1)) = 2 sig(-1)
    loss, _ = kto_loss(pi, ref, desirable, torch.tensor(-3.0, dtype=F64), beta=1.0, undesirable_weight=2.0)
    close(loss, (0.11920292202211755 + 2.0) / 3)


def test_kto_metrics_without_undesirable_examples_are_nan() -> None:
    _, metrics = kto_loss(t(-1.0), t(-2.0), torch.tensor([True]), 0.0, beta=0.1)
    assert math.isnan(float(metrics["rewards/rejected"]))
    close(metrics["rewards/chosen"], 0.1)


# --- PPO -----------------------------------------------------------------------------------------


def test_ppo_policy_loss_hand_values() -> None:
    ratio = t(1.5, 0.5, 1.1, 0.7).reshape(2, 2)  # (B, T)
    logprobs = ratio.log()
    old_logprobs = torch.zeros(2, 2, dtype=F64)
    advantages = t(1.0, 1.0, -2.0, -1.0).reshape(2, 2)
    # eps 0.2, terms -A r and -A clip(r, 0.8, 1.2), loss takes the larger:
    #   r 1.5, A  1: -1.5 vs -1.2 -> -1.2 (clipped)
    #   r 0.5, A  1: -0.5 vs -0.8 -> -0.5
    #   r 1.1, A -2:  2.2 vs  2.2 ->  2.2 (inside the clip range)
    #   r 0.7, A -1:  0.7 vs  0.8 ->  0.8 (clipped)
    # loss = (-1.2 - 0.5 + 2.2 + 0.8) / 4 = 0.325; clip_frac = 2 / 4
    # approx_kl = mean (r - 1) - log r
    #   = (0.5 - log 1.5) + (-0.5 + log 2) + (0.1 - log 1.1) + (-0.3 - log 0.7), over 4
    kl_terms = [0.5 - math.log(1.5), -0.5 + math.log(2), 0.1 - math.log(1.1), -0.3 - math.log(0.7)]
    loss, metrics = ppo_policy_loss(logprobs, old_logprobs, advantages, clip_eps=0.2)
    close(loss, 0.325)
    close(metrics["clip_frac"], 0.5)
    close(metrics["approx_kl"], sum(kl_terms) / 4)
    close(metrics["ratio_mean"], (1.5 + 0.5 + 1.1 + 0.7) / 4)
    # mask out the r = 1.1 element: loss = (-1.2 - 0.5 + 0.8) / 3 = -0.3; clip_frac 2 / 3
    mask = torch.tensor([[True, True], [False, True]])  # True = response token
    loss, metrics = ppo_policy_loss(logprobs, old_logprobs, advantages, mask, clip_eps=0.2)
    close(loss, -0.3)
    close(metrics["clip_frac"], 2 / 3)
    close(metrics["approx_kl"], (kl_terms[0] + kl_terms[1] + kl_terms[3]) / 3)


def test_ppo_policy_gradient_is_zero_where_clipped() -> None:
    logprobs = t(1.5, 0.5).log().requires_grad_(True)
    loss, _ = ppo_policy_loss(logprobs, torch.zeros(2, dtype=F64), t(1.0, 1.0), clip_eps=0.2)
    loss.backward()
    # element 0 is clipped (no gradient); element 1: d(-A r)/d log pi = -A r / 2 = -0.25
    assert logprobs.grad is not None
    torch.testing.assert_close(logprobs.grad, t(0.0, -0.25), rtol=RTOL, atol=0)


def test_value_loss_hand_values() -> None:
    values, old_values, returns = t(1.0, 0.9, 0.5), t(0.5, 0.0, 0.4), t(0.0, 1.0, 1.0)
    # unclipped (V - R)^2 = [1, 0.01, 0.25]
    # clipped V: old + clip(V - old, -0.2, 0.2) = [0.7, 0.2, 0.5]; (.. - R)^2 = [0.49, 0.64, 0.25]
    # max = [1, 0.64, 0.25]; loss = 0.5 * 1.89 / 3 = 0.315; clipped wins in 1 of 3
    loss, metrics = value_loss(values, old_values, returns, clip_eps=0.2)
    close(loss, 0.315)
    close(metrics["vf_clip_frac"], 1 / 3)
    close(metrics["value_mse"], 1.26 / 3)
    # no clipping: 0.5 * (1 + 0.01 + 0.25) / 3 = 0.21
    loss, metrics = value_loss(values, old_values, returns)
    close(loss, 0.21)
    close(metrics["vf_clip_frac"], 0.0)
    # mask the clipped element: 0.5 * (1 + 0.25) / 2 = 0.3125
    loss, _ = value_loss(values, old_values, returns, torch.tensor([True, False, True]), clip_eps=0.2)
    close(loss, 0.3125)


def test_entropy_from_logits() -> None:
    # uniform over V = 7 -> log 7, whatever the common logit value
    logits = torch.full((2, 3, 7), 4.2, dtype=F64)  # (B, T, V)
    entropy = entropy_from_logits(logits)
    assert entropy.shape == (2, 3)
    torch.testing.assert_close(entropy, torch.full((2, 3), math.log(7), dtype=F64), rtol=RTOL, atol=0)
    # logits [0, log 3] -> probs [1/4, 3/4]; H = 0.25 log 4 + 0.75 log(4/3)
    close(entropy_from_logits(t(0.0, math.log(3))), 0.25 * math.log(4) + 0.75 * math.log(4 / 3))


# --- one optimiser step moves the scores the right way -------------------------------------------


def sgd_step(params: torch.Tensor, loss: torch.Tensor, lr: float = 0.1) -> torch.Tensor:
    """One plain SGD step; returns the updated values (detached)."""
    optimiser = torch.optim.SGD([params], lr=lr)
    optimiser.zero_grad()
    loss.backward()
    optimiser.step()
    return params.detach().clone()


def test_bradley_terry_step_raises_margin() -> None:
    scores = t(0.3, 0.5, -0.2, 0.1).requires_grad_(True)  # [chosen 0, chosen 1, rejected 0, rejected 1]
    before = scores[:2] - scores[2:]
    loss, _ = bradley_terry_loss(scores[:2], scores[2:], margin=0.5, score_l2=0.01)
    after = sgd_step(scores, loss)
    assert bool(((after[:2] - after[2:]) > before.detach()).all())


def test_cost_model_step_moves_costs_across_the_boundary() -> None:
    costs = t(0.0, 0.0).requires_grad_(True)  # [unsafer (labelled unsafe), safer (labelled safe)]
    loss, _ = cost_model_loss(costs[:1], costs[1:], t(1), t(-1), score_l2=0.01)
    after = sgd_step(costs, loss)
    assert float(after[0]) > 0.0  # the unsafe cost goes up, above the boundary
    assert float(after[1]) < 0.0  # the safe cost goes down, below it


def test_cost_model_step_both_unsafe_raises_margin_and_costs() -> None:
    costs = t(-0.5, -0.5).requires_grad_(True)  # both labelled unsafe but scored safe
    loss, _ = cost_model_loss(costs[:1], costs[1:], t(1), t(1))
    after = sgd_step(costs, loss)
    assert float(after[0] - after[1]) > 0.0
    assert float(after[0]) > -0.5


@pytest.mark.parametrize("variant", list(DPO_LOSSES))
def test_dpo_step_raises_margin(variant: str) -> None:
    pi = t(-5.0, -4.0, -6.0, -5.5).requires_grad_(True)  # [chosen 0, chosen 1, rejected 0, rejected 1]
    ref_c, ref_r = t(-5.0, -5.0), t(-5.0, -5.0)
    smoothing = 0.1 if variant in ("sigmoid", "robust") else 0.0
    loss, _ = dpo_loss(pi[:2], pi[2:], ref_c, ref_r, beta=0.1, variant=variant, label_smoothing=smoothing)
    before = (pi[:2] - pi[2:]).detach()
    after = sgd_step(pi, loss, lr=1.0)
    assert bool(((after[:2] - after[2:]) > before).all()), variant


def test_simpo_step_raises_margin() -> None:
    pi = t(-6.0, -4.0).requires_grad_(True)  # [chosen, rejected]
    lengths_c, lengths_r = t(3), t(2)
    loss, _ = simpo_loss(pi[:1], pi[1:], lengths_c, lengths_r, beta=2.0, gamma=0.5)
    after = sgd_step(pi, loss)
    assert float(after[0] / 3 - after[1] / 2) > float(-6.0 / 3 + 4.0 / 2)


def test_orpo_step_raises_margin() -> None:
    pi = t(-6.0, -4.0).requires_grad_(True)  # [chosen, rejected] over 3 and 2 tokens
    loss, _ = orpo_loss(pi[:1], pi[1:], t(3), t(2), torch.zeros((), dtype=F64), lam=1.0)
    after = sgd_step(pi, loss)
    assert float(after[0] / 3 - after[1] / 2) > float(-6.0 / 3 + 4.0 / 2)


def test_kto_step_moves_desirable_up_and_undesirable_down() -> None:
    pi = t(-3.0, -3.0).requires_grad_(True)
    loss, _ = kto_loss(pi, t(-3.0, -3.0), torch.tensor([True, False]), 0.2, beta=0.5)
    after = sgd_step(pi, loss)
    assert float(after[0]) > -3.0
    assert float(after[1]) < -3.0
