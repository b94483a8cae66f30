"""`alignloop control train`: every control learner behind one command.

`ALGORITHMS` is the one table of them: what each is, which settings group of `TrainConfig` it
reads (``--algo cpo`` reads ``--cpo.*``; each group's defaults are that algorithm's reference
settings), whether it needs a task with a cost and whether it handles discrete actions, and the
function that trains it. ``--saute`` wraps the task in Sauté's safety budget (for any learner;
the budget is the group's ``cost-limit``). Every option is checked before anything is built or
written: an unknown algorithm names the closest one, a constrained algorithm on a task without
a cost, a discrete task for a learner without discrete actions, options of another algorithm's
group and Sauté without a cost or a budget are refused with the fix.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, Literal

import gymnasium as gym

from alignloop.checks import output_dir
from alignloop.config import ConfigError
from alignloop.control.cpo import CPOSettings, cpo_learner
from alignloop.control.cup import CUPSettings, cup_learner
from alignloop.control.envs import make_env
from alignloop.control.focops import FOCOPSSettings, focops_learner
from alignloop.control.onpolicy import (
    SetupError,
    check_setup,
    check_task,
    has_checkpoint,
    model_options,
    train_on_policy,
)
from alignloop.control.pcpo import PCPOSettings, pcpo_learner
from alignloop.control.ppo import PPO_LAG_DEFAULTS, PPOSettings, ppo_learner
from alignloop.control.rollouts import LagrangeSettings, OnPolicySettings
from alignloop.control.sac import SACSettings, check_sac, train_sac
from alignloop.control.saute import SauteOptions
from alignloop.errors import UserError
from alignloop.runstack.metrics import check_report_to
from alignloop.runstack.options import RunOptions, upgrade_args

__all__ = [
    "ALGORITHMS",
    "Algorithm",
    "TrainConfig",
    "check_config",
    "fill_run_dir",
    "train",
    "upgrade_output_args",
]


@dataclass(frozen=True)
class Algorithm:
    """One entry of `ALGORITHMS`."""

    help: str
    group: str
    """The `TrainConfig` field holding its settings."""
    constrained: bool
    """Needs a task with a cost (``info["cost"]``)."""
    discrete: bool
    """Handles Discrete action spaces."""
    train: Callable[..., dict[str, float]]
    """``train(run_dir, env, cost, total_steps, seed, settings, *, algo, save_every,
    keep_checkpoints, resume, progress, config, must_match, saute, report_to) -> statistics``."""


def _on_policy(make_learner: Callable[..., Any], constrained: bool) -> Callable[..., dict[str, float]]:
    return partial(train_on_policy, make_learner=make_learner, constrained=constrained)


ALGORITHMS: dict[str, Algorithm] = {
    "ppo": Algorithm(
        "PPO (Schulman et al. 2017) on the reward alone",
        "ppo",
        constrained=False,
        discrete=True,
        train=_on_policy(partial(ppo_learner, lagrangian=False), False),
    ),
    "ppo-lag": Algorithm(
        "PPO-Lagrangian (Ray et al. 2019); --lagrange pid: PID Lagrangian (Stooke et al. 2020)",
        "ppo_lag",
        constrained=True,
        discrete=True,
        train=_on_policy(partial(ppo_learner, lagrangian=True), True),
    ),
    "cpo": Algorithm(
        "Constrained Policy Optimization (Achiam et al. 2017)",
        "cpo",
        constrained=True,
        discrete=True,
        train=_on_policy(cpo_learner, True),
    ),
    "pcpo": Algorithm(
        "Projection-Based CPO (Yang et al. 2020)",
        "pcpo",
        constrained=True,
        discrete=True,
        train=_on_policy(pcpo_learner, True),
    ),
    "focops": Algorithm(
        "First Order Constrained Optimization in Policy Space (Zhang et al. 2020)",
        "focops",
        constrained=True,
        discrete=True,
        train=_on_policy(focops_learner, True),
    ),
    "cup": Algorithm(
        "Constrained Update Projection (Yang et al. 2022)",
        "cup",
        constrained=True,
        discrete=True,
        train=_on_policy(cup_learner, True),
    ),
    "sac": Algorithm(
        "Soft Actor-Critic (Haarnoja et al. 2018), off-policy, continuous actions",
        "sac",
        constrained=False,
        discrete=False,
        train=partial(train_sac, lagrangian=False),
    ),
    "sac-lag": Algorithm(
        "SAC-Lagrangian: SAC with a cost critic and a Lagrange multiplier",
        "sac_lag",
        constrained=True,
        discrete=False,
        train=partial(train_sac, lagrangian=True),
    ),
}
"""Every algorithm of `alignloop control train --algo`, in one place."""


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


def _flag_value(args: list[str], flag: str) -> str | None:
    """The value of the last ``flag V`` or ``flag=V`` in `args`."""
    value = None
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(flag + "="):
            value = arg.partition("=")[2]
    return value


def lagrange_shorthand(args: list[str]) -> list[str]:
    """``--lagrange RULE`` as ``--{group}.lagrange-method RULE`` of the chosen ``--algo``."""
    rule = _flag_value(args, "--lagrange")
    if rule is None:
        return args
    name = _flag_value(args, "--algo") or "ppo"
    algo = ALGORITHMS.get(name)
    if algo is None:
        return args  # the unknown --algo is reported with the other checks
    lagrangian = [
        n
        for n, a in ALGORITHMS.items()
        if a.constrained and isinstance(_GROUP_DEFAULTS[a.group], LagrangeSettings)
    ]
    if name not in lagrangian:
        raise ConfigError(
            f"--lagrange: --algo {name} has no Lagrange multiplier; it is an option of {', '.join(lagrangian)}"
        )
    out, skip = [], False
    for i, arg in enumerate(args):
        if skip:
            skip = False
            continue
        if arg == "--lagrange" and i + 1 < len(args):
            out += [f"--{algo.group.replace('_', '-')}.lagrange-method", args[i + 1]]
            skip = True
        elif arg.startswith("--lagrange="):
            out += [f"--{algo.group.replace('_', '-')}.lagrange-method", arg.partition("=")[2]]
        else:
            out.append(arg)
    return out


@dataclass(frozen=True)
class TrainConfig(RunOptions):
    """Train a control policy: PPO, PPO-Lagrangian, CPO, PCPO, FOCOPS, CUP, SAC or SAC-Lagrangian."""

    output_dir: Path = Path("runs/control/{env}-{algo}-s{seed}")
    """Run folder ({env}, {algo} and {seed} are filled in): run.json, metrics.jsonl, tb/ and checkpoints/."""
    env: str = "Hopper-v5"
    """Gymnasium id, or a safe task such as SafeHalfCheetahVelocity-v5 (or SafetyPointGoal1-v0 where
    the navigation tasks are registered)."""
    algo: str = "ppo"
    """ppo, ppo-lag, cpo, pcpo, focops, cup, sac or sac-lag; each reads its own settings group
    (--algo cpo: --cpo.*), whose defaults are its reference settings. All but ppo and sac hold the
    mean episode cost under the group's cost-limit and need a task with a cost."""
    cost: Literal["velocity"] | None = None
    """Safety cost added to the task (Safe ids imply velocity)."""
    total_env_steps: int = 1_000_000
    """Environment steps (rounded down to whole iterations)."""
    save_every: int = 10
    """Checkpoint every this many iterations, and at the end (0 = only at the end); the envs are
    re-seeded at each checkpoint, so it is part of what a seed's run is."""
    saute: bool = False
    """Sauté RL (Sootla et al. 2022): the remaining safety budget (the group's cost-limit) joins
    the observation and the reward becomes --saute-unsafe-reward once it is spent."""
    saute_gamma: float = 0.999
    """Sauté: the discount of the budget (OmniSafe's saute_gamma, 0.999)."""
    saute_unsafe_reward: float = -1.0
    """Sauté: the reward of every step once the budget is spent (OmniSafe's unsafe_reward, -1)."""
    ppo: PPOSettings = PPOSettings()
    """--algo ppo (defaults: Stable-Baselines3's PPO)."""
    ppo_lag: PPOSettings = PPO_LAG_DEFAULTS
    """--algo ppo-lag (defaults: OmniSafe 0.5.0's PPOLag on the navigation tasks: 20000 steps a
    rollout, 40 epochs of 64, target KL 0.02, gradient clip 40, linear rate decay, lambda from
    0.001; cost limit 25)."""
    cpo: CPOSettings = CPOSettings()
    """--algo cpo (defaults: OmniSafe 0.5.0's CPO)."""
    pcpo: PCPOSettings = PCPOSettings()
    """--algo pcpo (defaults: OmniSafe 0.5.0's PCPO)."""
    focops: FOCOPSSettings = FOCOPSSettings()
    """--algo focops (defaults: the paper's constants on OmniSafe 0.5.0's FOCOPS)."""
    cup: CUPSettings = CUPSettings()
    """--algo cup (defaults: OmniSafe 0.5.0's CUP)."""
    sac: SACSettings = SACSettings()
    """--algo sac (defaults: the SAC paper's, with a learned temperature)."""
    sac_lag: SACSettings = SACSettings()
    """--algo sac-lag (defaults: SAC's, with the Lagrangian's)."""

    RENAMED: ClassVar[dict[str, str]] = {
        "--total-steps": "--total-env-steps",
        "--ppo.checkpoint-every": "--save-every",
    }
    """Deprecated spellings of options (they still work, with a note)."""

    @classmethod
    def upgrade_args(cls, args: list[str], prog: str) -> list[str]:
        """The command line with the deprecated spellings replaced and ``--lagrange`` spelled out."""
        return lagrange_shorthand(upgrade_output_args(upgrade_args(args, cls.RENAMED, prog), prog))

    def run_dir(self) -> Path:
        """The output folder with {env}, {algo} and {seed} filled in."""
        algo = f"{self.algo}-saute" if self.saute else self.algo
        return fill_run_dir(self.output_dir, env=self.env.replace("/", "_"), algo=algo, seed=self.seed)


_GROUP_DEFAULTS: dict[str, Any] = {
    f.name: f.default
    for f in dataclasses.fields(TrainConfig)
    if f.name in {a.group for a in ALGORITHMS.values()}
}
"""Each settings group's defaults (what `check_config` compares unused groups against)."""


def fill_run_dir(template: Path, **values: Any) -> Path:
    """A run folder template with its ``{name}`` fields filled in (a folder without fields is kept)."""
    try:
        return Path(str(template).format(**values))
    except (KeyError, IndexError, ValueError) as exc:
        raise UserError(f"--output-dir {template}: unknown field {exc}; use {', '.join(values)}") from exc


def _flag(group: str) -> str:
    return group.replace("_", "-")


def check_config(cfg: TrainConfig, run_dir: Path) -> tuple[Algorithm, Any, SauteOptions | None]:
    """Check every option before anything is built; returns the algorithm, its settings and the
    Sauté options (None without). Raises `UserError` naming the option and the fix."""
    algo = ALGORITHMS.get(cfg.algo)
    if algo is None:
        close = difflib.get_close_matches(cfg.algo, list(ALGORITHMS), n=1, cutoff=0.4)
        hint = f"did you mean {close[0]}? " if close else ""
        raise UserError(f"--algo {cfg.algo!r} is unknown; {hint}choose from {', '.join(ALGORITHMS)}")
    for group, default in _GROUP_DEFAULTS.items():
        current = getattr(cfg, group)
        if group != algo.group and current != default:
            changed = [
                f.name
                for f in dataclasses.fields(current)
                if getattr(current, f.name) != getattr(default, f.name)
            ]
            flags = ", ".join(f"--{_flag(group)}.{_flag(name)}" for name in changed)
            own = {f.name for f in dataclasses.fields(getattr(cfg, algo.group))}
            fix = (
                f"spell them --{_flag(algo.group)}.{_flag(changed[0])} ..."
                if changed[0] in own
                else f"--algo {cfg.algo} has no {_flag(changed[0])} option (--help lists its options)"
            )
            raise UserError(
                f"{flags}: options of --algo {group.replace('_', '-')}, but --algo {cfg.algo} reads "
                f"--{_flag(algo.group)}.*; {fix}"
            )
    s = getattr(cfg, algo.group)
    flag, resume_dir = _flag(algo.group), run_dir if cfg.resume else None
    if isinstance(s, OnPolicySettings):
        _, cost = check_setup(cfg.env, cfg.cost, algo.constrained, s, resume_dir, algo=cfg.algo, group=flag)
    else:
        check_sac(s, flag)
        _, cost = check_task(cfg.env, cfg.cost, algo.constrained, cfg.algo)
        if resume_dir is not None and not has_checkpoint(resume_dir):
            raise SetupError(f"--resume: no checkpoint in {resume_dir}; start the run without --resume")
    probe = make_env(cfg.env, cfg.cost, max_episode_steps=s.max_episode_steps)
    action_space, obs_space = probe.action_space, probe.observation_space
    horizon = probe.spec.max_episode_steps if probe.spec is not None else None
    probe.close()
    if isinstance(action_space, gym.spaces.Discrete) and not algo.discrete:
        able = ", ".join(n for n, a in ALGORITHMS.items() if a.discrete)
        raise UserError(
            f"--algo {cfg.algo} needs continuous (Box) actions and {cfg.env} has {action_space}; "
            f"for discrete actions use {able}"
        )
    if not cfg.saute:
        return algo, s, None
    if cost is None:
        raise UserError(
            f"--saute needs a task with a cost to budget, and {cfg.env} has none: pass --cost velocity or a Safe task"
        )
    if not s.cost_limit > 0:
        raise UserError(f"--saute needs a safety budget > 0: --{flag}.cost-limit is {s.cost_limit}; raise it")
    if not 0 < cfg.saute_gamma <= 1:
        raise UserError(f"--saute-gamma must be in (0, 1], got {cfg.saute_gamma}")
    if horizon is None:
        raise UserError(
            f"--saute spreads its budget over an episode and {cfg.env} has no time limit: pass --{flag}.max-episode-steps"
        )
    if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
        raise UserError(f"--saute needs flat Box observations; {cfg.env} has {obs_space}")
    return algo, s, SauteOptions(s.cost_limit, cfg.saute_gamma, cfg.saute_unsafe_reward, int(horizon))


def train(cfg: TrainConfig) -> int:
    """`alignloop control train`."""
    run_dir = cfg.run_dir()
    algo, settings, saute = check_config(cfg, run_dir)
    output_dir(run_dir, "--output-dir")
    check_report_to(cfg.report_to)
    stats = algo.train(
        run_dir,
        cfg.env,
        cfg.cost,
        cfg.total_env_steps,
        cfg.seed,
        settings,
        algo=cfg.algo,
        save_every=cfg.save_every,
        keep_checkpoints=cfg.keep_checkpoints,
        resume=cfg.resume,
        progress=cfg.progress,
        config=cfg,
        must_match=model_options(algo.group),
        saute=saute,
        report_to=cfg.report_to,
    )
    shown = {
        k: round(v, 3) for k, v in stats.items() if k.startswith(("episode/", "time/")) or k == "train/lambda"
    }
    print(json.dumps({"run_dir": str(run_dir), **shown}))
    return 0
