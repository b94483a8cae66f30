"""Trajectory segments render offscreen (EGL) into looping GIFs, the same bytes every time."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from PIL import Image

from alignloop.control.clips import ClipError, render_clip, segment_states


def _rollout(steps: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """qpos (T, 9) and qvel (T, 9) of HalfCheetah under random actions."""
    env = gym.make("HalfCheetah-v5")
    env.reset(seed=seed)
    env.action_space.seed(seed)
    qpos, qvel = [], []
    for _ in range(steps):
        env.step(env.action_space.sample())
        q, v = segment_states(env)
        qpos.append(q)
        qvel.append(v)
    env.close()
    return np.stack(qpos), np.stack(qvel)


def _frames(path: Path) -> list[np.ndarray]:
    with Image.open(path) as gif:
        assert gif.format == "GIF"
        assert gif.info["loop"] == 0  # loops forever
        assert gif.info["duration"] == 40  # 25 fps
        frames = []
        for i in range(gif.n_frames):
            gif.seek(i)
            frames.append(np.asarray(gif.convert("RGB")))
    return frames


def test_clip_of_a_random_segment(tmp_path: Path) -> None:
    qpos, qvel = _rollout(20, seed=3)
    assert qpos.shape == (20, 9) and qvel.shape == (20, 9)
    path = render_clip(
        "SafeHalfCheetahVelocity-v5", qpos, qvel, tmp_path / "a.gif", width=96, height=64, label="A"
    )
    frames = _frames(path)
    assert len(frames) == 20
    assert frames[0].shape == (64, 96, 3)
    changed = sum(not np.array_equal(frames[i], frames[i + 1]) for i in range(19))
    assert changed >= 15, changed  # the robot moves: consecutive frames differ
    corner = frames[0][:8, :8].astype(int)
    assert corner.mean() < 60  # the label's dark box
    # deterministic: the same states give the same bytes (from the process's cached env)
    again = render_clip("HalfCheetah-v5", qpos, qvel, tmp_path / "b.gif", width=96, height=64, label="A")
    assert again.read_bytes() == path.read_bytes()


def test_clear_errors(tmp_path: Path) -> None:
    qpos, qvel = _rollout(2, seed=0)
    with pytest.raises(ClipError, match=r"qpos: HalfCheetah-v5 needs shape \(T, 9\), got \(2, 8\)"):
        render_clip("HalfCheetah-v5", qpos[:, :8], qvel, tmp_path / "x.gif", width=32, height=32)
    with pytest.raises(ClipError, match=r"qvel: HalfCheetah-v5 needs shape \(T, 9\), got \(9,\)"):
        render_clip("HalfCheetah-v5", qpos, qvel[0], tmp_path / "x.gif", width=32, height=32)
    with pytest.raises(ClipError, match="qpos has 2 steps but qvel has 1"):
        render_clip("HalfCheetah-v5", qpos, qvel[:1], tmp_path / "x.gif", width=32, height=32)
    with pytest.raises(ClipError, match="unknown env id 'HalfCheeta-v5'; did you mean HalfCheetah-v5"):
        render_clip("HalfCheeta-v5", qpos, qvel, tmp_path / "x.gif")
    with pytest.raises(ClipError, match="not a MuJoCo task"):
        render_clip("SafeSliderVelocity-v0", qpos, qvel, tmp_path / "x.gif")
    assert not (tmp_path / "x.gif").exists()


def test_frame_strips_hold_every_frame_in_rows_of_ten(tmp_path: Path) -> None:
    from PIL import Image

    from alignloop.control.clips import render_strip
    from alignloop.feedback.schema import STRIP_COLUMNS

    env = gym.make("HalfCheetah-v5")
    env.reset(seed=0)
    states = []
    for _ in range(12):
        env.step(env.action_space.sample())
        states.append(segment_states(env))
    env.close()
    qpos, qvel = (np.stack(x) for x in zip(*states, strict=True))
    path = render_strip("HalfCheetah-v5", qpos, qvel, tmp_path / "s.png", width=32, height=24)
    with Image.open(path) as strip:
        assert strip.size == (STRIP_COLUMNS * 32, 2 * 24)  # 12 frames: a row of 10 and a row of 2
        frames = np.asarray(strip.convert("RGB"))
    assert not np.array_equal(frames[:24, :32], frames[:24, 32:64])  # frames differ
    assert not frames[24:, 64:].any()  # the rest of the last row is empty
