"""Control tasks: Gymnasium 1.x MuJoCo (v5) tasks with safety costs, vector envs, normalisers.

A safety cost is a wrapper that puts ``info["cost"]`` next to the reward. The velocity cost is
the one of Safety-Gymnasium's velocity tasks (Ji et al. 2023, "Safety-Gymnasium"): cost 1 for
each step in which the robot moves faster than a per-robot threshold, else 0. The speed is
``|x_velocity|`` for robots that move along a line and ``hypot(x_velocity, y_velocity)`` for
robots that move in the plane (Ant, Humanoid, Swimmer), as in Safety-Gymnasium v1.

Task ids:

- any registered Gymnasium id, e.g. ``"Hopper-v5"``; ``cost="velocity"`` adds the cost;
- ``"Safe{Robot}Velocity-v5"`` (e.g. ``"SafeHalfCheetahVelocity-v5"``), the v5 robot with the
  velocity cost (Safety-Gymnasium calls the same tasks ``Safety{Robot}Velocity-v1``);
- ``"alignloop/Slider-v0"`` / ``"SafeSliderVelocity-v0"``: a cheap velocity task for tests (see
  `SliderEnv`);
- ``"Safety{Robot}{Task}{Level}-v0"`` (e.g. ``"SafetyPointGoal1-v0"``): Safety-Gymnasium's
  navigation tasks (`alignloop.control.nav`), which carry their own cost (resolved as
  ``"navigation"``; no wrapper is added).

Vector envs reset finished episodes within the same step (``AutoresetMode.SAME_STEP``): the
observation returned is the first of the next episode and ``info["final_obs"]`` holds the last
one, which PPO needs to bootstrap the value of a time-limit truncation.
"""

from __future__ import annotations

import difflib
import logging
import math
import re
from collections.abc import Callable
from typing import Any, Literal

import gymnasium as gym
import numpy as np
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv, VectorEnv

from alignloop.control.nav import NAV_IDS, nav_id_pattern
from alignloop.errors import UserError

log = logging.getLogger(__name__)

__all__ = [
    "COSTS",
    "VELOCITY_THRESHOLDS",
    "EnvSpecError",
    "KeepInfo",
    "NAVIGATION_COST",
    "ObsNormalizer",
    "ReturnScaler",
    "SliderEnv",
    "VelocityCost",
    "make_env",
    "make_vec_env",
    "resolve_env",
    "step_costs",
    "step_info",
]

VELOCITY_THRESHOLDS: dict[str, float] = {
    "HalfCheetah": 3.2096,
    "Hopper": 0.7402,
    "Walker2d": 2.3415,
    "Ant": 2.6222,
    "Humanoid": 1.4149,
    "Swimmer": 0.2282,
}
"""Speed limits of Safety-Gymnasium v1's velocity tasks (Ji et al. 2023, "Safety-Gymnasium: A
Unified Safe Reinforcement Learning Benchmark", velocity tasks): 50% of the speed that PPO
reaches on each robot without a constraint."""

SLIDER_THRESHOLD = 0.5
"""Speed limit of `SliderEnv` (our own test task, not a Safety-Gymnasium figure)."""

_PLANAR_ROBOTS = frozenset({"Ant", "Humanoid", "Swimmer"})
COSTS = ("velocity",)
"""Cost wrappers `make_env` can add."""
NAVIGATION_COST = "navigation"
"""The cost the navigation tasks compute themselves (hazards entered, objects touched)."""

_SAFE_ID = re.compile(r"^Safe(?P<robot>\w+?)Velocity-v(?P<version>\d+)$")


class EnvSpecError(UserError, ValueError):
    """A task id or cost that cannot be built; the message lists what can."""


class VelocityCost(gym.Wrapper):
    """``info["cost"] = 1.0`` while the robot's speed exceeds ``threshold``, else ``0.0``."""

    def __init__(self, env: gym.Env, threshold: float, planar: bool = False):
        super().__init__(env)
        self.threshold = float(threshold)
        self.planar = planar

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        speed = abs(float(info["x_velocity"]))
        if self.planar:
            speed = math.hypot(float(info["x_velocity"]), float(info["y_velocity"]))
        info["cost"] = float(speed > self.threshold)
        return obs, reward, terminated, truncated, info


class KeepInfo(gym.Wrapper):
    """Drops every ``info`` key but ``keys`` from ``step`` (and all of ``reset``'s info)."""

    def __init__(self, env: gym.Env, keys: tuple[str, ...]):
        super().__init__(env)
        self.keys = keys

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        obs, _ = self.env.reset(**kwargs)
        return obs, {}

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs, reward, terminated, truncated, {k: info[k] for k in self.keys if k in info}


class SliderEnv(gym.Env):
    """A point mass on a rail: the cheapest task where speed pays and speed costs.

    State: velocity ``v``. Action: a force ``a`` in [-1, 1]. Dynamics ``v <- v + dt (a - v)``
    (unit mass and drag, ``dt = 0.1``), so a constant force ``a`` settles at speed ``a``.
    Reward: the speed ``v`` after the step (the forward reward of the MuJoCo runners).
    ``info["x_velocity"] = v``, so `VelocityCost` with ``SLIDER_THRESHOLD = 0.5`` gives the cost
    task ``SafeSliderVelocity-v0``: full force earns about 0.95 per step and costs 1 per step;
    staying safe means holding the speed under 0.5. Episodes last 200 steps (time limit).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 30}
    dt = 0.1

    def __init__(self, render_mode: str | None = None):
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(1,), dtype=np.float64)
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
        self.render_mode = render_mode
        self._v = 0.0
        self._x = 0.0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._v = float(self.np_random.uniform(-0.1, 0.1))
        self._x = 0.0
        return np.array([self._v]), {}

    def step(self, action: Any):
        force = float(np.clip(np.asarray(action, dtype=np.float64).reshape(-1)[0], -1.0, 1.0))
        self._v += self.dt * (force - self._v)
        self._x += self.dt * self._v
        info = {"x_velocity": self._v, "x_position": self._x}
        return np.array([self._v]), self._v, False, False, info

    def render(self) -> np.ndarray:
        frame = np.full((64, 128, 3), 255, dtype=np.uint8)
        frame[31:33, :] = 120  # the rail
        col = int(self._x * 4) % 128
        frame[26:38, max(col - 4, 0) : col + 4] = (
            (200, 40, 40) if self._v > SLIDER_THRESHOLD else (40, 40, 200)
        )
        return frame


gym.register("alignloop/Slider-v0", entry_point="alignloop.control.envs:SliderEnv", max_episode_steps=200)


def _robot(base_id: str) -> str:
    """``"HalfCheetah-v5"`` -> ``"HalfCheetah"``; ``"alignloop/Slider-v0"`` -> ``"Slider"``."""
    return base_id.split("/")[-1].split("-v")[0]


def _safe_ids() -> list[str]:
    ids = [f"Safe{robot}Velocity-v5" for robot in VELOCITY_THRESHOLDS]
    return ids + ["SafeSliderVelocity-v0"]


def resolve_env(env_id: str, cost: str | None = None) -> tuple[str, str | None, float | None]:
    """Check a task id and cost; return ``(gymnasium id, cost, velocity threshold)``.

    Raises EnvSpecError, naming close matches, for an unknown id, and listing the robots that
    have one for a velocity cost on a robot without a threshold. A navigation task resolves to
    its own id and the cost ``"navigation"``; another cost on it is refused. Nothing is built.
    """
    if env_id in NAV_IDS:
        if cost not in (None, NAVIGATION_COST):
            raise EnvSpecError(
                f"env {env_id!r} computes its own cost (hazards, vases, buttons, ...); drop --cost {cost}"
            )
        return env_id, NAVIGATION_COST, None
    if cost == NAVIGATION_COST:
        raise EnvSpecError(
            f"cost {cost!r} belongs to the navigation tasks ({nav_id_pattern()}), not to {env_id!r}; "
            f"choose from {', '.join(COSTS)} or none"
        )
    if cost is not None and cost not in COSTS:
        raise EnvSpecError(f"cost {cost!r} is unknown; choose from {', '.join(COSTS)} or none")
    match = _SAFE_ID.match(env_id)
    if match and env_id in _safe_ids():
        robot = match["robot"]
        base = "alignloop/Slider-v0" if robot == "Slider" else f"{robot}-v5"
        cost = "velocity"
    elif env_id in gym.registry:
        base = env_id
    else:
        known = sorted(set(gym.registry) | set(_safe_ids()))
        close = difflib.get_close_matches(env_id, known, n=5, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see gymnasium.pprint_registry()"
        raise EnvSpecError(
            f"unknown env id {env_id!r}{hint} (safe tasks: {', '.join(_safe_ids())}, {nav_id_pattern()})"
        )
    if cost is None:
        return base, None, None
    robot = _robot(base)
    thresholds = {**VELOCITY_THRESHOLDS, "Slider": SLIDER_THRESHOLD}
    if robot not in thresholds:
        raise EnvSpecError(
            f"no velocity threshold for robot {robot!r} (env {env_id!r}); the velocity cost exists "
            f"for: {', '.join(thresholds)}"
        )
    return base, cost, thresholds[robot]


def quiet_mujoco_warnings() -> None:
    """Say each MuJoCo warning once, through `logging`: MuJoCo prints a model's compiler warnings
    (HalfCheetah's deprecated `settotalmass`) every time the model is loaded, once per env built,
    into the middle of the progress display, and writes them to MUJOCO_LOG.TXT. A handler the
    program set itself is kept."""
    import mujoco

    if mujoco.get_mju_user_warning() is None:
        mujoco.set_mju_user_warning(_warn_once)


_said: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _said:
        _said.add(message)
        log.warning("MuJoCo: %s", message)


def make_env(
    env_id: str,
    cost: str | None = None,
    *,
    render_mode: str | None = None,
    max_episode_steps: int | None = None,
    **kwargs: Any,
) -> gym.Env:
    """Build one task, with its cost wrapper when ``cost`` is set or the id is a Safe id (the
    navigation tasks need none: they put ``info["cost"]`` themselves)."""
    base, cost, threshold = resolve_env(env_id, cost)
    quiet_mujoco_warnings()
    env = gym.make(base, render_mode=render_mode, max_episode_steps=max_episode_steps, **kwargs)
    if cost == "velocity":
        assert threshold is not None
        env = VelocityCost(env, threshold, planar=_robot(base) in _PLANAR_ROBOTS)
    return env


def make_vec_env(
    env_id: str,
    num_envs: int,
    cost: str | None = None,
    *,
    vectorization: Literal["sync", "async"] = "sync",
    max_episode_steps: int | None = None,
    wrap: Callable[[gym.Env], gym.Env] | None = None,
) -> VectorEnv:
    """``num_envs`` copies of a task in a vector env that resets finished episodes in the same
    step. Seed it with ``envs.reset(seed=[...])``. The id is checked before any process starts.
    `wrap` (e.g. Sauté's budget) is applied to each copy. Step infos carry only ``cost`` and
    ``task_reward`` (merging every per-env info key into arrays at each step would cost more
    than a fast simulator step)."""
    resolve_env(env_id, cost)
    if num_envs < 1:
        raise EnvSpecError(f"num_envs must be >= 1, got {num_envs}")

    def factory() -> gym.Env:
        env = make_env(env_id, cost, max_episode_steps=max_episode_steps)
        return KeepInfo(env if wrap is None else wrap(env), ("cost", "task_reward"))

    fns: list[Callable[[], gym.Env]] = [factory] * num_envs
    if vectorization == "async":
        return AsyncVectorEnv(fns, autoreset_mode=AutoresetMode.SAME_STEP)
    if vectorization == "sync":
        return SyncVectorEnv(fns, autoreset_mode=AutoresetMode.SAME_STEP)
    raise EnvSpecError(f"vectorization {vectorization!r} is unknown; choose sync or async")


def step_info(
    info: dict[str, Any], done: np.ndarray, key: str, default: np.ndarray | float = 0.0
) -> np.ndarray:
    """The per-env ``info[key]`` of one vector step, ``(N,)``; `default` where an env has none.

    With same-step autoreset the info of an env whose episode just ended sits in
    ``info["final_info"]`` (the top level then holds the reset info of its next episode)."""
    values = np.array(np.broadcast_to(default, done.shape), dtype=np.float64)
    if key in info:
        live = info[f"_{key}"] & ~done
        values[live] = info[key][live]
    final = info.get("final_info")
    if final is not None and key in final:
        ended = final[f"_{key}"] & done
        values[ended] = final[key][ended]
    return values


def step_costs(info: dict[str, Any], done: np.ndarray) -> np.ndarray:
    """The per-env ``cost`` of one vector step, ``(N,)``; 0 where a task has no cost."""
    return step_info(info, done, "cost")


class ObsNormalizer:
    """Running mean and variance of observations (parallel algorithm of Chan et al. 1979);
    ``normalize`` returns ``clip((obs - mean) / sqrt(var + eps), -clip, clip)``. Its state is
    saved with the policy: a policy only makes sense with the statistics it was trained on."""

    def __init__(self, shape: tuple[int, ...], clip: float = 10.0, eps: float = 1e-8):
        self.mean = np.zeros(shape, dtype=np.float64)
        self.var = np.ones(shape, dtype=np.float64)
        self.count = eps
        self.clip, self.eps = clip, eps
        self._cached: tuple[np.ndarray, np.ndarray] | None = None

    def update(self, batch: np.ndarray) -> None:
        """Fold in a batch of observations ``(B, *shape)``."""
        self._cached = None
        n = batch.shape[0]
        batch_mean = batch.sum(axis=0) / n
        batch_var = np.square(batch - batch_mean).sum(axis=0) / n
        delta = batch_mean - self.mean
        total = self.count + n
        self.mean = self.mean + delta * n / total
        self.var = (self.var * self.count + batch_var * n + delta**2 * self.count * n / total) / total
        self.count = total

    def normalize(self, obs: np.ndarray) -> np.ndarray:
        if self._cached is None:  # (mean, 1 / std) until the next update
            self._cached = (self.mean.copy(), 1.0 / np.sqrt(self.var + self.eps))
        mean, inv_std = self._cached
        return np.clip((obs - mean) * inv_std, -self.clip, self.clip).astype(np.float32)

    def state_dict(self) -> dict[str, Any]:
        return {
            "mean": np.array(self.mean, dtype=np.float64),
            "var": np.array(self.var, dtype=np.float64),
            "count": float(self.count),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.mean, self.var, self.count = (
            np.array(state["mean"]),
            np.array(state["var"]),
            float(state["count"]),
        )
        self._cached = None


class ReturnScaler:
    """Reward scaling of the PPO baselines (Engstrom et al. 2020, "Implementation Matters in
    Deep RL", sec. 3): rewards are divided by the running standard deviation of the discounted
    return and clipped. The running return restarts at each episode end."""

    def __init__(self, num_envs: int, gamma: float, clip: float = 10.0, eps: float = 1e-8):
        self.stats = ObsNormalizer((), clip=np.inf, eps=eps)
        self.ret = np.zeros(num_envs, dtype=np.float64)
        self.gamma, self.clip, self.eps = gamma, clip, eps

    def scale(self, rewards: np.ndarray, dones: np.ndarray) -> np.ndarray:
        """Scale a rollout of rewards ``(T, N)`` in time order; ``dones`` ``(T, N)`` bool.

        Step t is divided by the std of every discounted return seen up to and including step
        t. The running sums make this one pass of array operations instead of T updates."""
        steps, n = rewards.shape
        returns = np.empty_like(rewards, dtype=np.float64)  # (T, N) discounted return at each step
        ret = self.ret
        for t in range(steps):
            ret = ret * self.gamma + rewards[t]
            returns[t] = ret
            ret = np.where(dones[t], 0.0, ret)
        self.ret = ret
        st = self.stats
        count = st.count + n * np.arange(1, steps + 1)  # (T,)
        total = st.mean * st.count + np.cumsum(returns.sum(axis=1))  # (T,) sum of returns so far
        squares = (st.var + st.mean**2) * st.count + np.cumsum(np.square(returns).sum(axis=1))
        mean = total / count
        var = np.maximum(squares / count - mean**2, 0.0)  # (T,)
        st.mean, st.var, st.count = np.array(mean[-1]), np.array(var[-1]), float(count[-1])
        scaled = rewards / np.sqrt(var + self.eps)[:, None]
        return np.clip(scaled, -self.clip, self.clip).astype(np.float32)

    def state_dict(self) -> dict[str, Any]:
        return {"stats": self.stats.state_dict(), "ret": self.ret.copy()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stats.load_state_dict(state["stats"])
        self.ret = np.array(state["ret"])
