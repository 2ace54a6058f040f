"""Hand-placed scene parts shared by the sim_data tests (imported by name: `sim_helpers`)."""

from __future__ import annotations

import numpy as np
from vsre_ros.sim_data.catalog import BOX, CATEGORIES, SPHERE, Part, Shape
from vsre_ros.sim_data.scene import SceneObject, View

# Camera used by hand-placed scenes: at -x looking along +x, so camera right is world -y.
VIEW = View((0.0, 0.0, 0.05), 1.4, 0.0, -30.0)


def ball(colour: str, x: float, y: float, r: float = 0.04, z: float = 0.0) -> SceneObject:
    return SceneObject(
        "ball", colour, Shape((Part(SPHERE, (r, r, r), (0, 0, r)),)), (x, y, z), 0.0
    )


def box(
    colour: str,
    x: float,
    y: float,
    half=(0.05, 0.05, 0.04),
    z: float = 0.0,
    yaw: float = 0.0,
    category: str = "box",
) -> SceneObject:
    shape = Shape((Part(BOX, tuple(half), (0, 0, half[2])),), support=0)
    return SceneObject(category, colour, shape, (x, y, z), yaw)


def built(category: str, colour: str, x: float, y: float, yaw: float = 0.0) -> SceneObject:
    """An object of a catalog category with its dimensions sampled from a fixed generator."""
    shape = CATEGORIES[category].build(np.random.default_rng(0))
    return SceneObject(category, colour, shape, (x, y, 0.0), yaw)
