"""The training loop every on-policy learner shares: PPO, PPO-Lagrangian, CPO, PCPO, FOCOPS, CUP.

One iteration: collect ``num_steps`` steps from each of ``num_envs`` envs
(`alignloop.control.rollouts.Collector`); optionally replace the rewards and costs by learned
ones (the ``relabel`` hook of preference-based RL); scale the rewards; record the episode costs
and move the Lagrange multiplier by ``J_c - cost_limit`` (``J_c`` the mean cost of the last
``cost_window`` episodes) when the learner is Lagrangian; GAE on each stream with ``V(final
observation)`` bootstrapped at time-limit truncations; then the algorithm's own update. An
algorithm is what it adds here, a `Learner`: its optimisers (checkpointed) and its ``update``
function, built by a ``make_learner(agent, settings)`` of its own module; the loop holds
everything else.

Exact resume. The run stack (`alignloop.runstack`) keeps the run folder: run.json,
metrics.jsonl, TensorBoard in tb/ and checkpoints/, written at rollout boundaries every
``save_every`` iterations with the networks, the optimisers, the normalisers, lambda, the
episode records and every random-generator state (torch's and the update's numpy generator).
The simulator state itself is not saved (it is not portable across tasks); instead the envs are
re-seeded and reset at every checkpoint boundary, in the uninterrupted run exactly as in a
resumed one (seeds ``seed + 10007 * iteration + i``). A resumed run is therefore step-for-step
identical to an uninterrupted one with the same seed. The episodes cut by those resets are
treated as truncations (bootstrapped, not counted in the episode statistics).
"""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from alignloop.control.envs import EnvSpecError, ReturnScaler, make_vec_env, resolve_env
from alignloop.control.rollouts import (
    Agent,
    Collector,
    LagrangeSettings,
    OnPolicySettings,
    Rollout,
    RolloutAdvantages,
    make_multiplier,
    record_episode_costs,
    rollout_advantages,
)
from alignloop.control.saute import SauteOptions, SauteWrapper
from alignloop.core.lagrange import LagrangeMultiplier, mean_recent_cost
from alignloop.errors import UserError
from alignloop.runstack.checkpoint import Checkpointer, NumpyState, Stateful
from alignloop.runstack.run import Run

__all__ = [
    "LEGACY_CHECKPOINT",
    "Learner",
    "Relabel",
    "SetupError",
    "UpdateContext",
    "check_setup",
    "check_task",
    "has_checkpoint",
    "loop_records",
    "model_options",
    "read_checkpoint",
    "restore_loop_records",
    "train_on_policy",
]


class SetupError(UserError, ValueError):
    """An option or task that cannot train: named, with what is allowed."""


@dataclass(frozen=True)
class UpdateContext:
    """What an update knows besides the rollout."""

    lam: float
    """The Lagrange multiplier after this iteration's move (0 for a learner without one)."""
    mean_cost: float
    """J_c: the mean cost of the recent episodes (before any ended: the rollout's mean step cost
    times `mean_length`)."""
    mean_length: float
    """The mean length of the recent episodes (before any ended: the rollout's length)."""
    cost_limit: float
    progress: float
    """The fraction of the run's iterations done before this one (for schedules)."""
    rng: np.random.Generator
    """The update's generator (checkpointed with the run)."""


Update = Callable[[Rollout, RolloutAdvantages, UpdateContext], dict[str, float]]


@dataclass
class Learner:
    """An on-policy algorithm as the loop sees it."""

    optimizers: dict[str, torch.optim.Optimizer]
    """Checkpointed and restored with the networks."""
    update: Update
    """``update(rollout, advantages, context) -> metrics``: moves the agent."""
    lagrangian: bool = False
    """Whether the loop moves a Lagrange multiplier for it (passed as ``context.lam``)."""
    scheduled: bool = False
    """Whether the update follows ``context.progress`` (a learning-rate decay): a resume must
    then keep the run's length."""


MakeLearner = Callable[[Agent, Any], Learner]

Relabel = Callable[[Rollout, int], tuple[np.ndarray, np.ndarray]]
"""``relabel(rollout, iteration) -> (rewards, costs)``, both (T, N): what to train on instead
of the rollout's true rewards and costs (preference-based RL passes its learned models here)."""


def model_options(group: str) -> tuple[str, ...]:
    """Options that define what a control run trains (a resume must not change them), for the
    settings group `group` of the command (``"ppo"`` -> ``--ppo.hidden`` ...)."""
    fields = ("hidden", "norm_obs", "num_envs", "max_episode_steps", "critics_apart")  # the last: PPO's
    # optimisers (one, or the actor's and the critics'); a group without a field never differs
    return ("env", "cost", "algo", "saute", *(f"{group}.{name}" for name in fields))


# ------------------------------------------------------------------------ checkpoints
def has_checkpoint(run_dir: Path) -> bool:
    """Whether `run_dir` holds an intact checkpoint (a run `--resume` can continue)."""
    return Checkpointer(run_dir).latest() is not None


LEGACY_CHECKPOINT = "checkpoint.pt"
"""The single checkpoint file control runs wrote before the run stack (read for evaluation and
``init_from``; such a run cannot be resumed)."""


def read_checkpoint(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(state, extra)`` of a control run's newest intact checkpoint: ``state["models"]`` (the
    networks), ``state["states"]["obs_norm"]`` (tensors) and the rest; ``extra`` holds the task
    (``env``, ``cost``, ``algo``, ``hidden``, ``norm_obs``, ``max_episode_steps``, ``saute``),
    lambda, the episode records and the counters. A run folder of an older version (one
    ``checkpoint.pt``, a PPO run) is read too. Raises `UserError` when there is no checkpoint."""
    checkpointer = Checkpointer(run_dir)
    path = checkpointer.latest()
    if path is None and (run_dir / LEGACY_CHECKPOINT).is_file():
        old = torch.load(run_dir / LEGACY_CHECKPOINT, weights_only=True)
        state = {"models": {"agent": old.pop("agent")}, "states": {"obs_norm": old.pop("obs_norm")}}
        return state, old
    if path is None:
        raise UserError(f"{run_dir}: no intact checkpoint; is it a run folder of `alignloop control train`?")
    return checkpointer.read_state(path), checkpointer.read_meta(path)["extra"]


_POSITIVE = (lambda v: v > 0, "> 0")
_NON_NEGATIVE = (lambda v: v >= 0, ">= 0")
_UNIT = (lambda v: 0 <= v <= 1, "in [0, 1]")
RANGES: dict[str, tuple[Callable[[float], bool], str]] = {
    "lr": _NON_NEGATIVE,  # 0 freezes the network (the loop's set-up pass does)
    "critic_lr": _NON_NEGATIVE,
    "max_grad_norm": _POSITIVE,
    "clip_eps": _POSITIVE,
    "temperature": _POSITIVE,
    "kl_bound": _POSITIVE,
    "alpha": _POSITIVE,
    "critic_l2": _NON_NEGATIVE,
    "vf_coef": _NON_NEGATIVE,
    "ent_coef": _NON_NEGATIVE,
    "target_kl": _NON_NEGATIVE,
    "cg_damping": _NON_NEGATIVE,
    "lagrange_lr": _NON_NEGATIVE,
    "lagrange_init": _NON_NEGATIVE,
    "lagrange_max": _NON_NEGATIVE,
    "gamma": _UNIT,
    "gae_lambda": _UNIT,
    "line_search_shrink": (lambda v: 0 < v < 1, "in (0, 1)"),
    "updates_per_step": _POSITIVE,
    "tau": (lambda v: 0 < v <= 1, "in (0, 1]"),
}
"""The allowed values of each group's numeric options, whichever group has them (`check_setup`
and `check_sac` refuse the rest, NaN included, before anything is built)."""


def check_ranges(s: Any, group: str) -> None:
    """`SetupError` for the first option of settings `s` outside its `RANGES` entry (an option
    set to None is off, and allowed)."""
    for f in dataclasses.fields(s):
        if f.name in RANGES:
            allowed, rule = RANGES[f.name]
            value = getattr(s, f.name)
            if value is not None and not allowed(value):  # None: the option is off
                raise SetupError(f"--{group}.{f.name.replace('_', '-')} must be {rule}, got {value}")


def check_task(env_id: str, cost: str | None, needs_cost: bool, algo: str) -> tuple[str, str | None]:
    """The task's ``(gymnasium id, cost)``; `SetupError` for an unknown one, or for one without
    a cost when `needs_cost` (the learner `algo` is constrained)."""
    try:
        base_id, cost, _ = resolve_env(env_id, cost)
    except EnvSpecError as exc:
        raise SetupError(str(exc)) from exc
    if needs_cost and cost is None:
        raise SetupError(
            f"--algo {algo} needs a cost, and env {env_id!r} has none (no info['cost']): pass --cost "
            "velocity or a task with a cost (Safe*Velocity-v5, Safety*-v0), or an unconstrained --algo"
        )
    return base_id, cost


def check_setup(
    env_id: str,
    cost: str | None,
    needs_cost: bool,
    s: OnPolicySettings,
    resume_dir: Path | None = None,
    *,
    algo: str = "ppo-lag",
    group: str = "ppo",
) -> tuple[str, str | None]:
    """Check a run's options before anything is built; returns ``(gymnasium id, cost)``.
    Raises `SetupError` (a ValueError) naming the option and what is allowed."""
    base_id, cost = check_task(env_id, cost, needs_cost, algo)
    check_ranges(s, group)
    names = ["num_envs", "num_steps", *(n for n in ("minibatch_size", "epochs") if hasattr(s, n))]
    for name in names:
        if getattr(s, name) < 1:
            raise SetupError(f"--{group}.{name.replace('_', '-')} must be >= 1, got {getattr(s, name)}")
    minibatch = getattr(s, "minibatch_size", 1)
    if minibatch > s.num_envs * s.num_steps:
        raise SetupError(
            f"--{group}.minibatch-size {minibatch} exceeds the rollout size "
            f"{s.num_envs * s.num_steps} (num_envs * num_steps)"
        )
    if not s.cost_limit >= 0:
        raise SetupError(f"--{group}.cost-limit must be >= 0, got {s.cost_limit}")
    if s.cost_window < 1:
        raise SetupError(f"--{group}.cost-window must be >= 1, got {s.cost_window}")
    if resume_dir is not None and not has_checkpoint(resume_dir):
        raise SetupError(f"--resume: no checkpoint in {resume_dir}; start the run without --resume")
    return base_id, cost


def _grouped(stats: dict[str, float]) -> dict[str, dict[str, float]]:
    """``{"train/loss": 1}`` -> ``{"train": {"loss": 1}}``: the logger's splits."""
    out: dict[str, dict[str, float]] = {}
    for key, value in stats.items():
        split, _, name = key.partition("/")
        out.setdefault(split, {})[name] = value
    return out


def loop_records(
    lagrange: LagrangeMultiplier,
    rng: np.random.Generator,
    collector: Collector,
    cost_window: deque[float],
    global_step: int,
) -> dict[str, Any]:
    """What every control loop (this one and SAC's) checkpoints besides its networks: lambda,
    the update's generator state, the episode records and the step count."""
    return {
        "lagrange": lagrange.state_dict(),
        "numpy_rng": rng.bit_generator.state,
        "returns": list(collector.returns),
        "costs": list(collector.costs),
        "lengths": list(collector.lengths),
        "num_episodes": collector.num_episodes,
        "cost_window": list(cost_window),
        "global_step": global_step,
    }


def restore_loop_records(
    extra: dict[str, Any],
    lagrange: LagrangeMultiplier,
    rng: np.random.Generator,
    collector: Collector,
    cost_window: deque[float],
) -> int:
    """`loop_records` read back from a checkpoint's extra into the loop's objects; returns the
    step count."""
    lagrange.load_state_dict(extra["lagrange"])
    rng.bit_generator.state = extra["numpy_rng"]
    collector.returns.extend(extra["returns"])
    collector.costs.extend(extra["costs"])
    collector.lengths.extend(extra["lengths"])
    collector.num_episodes = extra["num_episodes"]
    cost_window.extend(extra["cost_window"])
    return int(extra["global_step"])


def saute_wrap(saute: SauteOptions | None) -> Callable[[gym.Env], gym.Env] | None:
    """The per-env wrapper of a Sauté run (None without Sauté)."""
    if saute is None:
        return None
    return lambda env: SauteWrapper(env, saute)


def train_on_policy(
    run_dir: Path,
    env_id: str,
    cost: str | None,
    total_steps: int,
    seed: int,
    s: OnPolicySettings,
    make_learner: MakeLearner,
    *,
    algo: str,
    constrained: bool,
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
    must_match: tuple[str, ...] = model_options("ppo"),
    saute: SauteOptions | None = None,
    report_to: Sequence[str] = ("tensorboard",),
) -> dict[str, float]:
    """Train an on-policy learner (`make_learner` builds its `Learner`) for ``total_steps``
    environment steps; returns the last iteration's statistics. ``constrained``: the cost
    stream (its critic, its advantages, the episode-cost window) is trained. The run folder is
    the run stack's: ``run.json`` (`config`, by default these arguments), ``metrics.jsonl``,
    ``tb/`` and ``checkpoints/`` every ``save_every`` iterations (the envs are re-seeded there;
    0: at the end only). `relabel_stats` gives further statistics (``"split/name": value``) to
    log each iteration; `extra_states` are further objects (a ``relabel`` hook's models)
    checkpointed and resumed with the policy. `saute` wraps every env in Sauté's budget;
    metrics also go to the sinks of `report_to`.

    ``init_from`` (a run directory; ignored when resuming) starts from that run's policy and
    critics, its observation statistics and its Lagrange multiplier; the optimisers, the return
    scaler, the episode records and the iteration count start afresh, as in a new run."""
    base_id, cost = check_setup(env_id, cost, constrained and relabel is None, s, algo=algo)
    batch = s.num_envs * s.num_steps
    iterations = max(1, total_steps // batch)
    torch.set_num_threads(s.threads)
    if config is None:
        config = {
            "env": env_id,
            "cost": cost,
            "algo": algo,
            "seed": seed,
            "total_env_steps": total_steps,
            "ppo": s,
        }
    run = Run.start(
        run_dir,
        command=command,
        config=config,
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
    collector = Collector(envs, s.norm_obs, s.cost_window, norm_per_step=s.norm_obs_per_step)
    collector.task_reward = saute is not None
    agent = Agent(collector.obs_dim, envs.single_action_space, s.hidden, s.init)
    learner = make_learner(agent, s)
    scaler = ReturnScaler(s.num_envs, s.gamma)
    lagrange = (
        make_multiplier(s) if isinstance(s, LagrangeSettings) else LagrangeMultiplier("projected", init=0.0)
    )
    lagrangian = learner.lagrangian
    run_cost = np.zeros(s.num_envs)  # (N,) running episode cost of the costs trained on
    cost_window: deque[float] = deque(maxlen=s.cost_window)  # J_c is their mean over these episodes
    models: dict[str, Stateful] = {"agent": agent}
    states = {
        "obs_norm": NumpyState(collector.obs_norm),
        "scaler": NumpyState(scaler),
        **(extra_states or {}),
    }
    start, extra = run.restore_checked(
        models,
        learner.optimizers,
        states=states,
        schedule_steps=iterations,
        explicit=False,
        constant=not learner.scheduled,
        length_option=None,
        saved_as="iterations",
    )
    global_step = 0
    if run.resume:
        global_step = restore_loop_records(extra, lagrange, rng, collector, cost_window)
    elif init_from is not None:
        state, extra = read_checkpoint(init_from)
        agent.load_state_dict(state["models"]["agent"])
        NumpyState(collector.obs_norm).load_state_dict(state["states"]["obs_norm"])
        lagrange.load_state_dict(extra["lagrange"])

    def checkpoint(iteration: int) -> None:
        extra = {
            **loop_records(lagrange, rng, collector, cost_window, global_step),
            "iterations": iterations,
            "env": env_id,
            "cost": cost,
            "algo": algo,
            "actor": type(agent.actor).__name__,
            "base_env": base_id,
            "hidden": list(s.hidden),
            "norm_obs": s.norm_obs,
            "max_episode_steps": s.max_episode_steps,
            "saute": None if saute is None else dataclasses.asdict(saute),
        }
        run.checkpointer.save(iteration, models, learner.optimizers, extra=extra, states=states)

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
                    scaler.ret[:], run_cost[:] = 0.0, 0.0
                tic = time.perf_counter()
                ro = collector.collect(agent.actor.sample, s.num_steps, agent.values(with_cost=constrained))
                rollout_seconds = time.perf_counter() - tic
                global_step += batch
                rewards, costs = (ro.rewards, ro.costs) if relabel is None else relabel(ro, iteration)
                dones = ro.terminated | ro.truncated
                train_rewards = scaler.scale(rewards, dones) if s.norm_reward else rewards
                if constrained:  # episode costs of what is trained on
                    record_episode_costs(costs, dones, run_cost, cost_window)
                    if lagrangian and cost_window:
                        lagrange.update(mean_recent_cost(cost_window), s.cost_limit)
                tic = time.perf_counter()
                returns = rollout_advantages(
                    ro, train_rewards, costs if constrained else None, s.gamma, s.gae_lambda
                )
                mean_length = float(np.mean(collector.lengths)) if collector.lengths else float(s.num_steps)
                mean_cost = (
                    mean_recent_cost(cost_window) if cost_window else float(np.mean(costs)) * mean_length
                )
                ctx = UpdateContext(
                    lam=lagrange.value if lagrangian else 0.0,
                    mean_cost=mean_cost,
                    mean_length=mean_length,
                    cost_limit=s.cost_limit,
                    progress=iteration / iterations,
                    rng=rng,
                )
                metrics = learner.update(ro, returns, ctx)
                update_seconds = time.perf_counter() - tic
                stats = {f"train/{k}": v for k, v in metrics.items()}
                stats["train/lambda"] = lagrange.value
                if cost_window:
                    stats["train/episode_cost"] = float(np.mean(cost_window))
                if collector.returns:
                    stats["episode/return"] = float(np.mean(collector.returns))
                    stats["episode/cost"] = float(np.mean(collector.costs))
                    stats["episode/length"] = float(np.mean(collector.lengths))
                stats["time/env_steps"] = float(global_step)
                stats["time/steps_per_second"] = (global_step - steps0) / (time.perf_counter() - t0)
                stats["time/rollout_seconds"], stats["time/update_seconds"] = rollout_seconds, update_seconds
                done = iteration + 1
                for split, values in _grouped(
                    {**stats, **(relabel_stats() if relabel_stats else {})}
                ).items():
                    logger.log(done, values, split=split)
                if done == iterations or (save_every and done % save_every == 0):
                    checkpoint(done)
                info = f"return {stats.get('episode/return', float('nan')):.1f}"
                if constrained:
                    info += f" cost {stats.get('episode/cost', float('nan')):.1f}"
                if lagrangian:
                    info += f" lambda {lagrange.value:.3f}"
                logger.advance(done, info)
    finally:
        envs.close()
    stats["global_step"] = global_step
    return stats
