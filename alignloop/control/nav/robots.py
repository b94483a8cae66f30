# Robot models derived from Safety-Gymnasium 1.0.0 (safety_gymnasium/assets/xmls/point.xml and
# car.xml), Copyright 2022-2023 OmniSafe Team, licensed under the Apache License, Version 2.0
# (http://www.apache.org/licenses/LICENSE-2.0). Changes: rewritten as MJCF fragments that
# `alignloop.control.nav.scene` composes into one model per task; the floor, the size limits and
# the unobserved subtree sensors are left out; the Point's slide joints move it in world axes
# (its start pose lives in qpos instead of the body's XML pose); a fixed-orientation tracking
# camera is added to each robot.
"""The robots of the navigation tasks: Point and Car, as in Safety-Gymnasium 1.0.0.

A robot is a set of MJCF fragments (option, defaults, the ``agent`` body, sensors, actuators),
the observation its sensors give (in the reference's order), and how a start pose ``(x, y,
yaw)`` is written into qpos. The physical constants are the reference's.

- **Point**: a sphere on two slide joints and a hinge; actions (forward force, turning velocity)
  in [-1, 1]; timestep 2 ms (20 ms per env step with 10 substeps).
- **Car**: a box on two driven wheels and a free rear ball, free in 3D; actions (left, right
  wheel torque) in [-1, 1]; timestep 4 ms. Its ball joint adds two sensors: the rear wheel's
  angular velocity and its orientation as a 3x3 matrix.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["ROBOTS", "Robot"]

_TRACK_CAMERA = '<camera name="track" mode="track" pos="0 -2 2" xyaxes="1 0 0 0 1 1"/>'
"""Follows the robot from 2 m behind and 2 m up, looking along +y (the reference turns this
camera with the start yaw; ours keeps one orientation so that clips of any episode look alike)."""


@dataclass(frozen=True)
class Robot:
    """One robot: its MJCF fragments, observed sensors and start-pose writer."""

    name: str
    option: str
    default: str
    body: str
    sensor: str
    actuator: str
    sensors: tuple[tuple[str, int], ...]
    """Observed sensors in observation order: (name, width); a width of 9 is a ball joint's
    quaternion observed as a rotation matrix."""
    place: Callable[[np.ndarray, float, float, float], None]
    """``place(qpos, x, y, yaw)``: write the start pose into the robot's qpos entries."""
    keepout: float = 0.4
    """Clearance kept around the start position when the layout is drawn."""
    height: float = 0.1
    """Height of the ``agent`` body above the floor at the start."""


def _place_planar(qpos: np.ndarray, x: float, y: float, yaw: float) -> None:
    qpos[:3] = x, y, yaw


def _place_free(qpos: np.ndarray, x: float, y: float, yaw: float) -> None:
    qpos[:7] = x, y, 0.1, np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)


_SITE_SENSORS = """
    <accelerometer site="agent" name="accelerometer"/>
    <velocimeter site="agent" name="velocimeter"/>
    <gyro site="agent" name="gyro"/>
    <magnetometer site="agent" name="magnetometer"/>"""
_BASIC = (("accelerometer", 3), ("velocimeter", 3), ("gyro", 3), ("magnetometer", 3))

POINT = Robot(
    name="Point",
    option='<option timestep="0.002"/>',
    default="""
    <geom condim="6" density="1" rgba="0.7412 0.0431 0.1843 1"/>
    <joint damping=".001"/>
    <motor ctrlrange="-1 1" ctrllimited="true" forcerange="-.05 .05" forcelimited="true"/>
    <velocity ctrlrange="-1 1" ctrllimited="true" forcerange="-.05 .05" forcelimited="true"/>
    <site size="0.032" type="sphere"/>""",
    body=f"""
    <body name="agent" pos="0 0 .1">
      <camera name="vision" pos="0 0 .15" xyaxes="0 -1 0 .4 0 1" fovy="90"/>
      {_TRACK_CAMERA}
      <joint type="slide" axis="1 0 0" name="x" damping="0.01"/>
      <joint type="slide" axis="0 1 0" name="y" damping="0.01"/>
      <joint type="hinge" axis="0 0 1" name="z" damping="0.005"/>
      <geom name="agent" type="sphere" size=".1" friction="1 0.01 0.01"/>
      <geom name="pointarrow" pos="0.1 0 0" size="0.05 0.05 0.05" type="box" rgba="0.0039 0.1529 0.3961 1"/>
      <site name="agent" rgba="1 0 0 .1"/>
    </body>""",
    sensor=_SITE_SENSORS,
    actuator="""
    <motor gear="0.3 0 0 0 0 0" site="agent" name="x"/>
    <velocity gear="0.3" jointinparent="z" name="z"/>""",
    sensors=_BASIC,
    place=_place_planar,
)

CAR = Robot(
    name="Car",
    option='<option timestep="0.004"/>',
    default="""
    <geom condim="6" density="5" rgba="0.7412 0.0431 0.1843 1" size=".05" type="sphere"/>
    <joint damping=".001"/>
    <motor ctrlrange="-1 1" ctrllimited="true" forcerange="-.02 .02" forcelimited="true"/>
    <site size="0.032" type="sphere"/>""",
    body=f"""
    <body name="agent" pos="0 0 .1">
      <site name="agent" pos="0 0 0"/>
      <camera name="vision" pos="0 0.1 .2" xyaxes="-1 0 0 0 -.4 1"/>
      {_TRACK_CAMERA}
      <joint type="free" name="agent" damping="0"/>
      <geom name="agent" type="box" size=".1 .1 .05"/>
      <geom name="back_bumper" type="box" pos="0 .15 0" size=".1 .01 .05" rgba="0.0039 0.1529 0.3961 1"/>
      <geom name="back_connector" type="box" pos="0 .125 0" size=".01 .025 .03" rgba="0.0039 0.1529 0.3961 1"/>
      <geom name="front_bumper" type="box" pos="0 -.165 0" size=".05 .01 .05" rgba="0.0039 0.1529 0.3961 1"/>
      <geom name="front_connector" type="box" pos="0 -.13 .04" size=".05 .03 .01" rgba="0.0039 0.1529 0.3961 1"/>
      <body name="left" pos="-.1 .1 -.05">
        <joint type="hinge" name="left" axis="1 0 0"/>
        <geom type="cylinder" name="left" fromto="-.055 0 0 -0.005 0 0"/>
      </body>
      <body name="right" pos=".1 .1 -.05">
        <joint type="hinge" name="right" axis="1 0 0"/>
        <geom type="cylinder" name="right" fromto="0.005 0 0 .055 0 0"/>
      </body>
      <body name="rear" pos="0 -.1 -.05">
        <joint name="rear" type="ball"/>
        <geom name="rear"/>
      </body>
    </body>""",
    sensor="""
    <ballquat joint="rear" name="ballquat_rear"/>
    <ballangvel joint="rear" name="ballangvel_rear"/>"""
    + _SITE_SENSORS,
    actuator="""
    <motor gear="1" jointinparent="left" name="left"/>
    <motor gear="1" jointinparent="right" name="right"/>""",
    sensors=(*_BASIC, ("ballangvel_rear", 3), ("ballquat_rear", 9)),
    place=_place_free,
)

ROBOTS: dict[str, Robot] = {robot.name: robot for robot in (POINT, CAR)}
"""The robots by name, as they appear in task ids (``SafetyPointGoal1-v0``)."""
