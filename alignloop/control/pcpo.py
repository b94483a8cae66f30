"""PCPO: Projection-Based Constrained Policy Optimization (Yang, Rosca, Narasimhan and Ramadge 2020).

Two steps per iteration: a TRPO step on the reward, ``x_r = sqrt(2 delta / q) H^-1 g``, then its
projection back onto the linearised constraint set ``c + b^T x <= 0``, in the KL metric
(``projection="kl"``, the paper's default) or the Euclidean one (``"l2"``)
(`alignloop.core.trust_region.pcpo_step`). The gradients, the Fisher solves, the violation
``c`` (per step by default here, `PCPOSettings.violation_per_step`), the line search (here
without a reward condition) and the critics are CPO's (`alignloop.control.cpo`). Defaults: OmniSafe 0.5.0's PCPO.yaml (the same as its CPO's).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from alignloop.control.cpo import (
    CPOSettings,
    fit_critic_epochs,
    linearise,
    search_step,
    violation,
)
from alignloop.control.onpolicy import Learner, UpdateContext
from alignloop.control.rollouts import (
    Agent,
    Batch,
    Rollout,
    RolloutAdvantages,
    centered_cost_advantage,
    critic_optimizer,
    standardized_reward_advantage,
)
from alignloop.core.trust_region import pcpo_step

__all__ = ["PCPOSettings", "pcpo_learner"]


@dataclass(frozen=True)
class PCPOSettings(CPOSettings):
    """Hyper-parameters of PCPO (defaults: OmniSafe 0.5.0's PCPO.yaml, as CPO's)."""

    projection: Literal["kl", "l2"] = "kl"
    """The metric of the projection: kl (L = H, the paper's PCPO-KL) or l2 (L = I)."""
    violation_per_step: bool = True
    """Divide J_c - d by the mean episode length (the paper's units; on by default here, unlike
    CPO): the projection moves by ``c / s``, so a per-episode ``c`` lands far outside the trust
    region and 20 line-search shrinks by 0.8 find no step (OmniSafe's PCPO backtracks 200
    times)."""


def pcpo_learner(agent: Agent, s: PCPOSettings) -> Learner:
    """PCPO as the on-policy loop's `Learner` (module docstring)."""
    critic_opt = critic_optimizer(agent, s.critic_lr)

    def update(ro: Rollout, adv: RolloutAdvantages, ctx: UpdateContext) -> dict[str, float]:
        batch = Batch.of(ro)
        adv_r, adv_c = standardized_reward_advantage(adv), centered_cost_advantage(adv)
        lin = linearise(agent, batch, adv_r, adv_c, s)
        c = violation(ctx, s)
        step = pcpo_step(lin.x_g, lin.x_b, lin.b, lin.q, lin.r, lin.s, c, s.target_kl, s.projection)
        _, metrics = search_step(agent, batch, adv_r, adv_c, lin, step, c, False, s)
        metrics.update(violation=c, q=lin.q, r=lin.r, s=lin.s)
        metrics.update(fit_critic_epochs(agent, critic_opt, batch, adv, s, ctx))
        return metrics

    return Learner({"critics": critic_opt}, update)
