"""VSR's spatial relations: the catalog by meta-category, and predicates over ground truth.

Every relation VSR uses is listed in `CATALOG` with its meta-category. A relation that
geometry decides has a predicate and a stated reference frame:

- "camera": relative to the viewer of that image (left of, in front of, ...), decided on the
  object centres in the camera frame (x right, y down, z forward);
- "world": independent of the viewpoint (above, on, inside, near, touching, between, ...);
  vertical means world z, distances are exact surface-to-surface distances;
- "intrinsic": relative to an object's own front, only for objects that have one (chairs,
  screens): facing, facing away from, ahead of, at the back of; and for elongated objects,
  their long axes (parallel to, perpendicular to).

A predicate returns True, False, or None. None means the pair is borderline (within the
relation's margin of its decision boundary) or the relation does not apply to it (e.g.
"inside" with an object that is not a container); such pairs are never labelled. The margins
are module constants below, named after what they measure.

Relations that geometry cannot decide are in the catalog without a predicate, with the
reason (`Relation.reason`); they are never generated.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .catalog import CATEGORIES
from .scene import Scene

# Margins (metres unless said otherwise). A pair inside a margin is borderline: not labelled.
LR_TRUE = 0.06  # left/right: |x/z| difference of centres (image-plane units of focal length)
DEPTH_TRUE = 0.08  # in front / behind: difference of camera depth of centres
ABOVE_TRUE = -0.005  # above: subj bottom minus obj top at least this (a hair of overlap)
ABOVE_FALSE = -0.03  # not above: subj bottom at least 3 cm below obj top
FOOT_TRUE = -0.01  # over/under: horizontal footprints overlap by at least 1 cm
FOOT_FALSE = 0.03  # not over: footprints at least 3 cm apart
CONTACT = 0.003  # touching: surfaces closer than 3 mm
APART = 0.02  # not touching: surfaces at least 2 cm apart
NEAR_TRUE, NEAR_FALSE = 0.08, 0.25  # near: gap below 8 cm; not near: above 25 cm
FAR_FALSE, FAR_TRUE, FAR_AWAY_TRUE = 0.25, 0.45, 0.55  # far from: gap above 45 cm (55 cm)
NEXT_TRUE, NEXT_FALSE = 0.08, 0.2  # next to: gap below 8 cm, side by side; not: above 20 cm
FACING_TRUE, FACING_FALSE = 25.0, 60.0  # facing: front within 25 deg of the object; not: > 60
AWAY_TRUE, AWAY_FALSE = 155.0, 120.0  # facing away: front > 155 deg off; not: < 120 deg
AHEAD_TRUE, AHEAD_FALSE = 35.0, 90.0  # ahead of X: within 35 deg of X's front; not: > 90
BACK_TRUE, BACK_FALSE = 145.0, 90.0  # at the back of X: > 145 deg from X's front; not: < 90
AXIS_TRUE, AXIS_FALSE = 8.0, 25.0  # parallel/perpendicular: within 8 deg; not: > 25 deg off
MIDDLE_TRUE, MIDDLE_FALSE = 0.3, 0.6  # in the middle: centre within 30% of half size; not: >60%
EDGE_TRUE, EDGE_FALSE = 0.7, 0.4  # at the edge: centre beyond 70% of half size; not: < 40%
BETWEEN_T = (0.2, 0.8, 0.25)  # between: projection in [0.2, 0.8], off-line < 0.25 * spacing
BETWEEN_F = (-0.1, 1.1, 0.6)  # not between: projection outside [-0.1, 1.1] or > 0.6 spacing
MIN_SPACING = 0.2  # between: the two reference objects at least this far apart (centres)
ELONGATION = 1.4  # parallel/perpendicular: footprint at least 1.4x as long as wide


@dataclass
class Facts:
    """What predicates read about one view of one scene (precomputed once)."""

    scene: Scene
    gaps: np.ndarray  # n x n surface distances (metres, capped at render.GAP_CAP)
    cam: np.ndarray  # n x 3 object centres in the camera frame (x right, y down, z forward)
    lo: np.ndarray = field(init=False)  # n x 3 world AABB min
    hi: np.ndarray = field(init=False)  # n x 3 world AABB max
    centre: np.ndarray = field(init=False)  # n x 3 world centres

    def __post_init__(self):
        objs = self.scene.objects
        boxes = [o.aabb() for o in objs]
        self.lo = np.array([b[0] for b in boxes])
        self.hi = np.array([b[1] for b in boxes])
        self.centre = np.array([o.center() for o in objs])
        self.rects = [_rect(o) for o in objs]
        self.parts = [o.part_boxes() for o in objs]
        n = len(objs)
        # Pairwise footprint separation and vertical overlap, used by many predicates.
        self.sep = np.zeros((n, n))
        self.vov = np.zeros((n, n))
        height = self.hi[:, 2] - self.lo[:, 2]
        for i in range(n):
            for j in range(i + 1, n):
                self.sep[i, j] = self.sep[j, i] = _separation(self.rects[i], self.rects[j])
                ov = min(self.hi[i, 2], self.hi[j, 2]) - max(self.lo[i, 2], self.lo[j, 2])
                self.vov[i, j] = self.vov[j, i] = ov / max(1e-6, min(height[i], height[j]))
        self._parts_over: dict[tuple[int, int], tuple[bool, bool]] = {}

    @property
    def objects(self):
        return self.scene.objects

    def local(self, j: int, p: np.ndarray) -> np.ndarray:
        """World point p in object j's frame."""
        o = self.objects[j]
        return o.rotation.T @ (np.asarray(p) - np.array(o.pos))


def _tri(true: bool, false: bool) -> bool | None:
    """True / False when exactly one side's condition holds, else None (borderline)."""
    if true and not false:
        return True
    if false and not true:
        return False
    return None


def _not(v: bool | None) -> bool | None:
    return None if v is None else not v


def _and(*vs: bool | None) -> bool | None:
    """Three-valued and: False if any is False, None if any is None, else True."""
    if any(v is False for v in vs):
        return False
    if any(v is None for v in vs):
        return None
    return True


def _footprint_separation(f: Facts, i: int, j: int) -> float:
    """Largest separating-axis distance between the two footprints (< 0: overlap depth)."""
    return float(f.sep[i, j])


def _vertical_overlap(f: Facts, i: int, j: int) -> float:
    """Overlap of the two height ranges as a share of the smaller height."""
    return float(f.vov[i, j])


# -- Projective (camera frame for left/right/front/behind; world z for vertical) -------------
def left_of(f: Facts, i: int, j: int) -> bool | None:
    zi, zj = f.cam[i, 2], f.cam[j, 2]
    if zi < 0.05 or zj < 0.05:
        return None
    d = f.cam[j, 0] / zj - f.cam[i, 0] / zi
    return _tri(d > LR_TRUE, d < -LR_TRUE)


def right_of(f, i, j):
    return left_of(f, j, i)


def in_front_of(f: Facts, i: int, j: int) -> bool | None:
    d = f.cam[j, 2] - f.cam[i, 2]
    return _tri(d > DEPTH_TRUE, d < -DEPTH_TRUE)


def behind(f, i, j):
    return in_front_of(f, j, i)


def _separation(a, b) -> float:
    """Largest separating-axis distance between two horizontal oriented rectangles
    (centre, half extents, 2x2 rotation); negative when they overlap (by that depth)."""
    (ca, ha, ra), (cb, hb, rb) = a, b
    d = cb - ca
    axes = np.concatenate([ra, rb], axis=1)  # 2 x 4: the four candidate separating axes
    pa = np.abs(ra.T @ axes).T @ ha  # projection radius of a on each axis
    pb = np.abs(rb.T @ axes).T @ hb
    return float(np.max(np.abs(d @ axes) - pa - pb))


def _rect(o) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    c, h, yaw = o.footprint()
    return c, h, o.rotation[:2, :2]


def _parts_over(f: Facts, i: int, j: int) -> tuple[bool, bool]:
    """Whether some part of i is higher than j and overlaps its footprint (a table top over
    a ball under it), and whether no part of i could be."""
    if (i, j) in f._parts_over:
        return f._parts_over[i, j]
    rect_j = f.rects[j]
    some, none = False, True
    for centre, half, rot in f.parts[i]:
        bottom = centre[2] - half[2]
        sep = _separation((centre[:2], half[:2], rot[:2, :2]), rect_j)
        t = bottom - f.hi[j, 2]
        some |= t >= ABOVE_TRUE and sep < FOOT_TRUE
        none &= t < ABOVE_FALSE or sep > FOOT_FALSE
    f._parts_over[i, j] = (some, none)
    return some, none


def above(f: Facts, i: int, j: int) -> bool | None:
    t = f.lo[i, 2] - f.hi[j, 2]
    whole = _tri(t >= ABOVE_TRUE, t < ABOVE_FALSE)
    if whole is False and _parts_over(f, i, j)[0]:
        return None  # a table top is over the ball under it, its legs are not: ambiguous
    return whole


def below(f, i, j):
    return above(f, j, i)


def over(f: Facts, i: int, j: int) -> bool | None:
    some, none = _parts_over(f, i, j)
    return _tri(some, none)


def under(f, i, j):
    return over(f, j, i)


def _support_top(f: Facts, j: int) -> tuple[float, np.ndarray, np.ndarray] | None:
    """World height of j's support top, and that part's centre and half extents (j frame)."""
    o = f.objects[j]
    if o.shape.support is None:
        return None
    part = o.shape.parts[o.shape.support]
    half = part.half_extents()
    return o.pos[2] + part.pos[2] + half[2], np.array(part.pos), half


def on(f: Facts, i: int, j: int) -> bool | None:
    if f.gaps[i, j] > APART:
        return False
    top = _support_top(f, j)
    if f.lo[i, 2] < f.hi[j, 2] - 0.03 and (top is None or f.lo[i, 2] < top[0] - 0.03):
        return False  # touching from the side or from below, not resting on it
    if top is None:
        return None
    z, pc, half = top
    c = f.local(j, f.centre[i])[:2] - pc[:2]
    rests = abs(f.lo[i, 2] - z) < CONTACT and f.gaps[i, j] < CONTACT
    return True if rests and np.all(np.abs(c) <= half[:2]) else None


# -- Proximity (world, surface distance) ------------------------------------------------------
def near(f: Facts, i: int, j: int) -> bool | None:
    g = f.gaps[i, j]
    return _tri(g < NEAR_TRUE, g > NEAR_FALSE)


def far_from(f: Facts, i: int, j: int) -> bool | None:
    g = f.gaps[i, j]
    return _tri(g > FAR_TRUE, g < FAR_FALSE)


def far_away_from(f: Facts, i: int, j: int) -> bool | None:
    g = f.gaps[i, j]
    return _tri(g > FAR_AWAY_TRUE, g < FAR_FALSE)


# -- Adjacency --------------------------------------------------------------------------------
def next_to(f: Facts, i: int, j: int) -> bool | None:
    g = f.gaps[i, j]
    stacked = _footprint_separation(f, i, j) < 0 and _vertical_overlap(f, i, j) < 0.5
    side = _vertical_overlap(f, i, j) >= 0.5 and _footprint_separation(f, i, j) >= -0.005
    return _tri(g < NEXT_TRUE and side, g > NEXT_FALSE or stacked)


def at_left_side_of(f, i, j):
    return _and(next_to(f, i, j), left_of(f, i, j))


def at_right_side_of(f, i, j):
    return _and(next_to(f, i, j), right_of(f, i, j))


def touching(f: Facts, i: int, j: int) -> bool | None:
    g = f.gaps[i, j]
    return _tri(g < CONTACT, g > APART)


def against(f: Facts, i: int, j: int) -> bool | None:
    if f.gaps[i, j] > APART:
        return False
    if on(f, i, j) or on(f, j, i):
        return False
    side = _vertical_overlap(f, i, j) >= 0.5 and _footprint_separation(f, i, j) >= -0.005
    return True if f.gaps[i, j] < CONTACT and side else None


def at_edge_of(f: Facts, i: int, j: int) -> bool | None:
    top = _support_top(f, j)
    if top is None:
        return None
    is_on = on(f, i, j)
    if is_on is not True:
        return is_on
    _z, pc, half = top
    r = float(np.max(np.abs(f.local(j, f.centre[i])[:2] - pc[:2]) / half[:2]))
    return _tri(r >= EDGE_TRUE, r <= EDGE_FALSE)


# -- Topological (world) ----------------------------------------------------------------------
def inside(f: Facts, i: int, j: int) -> bool | None:
    cav = f.objects[j].shape.cavity
    if cav is None:
        return None
    hx, hy, floor, rim = cav
    p = f.local(j, f.centre[i])
    lo = np.array([-hx, -hy, floor])
    hi = np.array([hx, hy, rim])
    outside_by = float(np.linalg.norm(np.maximum(0, np.maximum(lo - p, p - hi))))
    rests = f.lo[i, 2] >= f.objects[j].pos[2] + floor - CONTACT
    return _tri(outside_by == 0.0 and rests, outside_by > 0.03)


def contains(f, i, j):
    return inside(f, j, i)


def outside(f, i, j):
    return _not(inside(f, i, j))


def enclosed_by(f: Facts, i: int, j: int) -> bool | None:
    ins = inside(f, i, j)
    if ins is not True:
        return ins
    rim = f.objects[j].pos[2] + f.objects[j].shape.cavity[3]
    return True if f.hi[i, 2] <= rim + 0.002 else None


def in_middle_of(f: Facts, i: int, j: int) -> bool | None:
    o = f.objects[j]
    if o.shape.cavity is not None:
        held, half, pc = inside(f, i, j), np.array(o.shape.cavity[:2]), np.zeros(2)
    else:
        top = _support_top(f, j)
        if top is None:
            return None
        held, half, pc = on(f, i, j), top[2][:2], top[1][:2]
    if held is not True:
        return held
    r = float(np.max(np.abs(f.local(j, f.centre[i])[:2] - pc) / half))
    return _tri(r <= MIDDLE_TRUE, r >= MIDDLE_FALSE)


def between(f: Facts, i: int, j: int, k: int) -> bool | None:
    a, b, p = f.centre[j, :2], f.centre[k, :2], f.centre[i, :2]
    ab = b - a
    spacing = float(np.linalg.norm(ab))
    if spacing < MIN_SPACING:
        return None
    t = float((p - a) @ ab) / spacing**2
    d = p - a
    off = abs(float(ab[0] * d[1] - ab[1] * d[0])) / spacing
    true = BETWEEN_T[0] <= t <= BETWEEN_T[1] and off <= BETWEEN_T[2] * spacing
    false = t < BETWEEN_F[0] or t > BETWEEN_F[1] or off > BETWEEN_F[2] * spacing
    return _tri(true, false)


# -- Orientation (intrinsic) ------------------------------------------------------------------
def _front_angle(f: Facts, holder: int, target: int) -> float | None:
    """Degrees between holder's front and the direction from holder to target."""
    o = f.objects[holder]
    if not o.shape.has_front:
        return None
    d = f.centre[target, :2] - f.centre[holder, :2]
    if np.linalg.norm(d) < 1e-6:
        return None
    ang = math.degrees(math.atan2(d[1], d[0]) - o.yaw)
    return abs((ang + 180.0) % 360.0 - 180.0)


def facing(f: Facts, i: int, j: int) -> bool | None:
    a = _front_angle(f, i, j)
    return None if a is None else _tri(a < FACING_TRUE, a > FACING_FALSE)


def facing_away_from(f: Facts, i: int, j: int) -> bool | None:
    a = _front_angle(f, i, j)
    return None if a is None else _tri(a > AWAY_TRUE, a < AWAY_FALSE)


def ahead_of(f: Facts, i: int, j: int) -> bool | None:
    a = _front_angle(f, j, i)
    return None if a is None else _tri(a < AHEAD_TRUE, a > AHEAD_FALSE)


def at_back_of(f: Facts, i: int, j: int) -> bool | None:
    a = _front_angle(f, j, i)
    return None if a is None else _tri(a > BACK_TRUE, a < BACK_FALSE)


def _long_axis(f: Facts, i: int) -> float | None:
    o = f.objects[i]
    if not CATEGORIES[o.category].elongated:
        return None
    size = o.size()
    if max(size[0], size[1]) < ELONGATION * min(size[0], size[1]):
        return None  # nearly square: its long axis is not visible enough to judge
    return o.yaw + (0.0 if size[0] >= size[1] else math.pi / 2)


def _axis_angle(f: Facts, i: int, j: int) -> float | None:
    a, b = _long_axis(f, i), _long_axis(f, j)
    if a is None or b is None:
        return None
    d = math.degrees(a - b) % 180.0
    return min(d, 180.0 - d)


def parallel_to(f: Facts, i: int, j: int) -> bool | None:
    d = _axis_angle(f, i, j)
    return None if d is None else _tri(d < AXIS_TRUE, d > AXIS_FALSE)


def perpendicular_to(f: Facts, i: int, j: int) -> bool | None:
    d = _axis_angle(f, i, j)
    return None if d is None else _tri(abs(d - 90) < AXIS_TRUE, abs(d - 90) > AXIS_FALSE)


# -- The catalog ------------------------------------------------------------------------------
Predicate = Callable[..., "bool | None"]


@dataclass(frozen=True)
class Relation:
    """One VSR relation: its meta-category and how (or why not) it is generated."""

    name: str  # VSR spelling, e.g. "left of"
    meta: str  # VSR meta-category
    predicate: Predicate | None = None  # decides it; None: not generated
    frame: str = ""  # "camera", "world" or "intrinsic" (empty when not generated)
    rule: str = ""  # how it is decided (for generated ones)
    reason: str = ""  # why it is not generated
    arity: int = 2  # 3 for "between" (subject and two reference objects)

    @property
    def generated(self) -> bool:
        return self.predicate is not None


def _g(name, meta, pred, frame, rule, arity=2):
    return Relation(name, meta, pred, frame, rule, arity=arity)


def _x(name, meta, reason):
    return Relation(name, meta, None, reason=reason)


MOTION = "describes motion or a path; a still scene has none"
VAGUE = "too vague to decide from geometry (any relation could be meant)"
PARTS = "objects are whole: parts and composition are not modelled as separate objects"
JOINED = "objects are never joined in these scenes, so it would always be False"
SEVERAL = "needs a group of several objects of one kind named together"

_RELATIONS = [
    # Adjacency
    _g("adjacent to", "Adjacency", next_to, "world", "same as next to"),
    _g("alongside", "Adjacency", next_to, "world", "same as next to"),
    _g("at the side of", "Adjacency", next_to, "world", "same as next to"),
    _g("at the right side of", "Adjacency", at_right_side_of, "camera", "next to and right of"),
    _g("at the left side of", "Adjacency", at_left_side_of, "camera", "next to and left of"),
    _x("attached to", "Adjacency", JOINED),
    _g(
        "at the back of",
        "Adjacency",
        at_back_of,
        "intrinsic",
        "behind the object's own front (objects with a front)",
    ),
    _g(
        "ahead of",
        "Adjacency",
        ahead_of,
        "intrinsic",
        "in front of the object's own front (objects with a front)",
    ),
    _g("against", "Adjacency", against, "world", "touching side by side, not stacked"),
    _g("at the edge of", "Adjacency", at_edge_of, "world", "on it, centre near its top's rim"),
    # Directional
    _x("off", "Directional", MOTION),
    _x("past", "Directional", MOTION),
    _x("toward", "Directional", MOTION),
    _x("down", "Directional", MOTION),
    _x("deep down", "Directional", MOTION),
    _x("up", "Directional", MOTION),
    _x("away from", "Directional", MOTION),
    _x("along", "Directional", MOTION),
    _g("around", "Directional", contains, "world", "a container whose walls surround it"),
    _x("from", "Directional", MOTION),
    _x("into", "Directional", MOTION),
    _x("to", "Directional", MOTION),
    _x("across", "Directional", MOTION),
    _x("across from", "Directional", "needs a third thing between the two (a street, a table)"),
    _x("through", "Directional", MOTION),
    _x("down from", "Directional", MOTION),
    # Orientation
    _g("facing", "Orientation", facing, "intrinsic", "its front points at the other object"),
    _g(
        "facing away from",
        "Orientation",
        facing_away_from,
        "intrinsic",
        "its front points away from the other object",
    ),
    _g("parallel to", "Orientation", parallel_to, "intrinsic", "long axes aligned"),
    _g("perpendicular to", "Orientation", perpendicular_to, "intrinsic", "long axes at 90 deg"),
    # Projective
    _g("on top of", "Projective", on, "world", "resting on the other's top surface"),
    _g("beneath", "Projective", under, "world", "lower, with overlapping footprints"),
    _g("beside", "Projective", next_to, "world", "same as next to"),
    _g("behind", "Projective", behind, "camera", "farther from the camera"),
    _g("left of", "Projective", left_of, "camera", "left in the image (camera x / depth)"),
    _g("right of", "Projective", right_of, "camera", "right in the image (camera x / depth)"),
    _g("under", "Projective", under, "world", "lower, with overlapping footprints"),
    _g("in front of", "Projective", in_front_of, "camera", "closer to the camera"),
    _g("below", "Projective", below, "world", "entirely lower (world z)"),
    _g("above", "Projective", above, "world", "entirely higher (world z)"),
    _g("over", "Projective", over, "world", "higher, with overlapping footprints"),
    _g(
        "in the middle of",
        "Projective",
        in_middle_of,
        "world",
        "on it or in it, near the centre of its top or cavity",
    ),
    # Proximity
    _g("by", "Proximity", near, "world", "same as near"),
    _g("close to", "Proximity", near, "world", "same as near"),
    _g("near", "Proximity", near, "world", "surface gap below 8 cm"),
    _g("far from", "Proximity", far_from, "world", "surface gap above 45 cm"),
    _g("far away from", "Proximity", far_away_from, "world", "surface gap above 55 cm"),
    # Topological
    _x("connected to", "Topological", JOINED),
    _x("detached from", "Topological", JOINED),
    _x("has as a part", "Topological", PARTS),
    _x("part of", "Topological", PARTS),
    _g("contains", "Topological", contains, "world", "the other is in its cavity"),
    _g("within", "Topological", inside, "world", "same as inside"),
    _x("at", "Topological", VAGUE),
    _g("on", "Topological", on, "world", "resting on the other's top surface"),
    _g("in", "Topological", inside, "world", "same as inside"),
    _x("with", "Topological", VAGUE),
    _g("surrounding", "Topological", contains, "world", "a container whose walls surround it"),
    _x("among", "Topological", SEVERAL),
    _x("consists of", "Topological", PARTS),
    _x("out of", "Topological", "says something left a container: motion, or undecidable"),
    _g(
        "between",
        "Topological",
        between,
        "world",
        "centre on the segment joining the other two (top view)",
        arity=3,
    ),
    _g("inside", "Topological", inside, "world", "centre in the container's cavity"),
    _g("outside", "Topological", outside, "world", "not inside the container"),
    _g("touching", "Topological", touching, "world", "surface gap below 3 mm"),
    # Unallocated ("among" is listed under Topological as well as here; one entry suffices)
    _g("beyond", "Unallocated", behind, "camera", "farther from the camera (as behind)"),
    _g("next to", "Unallocated", next_to, "world", "gap below 8 cm, side by side"),
    _x("opposite to", "Unallocated", "needs a third thing between the two (a street, a table)"),
    _x("after", "Unallocated", "temporal, not spatial"),
    _g("enclosed by", "Unallocated", enclosed_by, "world", "inside and below its rim"),
]

CATALOG: dict[str, Relation] = {r.name: r for r in _RELATIONS}
META_CATEGORIES = (
    "Adjacency",
    "Directional",
    "Orientation",
    "Projective",
    "Proximity",
    "Topological",
    "Unallocated",
)
GENERATED = [r.name for r in _RELATIONS if r.generated]
NOT_GENERATED = {r.name: r.reason for r in _RELATIONS if not r.generated}


def relation(name: str) -> Relation:
    """The catalog entry; unknown names raise ValueError naming the known ones."""
    try:
        return CATALOG[name]
    except KeyError:
        raise ValueError(f"unknown relation {name!r}; known: {', '.join(CATALOG)}") from None


def decide(f: Facts, name: str, *objs: int) -> bool | None:
    """Apply relation `name` to object indices (subject first); None when borderline."""
    rel = relation(name)
    if not rel.generated:
        raise ValueError(f"relation {name!r} is not generated: {rel.reason}")
    if len(objs) != rel.arity:
        raise ValueError(f"relation {name!r} takes {rel.arity} objects, got {len(objs)}")
    return rel.predicate(f, *objs)
