"""The Lagrange multiplier of "maximise reward subject to cost <= limit".

The constrained problem ``max_pi J_r(pi) s.t. J_c(pi) <= d`` is solved through its Lagrangian
``J_r - lambda (J_c - d)`` with ``lambda >= 0``: the policy ascends on ``J_r - lambda J_c`` (see
`lagrangian_advantage`) while ``lambda`` ascends on ``lambda (J_c - d)``, growing while the
constraint is violated and shrinking while it holds. Four update rules are offered, each a pure
function on floats; `LagrangeMultiplier` only holds their state:

- ``"log"``: gradient ascent on log lambda, as Safe RLHF (Dai et al. 2023, "Safe RLHF: Safe
  Reinforcement Learning from Human Feedback", sec. 3.3 and its PPO-Lagrangian trainer);
- ``"projected"``: projected gradient ascent on lambda itself, a step proportional to the
  violation;
- ``"adam"``: the same ascent taken by Adam and projected onto ``lambda >= 0``, as OmniSafe's
  ``Lagrange`` (``lambda_optimizer: Adam``): a step of about ``lr`` whatever the size of the
  violation;
- ``"pid"``: the PID Lagrangian of Stooke et al. 2020, "Responsive Safety in Reinforcement
  Learning by PID Lagrangian Methods", Algorithm 2.

Numerical guard rails, the same for every rule: the mean cost and the limit must be finite
(``inf`` or ``nan`` raise ValueError, since a multiplier fed them can only be wrong); finite but
huge costs are absorbed by clamping lambda to ``[0, min(max_value, LAMBDA_CEILING)]`` (and, for
the log rule, from below at ``LAMBDA_FLOOR``), so lambda, ``1 + lambda`` and the mixed advantage
stay finite for any finite input, including a cost limit of 0.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

import torch
from torch import Tensor

__all__ = [
    "LAGRANGE_METHODS",
    "AdamState",
    "LagrangeMethod",
    "LAMBDA_CEILING",
    "LAMBDA_FLOOR",
    "LagrangeMultiplier",
    "PIDState",
    "adam_update",
    "floored_cost",
    "lagrangian_advantage",
    "log_space_update",
    "mean_recent_cost",
    "pid_update",
    "projected_update",
]

LagrangeMethod = Literal["log", "projected", "pid", "adam"]
"""The name of an update rule (the type of every config's ``lagrange_method``)."""

LAGRANGE_METHODS: tuple[str, ...] = get_args(LagrangeMethod)
"""The update rules `LagrangeMultiplier` accepts as ``method``."""

LAMBDA_CEILING = 1e8
"""Upper bound on lambda when no ``max_value`` is given (only huge costs ever reach it)."""

LAMBDA_FLOOR = 1e-8
"""Lower bound on lambda for the log rule, whose log lambda must stay finite. Note that the
log rule moves lambda by steps proportional to lambda, so a lambda near the floor recovers only
slowly; this is a property of the rule, not of the floor."""


def _check_finite(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    return value


def _upper_bound(max_value: float | None) -> float:
    return LAMBDA_CEILING if max_value is None else min(max_value, LAMBDA_CEILING)


def log_space_update(
    log_lam: float, mean_cost: float, cost_limit: float, lr: float, *, max_value: float | None = None
) -> float:
    """One Safe RLHF step; returns the new log lambda.

    Safe RLHF keeps ``log lambda`` as a parameter and takes one SGD step of size ``lr`` on the
    loss ``-lambda (J_c - d)`` with ``lambda = exp(log lambda)``; the gradient of that loss with
    respect to log lambda is ``-lambda (J_c - d)``, so the step is

        log lambda <- log lambda + lr * lambda * (J_c - d)

    after which log lambda is clamped to ``[log LAMBDA_FLOOR, log min(max_value, LAMBDA_CEILING)]``
    (Safe RLHF clamps at ``log max_value`` only; the two extra bounds keep it finite).
    """
    lam = math.exp(log_lam)
    step = lr * lam * (mean_cost - cost_limit)
    new_log_lam = log_lam + step
    return min(max(new_log_lam, math.log(LAMBDA_FLOOR)), math.log(_upper_bound(max_value)))


def projected_update(
    lam: float, mean_cost: float, cost_limit: float, lr: float, *, max_value: float | None = None
) -> float:
    """One projected gradient-ascent step on lambda; returns the new lambda:

    lambda <- clamp(lambda + lr * (J_c - d), 0, min(max_value, LAMBDA_CEILING))
    """
    new_lam = lam + lr * (mean_cost - cost_limit)
    return min(max(new_lam, 0.0), _upper_bound(max_value))


ADAM_BETAS = (0.9, 0.999)
"""Adam's moment decays for the "adam" rule (PyTorch's defaults, which OmniSafe uses)."""
ADAM_EPS = 1e-8
"""Adam's denominator guard for the "adam" rule (PyTorch's default)."""
_ADAM_MAX_GRAD = 1e150
"""The violation is clipped to this size before Adam squares it, so its second moment stays finite."""


@dataclass(frozen=True)
class AdamState:
    """Adam's moments of the "adam" rule between updates."""

    m: float = 0.0
    """First moment of the gradient ``-(J_c - d)``."""
    v: float = 0.0
    """Second moment of that gradient."""
    steps: int = 0
    """Updates taken (for the bias corrections)."""


def adam_update(
    lam: float,
    state: AdamState,
    mean_cost: float,
    cost_limit: float,
    lr: float,
    *,
    max_value: float | None = None,
) -> tuple[float, AdamState]:
    """One Adam step on the loss ``-lambda (J_c - d)``, then the projection; returns
    ``(lambda, new_state)``. With ``g = -(J_c - d)`` and ``(b1, b2) = ADAM_BETAS``:

        m = b1 m + (1 - b1) g,   v = b2 v + (1 - b2) g^2,   k = steps + 1
        lambda <- clamp(lambda - lr * (m / (1 - b1^k)) / (sqrt(v / (1 - b2^k)) + ADAM_EPS),
                        0, min(max_value, LAMBDA_CEILING))

    exactly ``torch.optim.Adam`` on a one-element parameter followed by OmniSafe's clamp. The
    first step is ``lr`` towards the violation (``g / |g|``); later ones stay near ``lr`` while
    the sign holds, whatever the violation's size. Before it is squared, ``g`` is clipped to
    ``±1e150`` so that ``v`` stays finite.
    """
    b1, b2 = ADAM_BETAS
    g = -min(max(mean_cost - cost_limit, -_ADAM_MAX_GRAD), _ADAM_MAX_GRAD)
    steps = state.steps + 1
    m = b1 * state.m + (1 - b1) * g
    v = b2 * state.v + (1 - b2) * g * g
    step = lr * (m / (1 - b1**steps)) / (math.sqrt(v / (1 - b2**steps)) + ADAM_EPS)
    new_lam = min(max(lam - step, 0.0), _upper_bound(max_value))
    return new_lam, AdamState(m=m, v=v, steps=steps)


@dataclass(frozen=True)
class PIDState:
    """State of the PID Lagrangian between updates."""

    integral: float
    """The integral term, already multiplied by ``ki`` (in lambda units)."""
    prev_cost: float | None = None
    """J_c at the previous update; None before the first."""


def pid_update(
    state: PIDState,
    mean_cost: float,
    cost_limit: float,
    *,
    kp: float,
    ki: float,
    kd: float,
    max_value: float | None = None,
) -> tuple[float, PIDState]:
    """One PID Lagrangian step (Stooke et al. 2020, Algorithm 2); returns ``(lambda, new_state)``:

        error      = J_c - d
        derivative = max(0, J_c - J_c,prev)        (0 on the first update)
        integral   = clamp(integral + ki * error, 0, upper)
        lambda     = clamp(kp * error + integral + kd * derivative, 0, upper)

    with ``upper = min(max_value, LAMBDA_CEILING)``. The integral is kept in lambda units
    (``ki`` folded in), so ``init`` is its starting value and ``kp = kd = 0`` gives exactly the
    projected rule with ``lr = ki``. Two deviations from Algorithm 2, both written out: the
    paper starts from ``J_c,prev = 0``, which kicks lambda by ``kd * J_c`` on the first update,
    and clamps the integral only from below; here the first update has no derivative term and
    the integral is also clamped from above (anti-windup).
    """
    upper = _upper_bound(max_value)
    error = mean_cost - cost_limit
    derivative = 0.0 if state.prev_cost is None else max(0.0, mean_cost - state.prev_cost)
    integral = min(max(state.integral + ki * error, 0.0), upper)
    lam = min(max(kp * error + integral + kd * derivative, 0.0), upper)
    return lam, PIDState(integral=integral, prev_cost=mean_cost)


class LagrangeMultiplier:
    """A Lagrange multiplier lambda >= 0 for the constraint ``J_c <= cost_limit``.

    Args:
        method: the update rule, one of ``LAGRANGE_METHODS``: "log" (Safe RLHF,
            `log_space_update`), "projected" (`projected_update`), "pid" (Stooke et al. 2020,
            `pid_update`) or "adam" (OmniSafe, `adam_update`).
        init: initial lambda (> 0 for "log", >= 0 otherwise).
        lr: step size of the "log", "projected" and "adam" rules.
        max_value: optional upper bound on lambda.
        delay: number of initial calls to `update` that leave lambda unchanged (Safe RLHF's
            ``lambda_update_delay_steps``: a warm-up while the critics settle).
        kp, ki, kd: PID gains for "pid"; ``ki=None`` uses ``lr``.

    The caller computes ``J_c`` (e.g. `mean_recent_cost` over a window of recent episodes)
    and passes it to `update`; nothing is read from loggers.
    """

    def __init__(
        self,
        method: str = "log",
        init: float = 1.0,
        lr: float = 0.1,
        max_value: float | None = None,
        delay: int = 0,
        kp: float = 0.0,
        ki: float | None = None,
        kd: float = 0.0,
    ) -> None:
        if method not in LAGRANGE_METHODS:
            raise ValueError(f"method must be one of {', '.join(LAGRANGE_METHODS)}; got {method!r}")
        init = _check_finite("init", init)
        if init < 0 or (method == "log" and init == 0):
            bound = "> 0 for method 'log' (it keeps log lambda)" if method == "log" else ">= 0"
            raise ValueError(f"init must be {bound}; got {init}")
        if max_value is not None:
            max_value = _check_finite("max_value", max_value)
            if max_value <= 0:
                raise ValueError(f"max_value must be > 0 or None; got {max_value}")
            if init > max_value:
                raise ValueError(f"init ({init}) must not exceed max_value ({max_value})")
        if ki is None:
            ki = lr
        for name, gain in (("lr", lr), ("kp", kp), ("ki", ki), ("kd", kd)):
            if not (math.isfinite(gain) and gain >= 0):
                raise ValueError(f"{name} must be a finite number >= 0; got {gain}")
        if delay < 0:
            raise ValueError(f"delay must be >= 0; got {delay}")
        self.method = method
        self.lr = float(lr)
        self.max_value = max_value
        self.delay = int(delay)
        self.kp, self.ki, self.kd = float(kp), float(ki), float(kd)
        self.num_updates = 0
        """Calls to `update` so far, skipped ones included."""
        if method == "log":
            init = min(max(init, LAMBDA_FLOOR), _upper_bound(max_value))
        self._log_lam = math.log(init) if method == "log" else 0.0
        self._lam = init
        self._pid = PIDState(integral=init)
        self._adam = AdamState()

    @property
    def value(self) -> float:
        """The current lambda."""
        if self.method == "log":
            # exp(log x) may exceed x by an ulp: keep max_value an exact bound
            return min(max(math.exp(self._log_lam), LAMBDA_FLOOR), _upper_bound(self.max_value))
        return self._lam

    def update(self, mean_cost: float, cost_limit: float) -> float:
        """Move lambda by one step of the chosen rule given the mean cost ``J_c`` and the limit
        ``d``; returns the new lambda. The first ``delay`` calls change nothing.
        Raises ValueError on a non-finite ``mean_cost``, ``cost_limit`` or difference of the two."""
        mean_cost = _check_finite("mean_cost", mean_cost)
        cost_limit = _check_finite("cost_limit", cost_limit)
        if not math.isfinite(mean_cost - cost_limit):
            raise ValueError(f"mean_cost - cost_limit overflows ({mean_cost} - {cost_limit})")
        self.num_updates += 1
        if self.num_updates <= self.delay:
            return self.value
        if self.method == "log":
            self._log_lam = log_space_update(
                self._log_lam, mean_cost, cost_limit, self.lr, max_value=self.max_value
            )
        elif self.method == "projected":
            self._lam = projected_update(self._lam, mean_cost, cost_limit, self.lr, max_value=self.max_value)
        elif self.method == "adam":
            self._lam, self._adam = adam_update(
                self._lam, self._adam, mean_cost, cost_limit, self.lr, max_value=self.max_value
            )
        else:
            self._lam, self._pid = pid_update(
                self._pid,
                mean_cost,
                cost_limit,
                kp=self.kp,
                ki=self.ki,
                kd=self.kd,
                max_value=self.max_value,
            )
        return self.value

    def state_dict(self) -> dict[str, Any]:
        """The mutable state, as plain Python values (for checkpoints)."""
        return {
            "method": self.method,
            "log_lambda": self._log_lam,
            "lambda": self._lam,
            "integral": self._pid.integral,
            "prev_cost": self._pid.prev_cost,
            "num_updates": self.num_updates,
            "adam": asdict(self._adam),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned; the method must match this multiplier's. (A state
        saved before the "adam" rule existed has no Adam moments; only that rule needs them.)"""
        missing = {"method", "log_lambda", "lambda", "integral", "prev_cost", "num_updates"} - state.keys()
        if missing:
            raise ValueError(f"Lagrange multiplier state lacks {', '.join(sorted(missing))}")
        if state["method"] != self.method:
            raise ValueError(
                f"Lagrange multiplier state was saved with method {state['method']!r}, "
                f"this multiplier uses {self.method!r}"
            )
        prev = state["prev_cost"]
        self._log_lam = float(state["log_lambda"])
        self._lam = float(state["lambda"])
        self._pid = PIDState(
            integral=float(state["integral"]), prev_cost=None if prev is None else float(prev)
        )
        self.num_updates = int(state["num_updates"])
        if self.method == "adam":
            if "adam" not in state:
                raise ValueError("Lagrange multiplier state lacks adam (the moments of the adam rule)")
            adam = state["adam"]
            self._adam = AdamState(m=float(adam["m"]), v=float(adam["v"]), steps=int(adam["steps"]))

    def __repr__(self) -> str:
        return f"LagrangeMultiplier(method={self.method!r}, value={self.value:.6g})"


def lagrangian_advantage(adv_r: Tensor, adv_c: Tensor, lam: float | Tensor) -> Tensor:
    """Advantage of the Lagrangian, normalised as in Safe RLHF's PPO-Lagrangian actor loss
    (Dai et al. 2023): ``(adv_r - lam * adv_c) / (1 + lam)``; ``adv_r``, ``adv_c`` of the same shape, e.g. ``(B, T)``.
    Dividing by ``1 + lam`` keeps the scale of the advantage (and so the meaning of the PPO
    clip range) independent of lambda. ``lam`` must be finite and >= 0."""
    if adv_r.shape != adv_c.shape:
        raise ValueError(f"adv_r has shape {tuple(adv_r.shape)} but adv_c has shape {tuple(adv_c.shape)}")
    lam_t = torch.as_tensor(lam, dtype=adv_r.dtype, device=adv_r.device).detach()
    if lam_t.numel() != 1 or not bool(torch.isfinite(lam_t)) or float(lam_t) < 0:
        raise ValueError(f"lam must be a finite scalar >= 0; got {lam}")
    return (adv_r - lam_t * adv_c) / (1.0 + lam_t)


def floored_cost(cost: Tensor, floor: float | None) -> Tensor:
    """``max(cost, floor)`` elementwise (``cost`` unchanged when ``floor`` is None): the cost a
    constraint on the mean holds down when only costs above ``floor`` should count.

    A limit on the mean cost ``E[c] <= d`` can be met by making the many clearly safe responses
    (``c`` far below 0, the safe/unsafe boundary) look safer still while the few unsafe ones
    stay; on ``E[max(c, floor)]`` with ``floor`` at or a little below the boundary a response
    under the floor contributes the same whatever it is, so only the unsafe-looking ones move
    the constraint (a hinge on the cost). ``floor`` must be finite."""
    if floor is None:
        return cost
    if not math.isfinite(floor):
        raise ValueError(f"cost floor must be a finite number, got {floor}")
    return cost.clamp(min=floor)


def mean_recent_cost(costs: Iterable[float]) -> float:
    """Mean of a window of recent costs (episode costs for control, end-of-response costs for
    language models): the ``J_c`` that `LagrangeMultiplier.update` takes.

    Raises ValueError on an empty window or a non-finite entry, naming its index. The mean is
    computed as a sum of ``c / n`` so that huge finite costs do not overflow."""
    values = [float(c) for c in costs]
    if not values:
        raise ValueError("mean_recent_cost: the cost window is empty; collect at least one cost first")
    for i, value in enumerate(values):
        if not math.isfinite(value):
            raise ValueError(f"mean_recent_cost: costs[{i}] is {value}; every cost must be finite")
    n = len(values)
    return math.fsum(value / n for value in values)
