"""Safety-Gymnasium's navigation tasks, written for gymnasium 1.x and the installed MuJoCo.

Importing this package registers ``Safety{Robot}{Task}{Level}-v0`` for the robots Point and Car,
the tasks Goal, Button, Push and Circle and the levels 0, 1, 2 (`NAV_IDS`), with the
reference's episode lengths (1000 steps, the circle tasks 500). The env is `env.NavEnv`; it is
imported only when one is made, so registering costs nothing.
"""

from __future__ import annotations

import gymnasium as gym

from alignloop.control.nav.tasks import LEVELS, TASKS

__all__ = ["NAV_IDS", "ROBOT_NAMES", "nav_id_pattern"]

ROBOT_NAMES = ("Point", "Car")
NAV_IDS: tuple[str, ...] = tuple(
    f"Safety{robot}{task}{level}-v0" for robot in ROBOT_NAMES for task in TASKS for level in LEVELS
)
"""Every registered navigation task id."""


def nav_id_pattern() -> str:
    """The ids in one line, for messages: ``Safety{Point,Car}{Goal,Button,Push,Circle}{0,1,2}-v0``."""
    return f"Safety{{{','.join(ROBOT_NAMES)}}}{{{','.join(TASKS)}}}{{{','.join(map(str, LEVELS))}}}-v0"


for _robot in ROBOT_NAMES:
    for _task in TASKS:
        for _level in LEVELS:
            _id = f"Safety{_robot}{_task}{_level}-v0"
            if _id not in gym.registry:
                gym.register(
                    _id,
                    entry_point="alignloop.control.nav.env:NavEnv",
                    kwargs={"robot": _robot, "task": _task, "level": _level},
                    max_episode_steps=500 if _task == "Circle" else 1000,
                )
