"""SAC's math against values worked out by hand and against Stable-Baselines3."""

from __future__ import annotations

import math

import pytest
import torch

from alignloop.core.offpolicy import (
    polyak_update,
    sac_actor_loss,
    soft_q_target,
    squashed_gaussian_logprob,
    temperature_loss,
)


def test_squashed_gaussian_logprob_by_hand() -> None:
    # u = 0, N(0, 1): log N = -0.5 log 2 pi = -0.918939; log(1 - tanh(0)^2) = 0
    # u = 1, N(0.5, 0.5): z = 1, log N = -0.5 + log 2 - 0.918939 = -0.725791;
    #   log(1 - tanh(1)^2) = log(1 - 0.761594^2) = -0.867562; log pi = -0.725791 + 0.867562 = 0.141770
    u = torch.tensor([[0.0, 1.0]], dtype=torch.float64)
    mu = torch.tensor([[0.0, 0.5]], dtype=torch.float64)
    log_std = torch.tensor([[0.0, math.log(0.5)]], dtype=torch.float64)
    expected = -0.5 * math.log(2 * math.pi) + 0.14177030832132687
    assert squashed_gaussian_logprob(u, mu, log_std).item() == pytest.approx(expected, rel=1e-9)
    # stable far out in the tails, where 1 - tanh(u)^2 underflows to 0
    big = squashed_gaussian_logprob(torch.tensor([[30.0]]), torch.tensor([[30.0]]), torch.tensor([[0.0]]))
    assert math.isfinite(big.item())


def test_squashed_gaussian_logprob_matches_stable_baselines3() -> None:
    from stable_baselines3.common.distributions import SquashedDiagGaussianDistribution

    torch.manual_seed(0)
    mu, log_std = torch.randn(8, 3, dtype=torch.float64) * 0.5, torch.randn(8, 3, dtype=torch.float64) * 0.3
    dist = SquashedDiagGaussianDistribution(3).proba_distribution(mu, log_std)
    u = (mu + log_std.exp() * torch.randn(8, 3, dtype=torch.float64)).clamp(-1.5, 1.5)
    ref = dist.log_prob(torch.tanh(u), u)  # SB3 adds 1e-6 inside log(1 - a^2): |u| <= 1.5 keeps it < 2e-5
    torch.testing.assert_close(squashed_gaussian_logprob(u, mu, log_std), ref, rtol=1e-5, atol=1e-4)


def test_soft_q_target_by_hand() -> None:
    # min(Q1', Q2') = (3, 1); soft V = (3 - 0.2 * -1, 1 - 0.2 * 0.5) = (3.2, 0.9);
    # y = (1 + 0.9 * 3.2, 2 + 0 (terminated)) = (3.88, 2.0)
    y = soft_q_target(
        torch.tensor([1.0, 2.0]),
        torch.tensor([3.0, 5.0]),
        torch.tensor([4.0, 1.0]),
        torch.tensor([-1.0, 0.5]),
        torch.tensor([False, True]),
        gamma=0.9,
        alpha=0.2,
    )
    torch.testing.assert_close(y, torch.tensor([3.88, 2.0]))
    assert not y.requires_grad


def test_sac_actor_loss_by_hand() -> None:
    # mean(0.2 * (-1) - 3, 0.2 * 0.5 - 1) = mean(-3.2, -0.9) = -2.05
    logp, q = torch.tensor([-1.0, 0.5]), torch.tensor([3.0, 1.0])
    loss, metrics = sac_actor_loss(logp, q, 0.2)
    assert loss.item() == pytest.approx(-2.05, rel=1e-6)
    assert metrics["entropy"].item() == pytest.approx(0.25, rel=1e-6)
    # with Q_c = (1, 2) and lambda 0.5: (-2.05 + 0.5 * 1.5) / 1.5 = -0.866667
    loss, _ = sac_actor_loss(logp, q, 0.2, torch.tensor([1.0, 2.0]), 0.5)
    assert loss.item() == pytest.approx(-1.3 / 1.5, rel=1e-6)


def test_temperature_loss_by_hand() -> None:
    """log alpha = log 0.2, log pi = (-1, 0.5), target entropy -1: mean(log pi + target) = -1.25,
    loss = -(log 0.2 * -1.25) = -2.011797 and d loss / d log alpha = 1.25 > 0: the entropy 0.25
    is above its target, so a descent step lowers alpha."""
    log_alpha = torch.tensor(math.log(0.2), requires_grad=True)
    loss = temperature_loss(log_alpha, torch.tensor([-1.0, 0.5]), -1.0)
    assert loss.item() == pytest.approx(-2.0117973905426254, rel=1e-6)
    loss.backward()
    assert log_alpha.grad.item() == pytest.approx(1.25, rel=1e-6)  # type: ignore[union-attr]


def test_polyak_update_by_hand_and_against_stable_baselines3() -> None:
    from stable_baselines3.common.utils import polyak_update as sb3_polyak

    target, source = [torch.tensor([0.0, 10.0])], [torch.tensor([1.0, 0.0])]
    polyak_update(target, source, 0.1)  # 0.9 * (0, 10) + 0.1 * (1, 0)
    torch.testing.assert_close(target[0], torch.tensor([0.1, 9.0]))
    torch.manual_seed(0)
    mine, theirs, src = [torch.randn(3, 2)], None, [torch.randn(3, 2)]
    theirs = [mine[0].clone()]
    polyak_update(mine, src, 0.005)
    sb3_polyak(src, theirs, 0.005)
    torch.testing.assert_close(mine[0], theirs[0])
    with pytest.raises(ValueError, match="targets"):
        polyak_update(mine, [], 0.1)
