"""CUP: the Constrained Update Projection approach (Yang, Ji, Dai et al. 2022).

Two steps per iteration:

1. policy improvement: PPO on the reward alone (`alignloop.control.ppo.ppo_update`: the clipped
   surrogate on the standardised A_r and both critics' value losses, stopped early once the
   approximate KL passes ``target_kl``);
2. projection: starting from the improved policy ``pi'``, ``epochs`` passes of minibatch steps
   on `alignloop.core.constrained.cup_projection_loss`, ``lam (1 - gamma gae_lambda) / (1 - gamma)
   ratio A_c + KL(pi || pi')``, which lowers the cost surrogate while staying near ``pi'``; an
   epoch ending with the mean KL(pi' || pi) above ``target_kl`` ends it. The projection has its
   own Adam: with the reward step's, its moments would carry the policy further along the reward
   gradient (OmniSafe 0.5.0 shares one optimiser).

``lam`` is the loop's Lagrange multiplier, moved by ``J_c - d`` before each iteration. Defaults:
OmniSafe 0.5.0's CUP.yaml for the navigation tasks (the multiplier bounded by 2 as there).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from alignloop.control.onpolicy import Learner, UpdateContext
from alignloop.control.ppo import PPOSettings, ppo_update
from alignloop.control.rollouts import (
    OMNISAFE_COST_WINDOW,
    Agent,
    Batch,
    Rollout,
    RolloutAdvantages,
    centered_cost_advantage,
    minibatches,
    standardized_reward_advantage,
)
from alignloop.core.constrained import cup_projection_loss

__all__ = ["CUPSettings", "cup_learner"]


@dataclass(frozen=True)
class CUPSettings(PPOSettings):
    """Hyper-parameters of CUP (defaults: OmniSafe 0.5.0's CUP.yaml for the navigation tasks)."""

    num_steps: int = 20_000
    """Steps collected from each env per iteration (OmniSafe's steps_per_epoch, 20000)."""
    norm_reward: bool = False
    """Divide rewards by the running std of the discounted return (OmniSafe: off)."""
    epochs: int = 40
    """Passes of each step over the rollout (OmniSafe's update_iters, 40; stopped by target_kl)."""
    anneal_lr: bool = True
    """Decay the learning rate linearly to 0 over the run (OmniSafe's linear_lr_decay)."""
    max_grad_norm: float = 40.0
    """Clip of the global gradient norm (OmniSafe, 40)."""
    target_kl: float | None = 0.01
    """Each step stops once the KL passes this (OmniSafe's CUP, 0.01)."""
    lagrange_init: float = 0.001
    """Initial lambda (OmniSafe, 0.001)."""
    lagrange_max: float | None = 2.0
    """Upper bound on lambda (OmniSafe's CUP, 2)."""
    cost_window: int = OMNISAFE_COST_WINDOW
    """J_c is the mean cost of this many most recent episodes (OmniSafe's, 50)."""


def cup_learner(agent: Agent, s: CUPSettings) -> Learner:
    """CUP as the on-policy loop's `Learner` (module docstring)."""
    optimizer = torch.optim.Adam(agent.parameters(), lr=s.lr, eps=1e-5, fused=True)
    # the projection has its own moments: the reward step's would keep pushing the policy along
    # the reward's direction through steps whose gradient (KL at pi = pi') starts at zero
    projection_opt = torch.optim.Adam(agent.actor.parameters(), lr=s.lr, eps=1e-5, fused=True)
    actor = agent.actor

    def update(ro: Rollout, adv: RolloutAdvantages, ctx: UpdateContext) -> dict[str, float]:
        if s.anneal_lr:
            for opt in (optimizer, projection_opt):
                opt.param_groups[0]["lr"] = s.lr * (1.0 - ctx.progress)
        metrics = ppo_update(agent, optimizer, ro, standardized_reward_advantage(adv), adv, s, ctx.rng)
        batch = Batch.of(ro)
        adv_c = centered_cost_advantage(adv)
        with torch.no_grad():
            out, log_std = actor.dist_params(batch.obs)
            improved = (out, log_std.clone())
        sums: dict[str, float] = {}
        count = epochs = 0
        for _ in range(s.epochs):
            epochs += 1
            for idx in minibatches(len(batch), s.minibatch_size, ctx.rng):
                logp, _ = actor.evaluate(batch.obs[idx], batch.actions[idx])
                kl = actor.kl(actor.dist_params(batch.obs[idx]), actor.rows(improved, idx))
                loss, projection = cup_projection_loss(
                    logp,
                    batch.logprobs[idx],
                    kl,
                    adv_c[idx],
                    lam=ctx.lam,
                    gamma=s.gamma,
                    gae_lambda=s.gae_lambda,
                )
                projection_opt.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(actor.parameters(), s.max_grad_norm, foreach=True)
                projection_opt.step()
                for key, value in {**projection, "loss": loss.detach()}.items():
                    sums[f"projection_{key}"] = sums.get(f"projection_{key}", 0.0) + float(value)
                count += 1
            with torch.no_grad():
                kl_all = float(actor.kl(improved, actor.dist_params(batch.obs)).mean())
            if s.target_kl is not None and kl_all > s.target_kl:
                break
        metrics.update({key: value / count for key, value in sums.items()})
        metrics.update(projection_epochs=float(epochs), projection_final_kl=kl_all)
        return metrics

    return Learner(
        {"opt": optimizer, "projection": projection_opt}, update, lagrangian=True, scheduled=s.anneal_lr
    )
