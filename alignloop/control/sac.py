"""SAC and SAC-Lagrangian: off-policy actor-critic with maximum entropy, and its constrained form.

SAC (Haarnoja et al. 2018, "Soft Actor-Critic Algorithms and Applications"): a tanh-squashed
Gaussian policy, two Q critics fitted to the soft Bellman target of their slowly moving copies,
the policy moved toward ``exp(Q / alpha)``, and the temperature alpha tuned so the entropy stays
near ``-|A|``. SAC-Lagrangian (OmniSafe's SACLag): a cost critic ``Q_c`` fitted to ``c + gamma
Q_c'(s', a')``, the policy ascending ``(Q - lambda Q_c) / (1 + lambda)``, and lambda moved once per
iteration by the mean cost of the recent episodes over the limit. The math is
`alignloop.core.offpolicy`'s.

The loop: ``learning_starts`` steps of uniform random actions, then the policy's; the collector
(`alignloop.control.rollouts.Collector`, without critics) gathers ``update_every`` steps, which go
to a replay buffer of raw observations (normalised when sampled, with the current statistics,
when ``norm_obs``), then ``updates_per_step`` gradient steps follow for each step taken (one, as in
Spinning Up's SAC). An iteration is ``iteration_steps`` steps per env: lambda moves, metrics
are logged and, every ``save_every`` iterations, a checkpoint is written and the envs are
re-seeded, exactly as in the on-policy loop, so a killed and resumed run equals an uninterrupted
one: the checkpoint holds the networks, their optimisers, the temperature, the replay buffer
(its filled part), the normaliser, lambda, the episode records and every generator's state.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor, nn

from alignloop.control.envs import make_vec_env
from alignloop.control.nets import QEnsemble, SquashedGaussianActor
from alignloop.control.onpolicy import (
    SetupError,
    check_ranges,
    loop_records,
    model_options,
    restore_loop_records,
    saute_wrap,
)
from alignloop.control.rollouts import (
    Collector,
    LagrangeSettings,
    Rollout,
    make_multiplier,
    record_episode_costs,
)
from alignloop.control.saute import SauteOptions
from alignloop.core.lagrange import mean_recent_cost
from alignloop.core.offpolicy import polyak_update, sac_actor_loss, soft_q_target, temperature_loss
from alignloop.runstack.checkpoint import NumpyState, Stateful
from alignloop.runstack.run import Run

__all__ = ["ReplayBuffer", "SACAgent", "SACSettings", "check_sac", "train_sac"]


@dataclass(frozen=True)
class SACSettings(LagrangeSettings):
    """Hyper-parameters of SAC and SAC-Lagrangian (defaults: the SAC paper's, as OmniSafe 0.5.0's
    SAC.yaml and SACLag.yaml use them, with the paper's learned temperature)."""

    num_envs: int = 1
    """Parallel environments."""
    vectorization: Literal["sync", "async"] = "sync"
    """sync: envs step in this process; async: one subprocess per env."""
    hidden: tuple[int, ...] = (256, 256)
    """Hidden layer sizes of the actor and the critics (the paper and OmniSafe, 256 x 256 ReLU)."""
    lr: float = 3e-4
    """Adam learning rate of the actor, the critics and the temperature (the paper, 3e-4)."""
    batch_size: int = 256
    """Replay samples per gradient step (the paper, 256)."""
    buffer_size: int = 1_000_000
    """Replay capacity in steps (the paper, 1e6)."""
    gamma: float = 0.99
    """Discount factor (the paper, 0.99)."""
    tau: float = 0.005
    """Polyak rate of the target critics (the paper, 0.005)."""
    learning_starts: int = 10_000
    """Steps of uniform random actions before the policy acts and learns (OmniSafe's start_learning_steps)."""
    update_every: int = 50
    """Env steps collected between bursts of gradient steps (Spinning Up's SAC, 50)."""
    updates_per_step: float = 1.0
    """Gradient steps per env step (the paper, 1); each burst takes ``update_every * num_envs *
    updates_per_step`` of them."""
    iteration_steps: int = 1000
    """Env steps per env in an iteration: lambda, metrics and checkpoints (one navigation episode)."""
    alpha: float = 0.2
    """Initial temperature (the paper's fixed value, OmniSafe's default)."""
    auto_alpha: bool = True
    """Tune the temperature toward target_entropy (the paper's SAC v2)."""
    target_entropy: float | None = None
    """Entropy the temperature aims at (None: -|A|, the paper's)."""
    norm_obs: bool = False
    """Normalise observations with running statistics (OmniSafe's SAC: off)."""
    max_episode_steps: int | None = None
    """Override the task's time limit."""
    cost_window: int = 10
    """J_c is the mean cost of this many recent episodes (OmniSafe's SAC window_lens, 10)."""
    threads: int = 1
    """torch threads."""


def check_sac(s: SACSettings, group: str) -> None:
    """SAC's own options, before anything is built."""
    check_ranges(s, group)
    for name in ("num_envs", "batch_size", "update_every", "iteration_steps"):
        if getattr(s, name) < 1:
            raise SetupError(f"--{group}.{name.replace('_', '-')} must be >= 1, got {getattr(s, name)}")
    if s.iteration_steps % s.update_every:
        raise SetupError(
            f"--{group}.iteration-steps {s.iteration_steps} is not a multiple of --{group}.update-every "
            f"{s.update_every}; make it one"
        )
    if s.buffer_size < s.batch_size:
        raise SetupError(
            f"--{group}.buffer-size {s.buffer_size} is smaller than --{group}.batch-size {s.batch_size}"
        )


class SACAgent(nn.Module):
    """The policy, the critics (members 0 and 1: the twin Q critics; 2: the cost critic of
    SAC-Lagrangian) and their slowly moving copies, and log alpha."""

    def __init__(
        self, obs_dim: int, space: gym.spaces.Box, hidden: tuple[int, ...], alpha: float, cost: bool
    ):
        super().__init__()
        act_dim = int(np.prod(space.shape))
        self.actor = SquashedGaussianActor(obs_dim, space, hidden)
        self.critics = QEnsemble(3 if cost else 2, obs_dim, act_dim, hidden)
        self.targets = copy.deepcopy(self.critics).requires_grad_(False)
        self.log_alpha = nn.Parameter(torch.tensor(float(np.log(alpha))))
        self.cost = cost


class ReplayBuffer:
    """A ring buffer of transitions (raw observations); its filled part is checkpointed."""

    def __init__(self, capacity: int, obs_dim: int, act_dim: int):
        self.obs = np.zeros((capacity, obs_dim), np.float32)
        self.next_obs = np.zeros((capacity, obs_dim), np.float32)
        self.actions = np.zeros((capacity, act_dim), np.float32)
        self.rewards = np.zeros(capacity, np.float32)
        self.costs = np.zeros(capacity, np.float32)
        self.terminated = np.zeros(capacity, np.float32)
        self.capacity, self.pos, self.size = capacity, 0, 0

    _FIELDS = ("obs", "next_obs", "actions", "rewards", "costs", "terminated")

    def add(self, ro: Rollout) -> None:
        """Every step of a rollout, time-major (its next observations are the final ones at ends)."""
        assert ro.next_raw_obs is not None
        rows = {
            "obs": ro.raw_obs.reshape(-1, self.obs.shape[1]),
            "next_obs": ro.next_raw_obs.reshape(-1, self.obs.shape[1]),
            "actions": ro.actions.reshape(-1, self.actions.shape[1]),
            "rewards": ro.rewards.reshape(-1),
            "costs": ro.costs.reshape(-1),
            "terminated": ro.terminated.reshape(-1),
        }
        n = len(rows["rewards"])
        at = (self.pos + np.arange(n)) % self.capacity
        for name, values in rows.items():
            getattr(self, name)[at] = values
        self.pos = int((self.pos + n) % self.capacity)
        self.size = min(self.size + n, self.capacity)

    def sample(self, batch_size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        idx = rng.integers(0, self.size, size=batch_size)
        return {name: getattr(self, name)[idx] for name in self._FIELDS}

    def state_dict(self) -> dict[str, Any]:
        return {
            "pos": self.pos,
            "size": self.size,
            **{n: getattr(self, n)[: self.size] for n in self._FIELDS},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pos, self.size = int(state["pos"]), int(state["size"])
        for name in self._FIELDS:
            getattr(self, name)[: self.size] = state[name]


def sac_update(
    agent: SACAgent,
    optimizers: Mapping[str, torch.optim.Optimizer],
    data: dict[str, Tensor],
    s: SACSettings,
    lam: float,
    target_entropy: float,
) -> dict[str, Tensor]:
    """One gradient step of the critics, the actor and the temperature, then the targets."""
    alpha = agent.log_alpha.exp().detach()
    obs, actions, next_obs, term = data["obs"], data["actions"], data["next_obs"], data["terminated"]
    with torch.no_grad():
        next_actions, next_logp = agent.actor.rsample(next_obs)
        next_q = agent.targets(next_obs, next_actions)  # (K, B)
        y = soft_q_target(data["rewards"], next_q[0], next_q[1], next_logp, term, gamma=s.gamma, alpha=alpha)
        targets = [y, y]
        if agent.cost:  # the cost critic's target: c + gamma Q_c'(s', a'), without entropy
            targets.append(
                soft_q_target(data["costs"], next_q[2], next_q[2], next_logp, term, gamma=s.gamma, alpha=0.0)
            )
    losses = 0.5 * (agent.critics(obs, actions) - torch.stack(targets)).pow(2).mean(-1)  # (K,)
    optimizers["critics"].zero_grad(set_to_none=True)
    losses.sum().backward()
    optimizers["critics"].step()
    metrics = {"critic_loss": losses[:2].sum().detach()}
    if agent.cost:
        metrics["cost_critic_loss"] = losses[2].detach()

    new_actions, logp = agent.actor.rsample(obs)
    agent.critics.requires_grad_(False)  # the actor's loss moves the actor only
    q_new = agent.critics(obs, new_actions)  # (K, B)
    q_cost = q_new[2] if agent.cost else None
    actor_loss, actor_metrics = sac_actor_loss(logp, torch.min(q_new[0], q_new[1]), alpha, q_cost, lam)
    optimizers["actor"].zero_grad(set_to_none=True)
    actor_loss.backward()
    agent.critics.requires_grad_(True)
    optimizers["actor"].step()
    metrics.update(actor_metrics, actor_loss=actor_loss.detach(), alpha=alpha)

    if s.auto_alpha:
        alpha_loss = temperature_loss(agent.log_alpha, logp, target_entropy)
        optimizers["alpha"].zero_grad(set_to_none=True)
        alpha_loss.backward()
        optimizers["alpha"].step()
    polyak_update(list(agent.targets.parameters()), list(agent.critics.parameters()), s.tau)
    return metrics


def train_sac(
    run_dir: Path,
    env_id: str,
    cost: str | None,
    total_steps: int,
    seed: int,
    s: SACSettings,
    *,
    algo: str,
    lagrangian: bool,
    save_every: int = 10,
    keep_checkpoints: int = 2,
    resume: bool = False,
    progress: bool = True,
    command: str = "control train",
    config: Any = None,
    must_match: tuple[str, ...] = model_options("sac"),
    saute: SauteOptions | None = None,
    report_to: Sequence[str] = ("tensorboard",),
) -> dict[str, float]:
    """Train SAC (``lagrangian=False``) or SAC-Lagrangian for ``total_steps`` environment steps
    (rounded down to whole iterations); returns the last iteration's statistics. The run folder
    and the resume rule are the on-policy loop's (`alignloop.control.onpolicy.train_on_policy`)."""
    check_sac(s, algo.replace("-", "_"))
    per_iteration = s.num_envs * s.iteration_steps
    iterations = max(1, total_steps // per_iteration)
    torch.set_num_threads(s.threads)
    run = Run.start(
        run_dir,
        command=command,
        config=config or {"env": env_id, "algo": algo, "sac": s},
        resume=resume,
        keep_checkpoints=keep_checkpoints,
        must_match=must_match,
    )
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    envs = make_vec_env(
        env_id,
        s.num_envs,
        cost,
        vectorization=s.vectorization,
        max_episode_steps=s.max_episode_steps,
        wrap=saute_wrap(saute),
    )
    space = envs.single_action_space
    if not isinstance(space, gym.spaces.Box):
        envs.close()
        raise SetupError(f"--algo {algo} needs continuous (Box) actions; {env_id} has {space}")
    collector = Collector(envs, s.norm_obs, s.cost_window)
    collector.task_reward = saute is not None
    agent = SACAgent(collector.obs_dim, space, s.hidden, s.alpha, cost=lagrangian)
    optimizers = {
        "actor": torch.optim.Adam(agent.actor.parameters(), lr=s.lr, fused=True),
        "critics": torch.optim.Adam(agent.critics.parameters(), lr=s.lr, fused=True),
        "alpha": torch.optim.Adam([agent.log_alpha], lr=s.lr, fused=True),
    }
    act_dim = int(np.prod(space.shape))
    target_entropy = -float(act_dim) if s.target_entropy is None else s.target_entropy
    buffer = ReplayBuffer(s.buffer_size, collector.obs_dim, act_dim)  # pages are touched as it fills
    lagrange = make_multiplier(s)
    run_cost = np.zeros(s.num_envs)
    cost_window: deque[float] = deque(maxlen=s.cost_window)
    models: dict[str, Stateful] = {"agent": agent}
    states = {"obs_norm": NumpyState(collector.obs_norm), "buffer": NumpyState(buffer)}
    start, extra = run.restore(models, optimizers, states=states)
    global_step = 0
    if run.resume:
        global_step = restore_loop_records(extra, lagrange, rng, collector, cost_window)

    low, high = space.low.astype(np.float32), space.high.astype(np.float32)

    def explore(obs: Tensor) -> tuple[Tensor, Tensor]:
        actions = rng.uniform(low, high, size=(obs.shape[0], *low.shape)).astype(np.float32)
        return torch.from_numpy(actions), torch.zeros(obs.shape[0])

    def normalize(x: np.ndarray) -> Tensor:
        return torch.from_numpy(collector.normalize(x))

    def checkpoint(iteration: int) -> None:
        extra = {
            **loop_records(lagrange, rng, collector, cost_window, global_step),
            "iterations": iterations,
            "env": env_id,
            "cost": cost,
            "algo": algo,
            "actor": type(agent.actor).__name__,
            "hidden": list(s.hidden),
            "norm_obs": s.norm_obs,
            "max_episode_steps": s.max_episode_steps,
            "saute": None if saute is None else dataclasses.asdict(saute),
        }
        run.checkpointer.save(iteration, models, optimizers, extra=extra, states=states)

    logger = run.logger(
        total_steps=iterations,
        description=f"{algo} {env_id}",
        resume_step=start,
        progress=progress,
        report_to=report_to,
    )
    stats: dict[str, float] = {}
    t0, steps0 = time.perf_counter(), global_step
    try:
        with logger:
            for iteration in range(start, iterations):
                if iteration == start or (save_every and iteration % save_every == 0):
                    collector.reset([seed + 10007 * iteration + i for i in range(s.num_envs)])
                    run_cost[:] = 0.0
                sums: dict[str, float] = {}
                updates = 0
                for _ in range(s.iteration_steps // s.update_every):
                    acting = global_step >= s.learning_starts
                    ro = collector.collect(agent.actor.sample if acting else explore, s.update_every)
                    buffer.add(ro)
                    record_episode_costs(ro.costs, ro.terminated | ro.truncated, run_cost, cost_window)
                    global_step += s.update_every * s.num_envs
                    if global_step < s.learning_starts or buffer.size < s.batch_size:
                        continue
                    for _ in range(round(s.update_every * s.num_envs * s.updates_per_step)):
                        data = buffer.sample(s.batch_size, rng)
                        batch = {
                            "obs": normalize(data["obs"]),
                            "next_obs": normalize(data["next_obs"]),
                            **{
                                k: torch.from_numpy(data[k])
                                for k in ("actions", "rewards", "costs", "terminated")
                            },
                        }
                        metrics = sac_update(agent, optimizers, batch, s, lagrange.value, target_entropy)
                        for key, value in metrics.items():
                            sums[key] = sums.get(key, 0.0) + float(value)
                        updates += 1
                if lagrangian and cost_window:
                    lagrange.update(mean_recent_cost(cost_window), s.cost_limit)
                stats = {f"train/{k}": v / updates for k, v in sums.items()} if updates else {}
                stats["train/lambda"] = lagrange.value
                if cost_window:
                    stats["train/episode_cost"] = float(np.mean(cost_window))
                if collector.returns:
                    stats["episode/return"] = float(np.mean(collector.returns))
                    stats["episode/cost"] = float(np.mean(collector.costs))
                    stats["episode/length"] = float(np.mean(collector.lengths))
                stats["time/env_steps"] = float(global_step)
                stats["time/steps_per_second"] = (global_step - steps0) / (time.perf_counter() - t0)
                done = iteration + 1
                for split in ("train", "episode", "time"):
                    values = {k.partition("/")[2]: v for k, v in stats.items() if k.startswith(split + "/")}
                    logger.log(done, values, split=split)
                if done == iterations or (save_every and done % save_every == 0):
                    checkpoint(done)
                info = f"return {stats.get('episode/return', float('nan')):.1f}"
                if cost is not None:
                    info += f" cost {stats.get('episode/cost', float('nan')):.1f}"
                if lagrangian:
                    info += f" lambda {lagrange.value:.3f}"
                logger.advance(done, info)
    finally:
        envs.close()
    stats["global_step"] = global_step
    return stats
