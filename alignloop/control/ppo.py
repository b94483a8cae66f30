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

Exact resume. The run stack (`alignloop.runstack`) keeps the run folder: run.json,
metrics.jsonl, TensorBoard in tb/ and checkpoints/, written at rollout boundaries every
``save_every`` iterations with the networks, the optimiser, the normalisers, lambda, the
episode records and every random-generator state (torch's and the update's numpy generator).
The simulator state itself is not saved (it is not portable across tasks); instead the envs are
re-seeded and reset at every checkpoint boundary, in the uninterrupted run exactly as in a
resumed one (seeds ``seed + 10007 * iteration + i``). A resumed run is therefore step-for-step
identical to an uninterrupted one with the same seed. The episodes cut by those resets are
treated as truncations (bootstrapped, not counted in the episode statistics).

The rollout, its advantages, the Lagrangian mix and the episode-cost window are the plain
functions of `alignloop.control.rollouts`, which other learners reuse; `ppo_update` (the
minibatch step on given advantages) is PPO's own; `train_policy` wires them to the run stack.
"""

from __future__ import annotations

import json
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import Tensor, nn

from alignloop.checks import output_dir
from alignloop.control.envs import ReturnScaler, make_vec_env, resolve_env
from alignloop.control.rollouts import (
    Agent,
    Collector,
    Rollout,
    RolloutAdvantages,
    lagrangian_mix,
    record_episode_costs,
    rollout_advantages,
)
from alignloop.core.lagrange import LagrangeMultiplier, mean_recent_cost
from alignloop.core.losses import ppo_policy_loss, value_loss
from alignloop.errors import UserError
from alignloop.runstack.checkpoint import Checkpointer, NumpyState, Stateful
from alignloop.runstack.metrics import check_report_to
from alignloop.runstack.options import RunOptions, upgrade_args
from alignloop.runstack.run import Run, check_schedule

MODEL_OPTIONS = ("env", "cost", "algo", "ppo.hidden", "ppo.norm_obs", "ppo.num_envs", "ppo.max_episode_steps")
"""Options that define what a control run trains; a resume must not change them."""


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
    threads: int = 1
    """torch threads (1 is fastest for these small networks)."""


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
    obs = torch.from_numpy(ro.obs.reshape(-1, ro.obs.shape[-1]))  # (B, obs_dim)
    actions = torch.from_numpy(ro.actions.reshape(ro.logprobs.size, *ro.actions.shape[2:]))
    old_logp = torch.from_numpy(ro.logprobs.reshape(-1))
    old_v_r = torch.from_numpy(ro.values_r.reshape(-1))
    old_v_c = torch.from_numpy(ro.values_c.reshape(-1))
    ret_r, ret_c = returns.reward_returns, returns.cost_returns
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


# ------------------------------------------------------------------------ checkpoints
def has_checkpoint(run_dir: Path) -> bool:
    """Whether `run_dir` holds an intact checkpoint (a run `--resume` can continue)."""
    return Checkpointer(run_dir).latest() is not None


LEGACY_CHECKPOINT = "checkpoint.pt"
"""The single checkpoint file control runs wrote before the run stack (read for evaluation and
``init_from``; such a run cannot be resumed)."""


def read_checkpoint(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(state, extra)`` of a control run's newest intact checkpoint: ``state["models"]["agent"]``
    (the actor and critics), ``state["states"]["obs_norm"]`` (tensors) and the rest; ``extra``
    holds the task (``env``, ``cost``, ``hidden``, ``norm_obs``, ``max_episode_steps``), lambda,
    the episode records and the counters. A run folder of an older version (one
    ``checkpoint.pt``) is read too. Raises `UserError` when there is no checkpoint."""
    checkpointer = Checkpointer(run_dir)
    path = checkpointer.latest()
    if path is None and (run_dir / LEGACY_CHECKPOINT).is_file():
        old = torch.load(run_dir / LEGACY_CHECKPOINT, weights_only=True)
        state = {"models": {"agent": old.pop("agent")}, "states": {"obs_norm": old.pop("obs_norm")}}
        return state, old
    if path is None:
        raise UserError(f"{run_dir}: no intact checkpoint; is it a run folder of `alignloop control train`?")
    return checkpointer.read_state(path), checkpointer.read_meta(path)["extra"]


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
    if resume_dir is not None and not has_checkpoint(resume_dir):
        raise ValueError(f"--resume: no checkpoint in {resume_dir}; start the run without --resume")
    return base_id, cost


Relabel = Callable[[Rollout, int], tuple[np.ndarray, np.ndarray]]
"""``relabel(rollout, iteration) -> (rewards, costs)``, both (T, N): what to train on instead
of the rollout's true rewards and costs (preference-based RL passes its learned models here)."""


def _grouped(stats: dict[str, float]) -> dict[str, dict[str, float]]:
    """``{"train/loss": 1}`` -> ``{"train": {"loss": 1}}``: the logger's splits."""
    out: dict[str, dict[str, float]] = {}
    for key, value in stats.items():
        split, _, name = key.partition("/")
        out.setdefault(split, {})[name] = value
    return out


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
        environment steps; returns the last iteration's statistics. The run folder is the run
        stack's: ``run.json`` (`config`, by default these arguments), ``metrics.jsonl``, ``tb/`` and
        ``checkpoints/`` every ``save_every`` iterations (the envs are re-seeded there; 0: at the end
        only; metrics also to the sinks of `report_to`). `relabel_stats` gives further statistics (``"split/name": value``) to log each
    iteration; `extra_states` are further objects (a ``relabel`` hook's models) checkpointed and resumed
    with the policy.

        ``init_from`` (a run directory; ignored when resuming) starts from that run's policy and
        critics, its observation statistics and its Lagrange multiplier; the optimiser, the return
        scaler, the episode records and the iteration count start afresh, as in a new run."""
    base_id, cost = check_setup(env_id, cost, lagrangian and relabel is None, s)
    batch = s.num_envs * s.num_steps
    iterations = max(1, total_steps // batch)
    torch.set_num_threads(s.threads)
    algo = "ppo-lag" if lagrangian else "ppo"
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
        must_match=MODEL_OPTIONS,
    )

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
    models, optimizers = {"agent": agent}, {"opt": optimizer}
    states = {
        "obs_norm": NumpyState(collector.obs_norm),
        "scaler": NumpyState(scaler),
        **(extra_states or {}),
    }
    start, extra = run.restore(models, optimizers, states=states)
    global_step = 0
    if run.resume:
        check_schedule(run_dir, extra["iterations"], iterations, False, not s.anneal_lr, length_option=None)
        lagrange.load_state_dict(extra["lagrange"])
        rng.bit_generator.state = extra["numpy_rng"]
        collector.returns.extend(extra["returns"])
        collector.costs.extend(extra["costs"])
        collector.lengths.extend(extra["lengths"])
        collector.num_episodes = extra["num_episodes"]
        cost_window.extend(extra["cost_window"])
        global_step = extra["global_step"]
    elif init_from is not None:
        state, extra = read_checkpoint(init_from)
        agent.load_state_dict(state["models"]["agent"])
        NumpyState(collector.obs_norm).load_state_dict(state["states"]["obs_norm"])
        lagrange.load_state_dict(extra["lagrange"])

    def checkpoint(iteration: int) -> None:
        extra = {
            "lagrange": lagrange.state_dict(),
            "numpy_rng": rng.bit_generator.state,
            "returns": list(collector.returns),
            "costs": list(collector.costs),
            "lengths": list(collector.lengths),
            "num_episodes": collector.num_episodes,
            "cost_window": list(cost_window),
            "global_step": global_step,
            "iterations": iterations,
            "env": env_id,
            "cost": cost,
            "base_env": base_id,
            "hidden": list(s.hidden),
            "norm_obs": s.norm_obs,
            "max_episode_steps": s.max_episode_steps,
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
                    scaler.ret[:], run_cost[:] = 0.0, 0.0
                if s.anneal_lr:
                    optimizer.param_groups[0]["lr"] = s.lr * (1.0 - iteration / iterations)
                tic = time.perf_counter()
                ro = collector.collect(agent.actor.sample, s.num_steps, agent.values(with_cost=lagrangian))
                rollout_seconds = time.perf_counter() - tic
                global_step += batch
                rewards, costs = (ro.rewards, ro.costs) if relabel is None else relabel(ro, iteration)
                dones = ro.terminated | ro.truncated
                train_rewards = scaler.scale(rewards, dones) if s.norm_reward else rewards
                if lagrangian:  # episode costs of what is trained on
                    record_episode_costs(costs, dones, run_cost, cost_window)
                    if cost_window:
                        lagrange.update(mean_recent_cost(cost_window), s.cost_limit)
                tic = time.perf_counter()
                returns = rollout_advantages(
                    ro, train_rewards, costs if lagrangian else None, s.gamma, s.gae_lambda
                )
                metrics = ppo_update(
                    agent, optimizer, ro, lagrangian_mix(returns, lagrange.value), returns, s, rng
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
                if lagrangian:
                    info += f" cost {stats.get('episode/cost', float('nan')):.1f} lambda {lagrange.value:.3f}"
                logger.advance(done, info)
    finally:
        envs.close()
    stats["global_step"] = global_step
    return stats


def upgrade_output_args(args: list[str], prog: str) -> list[str]:
    """The deprecated ``--out DIR`` / ``--name NAME`` as ``--output-dir DIR/NAME`` (each part
    defaulting to its old default), with a note on stderr."""
    out, name, kept = None, None, []
    i = 0
    while i < len(args):
        flag, _, inline = args[i].partition("=")
        if flag in ("--out", "--name"):
            value = inline if inline else (args[i + 1] if i + 1 < len(args) else "")
            i += 1 if inline else 2
            if flag == "--out":
                out = value
            else:
                name = value
            continue
        kept.append(args[i])
        i += 1
    if out is None and name is None:
        return args
    print(f"{prog}: --out and --name are deprecated; use --output-dir DIR/NAME", file=sys.stderr)
    folder = Path(out or "runs/control") / (name or "{env}-{algo}-s{seed}")
    return [*kept, "--output-dir", str(folder)]


@dataclass(frozen=True)
class TrainConfig(RunOptions):
    """PPO or PPO-Lagrangian on a task's true reward and cost."""

    output_dir: Path = Path("runs/control/{env}-{algo}-s{seed}")
    """Run folder ({env}, {algo} and {seed} are filled in): run.json, metrics.jsonl, tb/ and checkpoints/."""
    env: str = "Hopper-v5"
    """Gymnasium id, or a safe task such as SafeHalfCheetahVelocity-v5."""
    algo: Literal["ppo", "ppo-lag"] = "ppo"
    """ppo: reward only; ppo-lag: PPO-Lagrangian, mean episode cost held under --ppo.cost-limit."""
    cost: Literal["velocity"] | None = None
    """Safety cost added to the task (Safe ids imply velocity)."""
    total_env_steps: int = 1_000_000
    """Environment steps (rounded down to whole rollouts of num_envs * num_steps)."""
    save_every: int = 10
    """Checkpoint every this many iterations, and at the end (0 = only at the end); the envs are
    re-seeded at each checkpoint, so it is part of what a seed's run is."""
    ppo: PPOSettings = PPOSettings()

    RENAMED: ClassVar[dict[str, str]] = {
        "--total-steps": "--total-env-steps",
        "--ppo.checkpoint-every": "--save-every",
    }
    """Deprecated spellings of options (they still work, with a note)."""

    @classmethod
    def upgrade_args(cls, args: list[str], prog: str) -> list[str]:
        """The command line with the deprecated spellings replaced."""
        return upgrade_output_args(upgrade_args(args, cls.RENAMED, prog), prog)

    def run_dir(self) -> Path:
        """The output folder with {env}, {algo} and {seed} filled in."""
        return fill_run_dir(self.output_dir, env=self.env.replace("/", "_"), algo=self.algo, seed=self.seed)


def fill_run_dir(template: Path, **values: Any) -> Path:
    """A run folder template with its ``{name}`` fields filled in (a folder without fields is kept)."""
    try:
        return Path(str(template).format(**values))
    except (KeyError, IndexError, ValueError) as exc:
        raise UserError(f"--output-dir {template}: unknown field {exc}; use {', '.join(values)}") from exc


def train(cfg: TrainConfig) -> int:
    """`alignloop control train`."""
    run_dir = cfg.run_dir()
    try:
        check_setup(cfg.env, cfg.cost, cfg.algo == "ppo-lag", cfg.ppo, run_dir if cfg.resume else None)
    except ValueError as exc:
        print(f"alignloop control train: {exc}", file=sys.stderr)
        return 2
    output_dir(run_dir, "--output-dir")
    check_report_to(cfg.report_to)
    stats = train_policy(
        run_dir,
        cfg.env,
        cfg.cost,
        cfg.algo == "ppo-lag",
        cfg.total_env_steps,
        cfg.seed,
        cfg.ppo,
        save_every=cfg.save_every,
        keep_checkpoints=cfg.keep_checkpoints,
        resume=cfg.resume,
        progress=cfg.progress,
        config=cfg,
        report_to=cfg.report_to,
    )
    shown = {
        k: round(v, 3) for k, v in stats.items() if k.startswith(("episode/", "time/")) or k == "train/lambda"
    }
    print(json.dumps({"run_dir": str(run_dir), **shown}))
    return 0
