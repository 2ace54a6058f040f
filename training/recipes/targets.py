"""Training-only targets from the simulator's ground truth: dense patch labels and binding hops.

A tiny VLM trained from scratch on answers alone stays at chance (see the learnability notes):
the answer is one bit, and reaching it takes two hops nobody tells the model about (the object
words in the question must find their objects in the image; the answer position must read
those words). These targets supervise the parts directly:

- dense: for every image token, the colour and category of the object covering most of its
  patch (from the instance mask and the scene file) and the patch's log depth;
- hop 0: in the LM's first layer, one head of each object phrase's last token is pulled
  towards the phrase's other words ("crate" reads "yellow"). Half of the simulator's scenes
  repeat a colour and half repeat a category, so only the whole phrase names one object; a
  first-layer query is a function of its own token alone and cannot find the object;
- hop 1: in the next layer, one head of that token is pulled towards the image tokens its
  object covers (mask coverage per token);
- phrase probe: from that layer's output at the phrase token, a training-only linear head
  predicts where its object is (the same coverage over image tokens), its log depth and its
  shape (mask box, area, min and max log depth), so the phrase token must carry what the
  comparisons need into the layers that compare. These are the features with which a small
  MLP answers 93% of the relations (`bench/research/relation_ceiling.py`);
- pose probe (optional): from the same output, a second head predicts the object's 3D pose
  relative to the camera: its centre in the camera frame, which way its front points and
  how its long axis lies (both as angles from the camera's heading, unknown for objects
  without a front or a long axis) and its extents: the per-object part of the 3D features
  with which the same MLP answers 98%. Orientation relations (facing, parallel to) cannot be
  read from a box;
- hop 2: in the layer after, head k of the answer position is pulled towards the k-th named
  object's phrase (its last token, the one hops 0 and 1 bound to the object), the last head
  towards the relation words;
- relation bank: from that layer's output at the answer position, a training-only linear head
  predicts the truth of every generated binary relation (`BANK`, decided by the simulator's
  own predicates) between the first two named objects. Borderline pairs (a predicate's None)
  are left out, which leaves about 23 of the 42 decided for a typical pair: one question then
  teaches that many bits of the pair's geometry instead of one, and the answer's last layer
  only has to pick the bit its relation word names;
- verdict: from the same output, a second training-only head predicts the truth of the
  statement asked and, for the two-option templates, whether the option stating it is listed
  second. A lettered answer is the exclusive or of the two: the final layer combines two bits
  already present, rather than finding a bit whose correlation with the letter is zero (the
  XOR trap once more: run 17, trained without it, answered "A" to 185 of 199 such test
  questions and got 44% of them right).

Word positions come from the tokenizer's character offsets of the question as asked, so any
template's wording works. Items without masks (bags, VSR) simply get no targets.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from vsre_ros.sim_data.catalog import CATEGORIES, COLOURS
from vsre_ros.sim_data.relations import ELONGATION, GENERATED, Facts, decide, relation
from vsre_ros.sim_data.scene import Scene

from vsre_ros.core.model import VSREModel

from ..attention_rows import LayerRows
from ..data import Example
from ..items import ALL_TEMPLATES

COLOUR_IDS = {name: k + 1 for k, name in enumerate(COLOURS)}  # 0 = background
CATEGORY_IDS = {name: k + 1 for k, name in enumerate(CATEGORIES)}  # 0 = background
IGNORE = -100
SHAPE_SIZE = 7  # ImageTargets.shape entries per object
POSE_SIZE = 10  # ImageTargets.pose entries per object (see `object_poses`)
# The relation bank: every generated relation between a subject and one reference object.
BANK = [name for name in GENERATED if relation(name).arity == 2]


def token_grids(model: VSREModel) -> list[tuple[int, int]]:
    """The (rows, cols) grid of each block of one image's tokens, in token order."""
    fusion = model.fusion
    if hasattr(fusion, "grids"):  # sequence fusion: one block per encoder, in encoder order
        return [tuple(fusion.grids[name]) for name in model.encoders]
    return [tuple(fusion.grid)]


def _cells(shape: tuple[int, int], grid: tuple[int, int]) -> np.ndarray:
    """Index of the grid cell every pixel falls in [H, W]."""
    h, w = shape
    rows = (np.arange(h) * grid[0]) // h
    cols = (np.arange(w) * grid[1]) // w
    return rows[:, None] * grid[1] + cols[None, :]


def scene_file(item: Any) -> Path:
    """Where an item's scene file is (it may be missing: bags and VSR items have none)."""
    return Path(item.root) / "scenes" / f"{item.scene_id}.json"


def scene_owners(scene: dict) -> dict[int, tuple[str, str]]:
    """Mask id -> (colour, category) of every object of a scene file's contents."""
    return {int(o["mask_id"]): (o["colour"], o["category"]) for o in scene["objects"]}


def read_mask(path: str | Path) -> np.ndarray:
    """An instance mask PNG as int64 ids [H, W], 0 background."""
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im).astype(np.int64)


@dataclass
class ImageTargets:
    """Dense targets of one image over its tokens (all blocks concatenated)."""

    colour: np.ndarray  # [T] colour id of the patch's main object, 0 background
    category: np.ndarray  # [T] category id, 0 background
    log_depth: np.ndarray  # [T] mean log depth (nan without a depth file)
    coverage: dict[int, np.ndarray] = field(default_factory=dict)  # mask id -> [T] share
    # mask id -> [x0, y0, x1, y1, sqrt(area), min, max log depth] of its visible pixels
    shape: dict[int, np.ndarray] = field(default_factory=dict)
    pose: dict[int, np.ndarray] = field(default_factory=dict)  # mask id -> `object_poses` row
    # mask id -> (colour id, category id) of each object with visible pixels
    labels: dict[int, tuple[int, int]] = field(default_factory=dict)


class TargetBuilder:
    """Reads masks, depth and scene files once per image and turns them into targets."""

    def __init__(self, model: VSREModel):
        self.model = model
        self.grids = token_grids(model)
        self.grid_tokens = sum(h * w for h, w in self.grids)
        self.object_tokens = int(model.num_object_tokens)  # they follow the grid tokens
        self.num_tokens = self.grid_tokens + self.object_tokens
        if self.num_tokens != model.num_image_tokens:
            raise ValueError(
                f"token grids {self.grids} and {self.object_tokens} object tokens give "
                f"{self.num_tokens} tokens, the model has {model.num_image_tokens}"
            )
        self._images: dict[tuple[str, str], ImageTargets | None] = {}
        self._scenes: dict[Path, SceneTargets] = {}
        self._spans: dict[tuple[str, tuple[str, ...]], list[list[int]] | None] = {}
        self._bank: dict[tuple[str, str, int, int], np.ndarray | None] = {}

    # -- dense ---------------------------------------------------------------------------
    def _scene(self, path: Path) -> SceneTargets:
        if path not in self._scenes:
            data = json.loads(path.read_text())
            owners = scene_owners(data)
            renders = data.get("renders", [])
            poses = {r["image"]: object_poses(data, r) for r in renders}
            facts = {}
            if "gaps" in data:
                scene, gaps = Scene.from_dict(data), np.array(data["gaps"])
                for r in renders:
                    if not r.get("moved"):
                        cam = np.array([o["center_cam"] for o in r["objects"]], dtype=float)
                        facts[r["image"]] = Facts(scene, gaps, cam)
            self._scenes[path] = SceneTargets(owners, poses, facts)
        return self._scenes[path]

    def _scene_of(self, item: Any) -> SceneTargets | None:
        """The targets of the item's scene file, None when it has none."""
        path = scene_file(item)
        return self._scene(path) if path.is_file() else None

    def image(self, example: Example, k: int) -> ImageTargets | None:
        """Targets of image `k` of an example's item, None when it has no mask."""
        item = example.item
        masks = item.masks or []
        if k >= len(masks) or not masks[k]:
            return None
        key = (item.root, masks[k])
        if key not in self._images:
            self._images[key] = self._build(item, k)
        return self._images[key]

    def _build(self, item: Any, k: int) -> ImageTargets | None:
        root = Path(item.root)
        # Without a scene file (hand-made or recorded data) the mask still gives coverage and
        # shape; colour, category and pose stay unknown.
        scene = self._scene_of(item) if item.scene_id else None
        owners, poses = (scene.owners, scene.poses) if scene else ({}, {})
        mask = read_mask(root / item.masks[k])
        depth = None
        if k < len(item.depth or []) and item.depth[k]:
            depth = np.load(root / item.depth[k], allow_pickle=False).astype(np.float64)
        top = int(mask.max()) + 1
        colours, categories, depths, coverage = [], [], [], {}
        for grid in self.grids:
            cells = _cells(mask.shape, grid)
            n = grid[0] * grid[1]
            counts = np.bincount((cells * top + mask).ravel(), minlength=n * top).reshape(n, top)
            share = counts / counts.sum(1, keepdims=True).clip(min=1)
            main = counts.argmax(1)
            colours.append(np.array([COLOUR_IDS.get(owners.get(m, ("", ""))[0], 0) for m in main]))
            categories.append(
                np.array([CATEGORY_IDS.get(owners.get(m, ("", ""))[1], 0) for m in main])
            )
            for mask_id in range(1, top):
                coverage.setdefault(mask_id, []).append(share[:, mask_id])
            if depth is not None and depth.shape == mask.shape:
                logd = np.log(np.clip(depth, 1e-3, None))
                sums = np.bincount(cells.ravel(), weights=logd.ravel(), minlength=n)
                depths.append(sums / np.bincount(cells.ravel(), minlength=n).clip(min=1))
            else:
                depths.append(np.full(n, np.nan))
        # Object tokens have no patch: no dense label, no mask coverage.
        k_obj = self.object_tokens
        colours.append(np.full(k_obj, IGNORE))
        categories.append(np.full(k_obj, IGNORE))
        depths.append(np.full(k_obj, np.nan))
        shapes = object_shapes(mask, depth)
        labels = {}
        for mask_id in shapes:
            colour, category = owners.get(mask_id, ("", ""))
            labels[mask_id] = (COLOUR_IDS.get(colour, 0), CATEGORY_IDS.get(category, 0))
        return ImageTargets(
            np.concatenate(colours),
            np.concatenate(categories),
            np.concatenate(depths),
            {m: np.concatenate([*parts, np.zeros(k_obj)]) for m, parts in coverage.items()},
            shapes,
            poses.get(item.images[k], {}) if k < len(item.images) else {},
            labels,
        )

    # -- relation bank -------------------------------------------------------------------
    def bank(self, example: Example) -> np.ndarray | None:
        """Truth of every `BANK` relation between the item's first two named objects in its
        (single) image: 1.0, 0.0, or nan where borderline. None without a scene file, for
        renders of a moved scene, or with fewer than two named objects."""
        item = example.item
        ids = list(item.extra.get("mask_ids", []))
        if len(ids) < 2 or len(item.images) != 1 or not item.scene_id:
            return None
        key = (item.root, item.images[0], int(ids[0]), int(ids[1]))
        if key not in self._bank:
            facts = self._view_facts(item)
            i, j = int(ids[0]) - 1, int(ids[1]) - 1
            if facts is None or not (0 <= i < len(facts.objects) and 0 <= j < len(facts.objects)):
                self._bank[key] = None
            else:
                truth = [decide(facts, name, i, j) for name in BANK]
                self._bank[key] = np.array(
                    [np.nan if v is None else float(v) for v in truth], dtype=np.float32
                )
        return self._bank[key]

    def _view_facts(self, item: Any) -> Facts | None:
        """The relation facts of the item's first image; None for a moved render or a scene
        file without gaps."""
        scene = self._scene_of(item)
        return None if scene is None else scene.facts.get(item.images[0])

    # -- word spans ----------------------------------------------------------------------
    def spans(self, question: str, phrases: Sequence[str]) -> list[list[int]] | None:
        """Token indices (within the question suffix) of each phrase; [] where absent.

        None when the offsets do not reproduce the model's own suffix tokens.
        """
        key = (question, tuple(phrases))
        if key not in self._spans:
            self._spans[key] = self._find_spans(question, phrases)
        return self._spans[key]

    def _find_spans(self, question: str, phrases: Sequence[str]) -> list[list[int]] | None:
        model = self.model
        text = model.prompt.suffix(question)
        enc = model.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        if list(enc["input_ids"]) != model.suffix_ids(question):
            return None
        offsets = enc["offset_mapping"]
        lowered = text.lower()
        out = []
        for phrase in phrases:
            match = re.search(rf"\b{re.escape(phrase.lower())}\b", lowered) if phrase else None
            if match is None:
                out.append([])
                continue
            lo, hi = match.span()
            out.append([t for t, (s, e) in enumerate(offsets) if s < hi and e > lo])
        return out


def object_shapes(mask: np.ndarray, depth: np.ndarray | None) -> dict[int, np.ndarray]:
    """Box (as a share of the image side), square root of the area share, and the min and max
    log depth of each mask id's visible pixels (nan without a depth map)."""
    h, w = mask.shape
    logd = None
    if depth is not None and depth.shape == mask.shape:
        logd = np.log(np.clip(depth, 1e-3, None))
    out = {}
    for mask_id in np.unique(mask):
        if mask_id == 0:
            continue
        ys, xs = np.nonzero(mask == mask_id)
        d = (logd[ys, xs].min(), logd[ys, xs].max()) if logd is not None else (np.nan, np.nan)
        box = [xs.min() / w, ys.min() / h, (xs.max() + 1) / w, (ys.max() + 1) / h]
        out[int(mask_id)] = np.array([*box, np.sqrt(len(xs) / (h * w)), *d], dtype=np.float32)
    return out


class SceneTargets(NamedTuple):
    """What a scene file gives every image of the scene."""

    owners: dict[int, tuple[str, str]]  # mask id -> (colour, category)
    poses: dict[str, dict[int, np.ndarray]]  # render image -> mask id -> `object_poses` row
    facts: dict[str, Facts]  # render image -> the relations' inputs (not for moved renders)


def object_poses(scene: dict, render: dict) -> dict[int, np.ndarray]:
    """Each object's pose relative to one render's camera, `POSE_SIZE` entries:

    - its centre in the camera frame (x right, y down, z forward; metres);
    - cos and sin of its front's heading minus the camera's (nan without a front);
    - cos and sin of twice its long axis's heading minus the camera's (an axis has no sign;
      nan when the object is not elongated or nearly square, as `parallel to` decides);
    - its footprint's long and short side and its height (metres).

    Headings are about the world's vertical axis. Empty for a render of a moved scene, whose
    objects no longer stand where the scene file says.
    """
    if render.get("moved"):
        return {}
    forward = np.asarray(render["camera"]["cam_rot"], dtype=float)[:, 2]  # camera z in world
    heading = math.atan2(forward[1], forward[0])
    centres = {int(o["mask_id"]): o["center_cam"] for o in render["objects"]}
    out = {}
    for o in scene["objects"]:
        mask_id = int(o["mask_id"])
        if mask_id not in centres:
            continue
        length, width, height = (float(v) for v in o["size"])
        front = o["yaw"] - heading
        cos_f, sin_f = (
            (math.cos(front), math.sin(front)) if o.get("has_front") else (math.nan, math.nan)
        )
        category = CATEGORIES.get(o["category"])
        long_side, short_side = max(length, width), min(length, width)
        if category is not None and category.elongated and long_side >= ELONGATION * short_side:
            axis = front + (0.0 if length >= width else math.pi / 2)
            cos_a, sin_a = math.cos(2 * axis), math.sin(2 * axis)
        else:
            cos_a = sin_a = math.nan
        row = [*centres[mask_id], cos_f, sin_f, cos_a, sin_a, long_side, short_side, height]
        out[mask_id] = np.array(row, dtype=np.float32)
    return out


class PhraseTargets(NamedTuple):
    """Per object phrase of a batch: hop 1's attention target and the phrase probe's."""

    rows: torch.Tensor  # [K] batch row
    query: torch.Tensor  # [K] position of the phrase's last token
    keys: torch.Tensor  # [K, T] positions of the row's image tokens
    weights: torch.Tensor  # [K, T] the object's mask coverage over them, summing to 1
    depth: torch.Tensor  # [K] mean log depth of the object (nan: unknown)
    shape: torch.Tensor  # [K, SHAPE_SIZE] `ImageTargets.shape` of the object
    pose: torch.Tensor  # [K, POSE_SIZE] `ImageTargets.pose` of the object (nan: unknown)
    span: torch.Tensor  # [K, L] bool: positions of all the phrase's tokens
    image: torch.Tensor  # [K] index of the row's image among the batch's images


class ObjectTargets(NamedTuple):
    """The visible objects of a batch's images, for the object tokens, and the object phrases
    that name them (single-image rows)."""

    image: torch.Tensor  # [O] index of the object's image among the batch's images
    colour: torch.Tensor  # [O] colour id (0: unknown)
    category: torch.Tensor  # [O] category id (0: unknown)
    shape: torch.Tensor  # [O, SHAPE_SIZE] `ImageTargets.shape`
    pose: torch.Tensor  # [O, POSE_SIZE] `object_poses` row (nan: unknown)
    link_rows: torch.Tensor  # [P] batch row of an object phrase
    link_query: torch.Tensor  # [P] position of the phrase's last token
    link_object: torch.Tensor  # [P] the object it names, an index into the O objects
    link_start: torch.Tensor  # [P] position of the row's first object token


class _ObjectLists:
    """What `batch_targets` gathers for `ObjectTargets`, one object and one phrase at a time."""

    def __init__(self) -> None:
        self.image: list[int] = []
        self.colour: list[int] = []
        self.category: list[int] = []
        self.shape: list[np.ndarray] = []
        self.pose: list[np.ndarray] = []
        self.index: dict[tuple[int, int], int] = {}  # (image, mask id) -> object index
        self.links: list[tuple[int, int, int, int]] = []  # row, query, object, start

    def add_image(self, n: int, target: ImageTargets) -> None:
        for mask_id, (colour, category) in sorted(target.labels.items()):
            self.index[(n, mask_id)] = len(self.image)
            self.image.append(n)
            self.colour.append(colour)
            self.category.append(category)
            self.shape.append(target.shape[mask_id])
            self.pose.append(target.pose.get(mask_id, np.full(POSE_SIZE, np.nan)))

    def link(self, row: int, query: int, n: int, mask_id: int, start: int) -> None:
        if (n, mask_id) in self.index:
            self.links.append((row, query, self.index[(n, mask_id)], start))

    def tensors(self, device: torch.device) -> ObjectTargets:
        def longs(values: Sequence[int]) -> torch.Tensor:
            return torch.tensor(list(values), dtype=torch.long, device=device)

        links = list(zip(*self.links, strict=True)) if self.links else [(), (), (), ()]
        return ObjectTargets(
            longs(self.image),
            longs(self.colour),
            longs(self.category),
            torch.from_numpy(np.stack(self.shape)).float().to(device),
            torch.from_numpy(np.stack(self.pose)).float().to(device),
            *(longs(column) for column in links),
        )


# -- the batch's targets -------------------------------------------------------------------


def batch_targets(
    builder: TargetBuilder, examples: Sequence[Example], batch: dict[str, Any]
) -> dict[str, Any]:
    """Dense and attention targets of a collated batch (tensors on the batch's device)."""
    model = builder.model
    device = batch["input_ids"].device
    t = builder.num_tokens
    colour, category, depth = [], [], []
    hop1_rows, hop1_query, hop1_keys, hop1_weights, hop1_depth = [], [], [], [], []
    hop1_shape, hop1_pose, hop1_span, hop1_image = [], [], [], []
    hop2_rows, hop2_heads, hop2_query, hop2_keys = [], [], [], []
    hop0_rows, hop0_query, hop0_keys = [], [], []
    # Bits read at the answer position: name -> (batch rows, positions, [N, bits] truths)
    answer_bits: dict[str, tuple[list, list, list]] = {
        "bank": ([], [], []),
        "verdict": ([], [], []),
    }
    objects = _ObjectLists() if builder.object_tokens else None
    heads = int(model.base_lm().config.num_attention_heads)
    ids = batch["input_ids"]
    first_image = 0  # index of the row's first image among the batch's images
    for row, ex in enumerate(examples):
        n_images = len(ex.item.image_paths())
        first_image += n_images
        for k in range(n_images):
            target = builder.image(ex, k)
            if target is None:
                colour.append(np.full(t, IGNORE))
                category.append(np.full(t, IGNORE))
                depth.append(np.full(t, np.nan))
            else:
                colour.append(target.colour)
                category.append(target.category)
                depth.append(target.log_depth)
                if objects is not None:
                    objects.add_image(first_image - n_images + k, target)
        if n_images != 1:
            continue  # which image a phrase's object is in is the question's point
        target = builder.image(ex, 0)
        names = list(ex.item.extra.get("objects", []))
        mask_ids = list(ex.item.extra.get("mask_ids", []))
        if target is None or not names or len(names) != len(mask_ids):
            continue
        relation = ex.item.relation if ex.item.relation else ""
        spans = builder.spans(ex.question, names + [relation])
        if spans is None:
            continue
        image_pos = (ids[row] == model.image_token_id).nonzero().flatten()
        if image_pos.numel() != t:
            continue
        offset = int(batch["answer_start"][row]) - len(model.suffix_ids(ex.question))
        answer_pos = int(batch["answer_start"][row]) - 1
        for name, truth in (("bank", builder.bank(ex)), ("verdict", verdict_bits(ex))):
            if truth is not None and np.isfinite(truth).any():
                rows, query, truths = answer_bits[name]
                rows.append(row)
                query.append(answer_pos)
                truths.append(truth)
        for j, mask_id in enumerate(mask_ids):
            span = spans[j]
            cover = target.coverage.get(int(mask_id))
            if not span or cover is None or cover.sum() <= 0:
                continue
            if len(span) > 1:
                hop0_rows.append(row)
                hop0_query.append(offset + span[-1])
                hop0_keys.append([offset + s for s in span[:-1]])
            hop1_rows.append(row)
            hop1_query.append(offset + span[-1])
            hop1_keys.append(image_pos)
            hop1_weights.append(torch.from_numpy(cover / cover.sum()).float())
            known = np.isfinite(target.log_depth) & (cover > 0)
            hop1_depth.append(
                float((cover * target.log_depth)[known].sum() / cover[known].sum())
                if known.any()
                else float("nan")
            )
            hop1_shape.append(target.shape.get(int(mask_id), np.full(SHAPE_SIZE, np.nan)))
            hop1_pose.append(target.pose.get(int(mask_id), np.full(POSE_SIZE, np.nan)))
            hop1_span.append([offset + s for s in span])
            hop1_image.append(first_image - 1)
            if objects is not None:
                start = int(image_pos[builder.grid_tokens])
                objects.link(row, offset + span[-1], first_image - 1, int(mask_id), start)
            if j < heads - 1:
                hop2_rows.append(row)
                hop2_heads.append(j)
                hop2_query.append(answer_pos)
                hop2_keys.append([offset + span[-1]])  # the token hop 1 bound to its object
        if relation and spans[-1]:
            hop2_rows.append(row)
            hop2_heads.append(heads - 1)
            hop2_query.append(answer_pos)
            hop2_keys.append([offset + s for s in spans[-1]])
    out: dict[str, Any] = {
        "colour": torch.from_numpy(np.stack(colour)).long().to(device),
        "category": torch.from_numpy(np.stack(category)).long().to(device),
        "log_depth": torch.from_numpy(np.stack(depth)).float().to(device),
    }
    if objects is not None and objects.image:
        out["objects"] = objects.tensors(device)
    if hop1_rows:
        out["hop1"] = PhraseTargets(
            torch.tensor(hop1_rows, device=device),
            torch.tensor(hop1_query, device=device),
            torch.stack(hop1_keys).to(device),
            torch.stack(hop1_weights).to(device),
            torch.tensor(hop1_depth, device=device),
            torch.from_numpy(np.stack(hop1_shape)).float().to(device),
            torch.from_numpy(np.stack(hop1_pose)).float().to(device),
            _key_mask(hop1_span, ids.shape[1]).to(device),
            torch.tensor(hop1_image, device=device),
        )
    if hop2_rows:
        out["hop2"] = (
            torch.tensor(hop2_rows, device=device),
            torch.tensor(hop2_heads, device=device),
            torch.tensor(hop2_query, device=device),
            _key_mask(hop2_keys, ids.shape[1]).to(device),
        )
    for name, (rows, query, truth) in answer_bits.items():
        if rows:
            out[name] = (
                torch.tensor(rows, device=device),
                torch.tensor(query, device=device),
                torch.from_numpy(np.stack(truth)).to(device),
            )
    if hop0_rows:
        out["hop0"] = (
            torch.tensor(hop0_rows, device=device),
            torch.zeros(len(hop0_rows), dtype=torch.long, device=device),
            torch.tensor(hop0_query, device=device),
            _key_mask(hop0_keys, ids.shape[1]).to(device),
        )
    return out


def verdict_bits(example: Example) -> np.ndarray | None:
    """[truth of the statement asked, its option listed second] (nan: not applicable), or None
    for questions without a yes/no truth."""
    if example.truth is None:
        return None
    template = ALL_TEMPLATES.get(example.template_id or example.item.template_id)
    second = float("nan")
    if template is not None and template.kind == "choice" and template.options:
        second = float(template.yes != template.options[0])
    return np.array([float(example.truth), second], dtype=np.float32)


def _key_mask(keys: Sequence[Sequence[int]], width: int) -> torch.Tensor:
    mask = torch.zeros(len(keys), width, dtype=torch.bool)
    for r, positions in enumerate(keys):
        mask[r, list(positions)] = True
    return mask


class DenseHead(nn.Module):
    """Per-token colour, category and log-depth predictions from the fused image tokens."""

    def __init__(self, hidden: int):
        super().__init__()
        self.n_colour = len(COLOUR_IDS) + 1
        self.n_category = len(CATEGORY_IDS) + 1
        self.proj = nn.Linear(hidden, self.n_colour + self.n_category + 1)

    def forward(self, image_embeds: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.proj(image_embeds.float())
        colour = out[..., : self.n_colour]
        category = out[..., self.n_colour : self.n_colour + self.n_category]
        return colour, category, out[..., -1]


def dense_loss(head: DenseHead, image_embeds: torch.Tensor, targets: dict) -> torch.Tensor:
    """Colour and category cross-entropy plus log-depth regression over image tokens."""
    colour, category, depth = head(image_embeds)
    loss = F.cross_entropy(
        colour.flatten(0, 1), targets["colour"].flatten(), ignore_index=IGNORE
    ) + F.cross_entropy(category.flatten(0, 1), targets["category"].flatten(), ignore_index=IGNORE)
    known = torch.isfinite(targets["log_depth"])
    if bool(known.any()):
        loss = loss + F.mse_loss(depth[known], targets["log_depth"][known])
    return loss


class ObjectHead(nn.Module):
    """Training-only readout of each object token: whether it holds an object, and that
    object's colour, category, shape (`ImageTargets.shape`) and pose (`object_poses`)."""

    def __init__(self, hidden: int):
        super().__init__()
        self.sizes = [1, len(COLOUR_IDS) + 1, len(CATEGORY_IDS) + 1, SHAPE_SIZE, POSE_SIZE]
        self.proj = nn.Linear(hidden, sum(self.sizes))

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(objectness [..], colour logits, category logits, shape, pose) per token."""
        objectness, colour, category, shape, pose = self.proj(tokens.float()).split(self.sizes, -1)
        return objectness.squeeze(-1), colour, category, shape, pose


BOX_COST = 5.0  # weight of the box's L1 distance against the label costs when matching


def match_objects(predictions: tuple[torch.Tensor, ...], objects: ObjectTargets) -> torch.Tensor:
    """The object token each object is matched to ([O], -1 where its image has more objects
    than tokens): per image, the assignment of least total cost (Hungarian), the cost being
    BOX_COST x the L1 distance of the predicted box plus the colour's and the category's
    negative log-likelihood."""
    from scipy.optimize import linear_sum_assignment

    _, colour, category, shape, _ = (p.detach() for p in predictions)
    slot = torch.full_like(objects.image, -1)
    for n in objects.image.unique().tolist():
        which = (objects.image == n).nonzero().flatten()
        box = torch.cdist(shape[n, :, :4], objects.shape[which, :4], p=1)  # [K, M]
        cost = (
            BOX_COST * box
            - colour[n].log_softmax(-1)[:, objects.colour[which]]
            - category[n].log_softmax(-1)[:, objects.category[which]]
        )
        tokens, chosen = linear_sum_assignment(cost.cpu().numpy())
        slot[which[torch.as_tensor(chosen, device=slot.device)]] = torch.as_tensor(
            tokens, device=slot.device
        )
    return slot


def object_loss(
    head: ObjectHead, image_embeds: torch.Tensor, targets: dict, grid_tokens: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Set loss of the object tokens (those after `grid_tokens`) against each image's visible
    objects, after `match_objects`: objectness (binary cross-entropy over every token of the
    images with targets), colour and category cross-entropy and the shape and pose errors
    (summed over their entries, as the phrase probe's) of the matched tokens. Returns the
    loss and the match."""
    t: ObjectTargets = targets["objects"]
    predictions = head(image_embeds[:, grid_tokens:])
    slot = match_objects(predictions, t)
    objectness, colour, category, shape, pose = predictions
    images = t.image.unique()
    held = torch.zeros_like(objectness)
    matched = slot >= 0
    held[t.image[matched], slot[matched]] = 1.0
    loss = F.binary_cross_entropy_with_logits(objectness[images], held[images])
    img, tok = t.image[matched], slot[matched]
    for logits, labels in ((colour, t.colour), (category, t.category)):
        known = labels[matched] > 0
        if bool(known.any()):
            loss = loss + F.cross_entropy(logits[img, tok][known], labels[matched][known])
    for guess, truth, size in ((shape, t.shape, SHAPE_SIZE), (pose, t.pose, POSE_SIZE)):
        truth = truth[matched]
        known = torch.isfinite(truth)
        if bool(known.any()):
            loss = loss + size * F.mse_loss(guess[img, tok][known], truth[known])
    return loss, slot


def object_hop_loss(
    attentions: Mapping[int, LayerRows], targets: dict, slot: torch.Tensor, layer: int = 1
) -> torch.Tensor:
    """-log of the attention the second head of an object phrase's last token puts on the
    object token matched to its object (hop 1's first head reads the object's grid cells)."""
    t: ObjectTargets = targets["objects"]
    picked = slot[t.link_object]
    ok = picked >= 0
    if not bool(ok.any()):
        return attentions[layer][t.link_rows[:0], 1, t.link_query[:0]].sum()  # 0, in the graph
    attn = attentions[layer][t.link_rows[ok], 1, t.link_query[ok]]  # [P, L]
    mass = attn.gather(1, (t.link_start[ok] + picked[ok])[:, None]).squeeze(1)
    return -mass.float().clamp_min(1e-6).log().mean()


def hop1_loss(attentions: Mapping[int, LayerRows], targets: dict, layer: int = 1) -> torch.Tensor:
    """Cross-entropy of the first head's attention (object phrase -> image tokens) against the
    object's mask coverage."""
    t = targets["hop1"]
    attn = attentions[layer][t.rows, 0, t.query]  # [K, L]
    picked = attn.gather(1, t.keys).float().clamp_min(1e-6)
    return -(t.weights * picked.log()).sum(-1).mean()


def hop2_loss(attentions: Mapping[int, LayerRows], targets: dict, layer: int = 2) -> torch.Tensor:
    """-log of the attention mass head k of the answer position puts on its phrase's tokens."""
    return _mass_loss(attentions[layer], targets["hop2"])


def hop0_loss(attentions: Mapping[int, LayerRows], targets: dict, layer: int = 0) -> torch.Tensor:
    """-log of the attention mass an object phrase's last token puts on the phrase's other
    words (head 0)."""
    return _mass_loss(attentions[layer], targets["hop0"])


def _mass_loss(attention: torch.Tensor, target: tuple) -> torch.Tensor:
    rows, heads, query, key_mask = target
    attn = attention[rows, heads, query]  # [K, L]
    mass = (attn.float() * key_mask).sum(-1).clamp_min(1e-6)
    return -mass.log().mean()


class PhraseProbe(nn.Module):
    """Where an object phrase's object is (over image tokens), its mean log depth and its
    shape (box, area, depth range: `ImageTargets.shape`), read from the phrase's last token
    after the hop-1 layer."""

    def __init__(self, hidden: int, num_tokens: int):
        super().__init__()
        self.where = nn.Linear(hidden, num_tokens)
        self.depth = nn.Linear(hidden, 1)
        self.shape = nn.Linear(hidden, SHAPE_SIZE)

    def forward(self, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        states = states.float()
        return self.where(states), self.depth(states).squeeze(-1), self.shape(states)


class LayerOutput:
    """Keeps the output hidden states of one LM decoder layer (a forward hook)."""

    def __init__(self, model: VSREModel, layer: int = 0):
        self.states: torch.Tensor | None = None
        block = model.base_lm().model.layers[layer]
        self.handle = block.register_forward_hook(self._keep)

    def _keep(self, module: nn.Module, inputs: Any, output: Any) -> None:
        self.states = output[0] if isinstance(output, tuple) else output

    def remove(self) -> None:
        self.handle.remove()


def probe_loss(
    probe: PhraseProbe, states: torch.Tensor, targets: dict, shape_weight: float = 1.0
) -> torch.Tensor:
    """Soft cross-entropy of the object's place plus its log-depth error, per object phrase,
    plus `shape_weight` times the error on its shape."""
    t = targets["hop1"]
    depth, shape = t.depth, t.shape
    where, guess, shape_guess = probe(states[t.rows, t.query])
    loss = -(t.weights * where.log_softmax(-1)).sum(-1).mean()
    known = torch.isfinite(depth)
    if bool(known.any()):
        loss = loss + F.mse_loss(guess[known], depth[known])
    known = torch.isfinite(shape)
    if shape_weight > 0 and bool(known.any()):
        # Summed over the shape's entries (each about 0.1 in size) so they weigh like the depth.
        loss = loss + shape_weight * SHAPE_SIZE * F.mse_loss(shape_guess[known], shape[known])
    return loss


class BankProbe(nn.Module):
    """A linear readout of chosen positions' states: by default the truth logits of every
    `BANK` relation between the two named objects, read from the answer position after the
    hop-2 layer; with 2 outputs the verdict's, with `POSE_SIZE` the pose probe's."""

    def __init__(self, hidden: int, n_relations: int = len(BANK)):
        super().__init__()
        self.proj = nn.Linear(hidden, n_relations)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return self.proj(states.float())


def bank_loss(
    probe: BankProbe, states: torch.Tensor, targets: dict, key: str = "bank"
) -> torch.Tensor:
    """Binary cross-entropy over the decided (not borderline) bits of each row: the relation
    bank's (`key` "bank") or the verdict's (`key` "verdict", with a `BankProbe` of 2)."""
    rows, query, truth = targets[key]
    logits = probe(states[rows, query])
    known = torch.isfinite(truth)
    return F.binary_cross_entropy_with_logits(logits[known], truth[known])


def pose_loss(probe: BankProbe, states: torch.Tensor, targets: dict) -> torch.Tensor:
    """Squared error of a `BankProbe(hidden, POSE_SIZE)` on the known pose entries
    (`object_poses`) of each object phrase, read from its last token after the hop-1 layer;
    summed over a row's entries as the shape term is; 0 when no entry is known."""
    t = targets["hop1"]
    guess = probe(states[t.rows, t.query])
    known = torch.isfinite(t.pose)
    if not bool(known.any()):
        return guess.sum() * 0.0
    return POSE_SIZE * F.mse_loss(guess[known], t.pose[known])
