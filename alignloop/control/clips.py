"""Render trajectory segments offscreen into short looping GIF clips, or frame strips, for the labelling page.

A segment is a sequence of MuJoCo states (``qpos`` and ``qvel`` per step), recorded while the
policy ran (`segment_states` copies them out of an env). `render_clip` puts each state into
one offscreen env (``env.unwrapped.set_state``), renders a frame and writes an animated GIF
that loops forever, so the browser plays it without controls and without ffmpeg; `render_strip`
writes the same frames as one PNG grid, which the labelling page plays on a canvas and lets an
annotator pause and step (to mark the frame where a clip becomes unsafe). Rendering does not
step the physics: the same states always give the same bytes.

An env whose scene is more than its qpos defines ``get_state()`` and ``state_size`` (the
navigation tasks: their qpos is followed by the layout of the objects that have no joints);
`segment_states` then records that state, so a clip shows the episode's own hazards and goal.

    qpos, qvel = zip(*(segment_states(env) for _ in steps))   # while rolling out
    render_clip("SafeHalfCheetahVelocity-v5", np.stack(qpos), np.stack(qvel), Path("r1-0003-a.gif"))

MuJoCo renders with EGL (no display needed): ``MUJOCO_GL=egl`` is set when unset, which
Gymnasium reads when it makes the offscreen renderer. One env per (task, width, height) is kept for the process, so
rendering a round's clips builds it once.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ClipError", "render_clip", "render_strip", "segment_states", "write_strip"]

TRACKING_CAMERA = "track"
"""The camera that follows the robot in Gymnasium's MuJoCo models (used when the model has it)."""

os.environ.setdefault("MUJOCO_GL", "egl")

_ENVS: dict[tuple[str, int, int], Any] = {}


class ClipError(ValueError):
    """A clip that cannot be rendered: unknown task, a task without MuJoCo state, wrong shapes."""


def segment_states(env: Any) -> tuple[np.ndarray, np.ndarray]:
    """Copies of the current (qpos, qvel) of a MuJoCo env (any wrapper around one); for an env
    with ``get_state`` (the navigation tasks), the state it returns."""
    base = env.unwrapped
    if hasattr(base, "get_state"):
        qpos, qvel = base.get_state()
        return np.array(qpos, dtype=np.float64), np.array(qvel, dtype=np.float64)
    return np.array(base.data.qpos, dtype=np.float64), np.array(base.data.qvel, dtype=np.float64)


def _state_size(env: Any) -> tuple[int, int]:
    """Sizes of the (qpos, qvel) that `segment_states` records for this env."""
    base = env.unwrapped
    if hasattr(base, "state_size"):
        return tuple(base.state_size)  # type: ignore[return-value]
    return int(base.model.nq), int(base.model.nv)


def _env(env_id: str, width: int, height: int) -> Any:
    """The process's offscreen rgb_array env for the task (alignloop's Safe* ids name their robot)."""
    import gymnasium as gym

    from alignloop.control.envs import EnvSpecError, quiet_mujoco_warnings, resolve_env

    try:
        base_id, _, _ = resolve_env(env_id)
    except EnvSpecError as exc:
        raise ClipError(str(exc)) from exc
    cached = (base_id, width, height)
    if cached not in _ENVS:
        os.environ.setdefault("MUJOCO_GL", "egl")
        quiet_mujoco_warnings()
        try:
            env = gym.make(base_id, render_mode="rgb_array", width=width, height=height)
        except TypeError as exc:  # a task without MuJoCo's width/height options
            raise ClipError(f"env {env_id!r} ({base_id}) is not a MuJoCo task; clips need one") from exc
        if not hasattr(env.unwrapped, "set_state"):
            env.close()
            raise ClipError(f"env {env_id!r} ({base_id}) has no MuJoCo state to set; clips need one")
        if _has_camera(env.unwrapped.model, TRACKING_CAMERA):  # type: ignore[attr-defined]
            # the robots' "track" camera follows the body, so a segment far from the start is in view
            env.close()
            env = gym.make(
                base_id, render_mode="rgb_array", width=width, height=height, camera_name=TRACKING_CAMERA
            )
        env.reset(seed=0)
        _plain_scene(env)
        _ENVS[cached] = env
    return _ENVS[cached]


def _has_camera(model: Any, name: str) -> bool:
    import mujoco

    return bool(mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, name) >= 0)


def _plain_scene(env: Any) -> None:
    """No shadows, reflections or skybox: a frame renders about ten times faster without a GPU."""
    import mujoco

    env.render()  # builds the offscreen viewer
    viewer = env.unwrapped.mujoco_renderer._get_viewer("rgb_array")
    for flag in (
        mujoco.mjtRndFlag.mjRND_SHADOW,
        mujoco.mjtRndFlag.mjRND_REFLECTION,
        mujoco.mjtRndFlag.mjRND_SKYBOX,
    ):
        viewer.scn.flags[flag] = 0


def _check_shapes(env_id: str, sizes: tuple[int, int], qpos: np.ndarray, qvel: np.ndarray) -> None:
    nq, nv = sizes
    if qpos.ndim != 2 or qpos.shape[1] != nq:
        raise ClipError(
            f"qpos: {env_id} needs shape (T, {nq}), got {qpos.shape} (record states with segment_states(env))"
        )
    if qvel.ndim != 2 or qvel.shape[1] != nv:
        raise ClipError(f"qvel: {env_id} needs shape (T, {nv}), got {qvel.shape}")
    if len(qpos) != len(qvel):
        raise ClipError(f"qpos has {len(qpos)} steps but qvel has {len(qvel)}; they must match")
    if len(qpos) == 0:
        raise ClipError("qpos: a clip needs at least one step")
    if not (np.isfinite(qpos).all() and np.isfinite(qvel).all()):
        raise ClipError("qpos/qvel: states must be finite")


def _stamp(frame: Any, label: str) -> None:
    """Draw `label` in a dark box at the frame's top-left corner (in place, a PIL image)."""
    from PIL import ImageDraw, ImageFont

    font = ImageFont.load_default(size=max(10, frame.height // 10))
    draw = ImageDraw.Draw(frame)
    _, _, right, bottom = draw.textbbox((4, 2), label, font=font)
    draw.rectangle((0, 0, right + 4, bottom + 4), fill=(20, 24, 32))
    draw.text((4, 2), label, fill=(255, 255, 255), font=font)


def _frames(
    env_id: str, qpos: np.ndarray, qvel: np.ndarray, width: int, height: int, label: str | None
) -> list[Any]:
    """One PIL image per state, rendered offscreen without stepping the physics."""
    from PIL import Image

    qpos, qvel = np.asarray(qpos, dtype=np.float64), np.asarray(qvel, dtype=np.float64)
    env = _env(env_id, width, height)
    _check_shapes(env_id, _state_size(env), qpos, qvel)
    frames = []
    for qpos_t, qvel_t in zip(qpos, qvel, strict=True):
        env.unwrapped.set_state(qpos_t, qvel_t)
        frame = Image.fromarray(np.asarray(env.render(), dtype=np.uint8))  # (H, W, 3)
        if label:
            _stamp(frame, label)
        frames.append(frame)
    return frames


def write_strip(frames: list[Any], path: Path) -> Path:
    """Frames (PIL images of one size) as a frame strip PNG: `STRIP_COLUMNS` to a row, in order
    (`feedback.schema.STRIP_COLUMNS`); the platform plays it and lets annotators step through it."""
    from PIL import Image

    from alignloop.feedback.schema import STRIP_COLUMNS

    columns = min(len(frames), STRIP_COLUMNS)
    rows = -(-len(frames) // columns)
    width, height = frames[0].size
    strip = Image.new("RGB", (columns * width, rows * height))
    for i, frame in enumerate(frames):
        strip.paste(frame, ((i % columns) * width, (i // columns) * height))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    strip.save(path, format="PNG")
    return path


def render_strip(
    env_id: str,
    qpos: np.ndarray,
    qvel: np.ndarray,
    path: Path,
    *,
    width: int = 256,
    height: int = 192,
    label: str | None = None,
) -> Path:
    """Render the states of task `env_id` to a frame strip PNG at `path` (see `write_strip`): a
    clip that can be paused and stepped frame by frame, for questions that mark a frame."""
    if width < 16 or height < 16:
        raise ClipError(f"width, height must be >= 16; got {width}x{height}")
    return write_strip(_frames(env_id, qpos, qvel, width, height, label), path)


def render_clip(
    env_id: str,
    qpos: np.ndarray,
    qvel: np.ndarray,
    path: Path,
    *,
    fps: int = 25,
    width: int = 256,
    height: int = 192,
    label: str | None = None,
) -> Path:
    """Render the states qpos (T, nq) and qvel (T, nv) of task `env_id` to a looping GIF at `path`.

    `label` (e.g. "A") is drawn in a corner of every frame. Returns `path`.
    """
    if fps < 1 or width < 16 or height < 16:
        raise ClipError(f"fps must be >= 1 and width, height >= 16; got fps={fps}, {width}x{height}")
    frames = _frames(env_id, qpos, qvel, width, height, label)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames[0].save(
        path,
        format="GIF",
        save_all=True,
        append_images=frames[1:],
        duration=round(1000 / fps),
        loop=0,  # forever
        optimize=False,
    )
    return path
