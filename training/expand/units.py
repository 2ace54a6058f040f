"""The pieces every expansion mode shares: the run config, work units, outputs, new items.

A unit is one output to make (a source item and a variant index) with its own seed; an output
is what a unit produced (image, items, verdict, masks, scene file). `source_geometry` reads
what a dataset already knows about an item's objects (instance mask, scene file, depth), and
`retarget` turns a source item into one about a new image, its wording re-rendered.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image
from vsre_ros.training.items import (
    ALL_TEMPLATES,
    TEMPLATES,
    Item,
    meta_category,
)

from vsre_ros.core.templates import caption as caption_of

from .verify import (
    Box,
    ObjectGeometry,
    Verdict,
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
    splits: tuple[str, ...] = ()  # source splits to expand (never a held-out one); empty =
    # the one training split ("train", or the only split named *train)
    per_item: int = 1  # outputs per source item
    limit: int = 0  # at most this many source items (0 = all)
    batch_size: int = 4  # requests per pipeline call
    seed: int = 0  # base seed; each unit's seed is derived from it and the unit id
    box_margin: float = 0.02  # strict box checks need this gap, as a share of image width
    depth_margin: float = 0.05  # metres two median depths must differ by
    min_structure: float = 0.3  # img2img: least gradient correlation with the source per box
    min_inpaint_change: float = 8.0  # inpaint: least mean change (0..255) inside the mask
    min_smoothness: float = 0.6  # diffusion: least neighbour-pixel correlation (noise ~0)
    min_box_contrast: float = 8.0  # layout: least colour contrast (0..255) of a box to its ring
    mask_dilate: int = 2  # inpaint: pixels added around the subject's box
    keep_unverified: bool = False  # keep outputs whose relation cannot be checked
    save_rejected: bool = False  # also write rejected images, to rejected/ (not the dataset)
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
    """A yes/no relation about one image: the only kind of item expansion re-draws (a question
    across two images would lose its second one)."""
    one_image = len(item.images or [item.image]) == 1
    return (
        one_image
        and item.answer_kind == "yes_no"
        and bool(item.subj and item.relation and item.obj)
    )


# --------------------------------------------------------------------------------------------
# Source geometry: boxes, masks and depth the dataset already holds


def load_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def source_geometry(item: Item) -> dict[str, ObjectGeometry]:
    """Objects of the item's first image by name: from its instance mask and scene file, or,
    without a mask, from the boxes the simulator's scene file measured for that image."""
    root = Path(item.root)
    scene_path = root / "scenes" / f"{item.scene_id}.json" if item.scene_id else None
    if scene_path is None or not scene_path.is_file():
        return {}
    scene = json.loads(scene_path.read_text())
    mask_name = item.masks[0] if item.masks else None
    if not mask_name:
        return _render_boxes(scene, item)
    with Image.open(root / mask_name) as image:
        mask = np.asarray(image)
    depth = None
    if item.depth and item.depth[0]:
        depth = np.load(root / item.depth[0], allow_pickle=False)
    found = {}
    for index, obj in enumerate(scene.get("objects", [])):
        name = obj.get("name")
        # Scene files without mask_id follow the simulator's numbering: object index + 1.
        instance = mask == int(obj.get("mask_id", index + 1))
        box = Box.of_mask(instance)
        if not name or box is None:
            continue
        median = float(np.median(depth[instance])) if depth is not None else None
        found[name] = ObjectGeometry(name, box, instance, median)
    return found


def _render_boxes(scene: dict, item: Item) -> dict[str, ObjectGeometry]:
    """Boxes from the scene file's measurement of the item's image (a sim scene file lists per
    render each object's bbox); the render that names the image, else the only one."""
    renders = scene.get("renders") or []
    named = [r for r in renders if r.get("image") == item.image]
    if not named and "view" in item.extra:  # an ingested frame: the sim item named its view
        named = [r for r in renders if r.get("view") == item.extra["view"] and not r.get("moved")]
    render = named[0] if len(named) == 1 else (renders[0] if len(renders) == 1 else None)
    if render is None:
        return {}
    objects = scene.get("objects", [])
    by_id = {int(o.get("mask_id", k + 1)): o.get("name") for k, o in enumerate(objects)}
    found = {}
    for measured in render.get("objects", []):
        name, bbox = by_id.get(int(measured.get("mask_id", 0))), measured.get("bbox")
        if name and bbox:
            found[name] = ObjectGeometry(name, Box(*(float(v) for v in bbox)))
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
        template = ALL_TEMPLATES.get(new.template_id)
        if template is None or template.kind == "choice":
            # A choice template's answer is an option, not the yes/no this item carries.
            template = TEMPLATES[0]
        new.template_id = template.id
        new.question = template.render(new.subj, new.relation, new.obj)
        new.answer = template.answer(bool(label))
    return new
