"""Lagrange multiplier update rules against values worked out by hand, and their guard rails."""

from __future__ import annotations

import json
import math
from collections import deque
from typing import Any

import pytest
import torch

from alignloop.core.lagrange import (
    LAGRANGE_METHODS,
    LAMBDA_CEILING,
    LAMBDA_FLOOR,
    AdamState,
    LagrangeMultiplier,
    PIDState,
    adam_update,
    floored_cost,
    lagrangian_advantage,
    log_space_update,
    mean_recent_cost,
    pid_update,
    projected_update,
)


def approx(x: float) -> object:
    return pytest.approx(x, rel=1e-6, abs=1e-12)


# --------------------------------------------------------------------------- pure update rules


def test_log_space_update_by_hand() -> None:
    # log lambda = 0 (lambda = 1), J_c = 0.5, d = 0, lr = 0.1:
    #   log lambda <- 0 + 0.1 * 1 * (0.5 - 0) = 0.05
    assert log_space_update(0.0, 0.5, 0.0, 0.1) == approx(0.05)
    # log lambda = 0.05 (lambda = e^0.05 = 1.0512711), J_c = -1, d = 0:
    #   0.05 + 0.1 * 1.0512711 * (-1) = -0.0551271
    assert log_space_update(0.05, -1.0, 0.0, 0.1) == approx(-0.05512710964)
    # lambda = 2 (log 2 = 0.6931472), J_c = 3, d = 1, lr = 0.05:
    #   0.6931472 + 0.05 * 2 * 2 = 0.8931472
    assert log_space_update(math.log(2.0), 3.0, 1.0, 0.05) == approx(0.89314718056)


def test_log_space_update_max_value() -> None:
    # lambda = 4.9, J_c = 10, d = 0, lr = 0.1: log 4.9 + 4.9 = 6.489 > log 5 -> clamped to log 5
    assert log_space_update(math.log(4.9), 10.0, 0.0, 0.1, max_value=5.0) == approx(math.log(5.0))
    # below the bound nothing is clamped: log 1 + 0.1 * 1 * 1 = 0.1
    assert log_space_update(0.0, 1.0, 0.0, 0.1, max_value=5.0) == approx(0.1)


def test_projected_update_by_hand() -> None:
    # 1 + 0.1 * (3 - 1) = 1.2
    assert projected_update(1.0, 3.0, 1.0, 0.1) == approx(1.2)
    # 0.1 + 0.1 * (0 - 5) = -0.4 -> projected to 0
    assert projected_update(0.1, 0.0, 5.0, 0.1) == 0.0
    # 4.9 + 0.1 * 10 = 5.9 -> clamped at max_value 5
    assert projected_update(4.9, 10.0, 0.0, 0.1, max_value=5.0) == approx(5.0)


def test_pid_update_by_hand() -> None:
    # kp = 0.5, ki = 0.1, kd = 0.2, d = 1, integral starts at 1.0 (= init).
    gains = {"kp": 0.5, "ki": 0.1, "kd": 0.2}
    state = PIDState(integral=1.0)
    # J=3: e = 2, D = 0 (first update), I = 1 + 0.1*2 = 1.2, lambda = 0.5*2 + 1.2 + 0 = 2.2
    lam, state = pid_update(state, 3.0, 1.0, **gains)
    assert (lam, state.integral, state.prev_cost) == (approx(2.2), approx(1.2), 3.0)
    # J=4: e = 3, D = max(0, 4-3) = 1, I = 1.2 + 0.3 = 1.5, lambda = 1.5 + 1.5 + 0.2 = 3.2
    lam, state = pid_update(state, 4.0, 1.0, **gains)
    assert (lam, state.integral) == (approx(3.2), approx(1.5))
    # J=0: e = -1, D = max(0, 0-4) = 0, I = 1.5 - 0.1 = 1.4, lambda = -0.5 + 1.4 = 0.9
    lam, state = pid_update(state, 0.0, 1.0, **gains)
    assert (lam, state.integral) == (approx(0.9), approx(1.4))
    # J=-10: e = -11, I = 1.4 - 1.1 = 0.3, lambda = -5.5 + 0.3 -> 0
    lam, state = pid_update(state, -10.0, 1.0, **gains)
    assert (lam, state.integral) == (0.0, approx(0.3))
    # J=-10 again: I = max(0, 0.3 - 1.1) = 0, lambda = 0
    lam, state = pid_update(state, -10.0, 1.0, **gains)
    assert (lam, state.integral) == (0.0, 0.0)


def test_pid_max_value_clamps_lambda_and_integral() -> None:
    # I = 1 + 1 * 10 = 11 -> 2 (anti-windup); lambda = 1 * 10 + 2 -> 2
    lam, state = pid_update(PIDState(integral=1.0), 11.0, 1.0, kp=1.0, ki=1.0, kd=0.0, max_value=2.0)
    assert (lam, state.integral) == (2.0, 2.0)


def test_pid_integral_only_equals_projected() -> None:
    costs = [3.0, -2.0, 0.5, 7.0, -9.0, 1.0]
    pid = LagrangeMultiplier("pid", init=0.7, lr=0.3, max_value=4.0)
    projected = LagrangeMultiplier("projected", init=0.7, lr=0.3, max_value=4.0)
    for cost in costs:
        assert pid.update(cost, 1.0) == approx(projected.update(cost, 1.0))


# --------------------------------------------------------------------------- the multiplier


def test_multiplier_log_by_hand() -> None:
    lag = LagrangeMultiplier("log", init=1.0, lr=0.1)
    assert lag.value == 1.0
    # see test_log_space_update_by_hand: log lambda 0 -> 0.05 -> -0.0551271
    assert lag.update(0.5, 0.0) == approx(math.exp(0.05))
    assert lag.update(-1.0, 0.0) == approx(math.exp(-0.05512710964))
    assert lag.value == approx(0.94636485)  # e^-0.0551271
    assert lag.num_updates == 2


def test_multiplier_projected_and_pid_by_hand() -> None:
    lag = LagrangeMultiplier("projected", init=1.0, lr=0.1)
    assert lag.update(3.0, 1.0) == approx(1.2)
    assert lag.update(-20.0, 1.0) == 0.0  # 1.2 + 0.1 * (-21) < 0
    pid = LagrangeMultiplier("pid", init=1.0, kp=0.5, ki=0.1, kd=0.2)
    assert pid.value == 1.0
    assert [pid.update(c, 1.0) for c in (3.0, 4.0, 0.0)] == [approx(2.2), approx(3.2), approx(0.9)]


def test_adam_update_by_hand() -> None:
    # lambda = 0.001, J_c = 30, d = 25, lr = 0.035: g = -5, m = -0.5, v = 0.001 * 25 = 0.025;
    #   m_hat = -5, v_hat = 25: step = 0.035 * -5 / (5 + 1e-8) -> lambda = 0.001 + 0.035 = 0.036
    lam, state = adam_update(0.001, AdamState(), 30.0, 25.0, 0.035)
    assert lam == approx(0.036)
    assert (state.m, state.v, state.steps) == (approx(-0.5), approx(0.025), 1)
    # J_c = 20: g = 5, m = 0.9 * -0.5 + 0.1 * 5 = 0.05, v = 0.999 * 0.025 + 0.001 * 25 = 0.049975;
    #   m_hat = 0.05 / 0.19 = 0.2631579, v_hat = 0.049975 / 0.001999 = 25:
    #   lambda = 0.036 - 0.035 * 0.2631579 / 5 = 0.0341579
    lam, state = adam_update(lam, state, 20.0, 25.0, 0.035)
    assert lam == approx(0.036 - 0.035 * (0.05 / 0.19) / 5) and state.steps == 2
    # the step's size does not follow the violation's: 1000 over the limit moves lambda by lr too
    assert adam_update(0.5, AdamState(), 1025.0, 25.0, 0.035)[0] == approx(0.535)
    # projected onto [0, max_value]
    assert adam_update(0.01, AdamState(), 0.0, 25.0, 0.035)[0] == 0.0
    assert adam_update(4.99, AdamState(), 30.0, 25.0, 0.035, max_value=5.0)[0] == 5.0


def test_adam_rule_matches_torch_adam_and_a_clamp() -> None:
    # OmniSafe's Lagrange: torch.optim.Adam on the loss -lambda (J_c - d), then clamp_(0, upper)
    param = torch.nn.Parameter(torch.tensor(0.2, dtype=torch.float64))
    opt = torch.optim.Adam([param], lr=0.05)
    lag = LagrangeMultiplier("adam", init=0.2, lr=0.05, max_value=3.0)
    for cost in (31.0, 40.0, 22.0, 26.0, 10.0, 5.0, 12.0, 60.0, 24.0, 25.0, 80.0):
        opt.zero_grad()
        (-param * (cost - 25.0)).backward()
        opt.step()
        param.data.clamp_(0.0, 3.0)
        assert lag.update(cost, 25.0) == pytest.approx(param.item(), rel=1e-12, abs=1e-15)


def test_adam_rule_with_huge_costs() -> None:
    lag = LagrangeMultiplier("adam", init=1.0, lr=0.1)
    assert lag.update(1e30, 0.0) == approx(1.1)  # Adam's step is lr whatever the violation
    assert 1.1 < lag.update(1e300, 0.0) <= 1.2 + 1e-9  # v stays finite (g clipped)
    assert math.isfinite(lag.update(-1e300, 0.0)) and lag.value >= 0


def test_delay_skips_initial_updates() -> None:
    lag = LagrangeMultiplier("log", init=1.0, lr=0.1, delay=2)
    assert lag.update(0.5, 0.0) == 1.0
    assert lag.update(0.5, 0.0) == 1.0
    assert lag.update(0.5, 0.0) == approx(math.exp(0.05))  # the first step that counts
    assert lag.num_updates == 3


def test_max_value_bounds_every_method() -> None:
    for method in LAGRANGE_METHODS:
        lag = LagrangeMultiplier(method, init=1.0, lr=0.5, max_value=5.0, kp=1.0)
        for _ in range(20):
            lag.update(10.0, 0.0)
        assert lag.value == approx(5.0), method


@pytest.mark.parametrize("method", LAGRANGE_METHODS)
def test_finite_with_cost_limit_zero(method: str) -> None:
    lag = LagrangeMultiplier(method, init=1.0, lr=0.1, kp=0.1, kd=0.1)
    window = deque([0.0] * 8, maxlen=8)
    for cost in [0.0, 0.0, 1e-3, -1e-3, 0.0, 2.0, -2.0] * 10:
        window.append(cost)
        value = lag.update(mean_recent_cost(window), 0.0)
        assert math.isfinite(value) and value >= 0
        assert torch.isfinite(lagrangian_advantage(torch.ones(3), torch.ones(3), value)).all()
    # all-zero costs at limit 0: the rule sits still, no NaN
    still = LagrangeMultiplier(method, init=1.0, lr=0.1)
    assert [still.update(0.0, 0.0) for _ in range(3)] == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("method", [m for m in LAGRANGE_METHODS if m != "adam"])
def test_finite_with_huge_costs(method: str) -> None:
    lag = LagrangeMultiplier(method, init=1.0, lr=0.1, kp=1.0, kd=1.0)
    assert lag.update(1e30, 0.0) == LAMBDA_CEILING  # clamped, not inf
    assert lag.update(1e300, -1e300) == LAMBDA_CEILING
    adv = lagrangian_advantage(torch.tensor([1.0, -2.0]), torch.tensor([0.5, 1.0]), lag.value)
    assert torch.isfinite(adv).all()
    low = lag.update(-1e30, 0.0)
    assert low == (LAMBDA_FLOOR if method == "log" else 0.0)
    assert math.isfinite(lag.update(1.0, 0.0))


@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan])
def test_non_finite_cost_is_an_error(bad: float) -> None:
    lag = LagrangeMultiplier("log")
    with pytest.raises(ValueError, match="mean_cost must be a finite number"):
        lag.update(bad, 0.0)
    with pytest.raises(ValueError, match="cost_limit must be a finite number"):
        lag.update(0.0, bad)
    with pytest.raises(ValueError, match="overflows"):
        lag.update(1.5e308, -1.5e308)
    assert lag.value == 1.0 and lag.num_updates == 0


def test_mean_recent_cost() -> None:
    # (1 + 2 + 6) / 3 = 3
    assert mean_recent_cost([1.0, 2.0, 6.0]) == approx(3.0)
    assert mean_recent_cost(deque([0.5, -0.5, 2.0], maxlen=3)) == approx(2.0 / 3.0)
    assert mean_recent_cost([1e308, 1e308]) == approx(1e308)  # no overflow in the sum
    with pytest.raises(ValueError, match="empty"):
        mean_recent_cost([])
    with pytest.raises(ValueError, match=r"costs\[1\] is inf"):
        mean_recent_cost([1.0, math.inf])
    with pytest.raises(ValueError, match=r"costs\[0\] is nan"):
        mean_recent_cost([math.nan])


def test_floored_cost_by_hand() -> None:
    cost = torch.tensor([-4.0, -0.5, 0.0, 2.5])
    # max(c, -1): [-1, -0.5, 0, 2.5]; mean 0.25 where the plain mean is -0.5
    torch.testing.assert_close(floored_cost(cost, -1.0), torch.tensor([-1.0, -0.5, 0.0, 2.5]))
    assert floored_cost(cost, -1.0).mean().item() == approx(0.25) and cost.mean().item() == approx(-0.5)
    # a safe response made safer (-4 -> -6) leaves the floored mean where it was
    safer = torch.tensor([-6.0, -0.5, 0.0, 2.5])
    assert floored_cost(safer, -1.0).mean().item() == approx(0.25)
    assert floored_cost(cost, None) is cost
    with pytest.raises(ValueError, match="finite"):
        floored_cost(cost, math.inf)


@pytest.mark.parametrize("method", LAGRANGE_METHODS)
def test_state_dict_round_trip(method: str) -> None:
    kwargs: dict[str, Any] = {"init": 0.5, "lr": 0.2, "max_value": 3.0, "delay": 1, "kp": 0.3, "kd": 0.1}
    lag = LagrangeMultiplier(method, **kwargs)
    for cost in (2.0, 0.5, 1.5):
        lag.update(cost, 1.0)
    state = json.loads(json.dumps(lag.state_dict()))  # plain Python values survive JSON
    resumed = LagrangeMultiplier(method, **kwargs)
    resumed.load_state_dict(state)
    assert resumed.value == lag.value and resumed.num_updates == 3
    for cost in (4.0, -1.0, 2.5):
        assert resumed.update(cost, 1.0) == lag.update(cost, 1.0)


def test_load_state_dict_checks() -> None:
    state = LagrangeMultiplier("log").state_dict()
    with pytest.raises(ValueError, match="saved with method 'log'"):
        LagrangeMultiplier("pid").load_state_dict(state)
    del state["integral"]
    with pytest.raises(ValueError, match="lacks integral"):
        LagrangeMultiplier("log").load_state_dict(state)
    # a state saved before the adam rule existed loads for the other rules, not for adam
    old = LagrangeMultiplier("projected").state_dict()
    del old["adam"]
    LagrangeMultiplier("projected").load_state_dict(old)
    with pytest.raises(ValueError, match="lacks adam"):
        LagrangeMultiplier("adam").load_state_dict(dict(old, method="adam"))


def test_bad_options_are_errors() -> None:
    with pytest.raises(ValueError, match="method must be one of log, projected, pid, adam"):
        LagrangeMultiplier("sgd")
    with pytest.raises(ValueError, match="init must be > 0 for method 'log'"):
        LagrangeMultiplier("log", init=0.0)
    with pytest.raises(ValueError, match="init must be >= 0"):
        LagrangeMultiplier("projected", init=-1.0)
    with pytest.raises(ValueError, match="must not exceed max_value"):
        LagrangeMultiplier("log", init=6.0, max_value=5.0)
    with pytest.raises(ValueError, match="lr must be"):
        LagrangeMultiplier("log", lr=-0.1)
    with pytest.raises(ValueError, match="delay"):
        LagrangeMultiplier("log", delay=-1)
    assert LagrangeMultiplier("projected", init=0.0).value == 0.0


# --------------------------------------------------------------------------- advantage mix


def test_lagrangian_advantage_by_hand() -> None:
    adv_r = torch.tensor([[1.0, -2.0]])  # (B, T)
    adv_c = torch.tensor([[0.5, 1.0]])  # (B, T)
    # lam = 1: [(1 - 0.5)/2, (-2 - 1)/2] = [0.25, -1.5]
    torch.testing.assert_close(lagrangian_advantage(adv_r, adv_c, 1.0), torch.tensor([[0.25, -1.5]]))
    # lam = 3: [(1 - 1.5)/4, (-2 - 3)/4] = [-0.125, -1.25]
    torch.testing.assert_close(
        lagrangian_advantage(adv_r, adv_c, torch.tensor(3.0)), torch.tensor([[-0.125, -1.25]])
    )
    # lam = 0: the reward advantage alone
    torch.testing.assert_close(lagrangian_advantage(adv_r, adv_c, 0.0), adv_r)


def test_lagrangian_advantage_checks() -> None:
    with pytest.raises(ValueError, match="lam must be a finite scalar >= 0"):
        lagrangian_advantage(torch.ones(2), torch.ones(2), -0.5)
    with pytest.raises(ValueError, match="lam must be a finite scalar >= 0"):
        lagrangian_advantage(torch.ones(2), torch.ones(2), math.nan)
    with pytest.raises(ValueError, match="shape"):
        lagrangian_advantage(torch.ones(2), torch.ones(3), 1.0)
