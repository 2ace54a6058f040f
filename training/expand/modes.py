"""The diffusion modes: which source items each takes, what it asks the pipeline, what it checks.

txt2img draws the caption (nothing to check it against); img2img restyles and must keep the
layout; inpaint repaints the subject's box as another object; layout (GLIGEN) draws each phrase
in a box placed so "left of"/"right of" holds. Each mode is one class in `DIFFUSION_MODES`.
"""

from __future__ import annotations

import numpy as np
from vsre_ros.training.items import (
    Item,
)

from vsre_ros.core.templates import caption as caption_of

from .units import (
    STYLES,
    SWAP_NAMES,
    ExpandConfig,
    Output,
    Unit,
    _rng,
    is_relation,
    load_rgb,
    retarget,
    source_geometry,
)
from .verify import (
    BOX_RELATIONS,
    CONTRADICTED,
    DEPTH_RELATIONS,
    OPPOSITES,
    UNVERIFIABLE,
    Box,
    ObjectGeometry,
    Verdict,
    box_contrast,
    check_relation,
    mean_change,
    neighbour_correlation,
    structure_correlation,
)

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
        return "" if is_relation(item) else "not a yes/no relation item about one image"

    def request(self, unit: Unit):
        raise NotImplementedError

    def finish(self, unit: Unit, request, image: np.ndarray) -> Output:
        raise NotImplementedError

    def decide(self, status: str, reasons: list[str], checks: dict) -> Verdict:
        """The verdict of the relation check; failures of other checks are added with
        `Verdict.fail`, so each rejection counts under exactly the checks that failed."""
        verdict = Verdict(status, True, list(reasons), checks)
        if status == CONTRADICTED:
            verdict.failed.append("relation_contradicted")
            verdict.accepted = False
        elif status == UNVERIFIABLE and not self.cfg.keep_unverified:
            verdict.failed.append("relation_unverifiable")
            verdict.accepted = False
        return verdict

    def noise_region(self, request, shape: tuple[int, int]) -> np.ndarray | None:
        """Where the noise check looks in the generated image (None: all of it)."""
        return None

    def check_noise(self, output: Output, generated: np.ndarray, request) -> Output:
        """Reject an output whose generated pixels are noise (`neighbour_correlation` below
        `min_smoothness`), measured on the image as the pipeline made it, before any resize."""
        region = self.noise_region(request, generated.shape[:2])
        score = neighbour_correlation(generated, region)
        output.verdict.checks["smoothness"] = round(score, 4)
        if score < self.cfg.min_smoothness:
            output.verdict.fail(
                "noise", f"noise: neighbour correlation {score:.2f} < {self.cfg.min_smoothness}"
            )
        return output


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
        checks, failures = {}, []
        height, width = source.shape[:2]
        whole = ObjectGeometry("image", Box(0, 0, width, height))
        # Without object boxes (kept only with --keep-unverified) the whole image must survive.
        regions = (("subj", subj), ("obj", obj)) if subj or obj else (("image", whole),)
        for role, geo in regions:
            if geo is not None:
                r = structure_correlation(source, image, geo.box)
                checks[f"structure_{role}"] = round(r, 4)
                if r < self.cfg.min_structure:
                    failures.append(f"layout not preserved: {role} structure r={r:.2f}")
        verdict = self.decide(status, [reason], checks)
        for failure in failures:
            verdict.fail("layout_not_preserved", failure)
        new = retarget(item, unit.unit_id, "", depth=list(item.depth[:1]) or [None])
        new.extra = object_extra(geometry, [item.subj, item.obj])
        out = Output(unit, image, [new], verdict, request.prompt)
        if geometry:
            out.scene = _scene_file(unit, geometry)
        if geometry and all(g.mask is not None for g in geometry.values()):
            # Restyling keeps the layout: the source's instances, numbered like the scene file
            # (only real masks: a box is not an instance mask).
            out.masks = _instance_mask(source.shape[:2], geometry)
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

    def _swap(self, unit: Unit, present: set[str]) -> str:
        """A new subject name that no object in the image already has (names must stay
        unique for the question to say which object it means)."""
        names = [n for n in SWAP_NAMES if n not in present | {unit.item.subj, unit.item.obj}]
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
        new_name = self._swap(unit, set(geometry))
        return Request(
            f"a photo of a {new_name}",
            unit.seed,
            image=source,
            mask=box.mask(height, width),
            phrases=(new_name,),
        )

    def noise_region(self, request, shape):
        from PIL import Image

        # The mask at the generated image's size: only the repainted pixels are new.
        resized = Image.fromarray(request.mask.astype(np.uint8) * 255).resize(
            (shape[1], shape[0]), Image.NEAREST
        )
        return np.asarray(resized) > 0

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
        verdict = self.decide(status, [reason], checks)
        if change < self.cfg.min_inpaint_change:
            verdict.fail(
                "not_repainted", f"subject not repainted: mean change {change:.1f} inside the mask"
            )
        new = retarget(item, unit.unit_id, "", subj=new_name)
        # Instance mask: the source's, with the repainted box as the new subject.
        swapped = {n: g for n, g in geometry.items() if n != item.subj}
        swapped[new_name] = subj
        new.extra = object_extra(swapped, [new_name, item.obj])
        real_masks = all(g.mask is not None for n, g in geometry.items() if n != item.subj)
        masks = _instance_mask(source.shape[:2], swapped) if real_masks else None
        out = Output(unit, composite, [new], verdict, request.prompt)
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
        # The boxes were chosen so the relation holds; checking the relation against them
        # could never fail, so it is not a verification: what GLIGEN drew inside them is not
        # identified by anything here, and the relation stays unverifiable. What can fail is
        # checked: every box must hold something that stands out, and the image must not be
        # noise (`check_noise`).
        items = []
        asks = [(item.relation, 1)]
        if item.relation in OPPOSITES:
            asks.append((OPPOSITES[item.relation], 0))
        for k, (relation, label) in enumerate(asks):
            made = retarget(item, f"{unit.unit_id}~{k}", "", relation=relation, label=label)
            made.extra = object_extra(geometry, [item.subj, item.obj])
            items.append(made)
        reason = (
            f"relation {item.relation!r}: holds for the boxes by construction; what is drawn "
            "in them is not identified"
        )
        checks = {}
        verdict = self.decide(UNVERIFIABLE, [reason], checks)
        for name, geo in geometry.items():
            contrast = box_contrast(image, geo.box)
            checks[f"contrast_{'subj' if name == item.subj else 'obj'}"] = round(contrast, 2)
            if contrast < self.cfg.min_box_contrast:
                verdict.fail("empty_box", f"nothing stands out in the box of {name!r}: "
                             f"contrast {contrast:.1f}")  # fmt: skip
        out = Output(unit, image, items, verdict, request.prompt)
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
