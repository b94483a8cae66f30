"""Trajectory segments for judging: whole episodes recorded with their MuJoCo states, cut into
windows, and the oracle file a scripted annotator reads (`alignloop.loop.control` uses them).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from alignloop.control.clips import segment_states

__all__ = ["append_new_lines", "cut_segments", "record_episodes"]


def record_episodes(
    actor: Any, normalize: Any, env: gym.Env, episodes: int, seed: int, *, deterministic: bool
) -> dict[str, np.ndarray]:
    """Run whole episodes (reset seeds ``seed, seed + 1, ...``) and concatenate their steps:
    obs (T, D) as the env returned them, actions (T, A) as the policy drew them (unclipped, as
    PPO stores them), rewards and costs (T,), qpos (T, nq) and qvel (T, nv) the simulator state
    in which each action was taken, as `segment_states` records it (a navigation task's qpos is
    followed by its layout, so a clip shows the episode's own hazards and goal; (T, 0) for a
    task without MuJoCo), episode (T,) index."""
    box = isinstance(env.action_space, gym.spaces.Box)
    rows: dict[str, list[Any]] = {
        k: [] for k in ("obs", "actions", "rewards", "costs", "qpos", "qvel", "episode")
    }
    mujoco = hasattr(env.unwrapped, "data")
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        done = False
        while not done:
            qpos, qvel = segment_states(env) if mujoco else (np.zeros(0), np.zeros(0))
            rows["qpos"].append(qpos)
            rows["qvel"].append(qvel)
            with torch.inference_mode():
                obs_t = torch.from_numpy(normalize(obs))
                action = (actor.mode(obs_t) if deterministic else actor.sample(obs_t)[0]).numpy()[0]
            env_action = np.clip(action, env.action_space.low, env.action_space.high) if box else action  # type: ignore[attr-defined]
            next_obs, reward, terminated, truncated, info = env.step(env_action)
            rows["obs"].append(np.asarray(obs, dtype=np.float64).reshape(-1))
            rows["actions"].append(np.asarray(action, dtype=np.float32).reshape(-1))
            rows["rewards"].append(float(reward))
            rows["costs"].append(float(info.get("cost", 0.0)))
            rows["episode"].append(episode)
            obs, done = next_obs, terminated or truncated
    return {
        key: np.stack(values) if key in ("obs", "actions", "qpos", "qvel") else np.asarray(values)
        for key, values in rows.items()
    }


def cut_segments(steps: dict[str, np.ndarray], length: int) -> dict[str, np.ndarray]:
    """Consecutive windows of ``length`` steps that lie inside one episode (the remainder of each
    episode is dropped): every per-step array of `record_episodes` becomes (K, H, ...)."""
    starts = []
    for episode in np.unique(steps["episode"]):
        where = np.flatnonzero(steps["episode"] == episode)
        starts += [int(where[0]) + k * length for k in range(len(where) // length)]
    window = np.asarray(starts)[:, None] + np.arange(length)  # (K, H) step indices
    return {key: value[window] for key, value in steps.items() if key != "episode"}


def append_new_lines(path: Path, rows: list[dict[str, Any]]) -> None:
    """Append rows whose "key" the JSONL file lacks; a last line cut short by a crash is dropped."""
    known: set[str] = set()
    if path.exists():
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            data = data[: data.rfind(b"\n") + 1]
            path.write_bytes(data)
        known = {json.loads(line)["key"] for line in data.splitlines() if line.strip()}
    with path.open("a") as f:
        for row in rows:
            if row["key"] not in known:
                f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())
