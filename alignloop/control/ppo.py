"""PPO and PPO-Lagrangian for control tasks, in one file.

PPO (Schulman et al. 2017) with the details of the PPO baselines (separate actor and critic
MLPs, orthogonal init, state-independent log std, observation normalisation and reward scaling,
gradient clipping), and PPO-Lagrangian (Ray et al. 2019, "Benchmarking Safe Exploration in Deep
RL"): a second critic for the cost, and the policy ascends ``(A_r - lambda A_c) / (1 + lambda)``
while lambda rises with ``J_c - cost_limit``, ``J_c`` being the mean cost of the last
``cost_window`` finished episodes. Reward advantages are standardised over the rollout; cost
advantages are only centred, so their scale (and the meaning of lambda) is kept. The math (GAE,
the clipped losses, the multiplier) is `alignloop.core`'s.

One iteration: collect ``num_steps`` steps from each of ``num_envs`` envs; optionally replace
the rewards and costs by learned ones (the ``relabel`` hook, used by preference-based RL); GAE on
each stream with ``V(final observation)`` bootstrapped at time-limit truncations; update lambda;
``epochs`` passes of minibatch updates.

Exact resume. Checkpoints are written at rollout boundaries, every ``checkpoint_every``
iterations, with the networks, the optimiser, the normalisers, lambda, the episode-cost window
and the torch and numpy RNG states. The simulator state itself is not saved (it is not portable
across tasks); instead the envs are re-seeded and reset at every checkpoint boundary, in the
uninterrupted run exactly as in a resumed one (seeds ``seed + 10007 * iteration + i``). A
resumed run is therefore step-for-step identical to an uninterrupted one with the same seed.
The episodes cut by those resets are treated as truncations (bootstrapped, not counted in the
episode statistics).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from alignloop.checks import output_dir
from alignloop.control.envs import ObsNormalizer, ReturnScaler, make_vec_env, resolve_env, step_costs
from alignloop.control.nets import Actor, Critic
from alignloop.core.advantages import gae, masked_whiten
from alignloop.core.lagrange import LagrangeMultiplier, lagrangian_advantage, mean_recent_cost
from alignloop.core.losses import ppo_policy_loss, value_loss
from alignloop.errors import UserError
from alignloop.lm.training import ReportTo, WandbSink, check_report_to

CHECKPOINT = "checkpoint.pt"


@dataclass(frozen=True)
class PPOSettings:
    """Hyper-parameters of PPO and PPO-Lagrangian (defaults: those of Stable-Baselines3's PPO)."""

    num_envs: int = 1
    """Parallel environments."""
    vectorization: Literal["sync", "async"] = "sync"
    """sync: envs step in this process; async: one subprocess per env."""
    num_steps: int = 2048
    """Steps collected from each env per iteration."""
    minibatch_size: int = 64
    """Samples per gradient step."""
    epochs: int = 10
    """Passes over each rollout."""
    lr: float = 3e-4
    """Adam learning rate."""
    anneal_lr: bool = False
    """Decay the learning rate linearly to 0 over the run."""
    gamma: float = 0.99
    """Discount factor."""
    gae_lambda: float = 0.95
    """GAE lambda."""
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
    hidden: tuple[int, ...] = (64, 64)
    """Hidden layer sizes of the actor and the critics."""
    norm_obs: bool = True
    """Normalise observations with running statistics (saved in the checkpoint)."""
    norm_reward: bool = True
    """Divide rewards by the running std of the discounted return (costs are never scaled)."""
    max_episode_steps: int | None = None
    """Override the task's time limit."""
    cost_limit: float = 25.0
    """PPO-Lagrangian: the limit on the mean episode cost."""
    cost_window: int = 100
    """PPO-Lagrangian: J_c is the mean cost of this many most recent episodes."""
    lagrange_method: Literal["log", "projected", "pid"] = "projected"
    """PPO-Lagrangian: update rule of lambda (alignloop.core.lagrange)."""
    lagrange_init: float = 0.0
    """PPO-Lagrangian: initial lambda (> 0 for the log rule)."""
    lagrange_lr: float = 0.01
    """PPO-Lagrangian: step size of lambda per iteration, per unit of J_c - cost_limit."""
    lagrange_max: float | None = 100.0
    """PPO-Lagrangian: upper bound on lambda (None: unbounded)."""
    checkpoint_every: int = 10
    """Checkpoint (and re-seed the envs) every this many iterations; 0: at the end only."""
    threads: int = 1
    """torch threads (1 is fastest for these small networks)."""


class Agent(nn.Module):
    """The actor and the two critics (reward and cost)."""

    def __init__(self, obs_dim: int, action_space: Any, hidden: tuple[int, ...]):
        super().__init__()
        self.actor = Actor(obs_dim, action_space, hidden)
        self.critic_r = Critic(obs_dim, hidden)
        self.critic_c = Critic(obs_dim, hidden)


@dataclass
class Rollout:
    """One iteration's data, time-major: ``(T, N)`` for T steps of N envs."""

    obs: np.ndarray  # (T, N, obs_dim) normalised, what the policy saw
    raw_obs: np.ndarray  # (T, N, obs_dim) as the env returned it
    actions: np.ndarray  # (T, N, act_dim) float32, or (T, N) int64 for discrete actions
    logprobs: np.ndarray  # (T, N)
    rewards: np.ndarray  # (T, N) true rewards
    costs: np.ndarray  # (T, N) true costs (0 for a task without a cost)
    terminated: np.ndarray  # (T, N) bool: episode ended after step t, no bootstrap
    truncated: np.ndarray  # (T, N) bool: episode cut after step t, bootstrap from V(final obs)
    values_r: np.ndarray  # (T, N) V_r(s_t)
    values_c: np.ndarray  # (T, N) V_c(s_t)
    next_values_r: np.ndarray = field(init=False)  # (T, N) V_r(s_{t+1}), V_r(final obs) at truncations
    next_values_c: np.ndarray = field(init=False)


class Collector:
    """Steps a vector env with the current policy; keeps the normaliser and episode records.

    The observation statistics are folded in once per rollout, after it (the first rollout
    sees mean 0, variance 1): within a rollout the policy, the stored observations and the
    critics' bootstrap values all use the same normalisation, and the step loop stays free of
    statistics updates."""

    def __init__(self, envs: Any, norm_obs: bool, cost_window: int):
        self.envs = envs
        self.obs_dim = int(np.prod(envs.single_observation_space.shape))
        self.obs_norm = ObsNormalizer((self.obs_dim,))
        self.norm_obs = norm_obs
        space = envs.single_action_space
        self.discrete = not hasattr(space, "low")
        self.low = None if self.discrete else space.low
        self.high = None if self.discrete else space.high
        n = envs.num_envs
        self.ep_return, self.ep_cost, self.ep_len = np.zeros(n), np.zeros(n), np.zeros(n, dtype=np.int64)
        self.returns: deque[float] = deque(maxlen=cost_window)
        self.costs: deque[float] = deque(maxlen=cost_window)
        self.lengths: deque[int] = deque(maxlen=cost_window)
        self.num_episodes = 0
        self.obs = np.zeros((n, self.obs_dim))

    def reset(self, seeds: list[int]) -> None:
        """Start new episodes in every env; unfinished ones are dropped from the records."""
        obs, _ = self.envs.reset(seed=seeds)
        self.obs = obs.reshape(len(seeds), -1)
        self.ep_return[:], self.ep_cost[:], self.ep_len[:] = 0.0, 0.0, 0

    def normalize(self, obs: np.ndarray) -> np.ndarray:
        return self.obs_norm.normalize(obs) if self.norm_obs else obs.astype(np.float32)

    @torch.inference_mode()
    def collect(self, agent: Agent, num_steps: int, with_cost: bool) -> Rollout:
        n, d = self.envs.num_envs, self.obs_dim
        ro = Rollout(
            obs=np.zeros((num_steps, n, d), np.float32),
            raw_obs=np.zeros((num_steps, n, d)),
            actions=np.zeros((num_steps, n), np.int64)
            if self.discrete
            else np.zeros((num_steps, n, *self.low.shape), np.float32),  # type: ignore[union-attr]
            logprobs=np.zeros((num_steps, n), np.float32),
            rewards=np.zeros((num_steps, n)),
            costs=np.zeros((num_steps, n)),
            terminated=np.zeros((num_steps, n), bool),
            truncated=np.zeros((num_steps, n), bool),
            values_r=np.zeros((num_steps, n), np.float32),
            values_c=np.zeros((num_steps, n), np.float32),
        )
        final_values: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]] = []
        for t in range(num_steps):
            obs_n = self.normalize(self.obs)
            obs_t = torch.from_numpy(obs_n)
            actions, logp = agent.actor.sample(obs_t)
            ro.values_r[t] = agent.critic_r(obs_t).numpy()
            if with_cost:
                ro.values_c[t] = agent.critic_c(obs_t).numpy()
            act = actions.numpy()
            env_act = act if self.discrete else np.clip(act, self.low, self.high)
            next_obs, reward, term, trunc, info = self.envs.step(env_act)
            done = term | trunc
            cost = step_costs(info, done)
            ro.obs[t], ro.raw_obs[t], ro.actions[t], ro.logprobs[t] = obs_n, self.obs, act, logp.numpy()
            ro.rewards[t], ro.costs[t], ro.terminated[t], ro.truncated[t] = reward, cost, term, trunc
            self.ep_return += reward
            self.ep_cost += cost
            self.ep_len += 1
            self.obs = next_obs.reshape(n, -1)
            if done.any():
                ended = np.flatnonzero(done)
                for i in ended:
                    self.returns.append(float(self.ep_return[i]))
                    self.costs.append(float(self.ep_cost[i]))
                    self.lengths.append(int(self.ep_len[i]))
                self.num_episodes += len(ended)
                self.ep_return[ended], self.ep_cost[ended], self.ep_len[ended] = 0.0, 0.0, 0
                cut = np.flatnonzero(trunc & ~term)
                if len(cut):
                    final = np.stack([info["final_obs"][i] for i in cut]).reshape(len(cut), -1)
                    final_t = torch.from_numpy(self.normalize(final))
                    v_c = agent.critic_c(final_t).numpy() if with_cost else np.zeros(len(cut))
                    final_values.append((t, cut, agent.critic_r(final_t).numpy(), v_c))
        last = torch.from_numpy(self.normalize(self.obs))
        ro.next_values_r = np.concatenate([ro.values_r[1:], agent.critic_r(last).numpy()[None]])
        ro.next_values_c = np.concatenate(
            [ro.values_c[1:], (agent.critic_c(last).numpy() if with_cost else np.zeros(n))[None]]
        )
        for t, cut, v_r, v_c in final_values:
            ro.next_values_r[t, cut], ro.next_values_c[t, cut] = v_r, v_c
        if self.norm_obs:  # statistics move between rollouts, never within one
            self.obs_norm.update(ro.raw_obs.reshape(-1, d))
        return ro


def _gae(
    rewards: np.ndarray, ro: Rollout, values: np.ndarray, next_values: np.ndarray, gamma: float, lam: float
) -> tuple[Tensor, Tensor]:
    """GAE of one stream over a time-major rollout; returns ``(advantages, returns)`` (T*N,)."""

    def to_bt(x: np.ndarray) -> Tensor:  # (T, N) -> (N, T): core's layout, time on dim 1
        return torch.as_tensor(np.ascontiguousarray(x.T), dtype=torch.float32)

    adv, ret = gae(
        to_bt(rewards),
        to_bt(values),
        gamma=gamma,
        lam=lam,
        next_values=to_bt(next_values),
        terminated=to_bt(ro.terminated).bool(),
        truncated=to_bt(ro.truncated).bool(),
    )  # (N, T) each
    return adv.T.reshape(-1), ret.T.reshape(-1)  # (T*N,) time-major like the rollout


def ppo_update(
    agent: Agent,
    optimizer: torch.optim.Optimizer,
    ro: Rollout,
    rewards: np.ndarray,
    costs: np.ndarray | None,
    lam: float,
    s: PPOSettings,
    rng: np.random.Generator,
) -> dict[str, float]:
    """One PPO(-Lagrangian) update on a rollout with the given (possibly scaled or learned)
    ``rewards`` and ``costs`` (T, N); ``costs=None`` is plain PPO."""
    adv_r, ret_r = _gae(rewards, ro, ro.values_r, ro.next_values_r, s.gamma, s.gae_lambda)  # (B,)
    everywhere = torch.ones_like(adv_r, dtype=torch.bool)
    adv = masked_whiten(adv_r, everywhere)  # reward advantages standardised
    if costs is not None:
        adv_c, ret_c = _gae(costs, ro, ro.values_c, ro.next_values_c, s.gamma, s.gae_lambda)
        adv = lagrangian_advantage(adv, adv_c - adv_c.mean(), lam)  # cost advantages centred
    obs = torch.from_numpy(ro.obs.reshape(-1, ro.obs.shape[-1]))  # (B, obs_dim)
    actions = torch.from_numpy(ro.actions.reshape(ro.logprobs.size, *ro.actions.shape[2:]))
    old_logp = torch.from_numpy(ro.logprobs.reshape(-1))
    old_v_r = torch.from_numpy(ro.values_r.reshape(-1))
    old_v_c = torch.from_numpy(ro.values_c.reshape(-1))
    params = [p for group in optimizer.param_groups for p in group["params"]]
    sums: dict[str, Tensor] = {}
    batch, count = obs.shape[0], 0
    for _ in range(s.epochs):
        kl_sum, kl_n = torch.zeros(()), 0
        perm = torch.from_numpy(rng.permutation(batch))
        for start in range(0, batch, s.minibatch_size):
            idx = perm[start : start + s.minibatch_size]
            logp, entropy = agent.actor.evaluate(obs[idx], actions[idx])
            pg_loss, metrics = ppo_policy_loss(logp, old_logp[idx], adv[idx], clip_eps=s.clip_eps)
            v_loss, v_metrics = value_loss(
                agent.critic_r(obs[idx]), old_v_r[idx], ret_r[idx], clip_eps=s.vf_clip_eps
            )
            loss = pg_loss - s.ent_coef * entropy.mean() + s.vf_coef * v_loss
            if costs is not None:
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


def _to_torch(obj: Any) -> Any:
    """numpy arrays -> tensors, recursively (checkpoints load with ``weights_only=True``)."""
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.copy())
    if isinstance(obj, dict):
        return {k: _to_torch(v) for k, v in obj.items()}
    return obj


def _to_numpy(obj: Any) -> Any:
    if isinstance(obj, Tensor):
        return obj.numpy()
    if isinstance(obj, dict):
        return {k: _to_numpy(v) for k, v in obj.items()}
    return obj


def _save_atomic(state: dict[str, Any], path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def check_setup(
    env_id: str, cost: str | None, needs_cost: bool, s: PPOSettings, resume_dir: Path | None = None
) -> tuple[str, str | None]:
    """Check a run's options before anything is built; returns ``(gymnasium id, cost)``.
    Raises ValueError (EnvSpecError for the task) with the option and what is allowed."""
    base_id, cost, _ = resolve_env(env_id, cost)
    if needs_cost and cost is None:
        raise ValueError(
            f"--algo ppo-lag needs a cost: pass --cost velocity or a Safe task id (env {env_id!r})"
        )
    for name in ("num_envs", "num_steps", "minibatch_size", "epochs"):
        if getattr(s, name) < 1:
            raise ValueError(f"--ppo.{name.replace('_', '-')} must be >= 1, got {getattr(s, name)}")
    if s.minibatch_size > s.num_envs * s.num_steps:
        raise ValueError(
            f"--ppo.minibatch-size {s.minibatch_size} exceeds the rollout size "
            f"{s.num_envs * s.num_steps} (num_envs * num_steps)"
        )
    if not s.cost_limit >= 0:
        raise ValueError(f"--ppo.cost-limit must be >= 0, got {s.cost_limit}")
    if resume_dir is not None and not (resume_dir / CHECKPOINT).is_file():
        raise ValueError(f"--resume: no checkpoint at {resume_dir / CHECKPOINT}")
    if resume_dir is not None:
        fix = "start the run afresh (without --resume) or under another --name"
        check_resume(read_checkpoint(resume_dir / CHECKPOINT, fix), env_id, base_id, cost, s)
    return base_id, cost


def read_checkpoint(path: Path, fix: str = "") -> dict[str, Any]:
    """A run's checkpoint; a `UserError` naming the file (and `fix`) when it cannot be read."""
    try:
        return dict(torch.load(path, weights_only=True))
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as exc:
        reason = (str(exc).strip() or type(exc).__name__).splitlines()[0].split(". ")[0]
        raise UserError(
            f"{path}: the checkpoint is damaged and cannot be read ({reason}){'; ' + fix if fix else ''}"
        ) from exc


def check_resume(state: dict[str, Any], env_id: str, base_id: str, cost: str | None, s: PPOSettings) -> None:
    """A `UserError` naming every option the checkpoint was trained with that differs now."""
    rows = (  # option, (saved, now) to compare, (saved, now) to show where it differs
        ("--env", (state["base_env"], base_id), (state["env"], env_id)),
        ("--cost", (state["cost"], cost), None),
        ("--ppo.hidden", (tuple(state["hidden"]), s.hidden), None),
        ("--ppo.num-envs", (len(state["scaler"]["ret"]), s.num_envs), None),
    )
    differ = [
        f"{o} {(shown or pair)[0]} (now {(shown or pair)[1]})"
        for o, pair, shown in rows
        if pair[0] != pair[1]
    ]
    if differ:
        raise UserError(
            f"--resume: the run was trained with {', '.join(differ)}; resume it with the same options, "
            "or start a new run under another --name"
        )


Relabel = Callable[[Rollout, int], tuple[np.ndarray, np.ndarray]]
"""``relabel(rollout, iteration) -> (rewards, costs)``, both (T, N): what to train on instead
of the rollout's true rewards and costs (preference-based RL passes its learned models here)."""


def train_policy(
    run_dir: Path,
    env_id: str,
    cost: str | None,
    lagrangian: bool,
    total_steps: int,
    seed: int,
    s: PPOSettings,
    *,
    relabel: Relabel | None = None,
    resume: bool = False,
    init_from: Path | None = None,
    progress: bool = True,
    meta: dict[str, Any] | None = None,
    report_to: tuple[str, ...] = ("tensorboard",),
) -> dict[str, float]:
    """Train a policy with PPO (``lagrangian=False``) or PPO-Lagrangian; returns the last
    iteration's statistics. Writes ``checkpoint.pt`` and the metrics (TensorBoard logs in
    ``run_dir/tb``, and Weights & Biases, as ``report_to`` says) under ``run_dir``.

    ``init_from`` (a run directory; ignored when resuming) starts from that run's policy and
    critics, its observation statistics and its Lagrange multiplier; the optimiser, the return
    scaler, the episode records and the iteration count start afresh, as in a new run."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
    from torch.utils.tensorboard import SummaryWriter

    base_id, cost = check_setup(env_id, cost, lagrangian and relabel is None, s, run_dir if resume else None)
    batch = s.num_envs * s.num_steps
    iterations = max(1, total_steps // batch)
    torch.set_num_threads(s.threads)
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = run_dir / CHECKPOINT

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    envs = make_vec_env(
        env_id, s.num_envs, cost, vectorization=s.vectorization, max_episode_steps=s.max_episode_steps
    )
    collector = Collector(envs, s.norm_obs, s.cost_window)
    agent = Agent(collector.obs_dim, envs.single_action_space, s.hidden)
    optimizer = torch.optim.Adam(agent.parameters(), lr=s.lr, eps=1e-5, fused=True)
    scaler = ReturnScaler(s.num_envs, s.gamma)
    lagrange = LagrangeMultiplier(
        s.lagrange_method, init=s.lagrange_init, lr=s.lagrange_lr, max_value=s.lagrange_max
    )
    run_cost = np.zeros(s.num_envs)  # (N,) running episode cost of the costs trained on
    cost_window: deque[float] = deque(maxlen=s.cost_window)  # J_c is their mean over these episodes
    start, global_step = 0, 0
    if resume:
        state = read_checkpoint(ckpt_path)
        agent.load_state_dict(state["agent"])
        optimizer.load_state_dict(state["optimizer"])
        collector.obs_norm.load_state_dict(_to_numpy(state["obs_norm"]))
        scaler.load_state_dict(_to_numpy(state["scaler"]))
        lagrange.load_state_dict(state["lagrange"])
        torch.set_rng_state(state["torch_rng"])
        rng.bit_generator.state = state["numpy_rng"]
        collector.returns.extend(state["returns"])
        collector.costs.extend(state["costs"])
        collector.lengths.extend(state["lengths"])
        collector.num_episodes = state["num_episodes"]
        cost_window.extend(state["cost_window"])
        start, global_step = state["iteration"], state["global_step"]
    elif init_from is not None:
        state = read_checkpoint(init_from / CHECKPOINT)
        agent.load_state_dict(state["agent"])
        collector.obs_norm.load_state_dict(_to_numpy(state["obs_norm"]))
        lagrange.load_state_dict(state["lagrange"])
    header: dict[str, Any] = {
        "env": env_id,
        "cost": cost,
        "algo": "ppo-lag" if lagrangian else "ppo",
        "seed": seed,
    }
    header |= {"settings": dataclasses.asdict(s), **(meta or {})}
    (run_dir / "run.json").write_text(json.dumps(header, indent=2, default=str))

    def checkpoint(iteration: int) -> None:
        state = {
            "agent": agent.state_dict(),
            "optimizer": optimizer.state_dict(),
            "obs_norm": _to_torch(collector.obs_norm.state_dict()),
            "scaler": _to_torch(scaler.state_dict()),
            "lagrange": lagrange.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "numpy_rng": rng.bit_generator.state,
            "returns": list(collector.returns),
            "costs": list(collector.costs),
            "lengths": list(collector.lengths),
            "num_episodes": collector.num_episodes,
            "cost_window": list(cost_window),
            "iteration": iteration,
            "global_step": global_step,
            "env": env_id,
            "cost": cost,
            "base_env": base_id,
            "hidden": list(s.hidden),
            "norm_obs": s.norm_obs,
            "max_episode_steps": s.max_episode_steps,
        }
        _save_atomic(state, ckpt_path)

    writer = SummaryWriter(str(run_dir / "tb")) if "tensorboard" in report_to else None
    wandb = WandbSink(run_dir, run_dir.name) if "wandb" in report_to else None
    columns = [
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[info]}"),
        TimeRemainingColumn(),
    ]
    stats: dict[str, float] = {}
    t0, steps0 = time.perf_counter(), global_step
    try:
        with Progress(*columns, disable=not progress, transient=False) as bar:
            task = bar.add_task(
                f"{header['algo']} {env_id}", total=iterations * batch, completed=global_step, info=""
            )
            for iteration in range(start, iterations):
                if iteration == start or (s.checkpoint_every and iteration % s.checkpoint_every == 0):
                    collector.reset([seed + 10007 * iteration + i for i in range(s.num_envs)])
                    scaler.ret[:], run_cost[:] = 0.0, 0.0
                if s.anneal_lr:
                    optimizer.param_groups[0]["lr"] = s.lr * (1.0 - iteration / iterations)
                tic = time.perf_counter()
                ro = collector.collect(agent, s.num_steps, with_cost=lagrangian)
                rollout_seconds = time.perf_counter() - tic
                global_step += batch
                rewards, costs = (ro.rewards, ro.costs) if relabel is None else relabel(ro, iteration)
                dones = ro.terminated | ro.truncated
                train_rewards = scaler.scale(rewards, dones) if s.norm_reward else rewards
                for t in range(s.num_steps if lagrangian else 0):  # episode costs of what is trained on
                    run_cost += costs[t]
                    cost_window.extend(run_cost[dones[t]].tolist())
                    run_cost[dones[t]] = 0.0
                if lagrangian and cost_window:
                    lagrange.update(mean_recent_cost(cost_window), s.cost_limit)
                tic = time.perf_counter()
                metrics = ppo_update(
                    agent, optimizer, ro, train_rewards, costs if lagrangian else None, lagrange.value, s, rng
                )
                update_seconds = time.perf_counter() - tic
                stats = {f"train/{k}": v for k, v in metrics.items()}
                stats["train/lambda"] = lagrange.value
                if cost_window:
                    stats["train/episode_cost"] = float(np.mean(cost_window))
                if collector.returns:
                    stats["episode/return"] = float(np.mean(collector.returns))
                    stats["episode/cost"] = float(np.mean(collector.costs))
                    stats["episode/length"] = float(np.mean(collector.lengths))
                stats["time/steps_per_second"] = (global_step - steps0) / (time.perf_counter() - t0)
                stats["time/rollout_seconds"], stats["time/update_seconds"] = rollout_seconds, update_seconds
                if writer is not None:
                    for key, value in stats.items():
                        writer.add_scalar(key, value, global_step)
                if wandb is not None:
                    wandb.log(stats, global_step)
                done = iteration + 1
                if done == iterations or (s.checkpoint_every and done % s.checkpoint_every == 0):
                    checkpoint(done)
                info = f"return {stats.get('episode/return', float('nan')):.1f}"
                if lagrangian:
                    info += f" cost {stats.get('episode/cost', float('nan')):.1f} lambda {lagrange.value:.3f}"
                bar.update(task, completed=global_step, info=info)
    finally:
        if writer is not None:
            writer.close()
        if wandb is not None:
            wandb.close()
        envs.close()
    stats["global_step"] = global_step
    return stats


@dataclass(frozen=True)
class TrainConfig:
    """PPO or PPO-Lagrangian on a task's true reward and cost."""

    env: str = "Hopper-v5"
    """Gymnasium id, or a safe task such as SafeHalfCheetahVelocity-v5."""
    algo: Literal["ppo", "ppo-lag"] = "ppo"
    """ppo: reward only; ppo-lag: PPO-Lagrangian, mean episode cost held under --ppo.cost-limit."""
    cost: Literal["velocity"] | None = None
    """Safety cost added to the task (Safe ids imply velocity)."""
    total_steps: int = 1_000_000
    """Environment steps (rounded down to whole rollouts of num_envs * num_steps)."""
    seed: int = 0
    """Seed of torch, numpy and the environments: equal seeds give equal runs."""
    out: Path = Path("runs/control")
    """Runs are written to OUT/NAME."""
    name: str | None = None
    """Run name (default: ENV-ALGO-sSEED)."""
    resume: bool = False
    """Continue the run in OUT/NAME from its last checkpoint."""
    progress: bool = True
    """Show a progress bar."""
    report_to: tuple[ReportTo, ...] = ("tensorboard",)
    """Where metrics go: tensorboard (OUT/NAME/tb), wandb (Weights & Biases, the `alignloop[wandb]`
    extra; project $WANDB_PROJECT, default alignloop), both, or none."""
    ppo: PPOSettings = PPOSettings()


def train(cfg: TrainConfig) -> int:
    """`alignloop control train`."""
    name = cfg.name or f"{cfg.env.replace('/', '_')}-{cfg.algo}-s{cfg.seed}"
    try:
        check_setup(cfg.env, cfg.cost, cfg.algo == "ppo-lag", cfg.ppo, cfg.out / name if cfg.resume else None)
    except ValueError as exc:
        print(f"alignloop control train: {exc}", file=sys.stderr)
        return 2
    output_dir(cfg.out / name, "--out")
    check_report_to(cfg.report_to)
    stats = train_policy(
        cfg.out / name,
        cfg.env,
        cfg.cost,
        cfg.algo == "ppo-lag",
        cfg.total_steps,
        cfg.seed,
        cfg.ppo,
        resume=cfg.resume,
        progress=cfg.progress,
        report_to=cfg.report_to,
    )
    shown = {
        k: round(v, 3) for k, v in stats.items() if k.startswith(("episode/", "time/")) or k == "train/lambda"
    }
    print(json.dumps({"run_dir": str(cfg.out / name), **shown}))
    return 0
