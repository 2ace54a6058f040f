"""What a scene can contain: object categories built from primitive parts, colours, surfaces.

An object lives in its own frame: x is its front (for categories that have one), y its left,
z up, and the origin is the centre of its footprint on the surface it rests on. Each category
builds its parts (MuJoCo primitive geoms) from a few sampled dimensions, and says which part
other objects can rest on (`support`), whether it is an open container (`cavity`), whether it
has a front (`has_front`) and whether it is elongated in the horizontal plane.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

# MuJoCo geom type codes (mjtGeom) used by the parts.
SPHERE, CAPSULE, CYLINDER, BOX = 2, 3, 5, 6
GEOM_NAMES = {SPHERE: "sphere", CAPSULE: "capsule", CYLINDER: "cylinder", BOX: "box"}

LIT_RGBA = (0.97, 0.97, 0.88, 1.0)  # colour of lit parts: a screen's display, seen from the front
# A quaternion (w, x, y, z) that lays a z-aligned cylinder or capsule along the x axis.
ALONG_X = (math.sqrt(0.5), 0.0, math.sqrt(0.5), 0.0)
UPRIGHT = (1.0, 0.0, 0.0, 0.0)


@dataclass(frozen=True)
class Part:
    """One primitive geom of an object, in the object's frame."""

    type: int  # SPHERE, CAPSULE, CYLINDER or BOX
    size: tuple[float, float, float]  # MuJoCo geom size (half extents / radius, half length)
    pos: tuple[float, float, float]  # centre in the object frame, metres
    quat: tuple[float, float, float, float] = UPRIGHT  # orientation in the object frame
    lit: bool = False  # drawn in LIT_RGBA whatever the object's colour (a screen's display)

    def half_extents(self) -> np.ndarray:
        """Half extents of the part's axis-aligned box in the object frame."""
        t, s = self.type, self.size
        if t == BOX:
            local = np.array(s)
        elif t == SPHERE:
            local = np.array([s[0]] * 3)
        elif t == CYLINDER:
            local = np.array([s[0], s[0], s[1]])
        else:  # capsule
            local = np.array([s[0], s[0], s[1] + s[0]])
        if self.quat == ALONG_X:
            local = local[[2, 1, 0]]
        return local


@dataclass(frozen=True)
class Shape:
    """The parts of one sampled object and the facts predicates need about them."""

    parts: tuple[Part, ...]
    support: int | None = None  # index of the part whose top others can rest on
    cavity: tuple[float, float, float, float] | None = None  # container: hx, hy, floor z, rim z
    has_front: bool = False  # True when +x is a meaningful front (a chair's, a screen's)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Min and max corners of the whole object in its own frame."""
        lo = np.min([np.array(p.pos) - p.half_extents() for p in self.parts], axis=0)
        hi = np.max([np.array(p.pos) + p.half_extents() for p in self.parts], axis=0)
        return lo, hi


@dataclass(frozen=True)
class Category:
    """A named object category and how to build one."""

    name: str  # the word used in questions: "cup", "side table"
    build: Callable[[np.random.Generator], Shape] = field(repr=False)  # samples dimensions
    placeable_on: bool = True  # small enough to rest on another object or sit in a crate
    elongated: bool = False  # long axis in the horizontal plane (parallel/perpendicular apply)
    weight: float = 1.0  # relative chance of being drawn (containers and supports make rare
    # relations such as inside, on, parallel occur more often)


def _box(rng: np.random.Generator) -> Shape:
    hx, hy, hz = rng.uniform(0.04, 0.09), rng.uniform(0.04, 0.09), rng.uniform(0.03, 0.07)
    return Shape((Part(BOX, (hx, hy, hz), (0, 0, hz)),), support=0)


def _long_box(rng: np.random.Generator) -> Shape:
    hx, hy, hz = rng.uniform(0.12, 0.18), rng.uniform(0.035, 0.055), rng.uniform(0.03, 0.05)
    return Shape((Part(BOX, (hx, hy, hz), (0, 0, hz)),), support=0)


def _book(rng: np.random.Generator) -> Shape:
    hx, hy, hz = rng.uniform(0.09, 0.13), rng.uniform(0.06, 0.08), rng.uniform(0.01, 0.02)
    return Shape((Part(BOX, (hx, hy, hz), (0, 0, hz)),), support=0)


def _ball(rng: np.random.Generator) -> Shape:
    r = rng.uniform(0.03, 0.06)
    return Shape((Part(SPHERE, (r, r, r), (0, 0, r)),))


def _cup(rng: np.random.Generator) -> Shape:
    r, hz = rng.uniform(0.03, 0.045), rng.uniform(0.04, 0.055)
    handle = Part(BOX, (0.012, 0.006, hz * 0.55), (0, r + 0.012, hz))
    return Shape((Part(CYLINDER, (r, hz, 0), (0, 0, hz)), handle))


def _can(rng: np.random.Generator) -> Shape:
    r, hz = rng.uniform(0.03, 0.04), rng.uniform(0.05, 0.07)
    return Shape((Part(CYLINDER, (r, hz, 0), (0, 0, hz)),))


def _tube(rng: np.random.Generator) -> Shape:
    r, hl = rng.uniform(0.03, 0.04), rng.uniform(0.09, 0.12)
    return Shape((Part(CYLINDER, (r, hl, 0), (0, 0, r), ALONG_X),))


def _bottle(rng: np.random.Generator) -> Shape:
    r, hz = rng.uniform(0.03, 0.04), rng.uniform(0.07, 0.09)
    neck = Part(CYLINDER, (r * 0.4, 0.025, 0), (0, 0, 2 * hz + 0.025))
    return Shape((Part(CYLINDER, (r, hz, 0), (0, 0, hz)), neck))


def _bat(rng: np.random.Generator) -> Shape:
    r, hl = rng.uniform(0.02, 0.03), rng.uniform(0.13, 0.18)
    return Shape((Part(CAPSULE, (r, hl, 0), (0, 0, r), ALONG_X),))


def _crate(rng: np.random.Generator) -> Shape:
    hx, hy, hz = rng.uniform(0.10, 0.14), rng.uniform(0.10, 0.14), rng.uniform(0.05, 0.075)
    t = 0.008  # wall half thickness
    parts = (
        Part(BOX, (hx, hy, t), (0, 0, t)),
        Part(BOX, (t, hy, hz), (hx - t, 0, hz)),
        Part(BOX, (t, hy, hz), (-hx + t, 0, hz)),
        Part(BOX, (hx - 2 * t, t, hz), (0, hy - t, hz)),
        Part(BOX, (hx - 2 * t, t, hz), (0, -hy + t, hz)),
    )
    return Shape(parts, cavity=(hx - 2 * t, hy - 2 * t, 2 * t, 2 * hz))


def _chair(rng: np.random.Generator) -> Shape:
    hs, seat_z, back_h = rng.uniform(0.09, 0.12), rng.uniform(0.17, 0.22), rng.uniform(0.1, 0.14)
    leg, t = 0.012, 0.012
    parts = [Part(BOX, (hs, hs, t), (0, 0, seat_z - t))]
    for sx in (-1, 1):
        for sy in (-1, 1):
            pos = (sx * (hs - leg), sy * (hs - leg), (seat_z - 2 * t) / 2)
            parts.append(Part(BOX, (leg, leg, (seat_z - 2 * t) / 2), pos))
    parts.append(Part(BOX, (t, hs, back_h), (-hs + t, 0, seat_z + back_h)))
    return Shape(tuple(parts), support=0, has_front=True)


def _side_table(rng: np.random.Generator) -> Shape:
    hx, hy, top_z = rng.uniform(0.16, 0.22), rng.uniform(0.12, 0.17), rng.uniform(0.2, 0.26)
    leg, t = 0.014, 0.012
    parts = [Part(BOX, (hx, hy, t), (0, 0, top_z - t))]
    for sx in (-1, 1):
        for sy in (-1, 1):
            pos = (sx * (hx - leg), sy * (hy - leg), (top_z - 2 * t) / 2)
            parts.append(Part(BOX, (leg, leg, (top_z - 2 * t) / 2), pos))
    return Shape(tuple(parts), support=0)


def _screen(rng: np.random.Generator) -> Shape:
    hw, hh = rng.uniform(0.1, 0.14), rng.uniform(0.06, 0.09)
    neck_h = 0.05
    parts = (
        Part(BOX, (0.04, 0.05, 0.006), (0, 0, 0.006)),
        Part(BOX, (0.008, 0.012, neck_h / 2), (-0.01, 0, 0.012 + neck_h / 2)),
        Part(BOX, (0.01, hw, hh), (0.008, 0, 0.012 + neck_h + hh)),
    )
    return Shape(parts, has_front=True)


CATEGORIES: dict[str, Category] = {
    c.name: c
    for c in (
        Category("box", _box),
        Category("long box", _long_box, elongated=True),
        Category("book", _book, elongated=True, weight=1.5),
        Category("ball", _ball),
        Category("cup", _cup),
        Category("can", _can),
        Category("tube", _tube, elongated=True),
        Category("bottle", _bottle),
        Category("bat", _bat, elongated=True),
        Category("crate", _crate, placeable_on=False, weight=2.0),
        Category("chair", _chair, placeable_on=False),
        Category("side table", _side_table, placeable_on=False, weight=1.3),
        Category("screen", _screen, placeable_on=False),
    )
}

# Named colours (linear RGB in 0..1), chosen to stay apart from each other under lighting.
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.1, 0.1),
    "green": (0.1, 0.65, 0.15),
    "blue": (0.1, 0.25, 0.9),
    "yellow": (0.95, 0.85, 0.1),
    "orange": (0.95, 0.5, 0.05),
    "purple": (0.5, 0.15, 0.7),
    "white": (0.95, 0.95, 0.95),
    "black": (0.06, 0.06, 0.06),
    "pink": (0.95, 0.45, 0.7),
    "cyan": (0.1, 0.8, 0.85),
    "brown": (0.45, 0.28, 0.1),
    "gray": (0.5, 0.5, 0.5),
}


def scaled(shape: Shape, factor: float) -> Shape:
    """The same object `factor` times as large in every direction."""
    parts = tuple(
        Part(
            p.type,
            tuple(v * factor for v in p.size),
            tuple(v * factor for v in p.pos),
            p.quat,
            p.lit,
        )
        for p in shape.parts
    )
    cavity = tuple(v * factor for v in shape.cavity) if shape.cavity else None
    return Shape(parts, shape.support, cavity, shape.has_front)


def with_display(shape: Shape) -> Shape:
    """A screen with a lit display on its front (+x) face, so that which way it faces shows
    in the picture; the panel is the shape's last part."""
    panel = shape.parts[-1]
    hx, hy, hz = panel.size
    face = Part(
        BOX,
        (0.0015, hy * 0.9, hz * 0.85),
        (panel.pos[0] + hx + 0.0015, panel.pos[1], panel.pos[2]),
        lit=True,
    )
    return Shape((*shape.parts, face), shape.support, shape.cavity, shape.has_front)


@functools.cache
def size_ranges(name: str, samples: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """(smallest, largest) width, depth and height a category's builder gives, over `samples`
    draws of a fixed generator (what a model could know from the category name alone)."""
    rng = np.random.default_rng([7, len(name), sum(map(ord, name))])
    sizes = []
    for _ in range(samples):
        lo, hi = CATEGORIES[name].build(rng).bounds()
        sizes.append(hi - lo)
    return np.min(sizes, axis=0), np.max(sizes, axis=0)


def concept(category: str, colour: str) -> str:
    """The zero-shot unit (VSR's "concept"): a category in a colour, e.g. "red cup"."""
    return f"{colour} {category}"


def all_concepts() -> list[str]:
    return [concept(cat, col) for cat in CATEGORIES for col in COLOURS]


def category(name: str) -> Category:
    """The category with this name; unknown names raise ValueError naming the known ones."""
    try:
        return CATEGORIES[name]
    except KeyError:
        raise ValueError(f"unknown category {name!r}; known: {', '.join(CATEGORIES)}") from None
