"""Sauté RL as a gymnasium wrapper: the remaining safety budget joins the observation.

Sootla et al. 2022 ("Sauté RL: Almost Surely Safe Reinforcement Learning Using State
Augmentation") turn "keep the episode's cost under d" into an unconstrained task: the state
carries the budget left, ``z`` (1 at the start of each episode, lowered by each step's cost
and divided by the discount, `alignloop.core.constrained.saute_next_budget`), and once it is
spent (``z <= 0``) every reward becomes ``unsafe_reward``. Any learner then solves the augmented
task: `SauteWrapper` works with PPO, PPO-Lagrangian and SAC alike (``alignloop control train
--saute``). The task's own reward stays in ``info["task_reward"]``, which the episode records
report.

The budget is the episode-cost limit made discounted as OmniSafe's ``SauteAdapter`` does
(`alignloop.core.constrained.saute_budget`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from alignloop.core.constrained import saute_budget, saute_next_budget, saute_reward

__all__ = ["SauteOptions", "SauteWrapper"]


@dataclass(frozen=True)
class SauteOptions:
    """What a Sauté task is: the episode-cost limit, the discount of the budget, the reward once
    it is spent and the episode length the budget is spread over."""

    cost_limit: float
    gamma: float
    unsafe_reward: float
    horizon: int

    @property
    def budget(self) -> float:
        """The discounted budget z counts down from (z = 1 means all of it is left)."""
        return saute_budget(self.cost_limit, self.gamma, self.horizon)


class SauteWrapper(gym.Wrapper):
    """Adds the remaining budget ``z`` as the last observation entry and replaces the reward by
    ``unsafe_reward`` once ``z <= 0`` (module docstring). The task must put ``info["cost"]``."""

    def __init__(self, env: gym.Env, options: SauteOptions):
        super().__init__(env)
        space = env.observation_space
        if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
            raise ValueError(f"Sauté needs a flat Box observation space, got {space}")
        self.options = options
        self.budget = options.budget
        low = np.append(space.low, -np.inf).astype(space.dtype)
        high = np.append(space.high, np.inf).astype(space.dtype)
        self.observation_space = gym.spaces.Box(low, high, dtype=space.dtype)  # type: ignore[arg-type]
        self.z = 1.0

    def _augment(self, obs: np.ndarray) -> np.ndarray:
        return np.append(obs, self.z).astype(self.observation_space.dtype)  # type: ignore[arg-type]

    def reset(self, **kwargs: Any) -> tuple[np.ndarray, dict[str, Any]]:
        obs, info = self.env.reset(**kwargs)
        self.z = 1.0
        return self._augment(obs), info

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        if "cost" not in info:
            raise KeyError("Sauté needs a task that puts info['cost']")
        self.z = float(saute_next_budget(self.z, float(info["cost"]), self.budget, self.options.gamma))
        info["task_reward"] = float(reward)
        shaped = float(saute_reward(float(reward), self.z, self.options.unsafe_reward))
        return self._augment(obs), shaped, terminated, truncated, info
