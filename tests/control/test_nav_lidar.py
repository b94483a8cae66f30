"""Pseudo-lidar and layout sampling of the navigation tasks: values worked out by hand, and the
reference's layouts for given seeds (Safety-Gymnasium 1.0.0 run in its own environment)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from alignloop.control.nav.layout import ResamplingError, sample_goal, sample_layout
from alignloop.control.nav.lidar import egocentric_xy, pseudo_lidar
from alignloop.control.nav.objects import Placement

BIN = 2 * math.pi / 16  # 0.39269908169872414


def test_one_object_reads_linear_closeness_with_aliasing() -> None:
    # object at (1.0, 0.5) in the robot's frame: d = sqrt(1.25) = 1.118033988749895,
    # bearing atan2(0.5, 1) = 0.4636476090008061 = 1.180668941203466 bins -> bin 1, alias 0.180669
    # reading (3 - d) / 3 = 0.627322003750035; bin 2 gets 0.180669 * 0.627322 = 0.113337602,
    # bin 0 gets (1 - 0.180669) * 0.627322 = 0.513984402
    obs = pseudo_lidar(np.array([[1.0, 0.5]]))
    expected = np.zeros(16)
    expected[[0, 1, 2]] = [0.5139844015388794, 0.627322003750035, 0.11333760221115562]
    np.testing.assert_allclose(obs, expected, rtol=1e-12, atol=0)


def test_exponential_reading_and_the_closest_object_wins() -> None:
    # max_dist None: exp(-d) = exp(-1.118033988749895) = 0.3269218953517579 (the original rule);
    # a second object in the same bin, further away (d = 2.236), does not lower the bin
    obs = pseudo_lidar(np.array([[1.0, 0.5], [2.0, 1.0]]), max_dist=None, alias=False)
    expected = np.zeros(16)
    expected[1] = 0.3269218953517579
    np.testing.assert_allclose(obs, expected, rtol=1e-12, atol=0)
    # beyond max_dist a reading is 0; an object behind the robot (bearing pi) lands in bin 8
    far = pseudo_lidar(np.array([[3.5, 0.0], [-1.5, -1e-9]]), alias=False)
    assert far[0] == 0.0 and far[8] == pytest.approx(0.5, rel=1e-9)


def test_egocentric_frame_turns_with_the_robot() -> None:
    # robot at (1, 1, 0.1) turned by +90 degrees: world offset (1.0, 0.5) is (0.5, -1.0) in its frame
    # (x axis = world y, y axis = world -x); bearing atan2(-1, 0.5) + 2 pi = 13.180668941 bins:
    # the same reading four bins (90 degrees) clockwise: bins 12, 13, 14
    mat = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    ego = egocentric_xy(np.array([[2.0, 1.5, 0.7]]), np.array([1.0, 1.0, 0.1]), mat)
    np.testing.assert_allclose(ego, [[0.5, -1.0]], atol=1e-15)
    obs = pseudo_lidar(ego)
    expected = np.zeros(16)
    expected[[12, 13, 14]] = [0.5139844015388794, 0.627322003750035, 0.11333760221115562]
    np.testing.assert_allclose(obs, expected, rtol=1e-9, atol=1e-15)


def test_layout_keeps_every_keepout_and_is_deterministic() -> None:
    placements = [Placement("agent", 0.4), *(Placement(f"hazard{i}", 0.18) for i in range(10))]
    placements.append(Placement("goal", 0.305))
    layout = sample_layout(np.random.RandomState(3), placements, (-2, -2, 2, 2))
    again = sample_layout(np.random.RandomState(3), placements, (-2, -2, 2, 2))
    keep = {p.name: p.keepout for p in placements}
    names = list(layout)
    assert names == [p.name for p in placements]
    for i, a in enumerate(names):
        np.testing.assert_array_equal(layout[a], again[a])
        assert np.all(np.abs(layout[a]) <= 2 - keep[a])  # inside the extents shrunk by its keep-out
        for b in names[i + 1 :]:
            assert np.hypot(*(layout[a] - layout[b])) >= keep[a] + keep[b]


def test_layout_draws_leave_the_stream_where_the_reference_does() -> None:
    # one object in an empty arena takes one try: two doubles, so the next draw is the third
    rs, fresh = np.random.RandomState(11), np.random.RandomState(11)
    layout = sample_layout(rs, [Placement("agent", 0.4)], (-1, -1, 1, 1))
    u, v, third = fresh.random_sample(3)
    np.testing.assert_array_equal(layout["agent"], [-0.6 + 1.2 * u, -0.6 + 1.2 * v])
    assert rs.random_sample() == third


def test_no_room_raises() -> None:
    crowd = [Placement(f"p{i}", 0.6) for i in range(6)]
    with pytest.raises(ResamplingError, match="no layout of 6 objects"):
        sample_layout(np.random.RandomState(0), crowd, (-1, -1, 1, 1))
    goal = Placement("goal", 0.9)
    with pytest.raises(ResamplingError, match="no goal position"):
        sample_goal(np.random.RandomState(0), goal, (-1, -1, 1, 1), {"agent": np.zeros(2)}, {"agent": 0.4})
