# The pseudo-lidar follows Safety-Gymnasium 1.0.0 (safety_gymnasium/bases/base_task.py,
# `_obs_lidar_pseudo` and `_ego_xy`), Copyright 2022-2023 OmniSafe Team, licensed under the
# Apache License, Version 2.0 (http://www.apache.org/licenses/LICENSE-2.0). Changes: rewritten
# as one function over all objects of a kind at once.
"""The pseudo-lidar: how close the objects of one kind are, in bins of bearing around the robot.

The ``bins`` bins split the full turn around the robot evenly, bin 0 starting straight ahead
(the robot's x axis) and counting anticlockwise. An object at egocentric distance ``d`` reads
``max(0, max_dist - d) / max_dist`` (Safety-Gymnasium 1.0.0's default, ``max_dist`` 3 m; 6 m in
the circle tasks) or ``exp(-exp_gain * d)`` when ``max_dist`` is None (the original Safety
Gym's rule). A bin keeps the largest reading of the objects in it, and with ``alias`` each
reading also spills into both neighbours: ``alias * reading`` into the next bin and
``(1 - alias) * reading`` into the previous one, where ``alias`` in [0, 1) is how far into its
bin the object lies.
"""

from __future__ import annotations

import numpy as np

__all__ = ["egocentric_xy", "pseudo_lidar", "pseudo_lidars"]


def egocentric_xy(points: np.ndarray, agent_pos: np.ndarray, agent_mat: np.ndarray) -> np.ndarray:
    """Points (N, 2 or 3) in the robot's frame, (N, 2): each point is lifted to the floor (z = 0),
    taken relative to the robot's position (3,) and rotated by its orientation (3, 3), as the
    reference does (so a tilted robot sees the floor point, not the object's centre)."""
    world = np.zeros((len(points), 3))
    world[:, :2] = np.asarray(points)[:, :2]
    return ((world - agent_pos) @ agent_mat)[:, :2]


def pseudo_lidars(
    ego: np.ndarray,
    kind: np.ndarray,
    kinds: int,
    bins: int = 16,
    max_dist: float | None = 3.0,
    exp_gain: float = 1.0,
    alias: bool = True,
) -> np.ndarray:
    """The lidars (kinds, bins) of objects at egocentric positions ``ego`` (N, 2), object i seen
    by lidar ``kind[i]`` (N,) in [0, kinds): every kind at once, as one env step needs them."""
    obs = np.zeros(kinds * bins)
    if len(ego):
        dist = np.hypot(ego[:, 0], ego[:, 1])  # (N,)
        angle = np.arctan2(ego[:, 1], ego[:, 0]) % (np.pi * 2)
        bin_size = (np.pi * 2) / bins
        index = (angle / bin_size).astype(np.int64)  # (N,) the bin of each object
        reading = (
            np.exp(-exp_gain * dist) if max_dist is None else np.maximum(0.0, max_dist - dist) / max_dist
        )
        base = np.asarray(kind, dtype=np.int64) * bins
        if alias:
            share = (angle - bin_size * index) / bin_size  # (N,) in [0, 1): how far into its bin
            where = np.concatenate(
                [base + index % bins, base + (index + 1) % bins, base + (index - 1) % bins]
            )
            value = np.concatenate([reading, share * reading, (1 - share) * reading])
        else:
            where, value = base + index % bins, reading
        np.maximum.at(obs, where, value)  # a bin keeps the largest reading that falls in it
    return obs.reshape(kinds, bins)


def pseudo_lidar(
    ego: np.ndarray, bins: int = 16, max_dist: float | None = 3.0, exp_gain: float = 1.0, alias: bool = True
) -> np.ndarray:
    """The lidar reading (bins,) of objects at egocentric positions ``ego`` (N, 2)."""
    return pseudo_lidars(ego, np.zeros(len(ego), dtype=np.int64), 1, bins, max_dist, exp_gain, alias)[0]
