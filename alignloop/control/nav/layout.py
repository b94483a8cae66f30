# The sampling procedure follows Safety-Gymnasium 1.0.0 (safety_gymnasium/utils/random_generator.py),
# Copyright 2022-2023 OmniSafe Team, licensed under the Apache License, Version 2.0
# (http://www.apache.org/licenses/LICENSE-2.0). Changes: rewritten as functions over plain
# arrays with the random numbers drawn ahead in blocks (the same numbers, the same arithmetic).
"""Random layouts by rejection sampling with keep-out radii, draw for draw as the reference.

Each object is drawn uniformly in its rectangle shrunk by its own keep-out, and kept when its
distance to every object already placed is at least the sum of their keep-outs; after 100
failed draws for one object the whole layout starts again (10,000 times at most). The draws
come from a `numpy.random.RandomState` in the reference's order, so a seed gives the reference's
layout: every object in the task's order, then the start yaw and one yaw per object, then (on
reset and after every goal) the goal.

A crowded task needs thousands of draws per layout (about 12,000 in Button 1), so the draws are
taken from the RandomState in blocks and an object's 100 tries are checked at once; the
RandomState is then left exactly after the numbers used (``uniform(lo, hi)`` is
``lo + (hi - lo) * u`` of the next double ``u``, as numpy computes it), and
``sqrt(dx * dx + dy * dy)`` is the reference's ``np.sqrt(np.sum(np.square(...)))`` bit for bit.
"""

from __future__ import annotations

import math

import numpy as np

from alignloop.control.nav.objects import Placement

__all__ = ["ResamplingError", "sample_goal", "sample_layout", "sample_yaws"]

Rect = tuple[float, float, float, float]
"""(x min, y min, x max, y max)."""

_BLOCK = 4096
_ONE_BY_ONE = 6


class ResamplingError(RuntimeError):
    """No layout (or goal) satisfying every keep-out was found."""


class _Uniforms:
    """The RandomState's doubles, drawn ahead in blocks; `close` leaves it just past those used."""

    def __init__(self, rs: np.random.RandomState):
        self.rs, self.state = rs, rs.get_state()
        self.block = np.empty(0)
        self.pos = self.used = 0

    def peek(self, rect: Rect, keepout: float, count: int) -> tuple[np.ndarray, np.ndarray]:
        """The next ``count`` uniform points in ``rect`` shrunk by ``keepout`` on every side, as
        (count,) x and y arrays, without using them up (`take` does)."""
        xmin, ymin, xmax, ymax = rect
        xmin, ymin, xmax, ymax = xmin + keepout, ymin + keepout, xmax - keepout, ymax - keepout
        if self.pos + 2 * count > len(self.block):
            self.block = np.concatenate([self.block[self.pos :], self.rs.random_sample(_BLOCK)])
            self.pos = 0
        u = self.block[self.pos : self.pos + 2 * count].reshape(count, 2)
        return xmin + (xmax - xmin) * u[:, 0], ymin + (ymax - ymin) * u[:, 1]

    def take(self, count: int) -> None:
        """Use up the next ``count`` points."""
        self.pos += 2 * count
        self.used += 2 * count

    def close(self) -> None:
        self.rs.set_state(self.state)
        self.rs.random_sample(self.used)


def _first_clear(xs: np.ndarray, ys: np.ndarray, keepout: float, placed: np.ndarray) -> int | None:
    """Index of the first candidate (xs[i], ys[i]) that keeps its clearance from every placed
    (x, y, keepout) row of ``placed`` (K, 3), or None. The first few candidates are checked one
    by one (most objects fit at once), the rest together."""
    if len(placed) == 0:
        return 0
    rows = placed.tolist()
    for i, (x, y) in enumerate(zip(xs[:_ONE_BY_ONE].tolist(), ys[:_ONE_BY_ONE].tolist(), strict=True)):
        if all(
            math.sqrt((x - px) * (x - px) + (y - py) * (y - py)) >= pk + 0.0 + keepout for px, py, pk in rows
        ):
            return i  # (+ 0.0: the reference's margin)
    dx = xs[_ONE_BY_ONE:, None] - placed[None, :, 0]  # (C, K)
    dy = ys[_ONE_BY_ONE:, None] - placed[None, :, 1]
    too_close = np.sqrt(dx * dx + dy * dy) < placed[None, :, 2] + 0.0 + keepout
    clear = ~too_close.any(axis=1)
    return _ONE_BY_ONE + int(np.argmax(clear)) if clear.any() else None


def sample_layout(
    rs: np.random.RandomState, placements: list[Placement], extents: Rect
) -> dict[str, np.ndarray]:
    """Positions (2,) of every placement, in order; raises ResamplingError after 10,000 tries."""
    uniforms = _Uniforms(rs)
    try:
        for _ in range(10_000):
            placed = np.empty((len(placements), 3))
            for i, p in enumerate(placements):
                xs, ys = uniforms.peek(p.rect or extents, p.keepout, 100)  # its 100 tries
                first = _first_clear(xs, ys, p.keepout, placed[:i])
                uniforms.take(100 if first is None else first + 1)
                if first is None:
                    break  # this object found no room: start the layout again
                placed[i] = xs[first], ys[first], p.keepout
            else:
                return {p.name: placed[i, :2].copy() for i, p in enumerate(placements)}
    finally:
        uniforms.close()
    raise ResamplingError(f"no layout of {len(placements)} objects keeps every keep-out after 10000 tries")


def sample_yaws(rs: np.random.RandomState, count: int) -> np.ndarray:
    """``count`` yaws uniform in [0, 2 pi), one draw each, (count,)."""
    return np.array([rs.uniform(0, 2 * np.pi) for _ in range(count)])


def sample_goal(
    rs: np.random.RandomState,
    goal: Placement,
    extents: Rect,
    others: dict[str, np.ndarray],
    keepouts: dict[str, float],
) -> np.ndarray:
    """A goal position (2,) clear of every other object; raises ResamplingError after 10,000 draws."""
    placed = np.array([(xy[0], xy[1], keepouts[name]) for name, xy in others.items()]).reshape(-1, 3)
    uniforms = _Uniforms(rs)
    try:
        for _ in range(100):  # 10,000 draws in blocks of 100
            xs, ys = uniforms.peek(goal.rect or extents, goal.keepout, 100)
            first = _first_clear(xs, ys, goal.keepout, placed)
            uniforms.take(100 if first is None else first + 1)
            if first is not None:
                return np.array([xs[first], ys[first]])
    finally:
        uniforms.close()
    raise ResamplingError("no goal position keeps every keep-out after 10000 draws")
