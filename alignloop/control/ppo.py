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
observation statistics move every step (``norm_obs_per_step``)."""


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


def ppo_learner(agent: Agent, s: PPOSettings, *, lagrangian: bool) -> Learner:
    """PPO (``lagrangian=False``) or PPO-Lagrangian as the on-policy loop's `Learner`: one Adam
    over the actor and both critics, the rate decayed linearly with ``anneal_lr``."""
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
