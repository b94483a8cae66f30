"""FOCOPS: First Order Constrained Optimization in Policy Space (Zhang, Vuong and Ross 2020).

FOCOPS solves the constrained trust-region problem in the space of policies, where its
optimum is ``pi*(a|s) ~ pi_k(a|s) exp((A_r - nu A_c) / lambda)``, then fits the parametric
policy to it with first-order steps on `alignloop.core.constrained.focops_loss`: per state the
KL to the old policy minus the tempered advantage, counted only for states still within
``kl_bound`` of the old policy. The cost multiplier ``nu`` moves by ``J_c - d`` before each
update (the loop's Lagrange multiplier, the paper's projected ascent, bounded by
``lagrange_max``); the advantage is mixed and normalised as PPO-Lagrangian's
(``(A_r - nu A_c) / (1 + nu)``, as OmniSafe does). Each minibatch steps both critics and then the
actor; an epoch that ends with the mean KL(old || new) above ``target_kl`` ends the update.

Defaults: the paper's ``lambda = 1.5``, ``delta = 0.02``, ``nu_max = 2`` and multiplier rate 0.01,
on OmniSafe 0.5.0's FOCOPS.yaml settings for the navigation tasks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from alignloop.control.onpolicy import Learner, UpdateContext
from alignloop.control.rollouts import (
    Agent,
    Batch,
    CriticFitSettings,
    LagrangeSettings,
    Rollout,
    RolloutAdvantages,
    critic_optimizer,
    fit_critics,
    lagrangian_mix,
    minibatches,
)
from alignloop.core.constrained import focops_loss

__all__ = ["FOCOPSSettings", "focops_learner"]


@dataclass(frozen=True)
class FOCOPSSettings(CriticFitSettings, LagrangeSettings):
    """Hyper-parameters of FOCOPS (defaults: the paper's FOCOPS constants on OmniSafe 0.5.0's
    FOCOPS.yaml for the navigation tasks)."""

    num_steps: int = 20_000
    """Steps collected from each env per iteration (OmniSafe's steps_per_epoch, 20000)."""
    norm_reward: bool = False
    """Divide rewards by the running std of the discounted return (OmniSafe: off)."""
    epochs: int = 40
    """Passes over each rollout (OmniSafe's update_iters, 40; stopped early by target_kl)."""
    minibatch_size: int = 64
    """Samples per gradient step (OmniSafe and the paper, 64)."""
    lr: float = 3e-4
    """Adam learning rate of the actor (the paper and OmniSafe, 3e-4)."""
    temperature: float = 1.5
    """The paper's lambda: the temperature of exp((A_r - nu A_c) / lambda) (1.5)."""
    kl_bound: float = 0.02
    """The paper's delta: states whose KL(new || old) exceeds it leave the loss (0.02)."""
    target_kl: float = 0.02
    """An epoch ending with the mean KL(old || new) above this ends the update (0.02)."""
    lagrange_lr: float = 0.01
    """Step of nu per iteration, per unit of J_c - d (the paper's nu_lr, 0.01)."""
    lagrange_max: float | None = 2.0
    """Upper bound on nu (the paper's nu_max, 2)."""


def focops_learner(agent: Agent, s: FOCOPSSettings) -> Learner:
    """FOCOPS as the on-policy loop's `Learner` (module docstring)."""
    critic_opt = critic_optimizer(agent, s.critic_lr)
    actor_opt = torch.optim.Adam(agent.actor.parameters(), lr=s.lr, fused=True)
    actor = agent.actor

    def update(ro: Rollout, adv: RolloutAdvantages, ctx: UpdateContext) -> dict[str, float]:
        batch = Batch.of(ro)
        mixed = lagrangian_mix(adv, ctx.lam)  # (B,) (A_r - nu A_c) / (1 + nu)
        with torch.no_grad():
            out, log_std = actor.dist_params(batch.obs)
            old = (out, log_std.clone())
        sums: dict[str, float] = {}
        count = epochs = 0
        for _ in range(s.epochs):
            epochs += 1
            for idx in minibatches(len(batch), s.minibatch_size, ctx.rng):
                critic_losses = fit_critics(agent, critic_opt, batch, adv, idx, s.critic_l2, s.max_grad_norm)
                logp, _ = actor.evaluate(batch.obs[idx], batch.actions[idx])
                kl = actor.kl(actor.dist_params(batch.obs[idx]), actor.rows(old, idx))  # KL(new || old)
                loss, metrics = focops_loss(
                    logp, batch.logprobs[idx], kl, mixed[idx], temperature=s.temperature, kl_bound=s.kl_bound
                )
                actor_opt.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(actor.parameters(), s.max_grad_norm, foreach=True)
                actor_opt.step()
                for key, value in {**metrics, **critic_losses, "policy_loss": loss.detach()}.items():
                    sums[key] = sums.get(key, 0.0) + float(value)
                count += 1
            with torch.no_grad():
                kl_all = float(actor.kl(old, actor.dist_params(batch.obs)).mean())
            if kl_all > s.target_kl:
                break
        return {
            **{key: value / count for key, value in sums.items()},
            "epochs": float(epochs),
            "final_kl": kl_all,
        }

    return Learner({"actor": actor_opt, "critics": critic_opt}, update, lagrangian=True)
