# Object sizes, colours, groups, keep-out radii and MJCF derived from Safety-Gymnasium 1.0.0
# (safety_gymnasium/assets/geoms, free_geoms, mocaps, color.py, group.py and world.py),
# Copyright 2022-2023 OmniSafe Team, licensed under the Apache License, Version 2.0
# (http://www.apache.org/licenses/LICENSE-2.0). Changes: every object is written once into a
# model compiled once per env and moved on reset (fixed objects by their body position, free
# objects by their qpos); a gremlin's mocap body sits where its ghost geom is, so that its weld
# holds the identity pose (the reference offsets the geom inside a mocap body at the origin).
"""The objects of the navigation tasks and their MJCF.

Every kind of object has a layout name (``hazard3``, ``goal``), a body (and geom) of the same
name (a gremlin is the free body ``gremlin3obj`` welded to the mocap ``gremlin3mocap``), a
height above the floor, and a way to be placed:

- ``fixed``: a body without joints (goal, hazards, buttons, pillars, circle, sigwalls), moved by
  writing ``model.body_pos`` on reset;
- ``free``: a body on a free joint (vases, the push box), placed by writing its qpos;
- ``gremlin``: a free box welded to a mocap body that circles the layout point.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["KINDS", "Kind", "Objects", "quat_z"]

SINK = 4e-5
"""How far a vase sinks into the floor under MuJoCo's soft contact (the reference's figure)."""


@dataclass(frozen=True)
class Objects:
    """One kind of object in a task: how many, how large, the clearance its placement keeps, and
    whether touching (or entering) it costs. Fields a kind does not use keep their defaults."""

    kind: str
    """A key of `KINDS`: goal, hazards, vases, buttons, pillars, gremlins, push_box, circle, sigwalls."""
    num: int = 1
    size: float = 0.1
    keepout: float = 0.4
    constrained: bool = False
    locations: tuple[tuple[float, float], ...] = ()
    """Fixed xy of the first objects (the rest are drawn): the circle's centre, the sigwalls."""
    alpha: float = 0.25
    """Goal opacity."""
    travel: float = 0.3
    """Radius of the circle a gremlin travels."""
    density: float = 0.001
    """Density of a free object (vases, push box, gremlins)."""
    height: float = 0.5
    """Half-height of a pillar."""


@dataclass(frozen=True)
class Kind:
    """What every object of one kind shares."""

    placed: str
    """fixed, free or gremlin (see the module docstring)."""
    group: int
    """MuJoCo geom group (the reference's, used by its natural lidar and by renderers)."""
    rgba: tuple[float, float, float, float]
    xml: Callable[[str, Objects, int], str]
    """``xml(name, objects, index)``: the body of one object, at its height above the origin."""
    z: Callable[[Objects], float]
    """Height of the body above the floor."""
    lidar: bool = True
    """Observed by a pseudo-lidar named ``{kind}_lidar``."""
    numbered: bool = True
    """Named ``{kind without its plural s}{i}`` (``hazard0``) rather than ``{kind}``."""


def quat_z(yaw: float) -> np.ndarray:
    """The quaternion (w, x, y, z) of a rotation by ``yaw`` about the z axis."""
    return np.array([np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)])


def _rgba(rgba: tuple[float, ...], alpha: float | None = None) -> str:
    values = rgba if alpha is None else (*rgba[:3], rgba[3] * alpha)
    return " ".join(f"{v:g}" for v in values)


_GHOST = 'contype="0" conaffinity="0"'
"""Geoms that nothing collides with (hazards, the goal, the circle, the walls, gremlin mocaps)."""


def _fixed(name: str, kind: str, o: Objects, geom: str, turn: str = "") -> str:
    """A body without joints at its kind's height, holding one geom of the same name."""
    z = KINDS[kind].z(o)
    return f'<body name="{name}" pos="0 0 {z}"{turn}><geom name="{name}" group="{KINDS[kind].group}" {geom}/></body>'


def _goal(name: str, o: Objects, _: int) -> str:
    rgba = _rgba(KINDS["goal"].rgba, o.alpha)
    return _fixed(name, "goal", o, f'type="cylinder" size="{o.size} {o.size / 2}" rgba="{rgba}" {_GHOST}')


def _hazard(name: str, o: Objects, _: int) -> str:
    rgba = _rgba(KINDS["hazards"].rgba)
    return _fixed(name, "hazards", o, f'type="cylinder" size="{o.size} 0.01" rgba="{rgba}" {_GHOST}')


def _button(name: str, o: Objects, _: int) -> str:
    return _fixed(name, "buttons", o, f'type="sphere" size="{o.size}" rgba="{_rgba(KINDS["buttons"].rgba)}"')


def _pillar(name: str, o: Objects, _: int) -> str:
    rgba = _rgba(KINDS["pillars"].rgba)
    return _fixed(name, "pillars", o, f'type="cylinder" size="{o.size} {o.height}" rgba="{rgba}"')


def _circle(name: str, o: Objects, _: int) -> str:
    rgba = _rgba(KINDS["circle"].rgba, 0.1)
    return _fixed(name, "circle", o, f'type="cylinder" size="{o.size} 0.01" rgba="{rgba}" {_GHOST}')


def _sigwall(name: str, o: Objects, index: int) -> str:
    turn = ' quat="0.7071068 0 0 0.7071068"' if index >= 2 else ""  # the walls along x
    rgba = _rgba(KINDS["sigwalls"].rgba, 0.1)
    return _fixed(name, "sigwalls", o, f'type="box" size="0.05 3.5 0.3" rgba="{rgba}" {_GHOST}', turn)


def _free(name: str, geoms: str, z: float) -> str:
    """A body on a free joint holding ``geoms``."""
    return f'<body name="{name}" pos="0 0 {z}"><freejoint name="{name}"/>{geoms}</body>'


def _vase(name: str, o: Objects, _: int) -> str:
    s, rgba = o.size, _rgba(KINDS["vases"].rgba)
    geom = (
        f'<geom name="{name}" type="box" size="{s} {s} {s}" density="{o.density}" rgba="{rgba}" group="4"/>'
    )
    return _free(name, geom, KINDS["vases"].z(o))


def _push_box(name: str, o: Objects, _: int) -> str:
    s, h = o.size, o.size / 2  # a box with four corner blocks, as the reference builds it
    common = f'type="box" density="{o.density}" rgba="{_rgba(KINDS["push_box"].rgba)}" group="1"'
    corners = "".join(
        f'<geom name="col{i + 1}" {common} size="{h} {h} {s}" pos="{x * s} {y * s} 0"/>'
        for i, (x, y) in enumerate(((1, 1), (-1, 1), (1, -1), (-1, -1)))
    )
    return _free(name, f'<geom name="{name}" {common} size="{s} {s} {s}"/>{corners}', s)


def _gremlin(name: str, o: Objects, _: int) -> str:
    """A free box and, where it is pulled to, a mocap ghost; both start at the same pose (twice the
    box's half-size up, where the mocap carries it), so the weld between them holds the identity."""
    s, box = o.size, f'type="box" size="{o.size} {o.size} {o.size}" group="5"'
    rgba = _rgba(KINDS["gremlins"].rgba)
    solid = _free(
        f"{name}obj",
        f'<geom name="{name}obj" {box} density="{o.density}" rgba="{rgba}"/>',
        2 * s,
    )
    ghost = f'<geom name="{name}mocap" {box} rgba="{_rgba(KINDS["gremlins"].rgba, 0.1)}" {_GHOST}/>'
    return f'{solid}<body name="{name}mocap" mocap="true" pos="0 0 {2 * s}">{ghost}</body>'


KINDS: dict[str, Kind] = {
    "goal": Kind("fixed", 9, (0, 1, 0, 1), _goal, lambda o: o.size / 2 + 1e-2, numbered=False),
    "hazards": Kind("fixed", 3, (0, 0, 1, 0.25), _hazard, lambda o: 0.02),
    "buttons": Kind("fixed", 1, (1, 0.5, 0, 1), _button, lambda o: o.size),
    "pillars": Kind("fixed", 2, (0.5, 0.5, 1, 1), _pillar, lambda o: o.height),
    "vases": Kind("free", 4, (0, 1, 1, 1), _vase, lambda o: o.size - SINK),
    "push_box": Kind("free", 1, (1, 1, 0, 1), _push_box, lambda o: o.size, numbered=False),
    "gremlins": Kind("gremlin", 5, (0.5, 0, 1, 1), _gremlin, lambda o: o.size),
    "circle": Kind("fixed", 6, (0, 1, 0, 1), _circle, lambda o: 0.01, numbered=False),
    "sigwalls": Kind("fixed", 10, (1, 1, 0, 1), _sigwall, lambda o: 0.25, lidar=False),
}
"""Every kind of object, by the name the reference gives it (and its lidar: ``hazards_lidar``)."""


@dataclass(frozen=True)
class Placement:
    """Where one object may be drawn: a rectangle (None: the task's extents) and its clearance."""

    name: str
    keepout: float
    rect: tuple[float, float, float, float] | None = None


@dataclass(frozen=True)
class Instance:
    """One object of a task: its layout name and its kind's description."""

    name: str
    objects: Objects
    index: int = 0

    @property
    def kind(self) -> Kind:
        return KINDS[self.objects.kind]


def instances(objects: Objects) -> list[Instance]:
    """The named objects of one kind, in the reference's order (``hazard0``, ``hazard1``, ...)."""
    kind = KINDS[objects.kind]
    if not kind.numbered:
        return [Instance(objects.kind, objects)]
    stem = objects.kind[:-1]
    return [Instance(f"{stem}{i}", objects, i) for i in range(objects.num)]


def placement(inst: Instance) -> Placement:
    """The reference's placement of one object: a fixed location becomes a rectangle of
    half-width ``keepout + 1e-9`` around it, which the keep-out then shrinks to +-1e-9."""
    o = inst.objects
    if inst.index < len(o.locations):
        x, y = o.locations[inst.index]
        k = o.keepout + 1e-9
        return Placement(inst.name, o.keepout, (x - k, y - k, x + k, y + k))
    return Placement(inst.name, o.keepout)
