"""Expand a dataset with diffusion or simulation: `vsre expand --data DIR --mode MODE --out DIR`.

The VSRE paper's three expansion modes, two more, and the bookkeeping that makes them usable:

- txt2img: a new image drawn from a relation caption (SDXL);
- img2img: the source image restyled, layout kept, label carried over (SDXL img2img);
- inpaint: the subject's box repainted as another object; the label carries over with the new
  subject's name (SDXL inpainting; the source is composited back outside the box);
- layout: the caption drawn with one box per phrase placed so the relation holds by
  construction (GLIGEN, SD1.x: the only box-conditioned pipeline in diffusers 0.42), plus the
  opposite relation as a negative item on the same image;
- sim: the source scene re-rendered by the simulator with new textures, lighting, camera
  jitter and swapped subjects, labelled by the simulator's own predicates (no weights needed).

Every output is verified (`verify.py`) and the verdict recorded. The work list is one unit per
(source item, variant); each unit has its own seed, so results do not depend on batching or on
how many processes share the work. Under `accelerate launch` each process takes every n-th
unit and writes its own `parts/manifest-<rank>.jsonl` and `parts/items-<rank>.jsonl`; the main
process merges them into `manifest.jsonl`, `train.jsonl` and `dataset.json`. Units already in
a manifest are skipped, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image
from vsre_ros.training.items import (
    ALL_TEMPLATES,
    TEMPLATES,
    Item,
    load_items,
    meta_category,
    splits,
)

from vsre_ros.core.templates import caption as caption_of

from .verify import (
    BOX_RELATIONS,
    CONFIRMED,
    DEPTH_RELATIONS,
    OPPOSITES,
    UNVERIFIABLE,
    Box,
    ObjectGeometry,
    Verdict,
    check_relation,
    mean_change,
    structure_correlation,
)

SCHEMA = "vsre-dataset/1"
MODES = ("txt2img", "img2img", "inpaint", "layout", "sim")

# Restyling prompts for img2img: appearance changes that leave the layout alone.
STYLES = (
    "a photo taken at night under warm lamp light",
    "a watercolor painting",
    "a photo on an overcast day, soft shadows",
    "a pencil sketch",
    "a photo in bright sunlight, hard shadows",
    "a low-contrast film photo",
)
# Subjects swapped in by inpainting (the paper's example: teddy bear -> dog).
SWAP_NAMES = (
    "dog", "cat", "teddy bear", "vase", "backpack", "potted plant", "bowl", "book", "clock",
    "toy car", "bottle", "shoe",
)  # fmt: skip


@dataclass
class ExpandConfig:
    """One expansion run."""

    data: str  # source dataset directory (vsre format) or VSR jsonl folder
    out: str  # output dataset directory
    mode: str  # one of MODES
    model_dir: str = ""  # local diffusers pipeline directory (all modes but sim)
    fmt: str = "vsre"  # source format: vsre, or vsr (then `images` is the image folder)
    images: str = ""  # VSR image folder
    splits: tuple[str, ...] = ()  # source splits to expand; empty = every *train split
    per_item: int = 1  # outputs per source item
    limit: int = 0  # at most this many source items (0 = all)
    batch_size: int = 4  # requests per pipeline call
    seed: int = 0  # base seed; each unit's seed is derived from it and the unit id
    box_margin: float = 0.02  # strict box checks need this gap, as a share of image width
    depth_margin: float = 0.05  # metres two median depths must differ by
    min_structure: float = 0.3  # img2img: least gradient correlation with the source per box
    min_inpaint_change: float = 8.0  # inpaint: least mean change (0..255) inside the mask
    mask_dilate: int = 2  # inpaint: pixels added around the subject's box
    keep_unverified: bool = False  # keep outputs whose relation cannot be checked
    device: str = ""  # torch device; empty = the accelerate process's device
    generation: dict = field(default_factory=dict)  # GenerationConfig overrides


@dataclass
class Unit:
    """One output to make: a source item, a variant index, and everything derived from them."""

    unit_id: str  # "<item id>~<mode>~<k>", unique in the run
    item: Item  # the source item
    variant: int  # 0..per_item-1
    seed: int  # this unit's seed


@dataclass
class Output:
    """What a unit produced: the image, the items it carries, the verdict."""

    unit: Unit
    image: np.ndarray | None  # generated RGB image, None if nothing was generated
    items: list[Item]  # new items (all sharing the image)
    verdict: Verdict
    prompt: str = ""  # prompt used ("" for sim)
    extra: dict = field(default_factory=dict)  # mode-specific manifest fields
    masks: np.ndarray | None = None  # instance mask (uint8) to save with the image
    scene: dict | None = None  # scene file to save with the image
    depth: np.ndarray | None = None  # HxW float32 metres rendered with the image (sim)


def unit_seed(seed: int, unit_id: str) -> int:
    digest = hashlib.sha256(f"{seed}/{unit_id}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def _rng(unit: Unit) -> np.random.Generator:
    return np.random.default_rng(unit.seed)


def is_relation(item: Item) -> bool:
    return item.answer_kind == "yes_no" and bool(item.subj and item.relation and item.obj)


# --------------------------------------------------------------------------------------------
# Source geometry: boxes, masks and depth the dataset already holds


def load_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def source_geometry(item: Item) -> dict[str, ObjectGeometry]:
    """Objects of the item's first image by name, from its instance mask and scene file."""
    root = Path(item.root)
    mask_name = item.masks[0] if item.masks else None
    scene_path = root / "scenes" / f"{item.scene_id}.json" if item.scene_id else None
    if not mask_name or scene_path is None or not scene_path.is_file():
        return {}
    with Image.open(root / mask_name) as image:
        mask = np.asarray(image)
    depth = None
    if item.depth and item.depth[0]:
        depth = np.load(root / item.depth[0], allow_pickle=False)
    scene = json.loads(scene_path.read_text())
    found = {}
    for index, obj in enumerate(scene.get("objects", [])):
        name = obj.get("name")
        instance = mask == int(obj.get("mask_id", index + 1))
        box = Box.of_mask(instance)
        if not name or box is None:
            continue
        median = float(np.median(depth[instance])) if depth is not None else None
        found[name] = ObjectGeometry(name, box, instance, median)
    return found


# --------------------------------------------------------------------------------------------
# New items


def retarget(item: Item, unit_id: str, image: str, **changes) -> Item:
    """A copy of a relation item about a new image, with its wording re-rendered."""
    new = replace(item, **changes)
    new.id = unit_id if "id" not in changes else changes["id"]
    new.image, new.images = image, [image]
    new.masks = changes.get("masks", [None])
    new.depth = changes.get("depth", [None])
    new.source = "expand"
    new.extra = {}  # the source's producer fields (boxes, mask ids) describe the old image
    new.meta_category = meta_category(new.relation) if new.relation else ""
    if is_relation(new):
        label = int(new.label if new.label is not None else new.truth)
        new.label = label
        new.caption = caption_of(new.subj, new.relation, new.obj)
        template = ALL_TEMPLATES.get(new.template_id) or TEMPLATES[0]
        new.template_id = template.id
        new.question = template.render(new.subj, new.relation, new.obj)
        new.answer = template.answer(bool(label))
    return new


# --------------------------------------------------------------------------------------------
# Modes: which source items they take, what they ask the generator, how they verify


class DiffusionMode:
    """Shared plumbing of the diffusion modes; subclasses say what to draw and what to check."""

    name = ""

    def __init__(self, cfg: ExpandConfig, generation):
        self.cfg = cfg
        self.generation = generation

    def accepts(self, item: Item) -> str:
        """ "" if this mode can expand the item, else why not."""
        return "" if is_relation(item) else "not a yes/no relation item"

    def request(self, unit: Unit):
        raise NotImplementedError

    def finish(self, unit: Unit, request, image: np.ndarray) -> Output:
        raise NotImplementedError

    def decide(self, status: str, reasons: list[str], checks: dict, ok: bool = True) -> Verdict:
        accepted = ok and (
            status == CONFIRMED or (status == UNVERIFIABLE and self.cfg.keep_unverified)
        )
        return Verdict(status, accepted, reasons, checks)


class Txt2Img(DiffusionMode):
    name = "txt2img"

    def request(self, unit):
        from .diffusion import Request

        item = unit.item
        return Request(f"a photo: {caption_of(item.subj, item.relation, item.obj)}", unit.seed)

    def finish(self, unit, request, image):
        item = retarget(unit.item, unit.unit_id, "", label=1)
        reason = "text-to-image has no boxes to check the relation against"
        verdict = self.decide(UNVERIFIABLE, [reason], {})
        return Output(unit, image, [item], verdict, request.prompt)


class Img2Img(DiffusionMode):
    name = "img2img"

    def request(self, unit):
        from .diffusion import Request

        item = unit.item
        style = STYLES[int(_rng(unit).integers(len(STYLES)))]
        subject = caption_of(item.subj, item.relation, item.obj) if is_relation(item) else ""
        source = load_rgb(item.image_paths()[0])
        return Request(f"{style}. {subject}".strip(), unit.seed, image=source)

    def finish(self, unit, request, image):
        item, source = unit.item, request.image
        geometry = source_geometry(item)
        subj, obj = geometry.get(item.subj), geometry.get(item.obj)
        status, reason = check_relation(
            item.relation,
            int(item.truth),
            subj,
            obj,
            box_margin=self.cfg.box_margin * source.shape[1],
            depth_margin=self.cfg.depth_margin,
        )
        checks, reasons, ok = {}, [reason], True
        height, width = source.shape[:2]
        whole = ObjectGeometry("image", Box(0, 0, width, height))
        # Without object boxes (kept only with --keep-unverified) the whole image must survive.
        regions = (("subj", subj), ("obj", obj)) if subj or obj else (("image", whole),)
        for role, geo in regions:
            if geo is not None:
                r = structure_correlation(source, image, geo.box)
                checks[f"structure_{role}"] = round(r, 4)
                if r < self.cfg.min_structure:
                    ok = False
                    reasons.append(f"layout not preserved: {role} structure r={r:.2f}")
        new = retarget(item, unit.unit_id, "", depth=list(item.depth[:1]) or [None])
        new.extra = object_extra(geometry, [item.subj, item.obj])
        out = Output(unit, image, [new], self.decide(status, reasons, checks, ok), request.prompt)
        if geometry:
            # Restyling keeps the layout: the source's instances, numbered like the scene file.
            out.masks = _instance_mask(source.shape[:2], geometry)
            out.scene = _scene_file(unit, geometry)
        return out


class Inpaint(DiffusionMode):
    name = "inpaint"

    def accepts(self, item):
        why = super().accepts(item)
        if why:
            return why
        if item.subj not in source_geometry(item):
            return "no box or mask for the subject"
        return ""

    def _swap(self, unit: Unit) -> str:
        names = [n for n in SWAP_NAMES if n not in (unit.item.subj, unit.item.obj)]
        return names[int(_rng(unit).integers(len(names)))]

    def request(self, unit):
        from .diffusion import Request

        item = unit.item
        source = load_rgb(item.image_paths()[0])
        geometry = source_geometry(item)
        height, width = source.shape[:2]
        d = self.cfg.mask_dilate
        box = geometry[item.subj].box
        box = Box(
            max(0, box.x0 - d), max(0, box.y0 - d), min(width, box.x1 + d), min(height, box.y1 + d)
        )
        new_name = self._swap(unit)
        return Request(
            f"a photo of a {new_name}",
            unit.seed,
            image=source,
            mask=box.mask(height, width),
            phrases=(new_name,),
        )

    def finish(self, unit, request, image):
        item, source, mask = unit.item, request.image, request.mask
        composite = np.where(mask[:, :, None], image, source)  # outside the box: the source
        new_name = request.phrases[0]
        geometry = source_geometry(item)
        subj_box = Box.of_mask(mask)
        subj = ObjectGeometry(new_name, subj_box, mask, None)
        status, reason = check_relation(
            item.relation,
            int(item.truth),
            subj,
            geometry.get(item.obj),
            box_margin=self.cfg.box_margin * source.shape[1],
            use_depth=False,  # the new subject's depth is unknown
        )
        if status == UNVERIFIABLE and item.relation in DEPTH_RELATIONS:
            reason = f"relation {item.relation!r}: the repainted subject's depth is unknown"
        change = mean_change(source, composite, mask)
        checks = {"inpaint_change": round(change, 2), "mask_pixels": int(mask.sum())}
        reasons, ok = [reason], change >= self.cfg.min_inpaint_change
        if not ok:
            reasons.append(f"subject not repainted: mean change {change:.1f} inside the mask")
        new = retarget(item, unit.unit_id, "", subj=new_name)
        # Instance mask: the source's, with the repainted box as the new subject.
        swapped = {n: g for n, g in geometry.items() if n != item.subj}
        swapped[new_name] = subj
        new.extra = object_extra(swapped, [new_name, item.obj])
        masks = _instance_mask(source.shape[:2], swapped)
        out = Output(
            unit, composite, [new], self.decide(status, reasons, checks, ok), request.prompt
        )
        out.extra = {"swapped": [item.subj, new_name]}
        out.masks, out.scene = masks, _scene_file(unit, swapped)
        return out


class Layout(DiffusionMode):
    name = "layout"

    def accepts(self, item):
        why = super().accepts(item)
        if why:
            return why
        if item.relation not in BOX_RELATIONS:
            return f"no box layout expresses {item.relation!r}"
        return ""

    def request(self, unit):
        from .diffusion import Request

        item = unit.item
        subj, obj = layout_boxes(item.relation, _rng(unit), self.cfg.box_margin)
        prompt = f"a photo: {caption_of(item.subj, item.relation, item.obj)}"
        return Request(prompt, unit.seed, phrases=(item.subj, item.obj), boxes=(subj, obj))

    def finish(self, unit, request, image):
        item = unit.item
        height, width = image.shape[:2]
        boxes = [
            Box(b[0] * width, b[1] * height, b[2] * width, b[3] * height) for b in request.boxes
        ]
        geometry = {
            name: ObjectGeometry(name, box, box.mask(height, width))
            for name, box in zip(request.phrases, boxes, strict=True)
        }
        margin = self.cfg.box_margin * width
        items, reasons, statuses = [], [], []
        asks = [(item.relation, 1)]
        if item.relation in OPPOSITES:
            asks.append((OPPOSITES[item.relation], 0))
        for k, (relation, label) in enumerate(asks):
            status, reason = check_relation(
                relation, label, geometry[item.subj], geometry[item.obj], box_margin=margin
            )
            statuses.append(status)
            reasons.append(reason)
            if status == CONFIRMED:
                made = retarget(item, f"{unit.unit_id}~{k}", "", relation=relation, label=label)
                made.extra = object_extra(geometry, [item.subj, item.obj])
                items.append(made)
        status = CONFIRMED if statuses[0] == CONFIRMED else statuses[0]
        out = Output(unit, image, items, self.decide(status, reasons, {}), request.prompt)
        out.extra = {"boxes": [list(b) for b in request.boxes], "phrases": list(request.phrases)}
        out.masks, out.scene = (
            _instance_mask((height, width), geometry),
            _scene_file(unit, geometry),
        )
        return out


def layout_boxes(relation: str, rng: np.random.Generator, margin: float):
    """Normalized (subject box, object box) that satisfy `relation` strictly, with jitter."""
    axis, sign = BOX_RELATIONS[relation]
    gap = max(0.1, 3 * margin)
    size = rng.uniform(0.25, 0.38, 2)  # along the relation axis, for the two boxes
    across = rng.uniform(0.3, 0.6, 2)  # the other axis
    first = rng.uniform(0.03, 1 - size.sum() - gap - 0.03)
    lo_box = (first, first + size[0])
    hi_box = (lo_box[1] + gap, lo_box[1] + gap + size[1])
    boxes = []
    for span, extent in ((lo_box, across[0]), (hi_box, across[1])):
        start = rng.uniform(0.05, 0.95 - extent)
        other = (start, start + extent)
        x, y = (span, other) if axis == 0 else (other, span)
        boxes.append((float(x[0]), float(y[0]), float(x[1]), float(y[1])))
    # The subject takes the low side when the relation points to lower coordinates.
    return (boxes[0], boxes[1]) if sign < 0 else (boxes[1], boxes[0])


def _instance_mask(shape, geometry: dict[str, ObjectGeometry]) -> np.ndarray:
    out = np.zeros(shape, np.uint8)
    for k, geo in enumerate(geometry.values(), start=1):
        region = geo.mask if geo.mask is not None else geo.box.mask(*shape)
        out[region] = k
    return out


def _scene_file(unit: Unit, geometry: dict[str, ObjectGeometry]) -> dict:
    return {
        "scene_id": unit.unit_id,
        "source_item": unit.item.id,
        "source_scene": unit.item.scene_id,
        "objects": [
            {"name": name, "mask_id": k, "box": [geo.box.x0, geo.box.y0, geo.box.x1, geo.box.y1]}
            for k, (name, geo) in enumerate(geometry.items(), start=1)
        ],
    }


def object_extra(geometry: dict[str, ObjectGeometry], names: list[str]) -> dict:
    """Producer fields like the simulator's: the named objects, their mask ids (the order of
    `geometry`, as `_instance_mask` and `_scene_file` number them) and pixel boxes."""
    order = list(geometry)
    if not all(name in geometry for name in names):
        return {}
    boxes = [geometry[n].box for n in names]
    return {
        "objects": list(names),
        "mask_ids": [order.index(n) + 1 for n in names],
        "boxes": [[int(b.x0), int(b.y0), int(np.ceil(b.x1)), int(np.ceil(b.y1))] for b in boxes],
    }


DIFFUSION_MODES: dict[str, type[DiffusionMode]] = {
    "txt2img": Txt2Img,
    "img2img": Img2Img,
    "inpaint": Inpaint,
    "layout": Layout,
}


# --------------------------------------------------------------------------------------------
# The runner: work list, shards, resume, manifest


@dataclass
class Shard:
    """Which share of the work list this process takes."""

    index: int = 0  # this process's rank
    count: int = 1  # number of processes
    is_main: bool = True  # the process that merges
    wait: Callable[[], None] = lambda: None  # barrier between processes
    device: str = "cpu"  # this process's device

    @classmethod
    def from_accelerate(cls, device: str = "") -> Shard:
        """This process's share under `accelerate launch` (GPUs) or `torchrun` (CPU processes:
        accelerate only joins them into one group when told it runs on the CPU)."""
        import torch
        from accelerate import PartialState

        state = PartialState(cpu=device == "cpu" or not torch.cuda.is_available())
        return cls(
            state.process_index,
            state.num_processes,
            state.is_main_process,
            state.wait_for_everyone,
            str(state.device),
        )


def _parts(out: Path, kind: str) -> list[Path]:
    return sorted((out / "parts").glob(f"{kind}-*.jsonl"))


def _read_rows(paths: list[Path]) -> list[dict]:
    rows = []
    for path in paths:
        for line in path.read_text().splitlines():
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    pass  # a line cut by a killed process: its unit is simply redone
    return rows


def done_units(out: Path) -> set[str]:
    """Units that already have a manifest row (from any process of any earlier run)."""
    return {row["unit"] for row in _read_rows(_parts(out, "manifest"))}


def plan(cfg: ExpandConfig, items: list[Item], accepts: Callable[[Item], str]):
    """(units, skipped) for the source items: every item x variant the mode can take."""
    units, skipped = [], Counter()
    for item in items[: cfg.limit or None]:
        why = accepts(item)
        if why:
            skipped[why] += 1
            continue
        for k in range(cfg.per_item):
            unit_id = f"{item.id}~{cfg.mode}~{k}"
            units.append(Unit(unit_id, item, k, unit_seed(cfg.seed, unit_id)))
    return units, skipped


def source_items(cfg: ExpandConfig) -> list[Item]:
    root = Path(cfg.data)
    names = list(cfg.splits)
    if not names:
        if cfg.fmt != "vsre":
            raise ValueError("give --split for VSR-format sources")
        names = [s for s in splits(root) if s.endswith("train")]
        if not names:
            raise ValueError(f"{root} has no *train split; give --split (it has {splits(root)})")
    items = []
    for name in names:
        items.extend(load_items(root, name, cfg.fmt, cfg.images or None))
    return items


def _save(out: Path, output: Output) -> list[dict]:
    """Write an accepted output's files; return its items as jsonl rows."""
    name = output.unit.unit_id.replace("/", "_")
    image_rel = f"images/{name}.png"
    Image.fromarray(output.image).save(out / image_rel)
    mask_rel = None
    if output.masks is not None:
        mask_rel = f"masks/{name}.png"
        Image.fromarray(output.masks).save(out / mask_rel)
    scene_id = ""
    if output.scene is not None:
        scene_id = name
        (out / "scenes" / f"{name}.json").write_text(json.dumps(output.scene))
    rows = []
    for item in output.items:
        item.image, item.images, item.masks = image_rel, [image_rel], [mask_rel]
        depth = item.depth[0] if item.depth else None
        if output.depth is not None:
            np.save(out / "depth" / f"{name}.npy", output.depth, allow_pickle=False)
            item.depth = [f"depth/{name}.npy"]
        elif depth:
            # Restyling keeps the geometry, so the source's depth still describes the image.
            target = out / "depth" / f"{name}.npy"
            target.write_bytes((Path(output.unit.item.root) / depth).read_bytes())
            item.depth = [f"depth/{name}.npy"]
        else:
            item.depth = [None]
        item.scene_id = scene_id
        item.seed = output.unit.seed
        rows.append(item.to_json())
    return rows


def _manifest_row(cfg: ExpandConfig, output: Output, shard: Shard) -> dict:
    verdict = output.verdict
    return {
        "unit": output.unit.unit_id,
        "source_item": output.unit.item.id,
        "source": output.unit.item.source,
        "mode": cfg.mode,
        "prompt": output.prompt,
        "seed": output.unit.seed,
        "verdict": "accepted" if verdict.accepted else "rejected",
        "relation_check": verdict.status,
        "reasons": verdict.reasons,
        "checks": verdict.checks,
        "items": [i.id for i in output.items] if verdict.accepted else [],
        "process": shard.index,
        **output.extra,
    }


def make_producer(cfg: ExpandConfig, device: str):
    """(accepts, produce, close) for the mode: produce(units) -> list[Output]."""
    if cfg.mode == "sim":
        from .sim import SimExpander

        expander = SimExpander(cfg)
        return expander.accepts, expander.produce, expander.close
    if cfg.mode not in DIFFUSION_MODES:
        raise ValueError(f"unknown mode {cfg.mode!r}; known: {', '.join(MODES)}")
    from .diffusion import DiffusionBackend, GenerationConfig

    generation = GenerationConfig(**cfg.generation)
    mode = DIFFUSION_MODES[cfg.mode](cfg, generation)
    backend = None

    def produce(units: list[Unit]) -> list[Output]:
        nonlocal backend
        if backend is None:  # loaded on first use: a resumed run with nothing to do skips it
            backend = DiffusionBackend(cfg.mode, cfg.model_dir, generation, device)
        requests = [mode.request(u) for u in units]
        images = backend.generate(requests)
        outputs = []
        for unit, request, image in zip(units, requests, images, strict=True):
            if request.image is not None and image.shape[:2] != request.image.shape[:2]:
                # Back to the source's size, where its boxes, masks and depth are valid.
                height, width = request.image.shape[:2]
                image = np.asarray(Image.fromarray(image).resize((width, height), Image.BICUBIC))
            outputs.append(mode.finish(unit, request, image))
        return outputs

    return mode.accepts, produce, lambda: None


@dataclass
class ExpandReport:
    """Counts of one run (this process's share) and of the merged dataset."""

    planned: int = 0  # units in the whole work list
    mine: int = 0  # units assigned to this process
    skipped_done: int = 0  # of those, already in a manifest (resume)
    generated: int = 0  # produced in this run
    not_expandable: dict = field(default_factory=dict)  # reason -> source items left out
    verdicts: dict = field(default_factory=dict)  # merged: accepted/rejected counts
    reasons: dict = field(default_factory=dict)  # merged: rejection reason -> count
    items: int = 0  # merged: items in train.jsonl


def expand(cfg: ExpandConfig, shard: Shard | None = None) -> ExpandReport:
    """Run (this process's share of) an expansion; the main process merges at the end."""
    shard = shard or Shard()
    out = Path(cfg.out)
    for sub in ("images", "masks", "scenes", "depth", "parts"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    accepts, produce, close = make_producer(cfg, cfg.device or shard.device)
    units, not_expandable = plan(cfg, source_items(cfg), accepts)
    report = ExpandReport(planned=len(units), not_expandable=dict(not_expandable))
    mine = units[shard.index :: shard.count]
    done = done_units(out)
    todo = [u for u in mine if u.unit_id not in done]
    report.mine, report.skipped_done = len(mine), len(mine) - len(todo)
    batches = [todo[i : i + cfg.batch_size] for i in range(0, len(todo), cfg.batch_size)]
    try:
        _produce_all(cfg, shard, out, batches, produce, report)
    finally:
        close()
    shard.wait()
    if shard.is_main:
        merge(cfg, report)
    return report


def _produce_all(cfg, shard, out, batches, produce, report) -> None:
    from tqdm import tqdm

    manifest_path = out / "parts" / f"manifest-{shard.index:05d}.jsonl"
    items_path = out / "parts" / f"items-{shard.index:05d}.jsonl"
    total = sum(len(b) for b in batches)
    with (
        open(manifest_path, "a") as manifest,
        open(items_path, "a") as item_rows,
        tqdm(total=total, desc=f"expand {cfg.mode}", unit="img", disable=None) as bar,
    ):
        for batch in batches:
            for output in produce(batch):
                if output.verdict.accepted:
                    for row in _save(out, output):
                        item_rows.write(json.dumps(row) + "\n")
                    item_rows.flush()
                # The manifest row comes last: a unit counts as done only once it is complete.
                manifest.write(json.dumps(_manifest_row(cfg, output, shard)) + "\n")
                manifest.flush()
                report.generated += 1
                bar.update(1)


def merge(cfg: ExpandConfig, report: ExpandReport | None = None) -> ExpandReport:
    """Merge every process's parts into manifest.jsonl, train.jsonl and dataset.json."""
    report = report or ExpandReport()
    out = Path(cfg.out)
    manifest = {row["unit"]: row for row in _read_rows(_parts(out, "manifest"))}
    accepted = {
        i for row in manifest.values() if row["verdict"] == "accepted" for i in row["items"]
    }
    items = {row["id"]: row for row in _read_rows(_parts(out, "items")) if row["id"] in accepted}
    with open(out / "manifest.jsonl", "w") as handle:
        for unit in sorted(manifest):
            handle.write(json.dumps(manifest[unit]) + "\n")
    with open(out / "train.jsonl", "w") as handle:
        for item_id in sorted(items):
            handle.write(json.dumps(items[item_id]) + "\n")
    verdicts = Counter(row["verdict"] for row in manifest.values())
    reasons = Counter(
        reason
        for row in manifest.values()
        if row["verdict"] == "rejected"
        for reason in row["reasons"]
    )
    report.verdicts, report.reasons, report.items = dict(verdicts), dict(reasons), len(items)
    meta = {
        "schema": SCHEMA,
        "source": "expand",
        "seed": cfg.seed,
        "config": asdict(cfg),
        "counts": {
            "units": len(manifest),
            "accepted": verdicts.get("accepted", 0),
            "rejected": verdicts.get("rejected", 0),
            "by_relation_check": dict(Counter(r["relation_check"] for r in manifest.values())),
            "rejection_reasons": dict(reasons),
            "items": len(items),
        },
        "splits": {"train": len(items)},
        "created_by": "vsre expand",
    }
    (out / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
    return report


# --------------------------------------------------------------------------------------------
# Command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .diffusion import GenerationConfig

    d, g = ExpandConfig("", "", ""), GenerationConfig()
    parser.add_argument("--data", required=True, help="source dataset directory")
    parser.add_argument("--out", required=True, help="output dataset directory (resumable)")
    parser.add_argument("--mode", required=True, choices=MODES, help="expansion mode")
    parser.add_argument("--model", default="", help="local diffusers pipeline directory")
    parser.add_argument("--format", default=d.fmt, choices=("vsre", "vsr"), help="source format")
    parser.add_argument("--images", default="", help="image folder of a VSR-format source")
    parser.add_argument("--split", action="append", default=[], help="source split (repeatable)")
    parser.add_argument("--per-item", type=int, default=d.per_item, help="outputs per item")
    parser.add_argument("--limit", type=int, default=d.limit, help="at most N source items")
    parser.add_argument(
        "--batch-size", type=int, default=d.batch_size, help="requests per pipeline call"
    )
    parser.add_argument("--seed", type=int, default=d.seed, help="base seed")
    parser.add_argument(
        "--keep-unverified",
        action="store_true",
        help="keep outputs whose relation cannot be checked (marked unverifiable)",
    )
    parser.add_argument(
        "--box-margin",
        type=float,
        default=d.box_margin,
        help="gap strict box checks need, share of image width",
    )
    parser.add_argument(
        "--min-structure",
        type=float,
        default=d.min_structure,
        help="img2img: least structure correlation per object box",
    )
    parser.add_argument(
        "--min-inpaint-change",
        type=float,
        default=d.min_inpaint_change,
        help="inpaint: least mean pixel change (0-255) inside the mask",
    )
    parser.add_argument("--size", type=int, default=g.size, help="generated size, pixels")
    parser.add_argument("--steps", type=int, default=g.steps, help="denoising steps")
    parser.add_argument("--guidance", type=float, default=g.guidance, help="CFG scale")
    parser.add_argument("--strength", type=float, default=g.strength, help="img2img strength")
    parser.add_argument("--dtype", default=g.dtype, help="float32, float16 or bfloat16")
    parser.add_argument("--device", default="", help="torch device (default: accelerate's)")


def config_from_args(args: argparse.Namespace) -> ExpandConfig:
    return ExpandConfig(
        data=args.data,
        out=args.out,
        mode=args.mode,
        model_dir=args.model,
        fmt=args.format,
        images=args.images,
        splits=tuple(args.split),
        per_item=args.per_item,
        limit=args.limit,
        batch_size=args.batch_size,
        seed=args.seed,
        box_margin=args.box_margin,
        min_structure=args.min_structure,
        min_inpaint_change=args.min_inpaint_change,
        keep_unverified=args.keep_unverified,
        device=args.device,
        generation={
            "size": args.size,
            "steps": args.steps,
            "guidance": args.guidance,
            "strength": args.strength,
            "dtype": args.dtype,
        },
    )


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    if cfg.mode != "sim" and not cfg.model_dir:
        print(
            f"vsre expand: mode {cfg.mode!r} needs --model DIR (a local diffusers pipeline)",
            file=sys.stderr,
        )
        return 2
    try:
        report = expand(cfg, Shard.from_accelerate(cfg.device))
    except (FileNotFoundError, ValueError) as err:
        print(f"vsre expand: {err}", file=sys.stderr)
        return 1
    print(
        f"expand {cfg.mode}: {report.planned} units planned, {report.mine} for this process, "
        f"{report.skipped_done} already done, {report.generated} generated"
    )
    for why, count in report.not_expandable.items():
        print(f"  not expandable: {count} items: {why}")
    if report.verdicts:
        print(f"merged: {report.verdicts}, {report.items} items in {cfg.out}/train.jsonl")
        for why, count in sorted(report.reasons.items(), key=lambda kv: -kv[1]):
            print(f"  rejected {count}: {why}")
    return 0
