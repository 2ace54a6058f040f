"""Questions with exact answers, generated from a rendered scene's ground truth.

Four sources, one item format (the dataset schema; see docs/data.md):

- VSR: "The X is <relation> the Y." with a True/False label, asked through an instruction
  template. Per view, relations are drawn among those that have both a True and a False pair
  in it, and each contributes one True and one False item: labels are balanced per relation
  by construction.
- Sparkle's basic skills: direction (image-plane direction of X from Y, 8 choices), distance
  (which of Y, Z is closer to X, in 3D), localization (3x3 image grid cell of X's visible mask),
  and one composite task: the shortest route from a start object through the others (exact,
  by enumerating every order).
- SpatialVLM: metric (distance between centres, distance from the camera, width, height, in
  metres) and comparative (bigger, taller, wider) questions.
- MMRA-style questions across two images: the same scene from two viewpoints (in which image
  is X left of Y; is a relation kept across views) and before/after one object moved (which
  object moved).

Every answer comes from a predicate or a measurement; a question whose answer sits within a
margin of a decision boundary is not asked.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from vsre_ros.core import grammar
from vsre_ros.core.templates import (
    DIRECTIONS,
    GRID_CELLS,
    HELDOUT_TEMPLATES,
    TASK_TEMPLATES,
    TEMPLATES,
    Template,
    caption,
)

from .catalog import CATEGORIES, size_ranges
from .relations import CATALOG, GENERATED, Facts, decide, left_of
from .render import ViewRender
from .scene import LayoutConfig, Scene

METRIC_DECIMALS = 2  # numbers are answered in metres with two decimals
DIR_MARGIN_DEG = 7.0  # direction: skip when within this many degrees of a sector boundary
DIR_MIN_PX = 0.08  # direction: centres at least this share of the image diagonal apart
GRID_MARGIN = 0.04  # localization: skip when the centroid is this close to a grid line (share)
CLOSER_RATIO = 1.25  # distance/compare: the larger at least 1.25x the smaller...
CLOSER_DIFF = 0.05  # ... and at least 5 cm (distance) apart
SIZE_RATIO, SIZE_DIFF = 1.2, 0.02  # taller/wider: at least 1.2x and 2 cm difference
VOLUME_RATIO = 1.5  # bigger: bounding-box volume at least 1.5x
PATH_MARGIN = 1.05  # composite: the best route at least 5% shorter than the next best
# Relations that a scene can decide only now and then (they need a container, a support, a
# front, two elongated objects...). They are drawn RARE_WEIGHT times as often as the rest when
# available, so that a dataset covers them; labels stay balanced within each relation.
RARE = frozenset({
    "touching", "against", "on", "on top of", "inside", "in", "within", "contains",
    "surrounding", "around", "enclosed by", "outside", "in the middle of", "at the edge of",
    "facing", "facing away from", "ahead of", "at the back of", "parallel to",
    "perpendicular to", "under", "beneath", "over", "above", "below", "far away from",
})  # fmt: skip
RARE_WEIGHT = 4.0
CROSS_VIEW = ("left of", "right of", "in front of", "behind")  # relations asked across views
CONJUNCTION = ("left of", "right of", "in front of", "behind", "above", "near")  # composites
# Orientation relations: which of the pair's objects must show its front (subject 0, object 1).
FRONT_HOLDER = {"facing": (0,), "facing away from": (0,), "ahead of": (1,), "at the back of": (1,)}
SIZE_JITTER = LayoutConfig().size_jitter  # per-instance size factors of version 2 objects
CATEGORY_RATIO = 1.2  # version 2 compare: the categories' typical sizes at most this far apart


@dataclass(frozen=True)
class QuestionConfig:
    """How many questions of each kind one scene gives (upper bounds)."""

    relations_per_view: int = 6  # relations asked per view, each with one True + one False
    relations: tuple[str, ...] = ()  # ask only these relations (empty: every generated one)
    heldout: bool = False  # also ask each relation item through a held-out template
    direction: int = 2  # per view
    distance: int = 1  # per view
    localization: int = 2  # per view
    composite: int = 1  # per view
    metric: int = 3  # per view
    compare: int = 2  # per view
    multi_image: int = 3  # per scene with two views (which image; kept; changed)
    min_visible: float = 0.25  # objects less visible than this are not asked about
    min_pixels: int = 10  # ... nor objects with fewer visible pixels
    wording: str = "templates"  # relations asked through: "templates" (the VSRE 50, data
    # version 1) or "grammar" (core.grammar's seen wordings; held-out ones with `heldout`)
    picture_only: bool = False  # data version 2: only questions the picture can answer
    # (fronts visible for orientation, compare between objects whose category does not give
    # the answer) and composite conjunctions of two relations
    input_size: int = 64  # picture_only: the model's input side, pixels
    min_front_pixels: int = 24  # picture_only: a front-holding object's visible pixels there
    min_front_cos: float = 0.35  # picture_only: |cos| of its front against the view direction

    def __post_init__(self) -> None:
        unknown = sorted(set(self.relations) - set(GENERATED))
        if unknown:
            raise ValueError(f"relations {unknown} are not generated ones: {sorted(GENERATED)}")


def base_item(scene: Scene, seed: int, task: str, images: list[str]) -> dict:
    """An item with every schema field at its neutral value."""
    return {
        "id": "",
        "image": images[0],
        "images": list(images),
        "depth": [],
        "masks": [],
        "caption": "",
        "label": None,
        "relation": "",
        "subj": "",
        "obj": "",
        "meta_category": "",
        "question": "",
        "answer": "",
        "answer_kind": "",
        "options": [],
        "value": None,
        "unit": "",
        "template_id": "",
        "task": task,
        "scene_id": scene.scene_id,
        "seed": seed,
        "source": "sim",
        "objects": [],  # names of the objects involved, subject first
        "mask_ids": [],  # their mask values (object index + 1), parallel to objects
        "boxes": [],  # their 2D boxes [x0, y0, x1, y1) in the (first) image, parallel to objects
        "view": 0,  # index of the view the (first) image shows
    }


class QuestionMaker:
    """Makes the items of one scene; `rng` decides which questions, never their answers."""

    def __init__(
        self,
        scene: Scene,
        renders: list[ViewRender],
        gaps: np.ndarray,
        rng: np.random.Generator,
        seed: int,
        config: QuestionConfig | None = None,
        image_names: list[str] | None = None,
    ):
        self.scene, self.renders, self.gaps, self.rng, self.seed = scene, renders, gaps, rng, seed
        self.cfg = config or QuestionConfig()
        self.names = [o.name for o in scene.objects]
        self.images = image_names or [f"view{k}" for k in range(len(renders))]
        self.facts = [
            Facts(scene, gaps, np.array([o["center_cam"] for o in r.objects])) for r in renders
        ]

    # -- helpers --------------------------------------------------------------------------
    def visible(self, v: int) -> list[int]:
        r = self.renders[v]
        return [
            k
            for k, o in enumerate(r.objects)
            if o["pixels"] >= self.cfg.min_pixels and o["visible_fraction"] >= self.cfg.min_visible
        ]

    def _pick(self, seq, k: int) -> list:
        seq = list(seq)
        if len(seq) <= k:
            order = self.rng.permutation(len(seq))
        else:
            order = self.rng.choice(len(seq), size=k, replace=False)
        return [seq[int(i)] for i in order]

    def _item(self, task: str, v: int, objs: list[int], **fields) -> dict:
        it = base_item(self.scene, self.seed, task, [self.images[v]])
        it["view"] = v
        it["objects"] = [self.names[k] for k in objs]
        it["mask_ids"] = [k + 1 for k in objs]
        it["boxes"] = self._boxes(v, objs)
        it.update(fields)
        return it

    def _boxes(self, v: int, objs: list[int]) -> list:
        """2D boxes [x0, y0, x1, y1) of the objects in image v (None where not visible)."""
        return [self.renders[v].objects[k]["bbox"] for k in objs]

    # -- VSR relations ---------------------------------------------------------------------
    def relation_items(self, v: int) -> list[dict]:
        vis = self.visible(v)
        facts = self.facts[v]
        by_rel: dict[str, tuple[list, list]] = {}
        memo: dict = {}
        for name in GENERATED:
            if self.cfg.relations and name not in self.cfg.relations:
                continue
            rel = CATALOG[name]
            tuples = (
                itertools.permutations(vis, 3)
                if rel.arity == 3
                else itertools.permutations(vis, 2)
            )
            pos, neg = [], []
            holders = FRONT_HOLDER.get(name, ())
            for t in tuples:
                if rel.arity == 3 and t[1] > t[2]:
                    continue  # "between Y and Z" is "between Z and Y"
                if self.cfg.picture_only and not all(self.front_visible(v, t[h]) for h in holders):
                    continue  # which way it faces would not show at the model's resolution
                key = (rel.predicate, t)  # aliases share a predicate: decide each pair once
                if key not in memo:
                    memo[key] = rel.predicate(facts, *t)
                label = memo[key]
                if label is True:
                    pos.append(t)
                elif label is False:
                    neg.append(t)
            if pos and neg:
                by_rel[name] = (pos, neg)
        items = []
        for name in self._pick_relations(sorted(by_rel)):
            pos, neg = by_rel[name]
            for label, pool in ((True, pos), (False, neg)):
                objs = list(pool[int(self.rng.integers(len(pool)))])
                items.append(self._relation_item(v, name, objs, label, self._wording(False)))
                if self.cfg.heldout:
                    items.append(self._relation_item(v, name, objs, label, self._wording(True)))
        return items

    def _wording(self, heldout: bool) -> Template:
        """The wording of the next relation item: a template (version 1) or a grammar wording
        of the seen (or, held out, the unseen) framings and vocabularies."""
        if self.cfg.wording == "grammar":
            return grammar.sample(self.rng, "unseen" if heldout else "seen")
        if self.cfg.wording != "templates":
            raise ValueError(f"unknown wording {self.cfg.wording!r}; known: templates, grammar")
        templates = HELDOUT_TEMPLATES if heldout else TEMPLATES
        return templates[int(self.rng.integers(len(templates)))]

    def front_visible(self, v: int, k: int) -> bool:
        """Whether object k's front shows in view v at the model's input resolution: enough
        of it is visible, and its front (or back) is turned towards the camera, not edge-on."""
        r, o = self.renders[v], self.scene.objects[k]
        h, w = r.rgb.shape[:2]
        pixels = r.objects[k]["pixels"] * (self.cfg.input_size / w) * (self.cfg.input_size / h)
        if not o.shape.has_front or pixels < self.cfg.min_front_pixels:
            return False
        to_camera = (r.cam_pos - o.center())[:2]
        front = np.array([math.cos(o.yaw), math.sin(o.yaw)])
        norm = float(np.linalg.norm(to_camera))
        return norm > 0 and abs(float(front @ to_camera)) / norm >= self.cfg.min_front_cos

    def _pick_relations(self, names: list[str]) -> list[str]:
        """Up to relations_per_view names; rarely decidable relations are favoured."""
        k = min(self.cfg.relations_per_view, len(names))
        if k == 0:
            return []
        w = np.array([RARE_WEIGHT if n in RARE else 1.0 for n in names])
        idx = self.rng.choice(len(names), size=k, replace=False, p=w / w.sum())
        return [names[int(i)] for i in idx]

    def _relation_item(self, v, name, objs, label, t: Template) -> dict:
        subj = self.names[objs[0]]
        obj = self.names[objs[1]]
        if len(objs) == 3:
            obj = f"{obj} and the {self.names[objs[2]]}"
        kind = {"yes_no": "yes_no", "verify": "yes_no", "choice": "choice"}[t.kind]
        framing, vocabulary = grammar.framing_of(t.id)  # recorded so training can pair wordings
        return self._item(
            "relation",
            v,
            objs,
            caption=caption(subj, name, obj),
            label=int(label),
            relation=name,
            subj=subj,
            obj=obj,
            meta_category=CATALOG[name].meta,
            question=t.render(subj, name, obj),
            answer=t.answer(label),
            answer_kind=kind,
            options=list(t.options),
            template_id=t.id,
            frame=CATALOG[name].frame,
            framing=framing,
            vocabulary=vocabulary,
        )

    # -- Sparkle ---------------------------------------------------------------------------
    def direction_items(self, v: int) -> list[dict]:
        r = self.renders[v]
        h, w = r.rgb.shape[:2]
        diag = math.hypot(w, h)
        cands = []
        inside = [
            k for k in self.visible(v)
            if 0 <= r.objects[k]["center_px"][0] < w and 0 <= r.objects[k]["center_px"][1] < h
        ]  # fmt: skip
        for i, j in itertools.permutations(inside, 2):
            du, dv = np.subtract(r.objects[i]["center_px"], r.objects[j]["center_px"])
            if math.hypot(du, dv) < DIR_MIN_PX * diag:
                continue
            ang = math.degrees(math.atan2(-dv, du)) % 360  # counter-clockwise from "right"
            sector = int(((ang + 22.5) % 360) // 45)
            off = (ang + 22.5) % 45
            if off < DIR_MARGIN_DEG or off > 45 - DIR_MARGIN_DEG:
                continue
            cands.append((i, j, sector))
        names = [
            "right",
            "up and right",
            "up",
            "up and left",
            "left",
            "down and left",
            "down",
            "down and right",
        ]
        items = []
        for i, j, sector in self._pick(cands, self.cfg.direction):
            t = self._task_template("direction")
            items.append(
                self._item(
                    "direction",
                    v,
                    [i, j],
                    subj=self.names[i],
                    obj=self.names[j],
                    question=t.render(
                        subj=self.names[i], obj=self.names[j], options=", ".join(DIRECTIONS)
                    ),
                    answer=names[sector],
                    answer_kind="choice",
                    options=list(DIRECTIONS),
                    template_id=t.id,
                    frame="image",
                )
            )
        return items

    def distance_items(self, v: int) -> list[dict]:
        f = self.facts[v]
        cands = []
        for x, a, b in itertools.permutations(self.visible(v), 3):
            if a > b:
                continue
            da = float(np.linalg.norm(f.centre[x] - f.centre[a]))
            db = float(np.linalg.norm(f.centre[x] - f.centre[b]))
            near, far = min(da, db), max(da, db)
            if far >= CLOSER_RATIO * near and far - near >= CLOSER_DIFF:
                cands.append((x, a, b, a if da < db else b))
        items = []
        for x, a, b, best in self._pick(cands, self.cfg.distance):
            if self.rng.uniform() < 0.5:
                a, b = b, a
            t = self._task_template("distance")
            opts = [self.names[a], self.names[b]]
            items.append(
                self._item(
                    "distance",
                    v,
                    [x, a, b],
                    subj=self.names[x],
                    question=t.render(subj=self.names[x], a=opts[0], b=opts[1]),
                    answer=self.names[best],
                    answer_kind="choice",
                    options=opts,
                    template_id=t.id,
                    frame="world",
                )
            )
        return items

    def localization_items(self, v: int) -> list[dict]:
        r = self.renders[v]
        h, w = r.rgb.shape[:2]
        cands = []
        for k in self.visible(v):
            ys, xs = np.nonzero(r.seg == k + 1)
            cu, cv = (xs.mean() + 0.5) / w, (ys.mean() + 0.5) / h
            if any(abs(c - g) < GRID_MARGIN for c in (cu, cv) for g in (1 / 3, 2 / 3)):
                continue
            cands.append((k, int(cv * 3) * 3 + int(cu * 3)))
        items = []
        for k, cell in self._pick(cands, self.cfg.localization):
            t = self._task_template("localization")
            items.append(
                self._item(
                    "localization",
                    v,
                    [k],
                    subj=self.names[k],
                    question=t.render(subj=self.names[k], options=", ".join(GRID_CELLS)),
                    answer=GRID_CELLS[cell],
                    answer_kind="choice",
                    options=list(GRID_CELLS),
                    template_id=t.id,
                    frame="image",
                )
            )
        return items

    def composite_items(self, v: int) -> list[dict]:
        vis = self.visible(v)
        if len(vis) < 4 or self.cfg.composite <= 0:
            return []
        f = self.facts[v]
        items = []
        for _ in range(self.cfg.composite):
            chosen = [vis[int(i)] for i in self.rng.choice(len(vis), size=4, replace=False)]
            start, others = chosen[0], chosen[1:]

            def length(order, start=start):
                pts = [f.centre[start, :2]] + [f.centre[k, :2] for k in order]
                return sum(float(np.linalg.norm(b - a)) for a, b in itertools.pairwise(pts))

            routes = sorted(itertools.permutations(others), key=length)
            if length(routes[1]) < PATH_MARGIN * length(routes[0]):
                continue
            wrong = [routes[int(i)] for i in 1 + self.rng.choice(len(routes) - 1, 2, False)]
            opts = [routes[0], *wrong]
            opts = [opts[int(i)] for i in self.rng.permutation(3)]
            texts = [", ".join(self.names[k] for k in o) for o in opts]
            t = self._task_template("composite")
            items.append(
                self._item(
                    "composite",
                    v,
                    chosen,
                    subj=self.names[start],
                    question=t.render(
                        start=self.names[start],
                        others=", ".join(self.names[k] for k in others[:-1])
                        + f" and {self.names[others[-1]]}",
                        options="; ".join(f"({c}) {x}" for c, x in zip("abc", texts, strict=True)),
                    ),
                    answer=", ".join(self.names[k] for k in routes[0]),
                    answer_kind="choice",
                    options=texts,
                    template_id=t.id,
                    frame="world",
                    value=round(length(routes[0]), 4),
                    unit="m",
                )
            )
        return items

    # -- SpatialVLM -----------------------------------------------------------------------
    def metric_items(self, v: int) -> list[dict]:
        vis = self.visible(v)
        f, r = self.facts[v], self.renders[v]
        items = []
        for _ in range(self.cfg.metric):
            t = self._task_template("metric")
            if t.id in ("met0", "met1"):
                if len(vis) < 2:
                    continue
                i, j = (vis[int(k)] for k in self.rng.choice(len(vis), 2, False))
                value = float(np.linalg.norm(f.centre[i] - f.centre[j]))
                objs, q = [i, j], t.render(subj=self.names[i], obj=self.names[j])
                what = "distance between bounding-box centres"
            else:
                i = vis[int(self.rng.integers(len(vis)))] if vis else None
                if i is None:
                    continue
                objs, q = [i], t.render(subj=self.names[i])
                size = self.scene.objects[i].size()
                if t.id == "met2":
                    value = float(np.linalg.norm(f.centre[i] - r.cam_pos))
                    what = "camera centre to bounding-box centre"
                elif t.id == "met3":
                    value, what = float(max(size[0], size[1])), "larger horizontal dimension"
                else:
                    value, what = float(size[2]), "vertical extent"
            items.append(
                self._item(
                    "metric",
                    v,
                    objs,
                    subj=self.names[objs[0]],
                    obj=self.names[objs[1]] if len(objs) > 1 else "",
                    question=q,
                    answer=f"{value:.{METRIC_DECIMALS}f}",
                    answer_kind="number",
                    value=value,
                    unit="m",
                    template_id=t.id,
                    frame="world",
                    measure=what,
                )
            )
        return items

    def compare_items(self, v: int) -> list[dict]:
        vis = self.visible(v)
        cands = []
        for a, b in itertools.combinations(vis, 2):
            sa, sb = self.scene.objects[a].size(), self.scene.objects[b].size()
            tests = {
                "cmp0": (float(np.prod(sa)), float(np.prod(sb)), VOLUME_RATIO, 0.0),
                "cmp1": (float(sa[2]), float(sb[2]), SIZE_RATIO, SIZE_DIFF),
                "cmp2": (float(max(sa[:2])), float(max(sb[:2])), SIZE_RATIO, SIZE_DIFF),
            }
            for tid, (x, y, ratio, diff) in tests.items():
                hi_, lo_ = max(x, y), min(x, y)
                if self.cfg.picture_only and not self._category_undecided(tid, a, b):
                    continue
                if hi_ >= ratio * lo_ and hi_ - lo_ >= diff:
                    cands.append((tid, a, b, a if x > y else b))
        items = []
        for tid, a, b, best in self._pick(cands, self.cfg.compare):
            if self.rng.uniform() < 0.5:
                a, b = b, a
            t = next(x for x in TASK_TEMPLATES["compare"] if x.id == tid)
            opts = [self.names[a], self.names[b]]
            items.append(
                self._item(
                    "compare",
                    v,
                    [a, b],
                    subj=opts[0],
                    obj=opts[1],
                    question=t.render(a=opts[0], b=opts[1]),
                    answer=self.names[best],
                    answer_kind="choice",
                    options=opts,
                    template_id=t.id,
                    frame="world",
                )
            )
        return items

    def _category_undecided(self, tid: str, a: int, b: int) -> bool:
        """Whether the two objects' categories leave the compare answer open: both are
        tabletop objects (whose sizes vary per instance by SIZE_JITTER) and their categories'
        typical sizes in the measure asked are within CATEGORY_RATIO of each other, so either
        may be the larger one in a scene."""
        cats = [CATEGORIES[self.scene.objects[k].category] for k in (a, b)]
        if not all(c.placeable_on for c in cats):
            return False
        typical = []
        for c in cats:
            lo, hi = size_ranges(c.name)
            mid = (lo + hi) / 2
            typical.append(
                {"cmp0": float(np.prod(mid)), "cmp1": float(mid[2]), "cmp2": float(max(mid[:2]))}[
                    tid
                ]
            )
        big, small = max(typical), min(typical)
        ratio = CATEGORY_RATIO ** (3 if tid == "cmp0" else 1)  # volumes grow as the cube
        return big <= ratio * small

    # -- composite conjunctions (version 2) ----------------------------------------------
    def conjunction_items(self, v: int) -> list[dict]:
        """ "Is X <r1> Y and <r2> Z?": one item that holds and one where exactly one of the two
        relations does (so neither relation alone gives the answer)."""
        vis = self.visible(v)
        if len(vis) < 3 or self.cfg.composite <= 0:
            return []
        f = self.facts[v]
        true, false = [], []
        for x, y, z in itertools.permutations(vis, 3):
            for r1, r2 in itertools.permutations(CONJUNCTION, 2):
                a, b = decide(f, r1, x, y), decide(f, r2, x, z)
                if a is None or b is None:
                    continue
                if a and b:
                    true.append((x, y, z, r1, r2, True))
                elif a != b:
                    false.append((x, y, z, r1, r2, False))
        if not true or not false:
            return []
        items = []
        for x, y, z, r1, r2, label in self._pick(true, 1) + self._pick(false, 1):
            wording = grammar.subject_first(self._conjunction_wording())
            subj, obj, obj2 = (self.names[k] for k in (x, y, z))
            compound = f"{r1} the {obj} and {r2}"
            framing, vocabulary = grammar.framing_of(wording.id)
            items.append(
                self._item(
                    "composite",
                    v,
                    [x, y, z],
                    caption=f"The {subj} is {compound} the {obj2}.",
                    label=int(label),
                    subj=subj,
                    obj=obj,
                    question=wording.render(subj, compound, obj2),
                    answer=wording.answer(label),
                    answer_kind="choice" if wording.kind == "choice" else "yes_no",
                    options=list(wording.options),
                    template_id=wording.id,
                    frame="camera",
                    relations=[r1, r2],
                    framing=framing,
                    vocabulary=vocabulary,
                )
            )
        return items

    def _conjunction_wording(self) -> Template:
        """A seen grammar wording outside the VSRE templates, whose "A: ... B: the X is not
        ..." options would read a negated conjunction ambiguously."""
        framings = sorted({f for f, _ in grammar.pool("seen")} - set(grammar.LEGACY))
        framing = framings[int(self.rng.integers(len(framings)))]
        return grammar.sample(self.rng, "seen", framing=framing)

    # -- MMRA-style, two images -----------------------------------------------------------
    def multi_view_items(self) -> list[dict]:
        if len(self.renders) < 2 or self.cfg.multi_image <= 0:
            return []
        both = sorted(set(self.visible(0)) & set(self.visible(1)))
        which, kept, flipped = [], [], []
        for i, j in itertools.permutations(both, 2):
            l0, l1 = left_of(self.facts[0], i, j), left_of(self.facts[1], i, j)
            if l0 is not None and l1 is not None and l0 != l1:
                which.append((i, j, 0 if l0 else 1))
            for name in CROSS_VIEW:
                a, b = decide(self.facts[0], name, i, j), decide(self.facts[1], name, i, j)
                if a is True and b is not None:
                    (kept if b else flipped).append((name, i, j, b))
        items = []
        opts = ["first image", "second image"]
        t0, t1 = TASK_TEMPLATES["multi_image"][:2]
        for i, j, k in self._pick(which, 1):
            items.append(
                self._multi(
                    [i, j],
                    subj=self.names[i],
                    obj=self.names[j],
                    relation="left of",
                    question=t0.render(
                        subj=self.names[i], obj=self.names[j], options=", ".join(opts)
                    ),
                    answer=opts[k],
                    answer_kind="choice",
                    options=opts,
                    template_id=t0.id,
                )
            )
        # One relation kept across the views (yes) and one that changed (no), when both exist.
        for name, i, j, b in self._pick(kept, 1) + self._pick(flipped, 1):
            items.append(
                self._multi(
                    [i, j],
                    subj=self.names[i],
                    obj=self.names[j],
                    relation=name,
                    label=int(b),
                    question=t1.render(subj=self.names[i], obj=self.names[j], relation=name),
                    answer="yes" if b else "no",
                    answer_kind="yes_no",
                    template_id=t1.id,
                )
            )
        return items[: self.cfg.multi_image]

    def moved_items(self, moved: int | None, before: int, after: int) -> list[dict]:
        """Which object moved between image `before` and image `after` (None: nothing did)."""
        t = TASK_TEMPLATES["multi_image"][2]
        vis = sorted(set(self.visible(before)))
        if moved is not None and moved not in vis:
            return []
        others = [k for k in vis if k != moved]
        pick = self._pick(others, 2)
        names = [self.names[k] for k in pick] + ([self.names[moved]] if moved is not None else [])
        names = [names[int(i)] for i in self.rng.permutation(len(names))] + ["none"]
        answer = self.names[moved] if moved is not None else "none"
        objs = ([moved] if moved is not None else []) + pick
        it = base_item(
            self.scene, self.seed, "multi_image", [self.images[before], self.images[after]]
        )
        it.update(
            objects=[self.names[k] for k in objs],
            mask_ids=[k + 1 for k in objs],
            boxes=self._boxes(before, objs),
            question=t.render(options=", ".join(names)),
            answer=answer,
            answer_kind="choice",
            options=names,
            template_id=t.id,
            frame="world",
            view=before,
        )
        return [it]

    def _multi(self, objs: list[int], **fields) -> dict:
        it = base_item(self.scene, self.seed, "multi_image", self.images[:2])
        it["objects"] = [self.names[k] for k in objs]
        it["mask_ids"] = [k + 1 for k in objs]
        it["boxes"] = self._boxes(0, objs)
        it["frame"] = "camera"
        it.update(fields)
        return it

    def _task_template(self, task: str):
        pool = TASK_TEMPLATES[task]
        return pool[int(self.rng.integers(len(pool)))]

    def all_items(self) -> list[dict]:
        """Every task for every view, then the two-image questions."""
        items: list[dict] = []
        for v in range(len(self.renders)):
            items += self.relation_items(v)
            items += self.direction_items(v)
            items += self.distance_items(v)
            items += self.localization_items(v)
            items += self.composite_items(v)
            if self.cfg.picture_only:
                items += self.conjunction_items(v)
            items += self.metric_items(v)
            items += self.compare_items(v)
        items += self.multi_view_items()
        return items
