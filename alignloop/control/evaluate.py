"""`alignloop control eval RUN_DIR`: mean return and cost of a trained policy, and a video.

The policy is rebuilt from the run's newest intact checkpoint (actor weights, hidden sizes, the
observation statistics it was trained with, the task and its cost). Episodes are seeded
``seed, seed + 1, ...``. MuJoCo renders offscreen; set ``MUJOCO_GL=egl`` on a machine without a
display (done here when unset).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import tyro

from alignloop.checks import output_dir
from alignloop.errors import UserError

__all__ = ["EvalConfig", "evaluate_policy", "load_policy", "make_task", "run"]


@dataclass(frozen=True)
class EvalConfig:
    """Evaluate a control policy trained by `alignloop control train` or `pbrl`."""

    run_dir: Annotated[Path, tyro.conf.Positional] = Path("runs/control/latest")
    """The run folder (holds checkpoints/)."""
    episodes: int = 10
    """Episodes to average over."""
    seed: int = 10_000
    deterministic: bool = True
    """Act with the policy's mean (or most likely) action instead of sampling."""
    video: Literal["gif", "mp4", "none"] = "gif"
    """Render the first episode to RUN_DIR/eval.gif or eval.mp4 (mp4 needs imageio-ffmpeg)."""
    video_steps: int = 300
    """Frames rendered at most."""
    fps: int = 30


def make_task(extra: dict[str, Any], render_mode: str | None = None) -> Any:
    """The task a checkpoint's ``extra`` names, with its Sauté budget when it was trained with one."""
    from alignloop.control.envs import make_env
    from alignloop.control.saute import SauteOptions, SauteWrapper

    env = make_env(
        extra["env"], extra["cost"], max_episode_steps=extra["max_episode_steps"], render_mode=render_mode
    )
    saute = extra.get("saute")  # absent from checkpoints older than Sauté
    return env if saute is None else SauteWrapper(env, SauteOptions(**saute))


def load_policy(run_dir: Path) -> tuple[Any, Any, dict[str, Any]]:
    """Rebuild ``(actor, obs_normalize, checkpoint extra)`` from a run folder's newest intact
    checkpoint (the extra holds the task: ``env``, ``cost``, ``hidden``, ``norm_obs``, ``actor``,
    ``saute``, ...)."""
    from alignloop.control.envs import ObsNormalizer
    from alignloop.control.nets import ACTORS
    from alignloop.control.onpolicy import read_checkpoint
    from alignloop.runstack.checkpoint import NumpyState

    state, extra = read_checkpoint(run_dir)
    env = make_task(extra)
    obs_dim = int(np.prod(env.observation_space.shape))  # type: ignore[arg-type]
    actor = ACTORS[extra.get("actor", "Actor")](obs_dim, env.action_space, tuple(extra["hidden"]))
    agent = state["models"]["agent"]
    actor.load_state_dict({k.removeprefix("actor."): v for k, v in agent.items() if k.startswith("actor.")})
    env.close()
    norm = ObsNormalizer((obs_dim,))
    NumpyState(norm).load_state_dict(state["states"]["obs_norm"])

    def normalize(obs: np.ndarray) -> np.ndarray:
        flat = np.asarray(obs, dtype=np.float64).reshape(1, -1)
        return norm.normalize(flat) if extra["norm_obs"] else flat.astype(np.float32)

    return actor, normalize, extra


def evaluate_policy(
    run_dir: Path, episodes: int, seed: int, *, deterministic: bool = True, render_steps: int = 0
) -> tuple[list[float], list[float], list[np.ndarray]]:
    """Run ``episodes`` episodes; returns ``(returns, costs, frames of the first episode)``."""
    import gymnasium as gym
    import torch

    actor, normalize, state = load_policy(run_dir)
    torch.manual_seed(seed)
    returns: list[float] = []
    costs: list[float] = []
    frames: list[np.ndarray] = []
    for episode in range(episodes):
        render = episode == 0 and render_steps > 0
        env = make_task(state, render_mode="rgb_array" if render else None)
        obs, _ = env.reset(seed=seed + episode)
        total_r = total_c = 0.0
        done = False
        while not done:
            with torch.inference_mode():
                obs_t = torch.from_numpy(normalize(obs))
                action = actor.mode(obs_t) if deterministic else actor.sample(obs_t)[0]
            act = action.numpy()[0]
            if isinstance(env.action_space, gym.spaces.Box):
                act = np.clip(act, env.action_space.low, env.action_space.high)
            obs, reward, terminated, truncated, info = env.step(act)
            total_r += float(info.get("task_reward", reward))  # a Sauté task's own reward
            total_c += float(info.get("cost", 0.0))
            done = terminated or truncated
            if render and len(frames) < render_steps:
                frames.append(np.asarray(env.render()))
        env.close()
        returns.append(total_r)
        costs.append(total_c)
    return returns, costs, frames


def run(cfg: EvalConfig) -> int:
    """`alignloop control eval`: prints and writes RUN_DIR/eval.json, renders the video."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    if cfg.episodes < 1:
        raise UserError(f"--episodes must be >= 1, got {cfg.episodes}")
    if cfg.video == "mp4":
        try:
            import imageio_ffmpeg  # noqa: F401
        except ImportError as exc:
            raise UserError("--video mp4 needs the imageio-ffmpeg package; use --video gif") from exc
    if cfg.run_dir.is_dir():
        output_dir(cfg.run_dir, "RUN_DIR")  # eval.json and the video are written there
    render_steps = 0 if cfg.video == "none" else cfg.video_steps
    returns, costs, frames = evaluate_policy(
        cfg.run_dir, cfg.episodes, cfg.seed, deterministic=cfg.deterministic, render_steps=render_steps
    )
    result: dict[str, Any] = {
        "episodes": cfg.episodes,
        "return_mean": float(np.mean(returns)),
        "return_std": float(np.std(returns)),
        "cost_mean": float(np.mean(costs)),
        "cost_std": float(np.std(costs)),
        "returns": returns,
        "costs": costs,
    }
    if frames:
        import imageio.v3 as iio

        video = cfg.run_dir / f"eval.{cfg.video}"
        if cfg.video == "gif":
            iio.imwrite(video, np.stack(frames), duration=1000 / cfg.fps, loop=0)
        else:
            iio.imwrite(video, np.stack(frames), fps=cfg.fps)
        result["video"] = str(video)
    (cfg.run_dir / "eval.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k not in ("returns", "costs")}))
    return 0
