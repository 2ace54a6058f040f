"""Scenes as data: objects with poses on a surface, lighting, cameras; and a layout sampler.

A `Scene` is pure geometry and appearance, JSON-able (`to_dict`/`from_dict`) and independent
of MuJoCo; `render.Simulator` turns it into images and measurements. World frame: z up, the
support surface (a table top or the floor) is the plane z = 0, objects stand in the region
|x| <= 0.38, |y| <= 0.3 metres.

Layouts are physically plausible by construction rather than by simulation: every object
rests on the surface, on the top of another object (stacked), on a container's floor (inside)
or on the surface under a side table, and no two objects interpenetrate (checked part by part
with oriented boxes). Some placements are made on purpose to make rare relations occur:
objects pushed against a neighbour (touching), chairs and screens turned towards another
object (facing), elongated objects snapped to a shared axis (parallel / perpendicular).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .catalog import CATEGORIES, COLOURS, Part, Shape, category, concept, scaled, with_display

REGION = (0.38, 0.3)  # half extents of the area objects are placed in, metres
MAX_OBJECTS = 8  # the renderer's pool size: a scene holds at most this many objects
MAX_PARTS = 6  # most parts in one object (a chair: seat, four legs, back)
CLEARANCE = 0.01  # minimum gap between objects that are not placed in contact, metres


def rot_z(yaw: float) -> np.ndarray:
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def quat_mul(a, b) -> tuple[float, float, float, float]:
    w1, x1, y1, z1 = a
    w2, x2, y2, z2 = b
    return (
        w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2,
        w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
        w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2,
        w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2,
    )


def yaw_quat(yaw: float) -> tuple[float, float, float, float]:
    return (math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2))


@dataclass
class SceneObject:
    """One object: what it is, where it stands and what it rests on."""

    category: str  # a key of catalog.CATEGORIES
    colour: str  # a key of catalog.COLOURS
    shape: Shape  # its sampled parts
    pos: tuple[float, float, float]  # origin (footprint centre on its support), world metres
    yaw: float  # rotation about world z, radians (the object's front is its +x)
    rests_on: int = -1  # index of the object it stands on or in (-1: the surface)
    placement: str = "ground"  # "ground", "on", "inside", "under", "against"

    @property
    def name(self) -> str:
        """How questions name it: "red cup" (unique within a scene)."""
        return concept(self.category, self.colour)

    @property
    def rotation(self) -> np.ndarray:
        return rot_z(self.yaw)

    def world_parts(self) -> list[tuple[Part, np.ndarray, tuple]]:
        """Each part with its world centre and world quaternion."""
        rot, origin, q = self.rotation, np.array(self.pos), yaw_quat(self.yaw)
        return [(p, origin + rot @ np.array(p.pos), quat_mul(q, p.quat)) for p in self.shape.parts]

    def part_boxes(self) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Each part as an oriented box: world centre, half extents (object axes), rotation."""
        rot, origin = self.rotation, np.array(self.pos)
        return [(origin + rot @ np.array(p.pos), p.half_extents(), rot) for p in self.shape.parts]

    def local_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return self.shape.bounds()

    def aabb(self) -> tuple[np.ndarray, np.ndarray]:
        """World axis-aligned bounding box (min corner, max corner)."""
        lo, hi = self.shape.bounds()
        corners = np.array(
            [[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])]
        )
        world = corners @ self.rotation.T + np.array(self.pos)
        return world.min(axis=0), world.max(axis=0)

    def center(self) -> np.ndarray:
        """Centre of the object's own bounding box, in world coordinates."""
        lo, hi = self.shape.bounds()
        return np.array(self.pos) + self.rotation @ ((lo + hi) / 2)

    def footprint(self) -> tuple[np.ndarray, np.ndarray, float]:
        """Horizontal oriented rectangle: world xy centre, half extents, yaw."""
        lo, hi = self.shape.bounds()
        return self.center()[:2], (hi - lo)[:2] / 2, self.yaw

    def size(self) -> np.ndarray:
        """Width (object x), depth (object y) and height, metres."""
        lo, hi = self.shape.bounds()
        return hi - lo

    def to_dict(self) -> dict:
        return {
            "category": self.category,
            "colour": self.colour,
            "name": self.name,
            "pos": [float(v) for v in self.pos],
            "yaw": float(self.yaw),
            "rests_on": self.rests_on,
            "placement": self.placement,
            "support": self.shape.support,
            "cavity": list(self.shape.cavity) if self.shape.cavity else None,
            "has_front": self.shape.has_front,
            "parts": [
                {"type": p.type, "size": list(p.size), "pos": list(p.pos), "quat": list(p.quat)}
                | ({"lit": True} if p.lit else {})
                for p in self.shape.parts
            ],
        }

    @classmethod
    def from_dict(cls, d: dict) -> SceneObject:
        parts = tuple(
            Part(
                p["type"],
                tuple(p["size"]),
                tuple(p["pos"]),
                tuple(p["quat"]),
                bool(p.get("lit", False)),
            )
            for p in d["parts"]
        )
        cavity = tuple(d["cavity"]) if d.get("cavity") else None
        shape = Shape(parts, d.get("support"), cavity, bool(d.get("has_front", False)))
        return cls(
            d["category"],
            d["colour"],
            shape,
            tuple(d["pos"]),
            float(d["yaw"]),
            int(d.get("rests_on", -1)),
            d.get("placement", "ground"),
        )


@dataclass
class View:
    """A camera looking at the scene (MuJoCo free camera parameters)."""

    lookat: tuple[float, float, float]  # point the camera looks at, world metres
    distance: float  # metres from lookat
    azimuth: float  # degrees, around world z
    elevation: float  # degrees, negative looks down
    kind: str = "robot"  # "robot" (robot height, oblique) or "top" (from above)

    def to_dict(self) -> dict:
        return {
            "lookat": [float(v) for v in self.lookat],
            "distance": float(self.distance),
            "azimuth": float(self.azimuth),
            "elevation": float(self.elevation),
            "kind": self.kind,
        }

    @classmethod
    def from_dict(cls, d: dict) -> View:
        return cls(tuple(d["lookat"]), d["distance"], d["azimuth"], d["elevation"], d["kind"])


@dataclass
class Appearance:
    """Lighting and surface textures of a scene."""

    surface: str = "table"  # "table" (a table top at z=0 above a floor) or "floor"
    surface_material: int = 0  # index into the renderer's surface materials
    surface_rgba: tuple[float, float, float, float] = (0.7, 0.6, 0.5, 1.0)  # material tint
    floor_material: int = 0  # floor under the table
    light_dir: tuple[float, float, float] = (0.3, 0.2, -1.0)  # main light direction
    light_diffuse: float = 0.7  # main light intensity
    ambient: float = 0.3  # ambient light
    shadows: bool = True  # main light casts shadows

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}

    @classmethod
    def from_dict(cls, d: dict) -> Appearance:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


@dataclass
class Scene:
    """Everything needed to render a scene and decide relations in it."""

    scene_id: str  # "<seed>-<index>" for generated scenes
    objects: list[SceneObject]
    views: list[View]
    appearance: Appearance = field(default_factory=Appearance)

    def to_dict(self) -> dict:
        return {
            "scene_id": self.scene_id,
            "objects": [o.to_dict() for o in self.objects],
            "views": [v.to_dict() for v in self.views],
            "appearance": self.appearance.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> Scene:
        return cls(
            d["scene_id"],
            [SceneObject.from_dict(o) for o in d["objects"]],
            [View.from_dict(v) for v in d["views"]],
            Appearance.from_dict(d["appearance"]),
        )

    def index(self, name: str) -> int:
        for i, o in enumerate(self.objects):
            if o.name == name:
                return i
        raise ValueError(f"no object named {name!r}; scene has {[o.name for o in self.objects]}")


# ---------------------------------------------------------------------------------------------
# Collision tests between oriented boxes (all rotations are about z, so 2D SAT + z interval).


def _boxes_overlap(a, b, clearance: float) -> bool:
    (ca, ha, ra), (cb, hb, rb) = a, b
    if abs(ca[2] - cb[2]) >= ha[2] + hb[2] + clearance - 1e-9:
        return False
    axes = [ra[:2, 0], ra[:2, 1], rb[:2, 0], rb[:2, 1]]
    d = (cb - ca)[:2]
    for ax in axes:
        pa = ha[0] * abs(ra[:2, 0] @ ax) + ha[1] * abs(ra[:2, 1] @ ax)
        pb = hb[0] * abs(rb[:2, 0] @ ax) + hb[1] * abs(rb[:2, 1] @ ax)
        if abs(d @ ax) >= pa + pb + clearance - 1e-9:
            return False
    return True


def objects_collide(a: SceneObject, b: SceneObject, clearance: float = CLEARANCE) -> bool:
    """True when any part of a comes within `clearance` of any part of b (boxes, conservative)."""
    return any(_boxes_overlap(pa, pb, clearance) for pa in a.part_boxes() for pb in b.part_boxes())


# ---------------------------------------------------------------------------------------------
# The layout sampler.


@dataclass(frozen=True)
class LayoutConfig:
    """Knobs of the scene sampler."""

    min_objects: int = 2  # objects per scene, at least
    max_objects: int = MAX_OBJECTS  # and at most (<= MAX_OBJECTS)
    views: int = 1  # camera views rendered per scene (2 gives multi-view questions)
    top_view_share: float = 0.3  # share of views taken from above rather than robot height
    p_on: float = 0.35  # chance an object is stacked on another
    p_inside: float = 0.5  # chance an object goes into an empty crate (when there is one)
    p_under: float = 0.2  # chance an object goes under a side table (when there is one)
    p_against: float = 0.15  # chance an object is pushed against a neighbour
    p_face: float = 0.5  # chance a chair or screen is turned towards another object
    p_snap: float = 0.4  # chance an elongated object is snapped to a shared axis
    real_scale: bool = False  # data version 2: table scenes hold tabletop objects only; floor
    # scenes hold furniture at real scale in a larger area; sizes vary per instance; screens
    # show a lit display on their front
    size_jitter: tuple[float, float] = (0.7, 1.4)  # real_scale: per-instance size factor range
    floor_scale: float = 2.0  # real_scale: floor scenes' area and camera distance, x REGION
    furniture_scale: dict[str, float] = field(
        default_factory=lambda: {"chair": 2.1, "side table": 2.2, "crate": 1.8}
    )  # real_scale: furniture built this much larger on floor scenes (a 0.95 m chair)
    table_only: tuple[str, ...] = ("screen",)  # real_scale: categories kept off floor scenes
    floor_only: tuple[str, ...] = ("chair", "side table")  # ... and kept off table scenes

    def region(self, surface: str) -> tuple[float, float]:
        """Half extents of the area objects stand in, for a scene on this surface."""
        if self.real_scale and surface == "floor":
            return (REGION[0] * self.floor_scale, REGION[1] * self.floor_scale)
        return REGION


def _choose_concept(rng, pool: list[tuple[str, str]], used: set[str]) -> tuple[str, str] | None:
    free = [c for c in pool if concept(*c) not in used]
    if not free:
        return None
    w = np.array([CATEGORIES[c[0]].weight for c in free])
    return free[int(rng.choice(len(free), p=w / w.sum()))]


def _place_ground(rng, obj: SceneObject, others: list[SceneObject], region=REGION) -> bool:
    lo, hi = obj.shape.bounds()
    for _ in range(30):
        centre = np.array([rng.uniform(-region[0], region[0]), rng.uniform(-region[1], region[1])])
        shift = (obj.rotation @ ((lo + hi) / 2))[:2]
        obj.pos = (float(centre[0] - shift[0]), float(centre[1] - shift[1]), 0.0)
        if not any(objects_collide(obj, o) for o in others):
            return True
    return False


def _place_on(rng, obj: SceneObject, base_i: int, others: list[SceneObject]) -> bool:
    base = others[base_i]
    part = base.shape.parts[base.shape.support]
    top = np.array(part.pos) + part.half_extents() * [0, 0, 1]
    lo, hi = obj.shape.bounds()
    half = (hi - lo)[:2] / 2
    room = part.half_extents()[:2] - half  # aligned with the base: keeps it inside the top
    if np.any(room < 0.005):
        return False
    for _ in range(10):
        local = np.array([rng.uniform(-room[0], room[0]), rng.uniform(-room[1], room[1]), 0.0])
        local[:2] += top[:2] - (lo + hi)[:2] / 2
        world = np.array(base.pos) + base.rotation @ local
        obj.yaw = base.yaw + float(rng.choice([0.0, math.pi]))
        obj.pos = (world[0], world[1], base.pos[2] + top[2])
        # The object's own bounds centre is offset from its origin; undo that offset.
        shift = obj.rotation @ np.array([(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, 0.0])
        obj.pos = (obj.pos[0] - shift[0], obj.pos[1] - shift[1], obj.pos[2])
        obj.rests_on, obj.placement = base_i, "on"
        if not any(objects_collide(obj, o) for k, o in enumerate(others) if k != base_i):
            if not objects_collide(obj, base, clearance=-1e-4):
                return True
    return False


def _place_inside(rng, obj: SceneObject, crate_i: int, others: list[SceneObject]) -> bool:
    crate = others[crate_i]
    chx, chy, floor_z, _rim = crate.shape.cavity
    lo, hi = obj.shape.bounds()
    half = (hi - lo)[:2] / 2
    for turn in rng.permutation(2):
        h = half[::-1] if turn else half
        room = np.array([chx, chy]) - h - 0.004
        if np.any(room < 0):
            continue
        local = np.array([rng.uniform(-room[0], room[0]), rng.uniform(-room[1], room[1]), 0.0])
        obj.yaw = crate.yaw + turn * math.pi / 2
        shift = obj.rotation @ np.array([(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, 0.0])
        world = np.array(crate.pos) + crate.rotation @ local - shift
        obj.pos = (world[0], world[1], crate.pos[2] + floor_z)
        obj.rests_on, obj.placement = crate_i, "inside"
        clear = [objects_collide(obj, o, 0.002) for k, o in enumerate(others) if k != crate_i]
        if not any(clear) and not objects_collide(obj, crate, clearance=-1e-4):
            return True
    return False


def _place_under(rng, obj: SceneObject, table_i: int, others: list[SceneObject]) -> bool:
    table = others[table_i]
    top = table.shape.parts[0]
    clear_h = top.pos[2] - top.size[2] - 0.01
    lo, hi = obj.shape.bounds()
    if hi[2] - lo[2] > clear_h:
        return False
    leg = table.shape.parts[1].size[0]
    turn = int(rng.integers(2))
    half = (hi - lo)[:2] / 2
    room = np.array(top.size[:2]) - 2 * leg - (half[::-1] if turn else half) - 0.01
    if np.any(room < 0):
        return False
    local = np.array([rng.uniform(-room[0], room[0]), rng.uniform(-room[1], room[1]), 0.0])
    obj.yaw = table.yaw + turn * math.pi / 2
    shift = obj.rotation @ np.array([(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, 0.0])
    world = np.array(table.pos) + table.rotation @ local - shift
    obj.pos = (world[0], world[1], 0.0)
    obj.rests_on, obj.placement = -1, "under"
    return not any(objects_collide(obj, o) for o in others)


def _place_against(
    rng, obj: SceneObject, base_i: int, others: list[SceneObject], region=REGION
) -> bool:
    base = others[base_i]
    blo, bhi = base.shape.bounds()
    lo, hi = obj.shape.bounds()
    axis = int(rng.integers(2))
    sign = float(rng.choice([-1.0, 1.0]))
    obj.yaw = base.yaw
    # Along the chosen axis of the base, the two bounding boxes meet face to face.
    local = (blo + bhi) / 2
    local[axis] = bhi[axis] - lo[axis] if sign > 0 else blo[axis] - hi[axis]
    other = 1 - axis
    local[other] -= (lo[other] + hi[other]) / 2
    world = np.array(base.pos) + base.rotation @ np.array([local[0], local[1], 0.0])
    obj.pos = (world[0], world[1], 0.0)
    obj.rests_on, obj.placement = -1, "against"
    if abs(obj.pos[0]) > region[0] + 0.05 or abs(obj.pos[1]) > region[1] + 0.05:
        return False
    ok = [not objects_collide(obj, o) for k, o in enumerate(others) if k != base_i]
    return all(ok) and not objects_collide(obj, base, clearance=-1e-4)


def sample_scene(
    rng: np.random.Generator,
    scene_id: str,
    pool: list[tuple[str, str]] | None = None,
    config: LayoutConfig | None = None,
) -> Scene:
    """A random plausible scene whose objects are drawn from `pool` ((category, colour))."""
    cfg = config or LayoutConfig()
    pool = pool or [(cat, col) for cat in CATEGORIES for col in COLOURS]
    if not 2 <= cfg.min_objects <= cfg.max_objects <= MAX_OBJECTS:
        raise ValueError(f"need 2 <= min_objects <= max_objects <= {MAX_OBJECTS}")
    surface = None
    if cfg.real_scale:  # the surface decides what may stand on it, so it is drawn first
        surface = "table" if rng.uniform() < 0.6 else "floor"
        banned = cfg.table_only if surface == "floor" else cfg.floor_only
        pool = [c for c in pool if c[0] not in banned] or pool
    target = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    objects: list[SceneObject] = []
    used: set[str] = set()
    tries = 0
    while len(objects) < target and tries < 4 * target:
        tries += 1
        choice = _choose_concept(rng, pool, used)
        if choice is None:
            break
        cat = category(choice[0])
        shape = cat.build(rng)
        if cfg.real_scale:
            shape = _real_scale(rng, cat.name, shape, surface, cfg)
        obj = SceneObject(cat.name, choice[1], shape, (0.0, 0.0, 0.0), 0.0)
        obj.yaw = float(rng.uniform(-math.pi, math.pi))
        placed = _place(rng, obj, objects, cfg, cat.placeable_on, cfg.region(surface or ""))
        if placed:
            objects.append(obj)
            used.add(obj.name)
    _turn_fronts(rng, objects, cfg)
    scale = cfg.floor_scale if cfg.real_scale and surface == "floor" else 1.0
    views = [_sample_view(rng, objects, cfg, k, None, scale) for k in range(1)]
    for k in range(1, cfg.views):
        views.append(_sample_view(rng, objects, cfg, k, views[0], scale))
    return Scene(scene_id, objects, views, _sample_appearance(rng, surface))


def _real_scale(rng, name: str, shape: Shape, surface: str | None, cfg: LayoutConfig) -> Shape:
    """Version 2 sizes: tabletop objects vary per instance (so the category does not give the
    size); furniture on the floor is built at real scale; screens get a lit display."""
    if CATEGORIES[name].placeable_on:
        shape = scaled(shape, float(rng.uniform(*cfg.size_jitter)))
    elif surface == "floor" and name in cfg.furniture_scale:
        shape = scaled(shape, cfg.furniture_scale[name] * float(rng.uniform(0.9, 1.1)))
    if name == "screen":
        shape = with_display(shape)
    return shape


def _place(
    rng, obj: SceneObject, objects: list[SceneObject], cfg: LayoutConfig, small: bool, region
):
    if small and objects:
        holding = {o.rests_on for o in objects if o.placement == "inside"}
        crates = [
            i
            for i, o in enumerate(objects)
            if o.shape.cavity and o.placement == "ground" and i not in holding
        ]
        tables = [i for i, o in enumerate(objects) if o.category == "side table"]
        bases = [
            i
            for i, o in enumerate(objects)
            if o.shape.support is not None and o.placement in ("ground", "against")
        ]
        # Each special placement gets its own chance, in order; a failed one falls through.
        if crates and rng.uniform() < cfg.p_inside:
            if _place_inside(rng, obj, crates[int(rng.integers(len(crates)))], objects):
                return True
        if bases and rng.uniform() < cfg.p_on:
            if _place_on(rng, obj, bases[int(rng.integers(len(bases)))], objects):
                return True
        if tables and rng.uniform() < cfg.p_under:
            if _place_under(rng, obj, tables[int(rng.integers(len(tables)))], objects):
                return True
    grounded = [
        i
        for i, o in enumerate(objects)
        if o.placement in ("ground", "against")
        and o.category not in ("chair", "side table", "screen")
    ]
    if grounded and rng.uniform() < cfg.p_against and obj.category not in ("side table",):
        if _place_against(rng, obj, grounded[int(rng.integers(len(grounded)))], objects, region):
            return True
    elongated = [o for o in objects if CATEGORIES[o.category].elongated]
    if CATEGORIES[obj.category].elongated and elongated and rng.uniform() < cfg.p_snap:
        ref = elongated[int(rng.integers(len(elongated)))]
        obj.yaw = ref.yaw + float(rng.choice([0.0, math.pi / 2, math.pi, -math.pi / 2]))
    obj.rests_on, obj.placement = -1, "ground"
    return _place_ground(rng, obj, objects, region)


def _turn_fronts(rng, objects: list[SceneObject], cfg: LayoutConfig) -> None:
    """Turn some chairs and screens to face (or face away from) another object."""
    for i, o in enumerate(objects):
        if not o.shape.has_front or o.placement != "ground" or len(objects) < 2:
            continue
        if rng.uniform() >= cfg.p_face:
            continue
        j = int(rng.integers(len(objects) - 1))
        j += j >= i
        d = objects[j].center()[:2] - o.center()[:2]
        yaw = math.atan2(d[1], d[0]) + (math.pi if rng.uniform() < 0.3 else 0.0)
        old = o.yaw
        o.yaw = yaw + float(rng.normal(0, 0.05))
        # Turning about the origin may hit a neighbour or something standing on the object.
        on_it = [k for k, x in enumerate(objects) if x.rests_on == i]
        if on_it or any(objects_collide(o, x) for k, x in enumerate(objects) if k != i):
            o.yaw = old


def _sample_view(
    rng, objects, cfg: LayoutConfig, k: int, first: View | None, scale: float = 1.0
) -> View:
    centre = np.mean([o.center() for o in objects], axis=0) if objects else np.zeros(3)
    lookat = (centre[0] + rng.normal(0, 0.03), centre[1] + rng.normal(0, 0.03), 0.06 * scale)
    top = rng.uniform() < cfg.top_view_share
    if top:
        elevation, distance = rng.uniform(-85, -55), rng.uniform(1.05, 1.4) * scale
    else:
        elevation, distance = rng.uniform(-38, -18), rng.uniform(0.95, 1.35) * scale
    if first is None:
        azimuth = rng.uniform(0, 360)
    else:
        azimuth = first.azimuth + float(rng.choice([-1, 1])) * rng.uniform(40, 140)
    return View(
        lookat, float(distance), float(azimuth % 360), float(elevation), "top" if top else "robot"
    )


def _sample_appearance(rng, surface: str | None = None) -> Appearance:
    """Lighting and textures; the surface is drawn too unless given (real-scale scenes)."""
    from .render import N_SURFACE_MATERIALS  # the renderer defines how many textures exist

    drawn = "table" if rng.uniform() < 0.6 else "floor"
    surface = surface or drawn
    tint = tuple(float(v) for v in rng.uniform(0.45, 1.0, 3)) + (1.0,)
    direction = (rng.uniform(-0.6, 0.6), rng.uniform(-0.6, 0.6), -1.0)
    return Appearance(
        surface=surface,
        surface_material=int(rng.integers(N_SURFACE_MATERIALS)),
        surface_rgba=tint,
        floor_material=int(rng.integers(N_SURFACE_MATERIALS)),
        light_dir=tuple(float(v) for v in direction),
        light_diffuse=float(rng.uniform(0.45, 0.85)),
        ambient=float(rng.uniform(0.2, 0.4)),
        shadows=bool(rng.uniform() < 0.7),
    )
