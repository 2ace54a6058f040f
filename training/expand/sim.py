"""Expansion by simulation: the same scene layout, re-rendered differently, relabelled exactly.

Where no diffusion weights exist, the simulator does the expansion's job with labels that are
right by construction: a source item's scene (its `scenes/<scene_id>.json`, written by the sim
generator) is loaded, and each variant changes what does not define the layout:

- textures and lighting: a new surface material and tint, light direction, intensity,
  ambient level and shadows;
- camera jitter: the item's view (the scene file's render that shows the item's image, else
  view 0) moved a little (azimuth, elevation, distance, look-at);
- a swapped subject: the subject becomes another category (same pose, when the new shape
  collides with nothing) or, failing that, another colour; the item's subject name follows.

The relation is then decided again by `sim_data.relations` on the new render, since jitter
can move a camera-frame relation across its margin and a new shape changes world relations:
the label is whatever the predicate says, and a borderline result or an object that became
hidden rejects the variant. Images, depth, instance masks and the scene file are written like
the generator's.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
from vsre_ros.training.items import Item

from .verify import CONFIRMED, CONTRADICTED, UNVERIFIABLE, Verdict

CAMERA_JITTER = {"azimuth": 8.0, "elevation": 4.0, "distance": 0.08, "lookat": 0.02}
MIN_VISIBLE = 0.25  # both objects must stay at least this visible (as the generator asks)
MIN_PIXELS = 10  # ... and cover at least this many pixels


class SimExpander:
    """Re-renders source scenes; one simulator per process, opened on first use."""

    def __init__(self, cfg):
        self.cfg = cfg
        self._sim = None
        self._size: tuple[int, int] | None = None

    def _scene_path(self, item: Item) -> Path:
        return Path(item.root) / "scenes" / f"{item.scene_id}.json"

    def accepts(self, item: Item) -> str:
        from vsre_ros.sim_data.relations import CATALOG

        from .units import is_relation

        if not is_relation(item):
            return "not a yes/no relation item about one image"
        if not item.scene_id or not self._scene_path(item).is_file():
            return "no simulator scene file"
        rel = CATALOG.get(item.relation)
        if rel is None or not rel.generated or rel.arity != 2:
            return f"the simulator does not decide {item.relation!r}"
        try:
            self._load(item)
        except (KeyError, TypeError, ValueError):
            return "scene file is not a sim_data scene (no objects/views/appearance)"
        return ""

    def _load(self, item: Item):
        """(scene, view index) of the item: the scene file's render that shows its image."""
        import json

        from vsre_ros.sim_data.scene import Scene

        raw = json.loads(self._scene_path(item).read_text())
        scene = Scene.from_dict(raw)
        view = next(
            (int(r["view"]) for r in raw.get("renders", []) if r.get("image") == item.image), 0
        )
        if not 0 <= view < len(scene.views):
            raise ValueError(f"view {view} not in the scene")
        return scene, view

    def close(self) -> None:
        if self._sim is not None:
            self._sim.close()
            self._sim = None

    def _simulator(self, width: int, height: int):
        from vsre_ros.sim_data.render import Simulator

        if self._size != (width, height):
            self.close()
            self._sim, self._size = Simulator(width, height), (width, height)
        return self._sim

    def produce(self, units) -> list:
        return [self._one(unit) for unit in units]

    def _one(self, unit):

        from PIL import Image
        from vsre_ros.sim_data.relations import Facts, decide

        from .units import Output, retarget

        item = unit.item
        rng = np.random.default_rng(unit.seed)
        scene, view_index = self._load(item)
        names = [o.name for o in scene.objects]
        if item.subj not in names or item.obj not in names:
            verdict = Verdict(UNVERIFIABLE, False, ["subject or object not in the scene"], {},
                              ["not_in_scene"])  # fmt: skip
            return Output(unit, None, [], verdict)
        subj_i, obj_i = names.index(item.subj), names.index(item.obj)
        scene = copy.deepcopy(scene)
        scene.scene_id = unit.unit_id
        swapped = _swap_subject(scene, subj_i, rng)
        _restyle(scene, rng)
        view = _jitter(scene.views[view_index], rng)
        with Image.open(item.image_paths()[0]) as source:
            width, height = source.size
        sim = self._simulator(width, height)
        sim.load(scene)
        render = sim.render(view)
        facts = Facts(scene, sim.gaps(), np.array([o["center_cam"] for o in render.objects]))
        new_subj = scene.objects[subj_i].name
        checks = {
            "visible_subj": round(render.objects[subj_i]["visible_fraction"], 3),
            "visible_obj": round(render.objects[obj_i]["visible_fraction"], 3),
        }
        hidden = [
            role
            for role, k in (("subject", subj_i), ("object", obj_i))
            if render.objects[k]["visible_fraction"] < MIN_VISIBLE
            or render.objects[k]["pixels"] < MIN_PIXELS
        ]
        holds = decide(facts, item.relation, subj_i, obj_i)
        if hidden:
            verdict = Verdict(
                CONTRADICTED,
                False,
                [f"{' and '.join(hidden)} hidden after re-render"],
                checks,
                ["objects_hidden"],
            )
        elif holds is None:
            verdict = Verdict(
                UNVERIFIABLE,
                False,
                ["simulator: borderline after re-render"],
                checks,
                ["borderline"],
            )
        else:
            verdict = Verdict(CONFIRMED, True, ["simulator predicates decide the label"], checks)
        label = int(bool(holds))
        new = retarget(item, unit.unit_id, "", subj=new_subj, label=label)
        new.task = item.task
        new.extra = {
            "objects": [new_subj, item.obj],
            "mask_ids": [subj_i + 1, obj_i + 1],
            "boxes": [render.objects[subj_i]["bbox"], render.objects[obj_i]["bbox"]],
        }
        out = Output(unit, render.rgb, [new], verdict)
        out.masks = render.seg.astype(np.uint8)
        scene_dict = scene.to_dict()
        scene_dict["view"] = view.to_dict()
        scene_dict["camera"] = render.camera_dict()
        scene_dict["measurements"] = render.objects
        for k, obj in enumerate(scene_dict["objects"]):
            obj["mask_id"] = k + 1
        out.scene = scene_dict
        out.depth = render.depth.astype(np.float32)
        out.extra = {"swapped": [item.subj, new_subj] if swapped else [], "label": label}
        return out


def _restyle(scene, rng: np.random.Generator) -> None:
    from vsre_ros.sim_data.render import N_SURFACE_MATERIALS

    app = scene.appearance
    app.surface_material = int(rng.integers(N_SURFACE_MATERIALS))
    app.floor_material = int(rng.integers(N_SURFACE_MATERIALS))
    app.surface_rgba = (*(float(v) for v in rng.uniform(0.45, 1.0, 3)), 1.0)
    app.light_dir = (float(rng.uniform(-0.6, 0.6)), float(rng.uniform(-0.6, 0.6)), -1.0)
    app.light_diffuse = float(rng.uniform(0.45, 0.85))
    app.ambient = float(rng.uniform(0.2, 0.4))
    app.shadows = bool(rng.uniform() < 0.7)


def _jitter(view, rng: np.random.Generator):
    from vsre_ros.sim_data.scene import View

    j = CAMERA_JITTER
    lookat = tuple(float(v + rng.uniform(-j["lookat"], j["lookat"])) for v in view.lookat)
    return View(
        lookat,
        float(view.distance * (1 + rng.uniform(-j["distance"], j["distance"]))),
        float((view.azimuth + rng.uniform(-j["azimuth"], j["azimuth"])) % 360),
        float(np.clip(view.elevation + rng.uniform(-j["elevation"], j["elevation"]), -89, -5)),
        view.kind,
    )


def _swap_subject(scene, index: int, rng: np.random.Generator) -> bool:
    """Give the subject another category (or colour); False if nothing could change."""
    from vsre_ros.sim_data.catalog import CATEGORIES, COLOURS, concept
    from vsre_ros.sim_data.scene import objects_collide

    subject = scene.objects[index]
    taken = {o.name for k, o in enumerate(scene.objects) if k != index}
    carries = any(o.rests_on == index for o in scene.objects)
    if not carries:
        options = [c for c in CATEGORIES.values() if c.placeable_on and c.name != subject.category]
        for k in rng.permutation(len(options)):
            cat = options[int(k)]
            if concept(cat.name, subject.colour) in taken:
                continue
            trial = copy.deepcopy(subject)
            trial.category, trial.shape = cat.name, cat.build(rng)
            others = [(k2, o) for k2, o in enumerate(scene.objects) if k2 != index]
            if any(
                objects_collide(trial, o, -1e-4 if k2 == subject.rests_on else 0.0)
                for k2, o in others
            ):
                continue
            scene.objects[index] = trial
            return True
    colours = [
        c for c in COLOURS if c != subject.colour and concept(subject.category, c) not in taken
    ]
    if not colours:
        return False
    subject.colour = colours[int(rng.integers(len(colours)))]
    return True
