"""PPO and PPO-Lagrangian for control tasks.

PPO (Schulman et al. 2017) with the details of the PPO baselines (separate actor and critic
MLPs, orthogonal init, state-independent log std, observation normalisation and reward scaling,
gradient clipping), and PPO-Lagrangian (Ray et al. 2019, "Benchmarking Safe Exploration in Deep
RL"): a second critic for the cost, and the policy ascends ``(A_r - lambda A_c) / (1 + lambda)``
while lambda rises with ``J_c - cost_limit``, ``J_c`` being the mean cost of the last
``cost_window`` finished episodes (``--ppo-lag.lagrange-method pid``: the PID Lagrangian of
Stooke et al. 2020). Reward advantages are standardised over the rollout; cost advantages are
only centred, so their scale (and the meaning of lambda) is kept. The math (GAE, the clipped
losses, the multiplier) is `alignloop.core`'s.

PPO's own part is `ppo_update`, ``epochs`` passes of minibatch updates of the clipped surrogate
and both value losses on one optimiser; `ppo_learner` hands it to the on-policy loop every
on-policy learner shares (`alignloop.control.onpolicy`: collection, GAE, the multiplier, the
run stack, exact resume). `train_policy` is that loop with PPO, as preference-based RL and the
control loop call it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from alignloop.control.onpolicy import (
    LEGACY_CHECKPOINT,
    Learner,
    Relabel,
    UpdateContext,
    check_setup,
    has_checkpoint,
    model_options,
    read_checkpoint,
    train_on_policy,
)
from alignloop.control.rollouts import (
    OMNISAFE_COST_WINDOW,
    Agent,
    Batch,
    LagrangeSettings,
    OnPolicySettings,
    Rollout,
    RolloutAdvantages,
    critic_optimizer,
    fit_critics,
    lagrangian_mix,
    minibatches,
)
from alignloop.core.losses import ppo_policy_loss, value_loss
from alignloop.runstack.checkpoint import Stateful

__all__ = [
    "LEGACY_CHECKPOINT",
    "PPO_LAG_DEFAULTS",
    "PPOSettings",
    "Relabel",
    "Rollout",
    "check_setup",
    "has_checkpoint",
    "ppo_learner",
    "ppo_update",
    "ppo_update_apart",
    "read_checkpoint",
    "train_policy",
]


@dataclass(frozen=True)
class PPOSettings(OnPolicySettings, LagrangeSettings):
    """Hyper-parameters of PPO and PPO-Lagrangian (defaults: those of Stable-Baselines3's PPO;
    `alignloop control train --algo ppo-lag` starts from OmniSafe's PPOLag instead)."""

    minibatch_size: int = 64
    """Samples per gradient step."""
    epochs: int = 10
    """Passes over each rollout."""
    lr: float = 3e-4
    """Adam learning rate."""
    anneal_lr: bool = False
    """Decay the learning rate linearly to 0 over the run."""
    clip_eps: float = 0.2
    """PPO clip range of the probability ratio."""
    vf_clip_eps: float | None = None
    """Clip of the value change (None: no value clipping)."""
    vf_coef: float = 1.0
    """Weight of the value losses (0.5 * MSE each; 1.0 here is SB3's 0.5 on the plain MSE)."""
    ent_coef: float = 0.0
    """Weight of the entropy bonus."""
    max_grad_norm: float = 0.5
    """Clip of the global gradient norm."""
    target_kl: float | None = None
    """Stop an iteration's epochs early once the approximate KL exceeds this."""
    critics_apart: bool = False
    """OmniSafe's update (`ppo_update_apart`): the critics fitted by their own Adam (with
    ``critic_l2``, at the constant rate ``lr``) before the actor's step on each minibatch, each
    network clipped on its own, and the early stop on the exact KL over the whole rollout after
    each epoch. Off: one Adam over the sum of the losses (`ppo_update`)."""
    critic_l2: float = 0.001
    """With ``critics_apart``: weight of the critics' squared parameters (OmniSafe's
    critic_norm_coef)."""


PPO_LAG_DEFAULTS = PPOSettings(
    num_steps=20_000,  # OmniSafe's steps_per_epoch (one env)
    epochs=40,  # update_iters, stopped early by target_kl
    minibatch_size=64,  # batch_size
    lr=3e-4,  # the actor's and the critics' rates
    anneal_lr=True,  # linear_lr_decay
    max_grad_norm=40.0,
    target_kl=0.02,  # kl_early_stop at 0.02
    norm_reward=False,  # reward_normalize: False
    lagrange_init=0.001,  # lagrangian_multiplier_init
    cost_window=OMNISAFE_COST_WINDOW,  # J_c over its logger's last 50 episodes
)
"""PPO-Lagrangian's reference settings: OmniSafe 0.5.0's PPOLag.yaml for the navigation tasks
(cost limit 25, gamma 0.99, GAE 0.95, 64 x 64 tanh networks and observation normalisation are
also PPOSettings' own defaults). Three of its choices are options here, not defaults: its
multiplier is moved by Adam at rate 0.035 (``--ppo-lag.lagrange-method adam --ppo-lag.lagrange-lr
0.035``; here by the projected rule of ``lagrange_lr``, 0.01 per unit of J_c - d per
iteration), its networks keep nn.Linear's initialisation (``init="pytorch"``) and its
observation statistics move every step (``norm_obs_per_step``). A fourth is also an option:
its actor and critics are stepped by separate optimisers, its early stop reads the exact KL
after each epoch (``critics_apart``)."""


def ppo_update(
    agent: Agent,
    optimizer: torch.optim.Optimizer,
    ro: Rollout,
    adv: Tensor,
    returns: RolloutAdvantages,
    s: PPOSettings,
    rng: np.random.Generator,
) -> dict[str, float]:
    """``s.epochs`` passes of minibatch updates on a rollout: the clipped surrogate on `adv`
    (T*N,), the value losses on the returns of each stream (the cost critic's only when the
    returns have a cost stream). Stops early once the approximate KL exceeds ``s.target_kl``."""
    b = Batch.of(ro)
    obs, actions, old_logp, old_v_r, old_v_c = b.obs, b.actions, b.logprobs, b.values_r, b.values_c
    ret_r, ret_c = returns.reward_returns, returns.cost_returns
    params = [p for group in optimizer.param_groups for p in group["params"]]
    sums: dict[str, Tensor] = {}
    count = 0
    for _ in range(s.epochs):
        kl_sum, kl_n = torch.zeros(()), 0
        for idx in minibatches(len(b), s.minibatch_size, rng):
            logp, entropy = agent.actor.evaluate(obs[idx], actions[idx])
            pg_loss, metrics = ppo_policy_loss(logp, old_logp[idx], adv[idx], clip_eps=s.clip_eps)
            v_loss, v_metrics = value_loss(
                agent.critic_r(obs[idx]), old_v_r[idx], ret_r[idx], clip_eps=s.vf_clip_eps
            )
            loss = pg_loss - s.ent_coef * entropy.mean() + s.vf_coef * v_loss
            if ret_c is not None:
                c_loss, _ = value_loss(
                    agent.critic_c(obs[idx]), old_v_c[idx], ret_c[idx], clip_eps=s.vf_clip_eps
                )
                loss = loss + s.vf_coef * c_loss
                metrics["cost_value_loss"] = c_loss.detach()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(params, s.max_grad_norm, foreach=True)
            optimizer.step()
            metrics.update(
                policy_loss=pg_loss.detach(), value_loss=v_loss.detach(), entropy=entropy.mean().detach()
            )
            metrics["value_mse"] = v_metrics["value_mse"]
            for key, value in metrics.items():
                sums[key] = sums.get(key, torch.zeros(())) + value
            count += 1
            kl_sum, kl_n = kl_sum + metrics["approx_kl"], kl_n + 1
        if s.target_kl is not None and float(kl_sum) / kl_n > s.target_kl:
            break
    return {key: float(value) / count for key, value in sums.items()}


def ppo_update_apart(
    agent: Agent,
    actor_opt: torch.optim.Optimizer,
    critic_opt: torch.optim.Optimizer,
    ro: Rollout,
    adv: Tensor,
    returns: RolloutAdvantages,
    s: PPOSettings,
    rng: np.random.Generator,
) -> dict[str, float]:
    """OmniSafe 0.5.0's PPO update (``critics_apart``): ``s.epochs`` passes of minibatches; on
    each, one step of both critics (`fit_critics`: their own Adam, each clipped to
    ``max_grad_norm``), then one step of the clipped surrogate on the actor alone (its own Adam,
    clipped on its own). After each epoch the mean exact KL(old || new) over the whole rollout
    stops the update once above ``s.target_kl``; ``epochs_run`` and ``kl`` report it."""
    b = Batch.of(ro)
    with torch.no_grad():
        old = agent.actor.dist_params(b.obs)
        old = (old[0], old[1].clone())
    actor_params = list(agent.actor.parameters())
    sums: dict[str, Tensor] = {}
    count, epochs_run, kl = 0, 0, torch.zeros(())
    for _ in range(s.epochs):
        for idx in minibatches(len(b), s.minibatch_size, rng):
            metrics = fit_critics(agent, critic_opt, b, returns, idx, s.critic_l2, s.max_grad_norm)
            logp, entropy = agent.actor.evaluate(b.obs[idx], b.actions[idx])
            pg_loss, policy_metrics = ppo_policy_loss(logp, b.logprobs[idx], adv[idx], clip_eps=s.clip_eps)
            actor_opt.zero_grad(set_to_none=True)
            (pg_loss - s.ent_coef * entropy.mean()).backward()
            nn.utils.clip_grad_norm_(actor_params, s.max_grad_norm, foreach=True)
            actor_opt.step()
            metrics.update(policy_metrics, policy_loss=pg_loss.detach(), entropy=entropy.mean().detach())
            for key, value in metrics.items():
                sums[key] = sums.get(key, torch.zeros(())) + value
            count += 1
        epochs_run += 1
        with torch.no_grad():
            kl = agent.actor.kl(old, agent.actor.dist_params(b.obs)).mean()
        if s.target_kl is not None and float(kl) > s.target_kl:
            break
    out = {key: float(value) / count for key, value in sums.items()}
    return out | {"epochs_run": float(epochs_run), "kl": float(kl)}


def _apart_learner(agent: Agent, s: PPOSettings, lagrangian: bool) -> Learner:
    """`ppo_update_apart` with OmniSafe's optimisers: Adam on the actor (rate decayed with
    ``anneal_lr``), Adam on both critics at the constant rate ``lr`` with the L2 term."""
    actor_opt = torch.optim.Adam(agent.actor.parameters(), lr=s.lr, fused=True)
    critic_opt = critic_optimizer(agent, s.lr)

    def update(ro: Rollout, adv: RolloutAdvantages, ctx: UpdateContext) -> dict[str, float]:
        if s.anneal_lr:
            actor_opt.param_groups[0]["lr"] = s.lr * (1.0 - ctx.progress)
        mixed = lagrangian_mix(adv, ctx.lam)
        return ppo_update_apart(agent, actor_opt, critic_opt, ro, mixed, adv, s, ctx.rng)

    optimizers: dict[str, torch.optim.Optimizer] = {"actor": actor_opt, "critics": critic_opt}
    return Learner(optimizers, update, lagrangian=lagrangian, scheduled=s.anneal_lr)


def ppo_learner(agent: Agent, s: PPOSettings, *, lagrangian: bool) -> Learner:
    """PPO (``lagrangian=False``) or PPO-Lagrangian as the on-policy loop's `Learner`: one Adam
    over the actor and both critics, the rate decayed linearly with ``anneal_lr``."""
    if s.critics_apart:
        return _apart_learner(agent, s, lagrangian)
    optimizer = torch.optim.Adam(agent.parameters(), lr=s.lr, eps=1e-5, fused=True)

    def update(ro: Rollout, adv: RolloutAdvantages, ctx: UpdateContext) -> dict[str, float]:
        if s.anneal_lr:
            optimizer.param_groups[0]["lr"] = s.lr * (1.0 - ctx.progress)
        return ppo_update(agent, optimizer, ro, lagrangian_mix(adv, ctx.lam), adv, s, ctx.rng)

    return Learner({"opt": optimizer}, update, lagrangian=lagrangian, scheduled=s.anneal_lr)


def train_policy(
    run_dir: Path,
    env_id: str,
    cost: str | None,
    lagrangian: bool,
    total_steps: int,
    seed: int,
    s: PPOSettings,
    *,
    save_every: int = 10,
    keep_checkpoints: int = 2,
    relabel: Relabel | None = None,
    relabel_stats: Callable[[], dict[str, float]] | None = None,
    extra_states: dict[str, Stateful] | None = None,
    resume: bool = False,
    init_from: Path | None = None,
    progress: bool = True,
    command: str = "control train",
    config: Any = None,
    report_to: Sequence[str] = ("tensorboard",),
) -> dict[str, float]:
    """Train a policy with PPO (``lagrangian=False``) or PPO-Lagrangian for ``total_steps``
    environment steps on the shared on-policy loop (`alignloop.control.onpolicy.train_on_policy`,
    which says what the run folder holds; metrics also go to the sinks of `report_to`); returns the
    last iteration's statistics."""
    return train_on_policy(
        run_dir,
        env_id,
        cost,
        total_steps,
        seed,
        s,
        partial(ppo_learner, lagrangian=lagrangian),
        algo="ppo-lag" if lagrangian else "ppo",
        constrained=lagrangian,
        save_every=save_every,
        keep_checkpoints=keep_checkpoints,
        relabel=relabel,
        relabel_stats=relabel_stats,
        extra_states=extra_states,
        resume=resume,
        init_from=init_from,
        progress=progress,
        command=command,
        config=config,
        must_match=model_options("ppo"),
        report_to=report_to,
    )
