# The world around the robot (floor, light, cameras, the way objects are written into the
# model) is derived from Safety-Gymnasium 1.0.0 (safety_gymnasium/world.py and
# configs/assets.yaml), Copyright 2022-2023 OmniSafe Team, licensed under the Apache License,
# Version 2.0 (http://www.apache.org/licenses/LICENSE-2.0). Changes: the model is compiled once
# per env and objects are moved on reset instead of rebuilding the XML; the 24 MB star skybox is
# a built-in gradient.
"""One compiled MuJoCo model per navigation task: the robot, the floor and every object.

The model holds every object of the task once; `NavEnv` moves them on reset. Names follow the
reference (``agent``, ``goal``, ``hazard0``, ``vase3``, ``gremlin1obj``, ...), so do the floor (a
3.5 m checker plane), the light and the cameras ``fixednear`` and ``fixedfar``; the robots add
``vision`` and ``track``.
"""

from __future__ import annotations

from dataclasses import dataclass

import mujoco
import numpy as np

from alignloop.control.nav.objects import Instance, instances
from alignloop.control.nav.robots import Robot
from alignloop.control.nav.tasks import TaskSpec

__all__ = ["Scene", "scene_xml"]

_ASSETS = """
    <texture name="skybox" type="skybox" builtin="gradient" rgb1="0.4 0.6 0.8" rgb2="0 0 0" width="64" height="64"/>
    <texture name="matplane" type="2d" builtin="checker" width="100" height="100"
             rgb1="0.859 0.843 0.765" rgb2="0.949 0.914 0.855"/>
    <material name="matplane" texture="matplane" texrepeat="10 10" reflectance="0.1" shininess="0.1" specular="0.1"/>"""

_WORLD = """
    <light cutoff="100" diffuse="1 1 1" dir="0 0 -1" directional="true" exponent="1" pos="0 0 0.5"
           specular="0 0 0" castshadow="false"/>
    <geom name="floor" type="plane" size="3.5 3.5 0.1" condim="6" material="matplane" rgba="1 1 1 1"/>
    <camera name="fixednear" pos="0 -2 2" zaxis="0 -1 1"/>
    <camera name="fixedfar" pos="0 -5 5" zaxis="0 -1 1"/>"""


def task_instances(task: TaskSpec) -> list[Instance]:
    """Every object of the task, in the reference's order."""
    return [inst for objects in task.objects for inst in instances(objects)]


def scene_xml(robot: Robot, task: TaskSpec) -> str:
    """The MJCF of ``robot`` in ``task``, every object at the origin (reset moves them)."""
    objects = task_instances(task)
    bodies = "\n    ".join(inst.kind.xml(inst.name, inst.objects, inst.index) for inst in objects)
    welds = "".join(
        f'<weld name="{i.name}" body1="{i.name}mocap" body2="{i.name}obj" solref=".02 1.5"/>'
        for i in objects
        if i.kind.placed == "gremlin"
    )
    return f"""<mujoco model="Safety{robot.name}{task.task}{task.level}">
  <compiler angle="radian"/>
  {robot.option}
  <default>{robot.default}
  </default>
  <asset>{_ASSETS}
  </asset>
  <worldbody>{_WORLD}{robot.body}
    {bodies}
  </worldbody>
  <equality>{welds}</equality>
  <sensor>{robot.sensor}
  </sensor>
  <actuator>{robot.actuator}
  </actuator>
</mujoco>"""


@dataclass
class Scene:
    """The compiled model and the addresses `NavEnv` writes to and reads from."""

    model: mujoco.MjModel
    data: mujoco.MjData
    objects: list[Instance]
    robot_nq: int
    """The robot's qpos entries are qpos[:robot_nq]."""
    robot_geoms: np.ndarray
    """(ngeom,) True for the robot's geoms."""
    body: dict[str, int]
    """Body id of every object (a gremlin: its free box)."""
    qpos: dict[str, int]
    """qpos address of every free object (7 entries: position, quaternion)."""
    qvel: dict[str, int]
    """qvel address of every free object (6 entries: linear velocity in world axes, angular)."""
    mocap: dict[str, int]
    """Mocap index of every gremlin."""

    @classmethod
    def build(cls, robot: Robot, task: TaskSpec) -> Scene:
        model = mujoco.MjModel.from_xml_string(scene_xml(robot, task))
        data = mujoco.MjData(model)
        objects = task_instances(task)
        agent = model.body("agent").id
        robot_bodies = np.flatnonzero(model.body_rootid == agent)
        others = [model.jnt_qposadr[j] for j in range(model.njnt) if model.jnt_bodyid[j] not in robot_bodies]
        robot_nq = int(min(others)) if others else int(model.nq)  # the robot's joints come first
        body: dict[str, int] = {}
        qpos: dict[str, int] = {}
        qvel: dict[str, int] = {}
        mocap: dict[str, int] = {}
        for inst in objects:
            if inst.kind.placed == "gremlin":
                body_id = model.body(f"{inst.name}obj").id
                mocap[inst.name] = int(model.body_mocapid[model.body(f"{inst.name}mocap").id])
            else:
                body_id = model.body(inst.name).id
            body[inst.name] = int(body_id)
            if inst.kind.placed != "fixed":
                joint = int(model.body_jntadr[body_id])
                qpos[inst.name] = int(model.jnt_qposadr[joint])
                qvel[inst.name] = int(model.jnt_dofadr[joint])
        return cls(
            model, data, objects, robot_nq, np.isin(model.geom_bodyid, robot_bodies), body, qpos, qvel, mocap
        )
