"""What a control learner is made of, apart from its update: the settings of the cost
constraint and its multiplier, the actor with reward and cost critics, a rollout of vector envs,
GAE on both streams, the Lagrangian mix, the flat batch an update reads, the critics' own
regression, and the window of episode costs.

A rollout is time-major, ``(T, N)`` for T steps of N envs. `Collector.collect` steps the envs
with any ``sample`` function (and optional critics: an off-policy learner collects without, and
finds each step's next observation in ``next_raw_obs``). `rollout_advantages` runs GAE
(`alignloop.core.advantages.gae`) with ``V(final observation)`` bootstrapped at time-limit
truncations. The on-policy learners (`alignloop.control.onpolicy` and the algorithms on it) and
SAC (`alignloop.control.sac`) are built from these functions.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from alignloop.control.envs import ObsNormalizer, step_costs, step_info
from alignloop.control.nets import Actor, Critic, NetInit
from alignloop.core.advantages import gae, masked_whiten
from alignloop.core.lagrange import LagrangeMethod, LagrangeMultiplier, lagrangian_advantage
from alignloop.core.losses import value_loss

__all__ = [
    "Agent",
    "Batch",
    "Collector",
    "OMNISAFE_COST_WINDOW",
    "ConstraintSettings",
    "CriticFitSettings",
    "LagrangeSettings",
    "OnPolicySettings",
    "Rollout",
    "RolloutAdvantages",
    "Sample",
    "Values",
    "centered_cost_advantage",
    "critic_optimizer",
    "fit_critics",
    "lagrangian_mix",
    "make_multiplier",
    "minibatches",
    "record_episode_costs",
    "rollout_advantages",
    "standardized_reward_advantage",
]


@dataclass(frozen=True)
class ConstraintSettings:
    """The cost constraint: the mean episode cost held under a limit."""

    cost_limit: float = 25.0
    """Limit on the mean episode cost (25: Safety-Gymnasium's and OmniSafe's navigation benchmarks)."""
    cost_window: int = 100
    """J_c is the mean cost of this many most recent episodes (100, as Stable-Baselines3 logs its
    episodes; the OmniSafe family's defaults use `OMNISAFE_COST_WINDOW`)."""


OMNISAFE_COST_WINDOW = 50
"""OmniSafe 0.5.0's on-policy algorithms take J_c as the mean of the last 50 episodes (its
logger's ``Metrics/EpCost`` window; the ``window_lens: 100`` of its configs is not that window)."""


@dataclass(frozen=True)
class LagrangeSettings(ConstraintSettings):
    """The Lagrange multiplier of the constraint (`alignloop.core.lagrange`)."""

    lagrange_method: LagrangeMethod = "projected"
    """Update rule of lambda: log (Safe RLHF), projected (gradient ascent), pid (Stooke et al.
    2020), adam (gradient ascent by Adam, as OmniSafe)."""
    lagrange_init: float = 0.0
    """Initial lambda (> 0 for the log rule)."""
    lagrange_lr: float = 0.01
    """Step size of lambda per iteration: per unit of J_c - cost_limit for projected (the pid
    rule's K_I), Adam's rate for adam (about the step itself)."""
    lagrange_max: float | None = 100.0
    """Upper bound on lambda (None: unbounded)."""
    lagrange_kp: float = 0.1
    """The pid rule's proportional gain K_P (OmniSafe's CPPOPID, 0.1)."""
    lagrange_kd: float = 0.01
    """The pid rule's derivative gain K_D (OmniSafe's CPPOPID, 0.01)."""


def make_multiplier(s: LagrangeSettings) -> LagrangeMultiplier:
    """The multiplier `s` describes."""
    return LagrangeMultiplier(
        s.lagrange_method,
        init=s.lagrange_init,
        lr=s.lagrange_lr,
        max_value=s.lagrange_max,
        kp=s.lagrange_kp,
        ki=s.lagrange_lr,
        kd=s.lagrange_kd,
    )


@dataclass(frozen=True)
class OnPolicySettings(ConstraintSettings):
    """What every on-policy learner collects and how (its rollouts, critics and normalisers)."""

    num_envs: int = 1
    """Parallel environments."""
    vectorization: Literal["sync", "async"] = "sync"
    """sync: envs step in this process; async: one subprocess per env."""
    num_steps: int = 2048
    """Steps collected from each env per iteration."""
    gamma: float = 0.99
    """Discount factor (of the reward and of the cost)."""
    gae_lambda: float = 0.95
    """GAE lambda (of both streams)."""
    hidden: tuple[int, ...] = (64, 64)
    """Hidden layer sizes of the actor and the critics."""
    init: NetInit = "orthogonal"
    """Initialisation of the actor and the critics: orthogonal (the PPO baselines; the actor's
    last layer at gain 0.01, so the first policy's mean action is near 0) or pytorch
    (nn.Linear's own, as OmniSafe: a state-dependent first mean action of order 0.1-1)."""
    norm_obs: bool = True
    """Normalise observations with running statistics (saved in the checkpoint)."""
    norm_obs_per_step: bool = False
    """Fold each step's observations into those statistics before the policy sees them (as
    OmniSafe) instead of once after each rollout."""
    norm_reward: bool = True
    """Divide rewards by the running std of the discounted return (costs are never scaled)."""
    max_episode_steps: int | None = None
    """Override the task's time limit."""
    threads: int = 1
    """torch threads (1 is fastest for these small networks)."""


@dataclass(frozen=True)
class CriticFitSettings(OnPolicySettings):
    """On-policy learners whose critics are fitted apart from the policy's loss (`fit_critics`)."""

    epochs: int = 10
    """Passes over each rollout."""
    minibatch_size: int = 64
    """Samples per gradient step."""
    critic_lr: float = 3e-4
    """Adam learning rate of the critics."""
    critic_l2: float = 0.001
    """Weight of the critics' squared parameters in their loss (OmniSafe's critic_norm_coef, 0.001)."""
    max_grad_norm: float = 40.0
    """Clip of each network's gradient norm (OmniSafe's max_grad_norm)."""
    cost_window: int = OMNISAFE_COST_WINDOW
    """J_c is the mean cost of this many most recent episodes (OmniSafe's, 50)."""


Sample = Callable[[Tensor], tuple[Tensor, Tensor]]
"""``sample(obs) -> (actions, log-probs)`` for normalised observations (N, obs_dim)."""
Values = Callable[[Tensor], tuple[np.ndarray, np.ndarray]]
"""``values(obs) -> (V_r, V_c)``, each (K,), for normalised observations (K, obs_dim)."""


class Agent(nn.Module):
    """The actor and the two critics (reward and cost)."""

    def __init__(
        self, obs_dim: int, action_space: Any, hidden: tuple[int, ...], init: NetInit = "orthogonal"
    ):
        super().__init__()
        self.actor = Actor(obs_dim, action_space, hidden, init)
        self.critic_r = Critic(obs_dim, hidden, init)
        self.critic_c = Critic(obs_dim, hidden, init)

    def values(self, with_cost: bool) -> Values:
        """Both critics as the collector's `Values` (the cost critic's as zeros without a cost)."""

        def values(obs: Tensor) -> tuple[np.ndarray, np.ndarray]:
            v_c = self.critic_c(obs).numpy() if with_cost else np.zeros(len(obs), np.float32)
            return self.critic_r(obs).numpy(), v_c

        return values


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
    values_r: np.ndarray  # (T, N) V_r(s_t); 0 when collected without critics
    values_c: np.ndarray  # (T, N) V_c(s_t)
    next_raw_obs: np.ndarray | None = None  # (T, N, obs_dim) after step t (the final one at episode ends)
    next_values_r: np.ndarray = field(init=False)  # (T, N) V_r(s_{t+1}), V_r(final obs) at truncations
    next_values_c: np.ndarray = field(init=False)


class Collector:
    """Steps a vector env with the current policy; keeps the normaliser and episode records.

    By default the observation statistics are folded in once per rollout, after it (the first
    rollout sees mean 0, variance 1): within a rollout the policy, the stored observations and
    the critics' bootstrap values all use the same normalisation, and the step loop stays free
    of statistics updates. With ``norm_per_step`` each step's observations are folded in before
    the policy sees them (OmniSafe's rule): the stored observations are each what the policy
    saw, normalised by the statistics of their own step."""

    def __init__(self, envs: Any, norm_obs: bool, cost_window: int, *, norm_per_step: bool = False):
        self.envs = envs
        self.obs_dim = int(np.prod(envs.single_observation_space.shape))
        self.obs_norm = ObsNormalizer((self.obs_dim,))
        self.norm_obs = norm_obs
        self.norm_per_step = norm_obs and norm_per_step
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
        self.task_reward = False
        """Whether the envs report their own reward in ``info["task_reward"]`` (Sauté)."""

    def reset(self, seeds: list[int]) -> None:
        """Start new episodes in every env; unfinished ones are dropped from the records."""
        obs, _ = self.envs.reset(seed=seeds)
        self.obs = obs.reshape(len(seeds), -1)
        self.ep_return[:], self.ep_cost[:], self.ep_len[:] = 0.0, 0.0, 0

    def normalize(self, obs: np.ndarray) -> np.ndarray:
        return self.obs_norm.normalize(obs) if self.norm_obs else obs.astype(np.float32)

    @torch.inference_mode()
    def collect(self, sample: Sample, num_steps: int, values: Values | None = None) -> Rollout:
        """``num_steps`` steps of every env with `sample`'s actions; with `values` (the critics)
        also ``V(s_t)`` and the bootstrap values ``V(s_{t+1})``, ``V(final observation)`` at
        time-limit truncations (an off-policy learner collects without)."""
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
        next_raw = ro.next_raw_obs = np.zeros((num_steps, n, d))
        final_values: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]] = []
        for t in range(num_steps):
            if self.norm_per_step:
                self.obs_norm.update(self.obs)
            obs_n = self.normalize(self.obs)
            obs_t = torch.from_numpy(obs_n)
            actions, logp = sample(obs_t)
            if values is not None:
                ro.values_r[t], ro.values_c[t] = values(obs_t)
            act = actions.numpy()
            env_act = act if self.discrete else np.clip(act, self.low, self.high)
            next_obs, reward, term, trunc, info = self.envs.step(env_act)
            done = term | trunc
            cost = step_costs(info, done)
            ro.obs[t], ro.raw_obs[t], ro.actions[t], ro.logprobs[t] = obs_n, self.obs, act, logp.numpy()
            ro.rewards[t], ro.costs[t], ro.terminated[t], ro.truncated[t] = reward, cost, term, trunc
            # the episode records keep the task's own reward (a Sauté env trains on another)
            self.ep_return += step_info(info, done, "task_reward", reward) if self.task_reward else reward
            self.ep_cost += cost
            self.ep_len += 1
            self.obs = next_obs.reshape(n, -1)
            next_raw[t] = self.obs
            if done.any():
                ended = np.flatnonzero(done)
                for i in ended:
                    self.returns.append(float(self.ep_return[i]))
                    self.costs.append(float(self.ep_cost[i]))
                    self.lengths.append(int(self.ep_len[i]))
                self.num_episodes += len(ended)
                self.ep_return[ended], self.ep_cost[ended], self.ep_len[ended] = 0.0, 0.0, 0
                next_raw[t, ended] = np.stack([info["final_obs"][i] for i in ended]).reshape(len(ended), -1)
                cut = np.flatnonzero(trunc & ~term)
                if len(cut) and values is not None:
                    final_t = torch.from_numpy(self.normalize(next_raw[t, cut]))
                    final_values.append((t, cut, *values(final_t)))
        last_r, last_c = (np.zeros(n), np.zeros(n))
        if values is not None:
            last_r, last_c = values(torch.from_numpy(self.normalize(self.obs)))
        ro.next_values_r = np.concatenate([ro.values_r[1:], last_r[None]])
        ro.next_values_c = np.concatenate([ro.values_c[1:], last_c[None]])
        for t, cut, v_r, v_c in final_values:
            ro.next_values_r[t, cut], ro.next_values_c[t, cut] = v_r, v_c
        if self.norm_obs and not self.norm_per_step:  # once per rollout, after it
            self.obs_norm.update(ro.raw_obs.reshape(-1, d))
        return ro


@dataclass
class RolloutAdvantages:
    """GAE of both streams of a rollout, flattened time-major ``(T*N,)`` like the rollout."""

    reward: Tensor  # (T*N,) A_r
    reward_returns: Tensor  # (T*N,)
    cost: Tensor | None  # (T*N,) A_c; None without costs
    cost_returns: Tensor | None


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


def rollout_advantages(
    ro: Rollout, rewards: np.ndarray, costs: np.ndarray | None, gamma: float, gae_lambda: float
) -> RolloutAdvantages:
    """GAE on the reward stream and (when `costs` is given) on the cost stream, both (T, N),
    with each critic's ``V(final observation)`` bootstrapped at time-limit truncations."""
    adv_r, ret_r = _gae(rewards, ro, ro.values_r, ro.next_values_r, gamma, gae_lambda)
    if costs is None:
        return RolloutAdvantages(adv_r, ret_r, None, None)
    adv_c, ret_c = _gae(costs, ro, ro.values_c, ro.next_values_c, gamma, gae_lambda)
    return RolloutAdvantages(adv_r, ret_r, adv_c, ret_c)


def standardized_reward_advantage(adv: RolloutAdvantages) -> Tensor:
    """A_r standardised over the rollout (every on-policy learner's reward advantage)."""
    return masked_whiten(adv.reward, torch.ones_like(adv.reward, dtype=torch.bool))


def centered_cost_advantage(adv: RolloutAdvantages) -> Tensor:
    """A_c centred over the rollout, its scale kept (so lambda, and CPO's cost gradient, keep
    their meaning); OmniSafe and safety-starter-agents do the same."""
    if adv.cost is None:
        raise ValueError("the rollout's advantages have no cost stream")
    return adv.cost - adv.cost.mean()


def lagrangian_mix(adv: RolloutAdvantages, lam: float) -> Tensor:
    """The advantage PPO(-Lagrangian) ascends: reward advantages standardised, cost advantages
    centred (their scale, and lambda's meaning, kept), mixed as ``(A_r - lam A_c) / (1 + lam)``;
    the standardised A_r alone without costs."""
    mixed = standardized_reward_advantage(adv)
    if adv.cost is not None:
        mixed = lagrangian_advantage(mixed, centered_cost_advantage(adv), lam)
    return mixed


@dataclass
class Batch:
    """A rollout flattened for an update: ``(B,)`` rows, B = T * N, time-major."""

    obs: Tensor  # (B, obs_dim) normalised
    actions: Tensor  # (B, act_dim) float32, or (B,) int64
    logprobs: Tensor  # (B,) under the policy that collected them
    values_r: Tensor  # (B,) V_r(s) when collected
    values_c: Tensor  # (B,)

    @classmethod
    def of(cls, ro: Rollout) -> Batch:
        return cls(
            obs=torch.from_numpy(ro.obs.reshape(-1, ro.obs.shape[-1])),
            actions=torch.from_numpy(ro.actions.reshape(ro.logprobs.size, *ro.actions.shape[2:])),
            logprobs=torch.from_numpy(ro.logprobs.reshape(-1)),
            values_r=torch.from_numpy(ro.values_r.reshape(-1)),
            values_c=torch.from_numpy(ro.values_c.reshape(-1)),
        )

    def __len__(self) -> int:
        return self.obs.shape[0]


def minibatches(size: int, minibatch_size: int, rng: np.random.Generator) -> list[Tensor]:
    """One epoch's shuffled minibatches of row indices (the last one may be smaller)."""
    perm = torch.from_numpy(rng.permutation(size))
    return [perm[start : start + minibatch_size] for start in range(0, size, minibatch_size)]


def critic_optimizer(agent: Agent, lr: float) -> torch.optim.Optimizer:
    """Adam over both critics, without weight decay: the L2 term is in `fit_critics`' loss.
    (One Adam over both is two of OmniSafe's, one per critic: Adam's moments are per parameter.)"""
    params = [*agent.critic_r.parameters(), *agent.critic_c.parameters()]
    return torch.optim.Adam(params, lr=lr, fused=True)


def fit_critics(
    agent: Agent,
    optimizer: torch.optim.Optimizer,
    batch: Batch,
    adv: RolloutAdvantages,
    idx: Tensor,
    l2: float,
    max_grad_norm: float,
) -> dict[str, Tensor]:
    """One gradient step of both critics on the rows `idx` (the cost critic's only when the
    advantages have a cost stream), OmniSafe 0.5.0's critic step: each critic's loss is the mean
    squared error to its returns plus ``l2`` times the sum of its squared parameters (its
    ``critic_norm_coef``), each network's gradient is clipped to ``max_grad_norm`` on its own,
    then `critic_optimizer` steps. Returns the detached losses as `value_loss` reports them
    (half the squared error, without the L2 term), so they read as every other value loss."""
    obs = batch.obs[idx]
    streams = [(agent.critic_r, batch.values_r, adv.reward_returns, "value_loss")]
    if adv.cost_returns is not None:
        streams.append((agent.critic_c, batch.values_c, adv.cost_returns, "cost_value_loss"))
    out: dict[str, Tensor] = {}
    loss = torch.zeros(())
    for critic, old_values, returns, name in streams:
        half_mse, _ = value_loss(critic(obs), old_values[idx], returns[idx])
        out[name] = half_mse.detach()
        loss = loss + 2 * half_mse + l2 * sum(p.pow(2).sum() for p in critic.parameters())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    for critic, *_ in streams:
        nn.utils.clip_grad_norm_(critic.parameters(), max_grad_norm, foreach=True)
    optimizer.step()
    return out


def record_episode_costs(
    costs: np.ndarray, dones: np.ndarray, running: np.ndarray, window: deque[float]
) -> None:
    """Add the costs (T, N) of a rollout to each env's running episode cost ``running`` (N,), in
    place, and the cost of every episode that ended (``dones`` (T, N)) to `window`."""
    for t in range(costs.shape[0]):
        running += costs[t]
        window.extend(running[dones[t]].tolist())
        running[dones[t]] = 0.0
