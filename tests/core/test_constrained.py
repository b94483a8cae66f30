"""FOCOPS's and CUP's losses and Sauté's budget against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from alignloop.core.constrained import (
    cup_projection_loss,
    focops_loss,
    saute_budget,
    saute_next_budget,
    saute_reward,
)


def test_focops_loss_by_hand() -> None:
    """ratio = (1, 2), KL = (0.01, 0.03), A = (1, -1), temperature 1.5, bound 0.02: the second
    state is outside the trust region (0.03 > 0.02) and drops out:
    loss = ((0.01 - 1 * 1 / 1.5) * 1 + 0) / 2 = -0.328333; d loss / d logp = (-1/1.5 / 2, 0),
    d loss / d KL = (1/2, 0)."""
    logp = torch.tensor([0.0, math.log(2.0)], requires_grad=True)
    kl = torch.tensor([0.01, 0.03], requires_grad=True)
    loss, metrics = focops_loss(
        logp, torch.zeros(2), kl, torch.tensor([1.0, -1.0]), temperature=1.5, kl_bound=0.02
    )
    assert loss.item() == pytest.approx((0.01 - 1 / 1.5) / 2, rel=1e-6)
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([-1 / 3, 0.0]), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(kl.grad, torch.tensor([0.5, 0.0]))
    assert metrics["inside_frac"].item() == 0.5
    with pytest.raises(ValueError, match="temperature"):
        focops_loss(logp, torch.zeros(2), kl, torch.ones(2), temperature=0.0, kl_bound=0.02)


def test_cup_projection_loss_by_hand() -> None:
    """ratio = (1, 2), KL = (0.01, 0.02), A_c = (1, -0.5), lam = 0.5, gamma 0.99, GAE lambda 0.95:
    coef = (1 - 0.9405) / 0.01 = 5.95; terms 0.5 * 5.95 * 1 + 0.01 = 2.985 and
    0.5 * 5.95 * 2 * -0.5 + 0.02 = -2.955; mean 0.015. d loss / d logp = lam coef ratio A_c / 2
    = (1.4875, -1.4875)."""
    logp = torch.tensor([0.0, math.log(2.0)], requires_grad=True)
    loss, _ = cup_projection_loss(
        logp,
        torch.zeros(2),
        torch.tensor([0.01, 0.02]),
        torch.tensor([1.0, -0.5]),
        lam=0.5,
        gamma=0.99,
        gae_lambda=0.95,
    )
    assert loss.item() == pytest.approx(0.015, rel=1e-4)  # float32 cancellation of +-2.975
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([1.4875, -1.4875]), rtol=1e-5, atol=1e-6)


def test_saute_budget_by_hand() -> None:
    # 25 * (1 - 0.999^1000) / (0.001 * 1000): 0.999^1000 = exp(1000 ln 0.999) = 0.3676954, so 25 * 0.6323046
    assert saute_budget(25.0, 0.999, 1000) == pytest.approx(15.807614380725907, rel=1e-9)
    assert saute_budget(25.0, 1.0, 1000) == 25.0
    with pytest.raises(ValueError, match="budget must be > 0"):
        saute_budget(0.0, 0.999, 1000)


def test_saute_budget_steps_and_reward_on_floats_arrays_and_tensors() -> None:
    # z = 1, a cost of 1 out of a budget of 10, gamma 0.99: (1 - 0.1) / 0.99 = 0.909091
    assert saute_next_budget(1.0, 1.0, 10.0, 0.99) == pytest.approx(0.9 / 0.99, rel=1e-12)
    # three steps of cost 4 from z = 1, budget 10, gamma 1: 0.6, 0.2, -0.2 -> the third is unsafe
    z, rewards = 1.0, []
    for _ in range(3):
        z = saute_next_budget(z, 4.0, 10.0, 1.0)
        rewards.append(saute_reward(2.0, z, -1.0))
    assert z == pytest.approx(-0.2) and rewards == [2.0, 2.0, -1.0]
    assert saute_reward(2.0, 0.0, -1.0) == -1.0  # a spent budget is spent
    arr = saute_reward(np.array([1.0, 2.0]), np.array([0.5, -0.5]), -3.0)
    np.testing.assert_array_equal(arr, [1.0, -3.0])
    ten = saute_reward(
        torch.tensor([1.0, 2.0]), saute_next_budget(torch.ones(2), torch.tensor([0.0, 20.0]), 10.0, 1.0), 0.0
    )
    torch.testing.assert_close(ten, torch.tensor([1.0, 0.0]))
