"""CPO: Constrained Policy Optimization (Achiam, Held, Tamar and Abbeel 2017).

Each iteration linearises the reward and cost surrogates around the current policy, solves the
trust-region problem with the cost constraint analytically and backtracks until the step keeps
the trust region and the cost:

1. ``g = grad mean(ratio * A_r)``, ``b = grad mean(ratio * A_c)`` at ratio 1 (A_r standardised,
   A_c centred), ``x_g = H^-1 g`` and ``x_b = H^-1 b`` by conjugate gradient on the Fisher of the
   mean KL over the rollout's states (`alignloop.core.trust_region`);
2. the violation ``c = J_c - d``: the mean episode cost of the recent episodes over the limit,
   per episode as OmniSafe 0.5.0 has it. Against the surrogate's per-step change ``b^T x`` that
   is a large margin: a policy over the limit by more than the trust region can undo gets the
   recovery step, one under it the reward's step. ``--cpo.violation-per-step`` divides it by the
   mean episode length ``L`` into the surrogate's own units, as the authors' code
   (safety-starter-agents) does; on SafetyPointGoal1 that version's predicted cost decreases
   did not hold in the next rollouts and its cost stayed over the limit (BENCHMARKS.md,
   "Control against OmniSafe");
3. the step of `alignloop.core.trust_region.cpo_step`: TRPO's when the constraint does not bind,
   the dual's ``(x_g - nu x_b) / lambda`` when it does, the recovery step ``-sqrt(2 delta / s) x_b``
   when no feasible policy lies in the trust region;
4. a backtracking line search: a step is taken when the mean KL to the old policy is at most
   ``target_kl``, the cost surrogate grows by at most ``max(-c, 0)`` and (when the old policy
   was feasible) the reward surrogate does not fall; none accepted leaves the policy as it was;
5. the critics are fitted apart (``epochs`` passes of minibatches, `fit_critics`).

Defaults: OmniSafe 0.5.0's CPO.yaml, its reference settings on the Safety-Gymnasium navigation
tasks. PCPO (`alignloop.control.pcpo`) reuses steps 1, 2, 4 and 5 from here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn.utils import parameters_to_vector

from alignloop.control.onpolicy import Learner, UpdateContext
from alignloop.control.rollouts import (
    Agent,
    Batch,
    CriticFitSettings,
    Rollout,
    RolloutAdvantages,
    centered_cost_advantage,
    critic_optimizer,
    fit_critics,
    minibatches,
    standardized_reward_advantage,
)
from alignloop.core.trust_region import (
    assign_flat,
    backtracking_line_search,
    conjugate_gradient,
    cpo_step,
    fisher_vector_product,
    flat_grad,
)

__all__ = [
    "CPOSettings",
    "Linearised",
    "cpo_learner",
    "fit_critic_epochs",
    "linearise",
    "search_step",
    "violation",
]


@dataclass(frozen=True)
class CPOSettings(CriticFitSettings):
    """Hyper-parameters of CPO (defaults: OmniSafe 0.5.0's CPO.yaml for the navigation tasks)."""

    num_steps: int = 20_000
    """Steps collected from each env per iteration (OmniSafe's steps_per_epoch, 20000)."""
    norm_reward: bool = False
    """Divide rewards by the running std of the discounted return (OmniSafe: off)."""
    epochs: int = 10
    """Passes of the critics over each rollout (OmniSafe's update_iters, 10)."""
    minibatch_size: int = 128
    """Samples per critic step (OmniSafe's batch_size, 128)."""
    critic_lr: float = 1e-3
    """Adam learning rate of the critics (OmniSafe, 1e-3)."""
    target_kl: float = 0.01
    """The trust region: mean KL(old || new) per step (the paper's delta; OmniSafe, 0.01)."""
    cg_iters: int = 15
    """Conjugate-gradient iterations per solve (OmniSafe, 15)."""
    cg_damping: float = 0.1
    """Added to the Fisher's diagonal (OmniSafe, 0.1)."""
    line_search_steps: int = 20
    """Steps of the backtracking line search (OmniSafe's CPO, 20)."""
    line_search_shrink: float = 0.8
    """Each backtracking step shrinks the step by this (OmniSafe and the paper's code, 0.8)."""
    violation_per_step: bool = False
    """Divide the violation J_c - d by the mean episode length (the authors' code); off: per
    episode (OmniSafe's). Module docstring, step 2."""


def fit_critic_epochs(
    agent: Agent,
    optimizer: torch.optim.Optimizer,
    batch: Batch,
    adv: RolloutAdvantages,
    s: CriticFitSettings,
    ctx: UpdateContext,
) -> dict[str, float]:
    """``s.epochs`` passes of minibatch steps of both critics; the mean of their losses."""
    sums: dict[str, float] = {}
    count = 0
    for _ in range(s.epochs):
        for idx in minibatches(len(batch), s.minibatch_size, ctx.rng):
            for key, value in fit_critics(
                agent, optimizer, batch, adv, idx, s.critic_l2, s.max_grad_norm
            ).items():
                sums[key] = sums.get(key, 0.0) + float(value)
            count += 1
    return {key: value / count for key, value in sums.items()}


def violation(ctx: UpdateContext, s: CPOSettings) -> float:
    """``c = J_c - d``, or ``(J_c - d) / L`` with ``s.violation_per_step`` (module docstring,
    step 2)."""
    c = ctx.mean_cost - ctx.cost_limit
    return c / max(ctx.mean_length, 1.0) if s.violation_per_step else c


@dataclass
class Linearised:
    """The trust-region problem around the current policy (`alignloop.core.trust_region`)."""

    params: list[Tensor]
    theta: Tensor  # (P,) the current parameters, flat
    old: tuple[Tensor, Tensor]  # the current policy's distribution on the batch, detached
    b: Tensor  # (P,) gradient of the cost surrogate
    x_g: Tensor  # (P,) H^-1 g
    x_b: Tensor  # (P,) H^-1 b
    q: float
    r: float
    s: float
    reward_surrogate: float
    cost_surrogate: float


def _surrogates(agent: Agent, batch: Batch, adv_r: Tensor, adv_c: Tensor) -> tuple[Tensor, Tensor]:
    logp, _ = agent.actor.evaluate(batch.obs, batch.actions)
    ratio = torch.exp(logp - batch.logprobs)  # (B,)
    return (ratio * adv_r).mean(), (ratio * adv_c).mean()


def linearise(agent: Agent, batch: Batch, adv_r: Tensor, adv_c: Tensor, s: CPOSettings) -> Linearised:
    """Step 1 of the module docstring. ``q, r, s`` are taken through the Fisher products of the
    solved ``x_g, x_b`` (as the authors' code does), so an inexact conjugate gradient keeps the
    step consistent with the metric it is measured in."""
    actor = agent.actor
    params: list[Tensor] = list(actor.parameters())
    with torch.no_grad():
        old_out, old_log_std = actor.dist_params(batch.obs)
        old = (old_out, old_log_std.clone())
    reward_sur, cost_sur = _surrogates(agent, batch, adv_r, adv_c)
    g = flat_grad(reward_sur, params, retain_graph=True)
    b = flat_grad(cost_sur, params)
    mean_kl = actor.kl(old, actor.dist_params(batch.obs)).mean()
    fvp = fisher_vector_product(mean_kl, params, s.cg_damping)
    x_g = conjugate_gradient(fvp, g, iters=s.cg_iters)
    x_b = conjugate_gradient(fvp, b, iters=s.cg_iters)
    h_x_g, h_x_b = fvp(x_g), fvp(x_b)
    return Linearised(
        params=params,
        theta=parameters_to_vector(params).detach(),
        old=old,
        b=b,
        x_g=x_g,
        x_b=x_b,
        q=float(x_g @ h_x_g),
        r=float(x_b @ h_x_g),
        s=float(x_b @ h_x_b),
        reward_surrogate=float(reward_sur.detach()),
        cost_surrogate=float(cost_sur.detach()),
    )


def search_step(
    agent: Agent,
    batch: Batch,
    adv_r: Tensor,
    adv_c: Tensor,
    lin: Linearised,
    full_step: Tensor,
    c: float,
    need_gain: bool,
    s: CPOSettings,
) -> tuple[int, dict[str, float]]:
    """Step 4 of the module docstring: backtrack along `full_step` and leave the actor at the
    first accepted step (or where it was); returns (tries, the accepted step's statistics)."""
    found: dict[str, float] = {}

    @torch.no_grad()
    def accept(step: Tensor) -> bool:
        assign_flat(lin.theta + step, lin.params)
        reward_sur, cost_sur = _surrogates(agent, batch, adv_r, adv_c)
        kl = float(agent.actor.kl(lin.old, agent.actor.dist_params(batch.obs)).mean())
        gain, cost_change = float(reward_sur) - lin.reward_surrogate, float(cost_sur) - lin.cost_surrogate
        ok = (
            math.isfinite(kl + gain + cost_change)
            and kl <= s.target_kl
            and (gain >= 0 or not need_gain)
            and cost_change <= max(-c, 0.0)
        )
        if ok:
            found.update(kl=kl, reward_gain=gain, cost_change=cost_change)
        return ok

    step, tries = backtracking_line_search(
        full_step, accept, shrink=s.line_search_shrink, max_steps=s.line_search_steps
    )
    assign_flat(lin.theta + step, lin.params)
    return tries, {"line_search_tries": float(tries), "step_norm": float(step.norm()), **found}


def cpo_learner(agent: Agent, s: CPOSettings) -> Learner:
    """CPO as the on-policy loop's `Learner` (module docstring)."""
    critic_opt = critic_optimizer(agent, s.critic_lr)

    def update(ro: Rollout, adv: RolloutAdvantages, ctx: UpdateContext) -> dict[str, float]:
        batch = Batch.of(ro)
        adv_r, adv_c = standardized_reward_advantage(adv), centered_cost_advantage(adv)
        lin = linearise(agent, batch, adv_r, adv_c, s)
        c = violation(ctx, s)
        step = cpo_step(lin.x_g, lin.x_b, lin.q, lin.r, lin.s, c, float(lin.b @ lin.b), s.target_kl)
        _, metrics = search_step(agent, batch, adv_r, adv_c, lin, step.direction, c, step.case > 1, s)
        metrics.update(case=float(step.case), cpo_lambda=step.lam, cpo_nu=step.nu, violation=c)
        metrics.update(q=lin.q, r=lin.r, s=lin.s)
        metrics.update(fit_critic_epochs(agent, critic_opt, batch, adv, s, ctx))
        return metrics

    return Learner({"critics": critic_opt}, update)
