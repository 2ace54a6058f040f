"""Detector-free verification of expanded images: is the label still true of the pixels?

A generated image is only worth training on if its label holds. No detector is trusted here
(a detector's mistakes would become label noise); instead each check uses geometry that is
known independently of the generator:

- Boxes. Every relation check is *strict*: a relation counts as confirmed only when it holds
  for the whole boxes, e.g. "left of" needs the subject's box to end left of where the
  object's box starts (by a margin). Only left/right are decided by image boxes (see
  BOX_RELATIONS for why not above/below). Then the relation holds for *anything* painted inside
  those boxes, which is exactly what inpainting (the subject is repainted inside its box) and
  layout-conditioned generation (each phrase is drawn inside its box) guarantee and no more.
  The negation is confirmed the same way (the boxes are strictly on the other side).
- Depth. "in front of" / "behind" compare median depths inside the two instance masks; only
  valid where the depth map still describes the image (restyling that kept the layout).
- Preservation. A restyled image keeps its source's geometry only if its structure survived:
  the gradient-magnitude correlation with the source inside each object's box must reach a
  threshold. An inpainted image must be the source outside the mask (it is composited so)
  and must have changed inside it (else no subject was swapped in).

- Noise. A diffusion output is rejected when its pixels are noise: the correlation of
  neighbouring pixels (about 0.8-1 for renders and photos, about 0 for pixel noise; see
  `bench/bench_ingest_expand.py`) must reach a threshold, measured on the generated image
  (inside the mask, for inpainting). This is the one check of a layout-conditioned (GLIGEN)
  output that does not use the mode's own boxes: those boxes hold by construction, so checking
  the relation against them could never reject anything and is not called verification.

A relation these checks cannot decide is "unverifiable"; the runner rejects such outputs
unless told to keep them. A rejection counts under each check that failed (FAILED_CHECKS),
never under one that passed; the measured values are in the manifest row, not in the keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Relation name -> (axis, sign): the subject's box lies entirely on the `sign` side of the
# object's box along image `axis` (0 = x to the right, 1 = y downwards). Only the camera-frame
# horizontal relations are here: "left of" in the camera frame is the order of image columns
# (u = f x / z), so whole boxes decide it. Vertical relations are not: VSR's "above", "below",
# "over", "under" are about world height, and an object farther away on a table sits higher
# in the image without being above anything; "at the left side of" also needs adjacency.
BOX_RELATIONS: dict[str, tuple[int, int]] = {
    "left of": (0, -1),
    "right of": (0, 1),
}
# Relation name -> sign of (subject depth - object depth) when it holds (camera depth).
DEPTH_RELATIONS: dict[str, int] = {"in front of": -1, "behind": 1}
# The relation that says the opposite (used to add a negative item).
OPPOSITES: dict[str, str] = {
    "left of": "right of",
    "right of": "left of",
    "in front of": "behind",
    "behind": "in front of",
}

CONFIRMED, CONTRADICTED, UNVERIFIABLE = "confirmed", "contradicted", "unverifiable"

# Check id -> what its failure means. A rejected output counts once under each id it failed.
FAILED_CHECKS: dict[str, str] = {
    "relation_contradicted": "the geometry contradicts the label",
    "relation_unverifiable": "no independent check decides the relation (--keep-unverified)",
    "layout_not_preserved": "img2img: structure correlation in a box below --min-structure",
    "not_repainted": "inpaint: mean change inside the mask below --min-inpaint-change",
    "noise": "the generated pixels are noise: neighbour correlation below --min-smoothness",
    "empty_box": "layout: a box holds nothing that stands out (contrast below --min-box-contrast)",
    "objects_hidden": "sim: the subject or object is hidden after the re-render",
    "borderline": "sim: the relation is borderline after the re-render",
    "not_in_scene": "sim: the subject or object is not in the scene file",
}


@dataclass(frozen=True)
class Box:
    """An axis-aligned pixel box, x to the right and y downwards, [x0, x1) x [y0, y1)."""

    x0: float  # left edge, pixels
    y0: float  # top edge, pixels
    x1: float  # right edge, pixels
    y1: float  # bottom edge, pixels

    def lo(self, axis: int) -> float:
        return self.x0 if axis == 0 else self.y0

    def hi(self, axis: int) -> float:
        return self.x1 if axis == 0 else self.y1

    def scaled(self, sx: float, sy: float) -> Box:
        return Box(self.x0 * sx, self.y0 * sy, self.x1 * sx, self.y1 * sy)

    def normalized(self, width: int, height: int) -> list[float]:
        return [self.x0 / width, self.y0 / height, self.x1 / width, self.y1 / height]

    def mask(self, height: int, width: int) -> np.ndarray:
        out = np.zeros((height, width), bool)
        out[int(self.y0) : int(np.ceil(self.y1)), int(self.x0) : int(np.ceil(self.x1))] = True
        return out

    @classmethod
    def of_mask(cls, mask: np.ndarray) -> Box | None:
        ys, xs = np.nonzero(mask)
        if not len(xs):
            return None
        return cls(float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))


@dataclass
class ObjectGeometry:
    """What is known of one object in one image, independently of any generator."""

    name: str  # how the item names it ("red cup")
    box: Box  # its pixel box
    mask: np.ndarray | None = None  # HxW bool instance mask, when the dataset has one
    depth: float | None = None  # median metric depth inside the mask, when depth exists


@dataclass
class Verdict:
    """Outcome of verifying one output: accepted or not, and every reason."""

    status: str  # CONFIRMED, CONTRADICTED or UNVERIFIABLE (of the relation)
    accepted: bool  # whether the output is kept
    reasons: list[str]  # what decided it, readable, with the measured values
    checks: dict  # the measured numbers (margins, correlations, changes)
    failed: list[str] = field(default_factory=list)  # ids (FAILED_CHECKS) of failed checks

    def fail(self, check: str, reason: str) -> None:
        """Record a failed check: the output is rejected and counted under `check`."""
        if check not in FAILED_CHECKS:
            raise ValueError(f"unknown check {check!r}; known: {', '.join(FAILED_CHECKS)}")
        if check not in self.failed:
            self.failed.append(check)
        self.reasons.append(reason)
        self.accepted = False


def relation_by_boxes(relation: str, subj: Box, obj: Box, margin: float) -> bool | None:
    """True/False if the boxes strictly decide `relation`, None if they cannot."""
    if relation not in BOX_RELATIONS:
        return None
    axis, sign = BOX_RELATIONS[relation]
    if sign < 0:
        ahead, behind = (
            subj.hi(axis) + margin <= obj.lo(axis),
            subj.lo(axis) >= obj.hi(axis) + margin,
        )
    else:
        ahead, behind = (
            subj.lo(axis) >= obj.hi(axis) + margin,
            subj.hi(axis) + margin <= obj.lo(axis),
        )
    if ahead:
        return True
    if behind:
        return False
    return None


def relation_by_depth(relation: str, subj: float | None, obj: float | None, margin: float):
    """True/False if median depths decide `relation` by more than `margin` metres, else None."""
    if relation not in DEPTH_RELATIONS or subj is None or obj is None:
        return None
    gap = (subj - obj) * DEPTH_RELATIONS[relation]
    if gap > margin:
        return True
    if gap < -margin:
        return False
    return None


def check_relation(
    relation: str,
    label: int,
    subj: ObjectGeometry | None,
    obj: ObjectGeometry | None,
    *,
    box_margin: float,
    depth_margin: float = 0.05,
    use_depth: bool = True,
) -> tuple[str, str]:
    """(status, reason) of the label `label` for `relation` given the two objects' geometry."""
    if subj is None or obj is None:
        return UNVERIFIABLE, "no boxes for the subject and object"
    holds = relation_by_boxes(relation, subj.box, obj.box, box_margin)
    how = "boxes"
    if holds is None and use_depth:
        holds, how = relation_by_depth(relation, subj.depth, obj.depth, depth_margin), "depth"
    if holds is None:
        known = relation in BOX_RELATIONS or relation in DEPTH_RELATIONS
        why = (
            "boxes/depth do not separate the objects"
            if known
            else "not checkable without a detector"
        )
        return UNVERIFIABLE, f"relation {relation!r}: {why}"
    if holds == bool(label):
        return CONFIRMED, f"{how} confirm label {label} for {relation!r}"
    return CONTRADICTED, f"{how} contradict label {label} for {relation!r}"


def _gradient_magnitude(image: np.ndarray) -> np.ndarray:
    gray = image.astype(np.float32).mean(axis=2) if image.ndim == 3 else image.astype(np.float32)
    gy, gx = np.gradient(gray)
    return np.hypot(gx, gy)


def structure_correlation(source: np.ndarray, output: np.ndarray, box: Box) -> float:
    """Correlation of gradient magnitude between two same-size images inside `box` (-1..1)."""
    region = box.mask(*source.shape[:2])
    a = _gradient_magnitude(source)[region]
    b = _gradient_magnitude(output)[region]
    if a.size < 4 or a.std() < 1e-6 or b.std() < 1e-6:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def mean_change(source: np.ndarray, output: np.ndarray, region: np.ndarray) -> float:
    """Mean absolute pixel change (0..255) over `region`."""
    if not region.any():
        return 0.0
    diff = np.abs(source.astype(np.float32) - output.astype(np.float32))
    return float(diff[region].mean())


def neighbour_correlation(image: np.ndarray, region: np.ndarray | None = None) -> float:
    """Correlation of horizontally and vertically adjacent pixels (grey levels), averaged over
    the two directions, over pairs inside `region`: near 1 for anything a camera or a renderer
    makes, near 0 for pixel noise. A flat region (no variance) counts as 1 (it is not noise)."""
    gray = image.astype(np.float32).mean(axis=2) if image.ndim == 3 else image.astype(np.float32)
    inside = np.ones(gray.shape, bool) if region is None else region.astype(bool)
    values = []
    for a, b, both in (
        (gray[:, :-1], gray[:, 1:], inside[:, :-1] & inside[:, 1:]),
        (gray[:-1, :], gray[1:, :], inside[:-1, :] & inside[1:, :]),
    ):
        x, y = a[both], b[both]
        if x.size < 4:
            continue
        if x.std() < 1e-6 or y.std() < 1e-6:
            values.append(1.0)
        else:
            values.append(float(np.corrcoef(x, y)[0, 1]))
    return float(np.mean(values)) if values else 1.0


def box_contrast(image: np.ndarray, box: Box) -> float:
    """Mean absolute colour difference (0..255) between a box and a ring around it (a quarter
    of the box's size wide): near 0 when nothing in the box stands out from its surroundings."""
    height, width = image.shape[:2]
    inner = box.mask(height, width)
    dx, dy = (box.x1 - box.x0) / 4, (box.y1 - box.y0) / 4
    grown = Box(max(0, box.x0 - dx), max(0, box.y0 - dy), min(width, box.x1 + dx),
                min(height, box.y1 + dy))  # fmt: skip
    ring = grown.mask(height, width) & ~inner
    if not inner.any() or not ring.any():
        return 0.0
    pixels = image.astype(np.float32).reshape(height, width, -1)
    return float(np.abs(pixels[inner].mean(axis=0) - pixels[ring].mean(axis=0)).mean())
