"""`vsre grounding`: fit the grounding head on a frozen model, and measure grounded answers.

    vsre grounding fit  --model vsre_ros/models/vsre-tiny --seed 101 --threads 2
    vsre grounding eval --model vsre_ros/models/vsre-tiny --seed 202 --frames 300

`fit` renders simulated frames (seeded, so the same arguments fit the same head), computes the
model's image tokens for each once (the model stays frozen: its weights are not touched), and
trains only the head: a `core.grounding.MaskHead` to draw every visible object's instance mask
when its name is asked (`fit_masks`, the default), or a `GroundingHead` to put it on its mask's
box (`fit`, `--head box`); the head is written beside the model as `grounding.safetensors`.

`eval` renders frames of another seed (held-out scenes) and reports, through the engine as a
robot would ask:
- grounding: the IoU of the box of every object the frame's questions name (found from the
  question's words by `object_phrases`; a phrase not found counts as IoU 0) against its mask's
  box, with the share of IoU >= 0.5: from the image alone (`image`), with depth and K
  (`depth`), and two baselines: the head on a grey image (`grey`, blind) and the box prior
  (`prior`: each category's mean box over the prior frames, no image); the image-only misses
  by the object's size and by cause (`_miss`);
- metric answers with depth and K: each metric question's measured value against the truth,
  the share within 10% and within a factor of 2 (the scoring rule of `core.answers`), per
  measure, next to the model's own numbers (no depth) on the same questions and to geometry
  given the objects' mask boxes (what perfect boxes would measure);
- with 95% Wilson intervals throughout.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vsre_ros.core import geometry
from vsre_ros.core.answers import AnswerKind, Query, Source, number_correct
from vsre_ros.core.grounding import (
    MASK_WIDTHS,
    SUB_CELLS,
    GroundingHead,
    MaskHead,
    box_loss,
    for_model,
    iou,
    mask_head_for,
    phrase_embeddings,
)

DEFAULT_SIZES = ((64, 64), (160, 120))  # frame sizes rendered in turn (square and 4:3)
MIN_VISIBLE, MIN_PIXELS = 0.25, 10  # objects less visible are not named (as the questions)


def render(seed: int, frames: int, sizes=DEFAULT_SIZES, start: int = 0) -> list:
    """`frames` simulated frames of `seed`, sizes taken in turn."""
    from vsre_ros.sim_data import SimCamera

    cams = [SimCamera(seed=seed, width=w, height=h) for w, h in sizes]
    try:
        return [cams[i % len(cams)].frame(start + i) for i in range(frames)]
    finally:
        for cam in cams:
            cam.close()


def visible_objects(frame) -> list[tuple[str, int, np.ndarray]]:
    """(name, mask id, normalised mask box) of each object a question may name."""
    h, w = frame.rgb.shape[:2]
    out = []
    for k, (obj, seen) in enumerate(
        zip(frame.truth["objects"], frame.truth["renders"][0]["objects"], strict=True)
    ):
        if (
            seen["bbox"]
            and seen["visible_fraction"] >= MIN_VISIBLE
            and seen["pixels"] >= MIN_PIXELS
        ):
            box = np.array(seen["bbox"], dtype=np.float32) / [w, h, w, h]
            out.append((obj["name"], k + 1, box))
    return out


def image_tokens(model, images: list[np.ndarray], batch: int = 64) -> torch.Tensor:
    """The model's image tokens [N, T, hidden] (what the engine caches per frame)."""
    out = []
    with torch.inference_mode():
        for i in range(0, len(images), batch):
            out.append(model.encode_images(model.preprocess(images[i : i + batch])).float())
    return torch.cat(out)


def _warmup(steps: int) -> float:
    """OneCycleLR's warm-up share: 5% of the fit, but at least two steps (a warm-up ending at
    step 0 divides by zero in OneCycleLR, which a 20-step fit hit); 5% when that leaves too
    little to anneal."""
    warmup = max(2, round(0.05 * steps))
    return warmup / steps if steps > 2 * warmup else 0.05


def fit(
    model,
    frames: list,
    steps: int = 3000,
    batch: int = 128,
    lr: float = 2e-3,
    seed: int = 0,
    sub_cells: int = SUB_CELLS,
    start=None,
    log=print,
):
    """A grounding head fitted to the visible objects of `frames` on the frozen `model`: a new
    one, or a copy of head `start` trained further."""
    torch.manual_seed(seed)
    model.eval()
    tokens = image_tokens(model, [f.rgb for f in frames])
    head = copy.deepcopy(start) if start is not None else for_model(model, sub_cells)
    colours = head.colours([f.rgb for f in frames])
    rows, names, boxes = [], [], []
    for i, frame in enumerate(frames):
        for name, _, box in visible_objects(frame):
            rows.append(i)
            names.append(name)
            boxes.append(box)
    table, phrase = _phrase_table(model, names)
    rows_t, boxes_t = torch.tensor(rows), torch.from_numpy(np.stack(boxes))

    def step_loss(gen: torch.Generator) -> torch.Tensor:
        pick = torch.randint(len(rows), (batch,), generator=gen)
        image = rows_t[pick]
        pred, _ = head(tokens[image], table[phrase[pick]].clone(), colours[image])
        return box_loss(pred, boxes_t[pick])

    return _train(head, step_loss, steps, lr, seed, log, every=500)


def _phrase_table(model, names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """The embeddings [V, hidden] of the distinct `names` and each name's row in them."""
    vocab = sorted(set(names))
    with torch.inference_mode():
        table = phrase_embeddings(model, vocab)
    return table, torch.tensor([vocab.index(n) for n in names])


def _train(head, step_loss, steps: int, lr: float, seed: int, log, every: int):
    """Train `head` for `steps` AdamW steps under a one-cycle schedule peaking at `lr`, each on
    `step_loss(generator)` (the generator seeded by `seed` draws the step's examples); logs
    the loss every `every` steps and at the last. Returns the head in eval mode."""
    head.train()
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, lr, total_steps=steps, pct_start=_warmup(steps)
    )
    gen = torch.Generator().manual_seed(seed)
    for step in range(steps):
        loss = step_loss(gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % every == 0 or step == steps - 1:
            log(f"step {step}: loss {loss.item():.4f}")
    return head.eval()


def object_masks(frame, side: int) -> list[tuple[str, torch.Tensor]]:
    """(name, [side, side] share of each pixel that is the object) of each object a question
    may name in `frame` (`visible_objects`): its instance mask's area means at `side`."""
    seg = torch.from_numpy(np.ascontiguousarray(frame.seg))
    out = []
    for name, mask_id, _ in visible_objects(frame):
        mask = (seg == mask_id).float()[None, None]
        out.append((name, F.adaptive_avg_pool2d(mask, (side, side))[0, 0]))
    return out


def mask_loss(logits: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Per-pixel binary cross-entropy plus soft Dice (so a small object's few pixels count as
    much as a large one's many) of mask logits [N, H, W] against shares [N, H, W]."""
    bce = F.binary_cross_entropy_with_logits(logits, truth)
    p = torch.sigmoid(logits).flatten(1)
    t = truth.flatten(1)
    dice = 1 - (2 * (p * t).sum(1) + 1) / (p.sum(1) + t.sum(1) + 1)
    return bce + dice.mean()


def fit_masks(
    model,
    frames: list,
    steps: int = 3000,
    batch: int = 16,
    lr: float = 2e-3,
    seed: int = 0,
    start: MaskHead | None = None,
    log=print,
    widths: Sequence[int] = MASK_WIDTHS,
    mirror: bool = False,
) -> MaskHead:
    """A `MaskHead` fitted on the frozen `model` to draw each visible object of `frames` when
    its name is asked (`mask_loss` on its instance mask): a new one, or a copy of `start`
    trained further. Each step reads `batch` frames once and decodes all their objects. With
    `mirror`, each frame's mirror image (left and right swapped, its masks too) is a frame of
    the fit as well: an object's name says nothing about sides, so the mirror is as true."""
    torch.manual_seed(seed)
    model.eval()
    head = copy.deepcopy(start) if start is not None else mask_head_for(model, widths)
    images = [f.rgb for f in frames]
    objects = [object_masks(f, head.side // 2) for f in frames]  # each image's (name, mask)
    if mirror:
        images += [np.ascontiguousarray(im[:, ::-1]) for im in images]
        objects += [[(name, mask.flip(-1)) for name, mask in objs] for objs in objects]
    tokens = image_tokens(model, images)
    pixels = head.frame_inputs(images)
    names, owners, truths = [], [], []
    for i, objs in enumerate(objects):
        for name, mask in objs:
            names.append(name)
            owners.append(i)
            truths.append((mask * 255).round().to(torch.uint8))
    table, phrase = _phrase_table(model, names)
    truth = torch.stack(truths)
    by_frame: list[list[int]] = [[] for _ in images]
    for j, i in enumerate(owners):
        by_frame[i].append(j)
    usable = torch.tensor([i for i, objs in enumerate(by_frame) if objs])

    def step_loss(gen: torch.Generator) -> torch.Tensor:
        picked = usable[torch.randperm(len(usable), generator=gen)[:batch]].tolist()
        objs = torch.tensor([j for i in picked for j in by_frame[i]])
        where = torch.tensor([k for k, i in enumerate(picked) for _ in by_frame[i]])
        image = head.image_part(tokens[picked], pixels[picked])
        logits = head.logits(tuple(f[where] for f in image), head.phrase_part(table[phrase[objs]]))
        return mask_loss(logits, truth[objs].float() / 255)

    return _train(head, step_loss, steps, lr, seed, log, every=100)


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson interval of a share k/n."""
    if n == 0:
        return (math.nan, math.nan)
    p = k / n
    mid = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (mid - half, mid + half)


def share(flags: list[bool]) -> dict:
    k, n = int(sum(flags)), len(flags)
    lo, hi = wilson(k, n)
    return {"n": n, "share": k / n if n else math.nan, "ci95": [lo, hi]}


def evaluate(model_dir: str, frames: list, prior_frames: list) -> dict:
    """Grounding and metric figures on `frames` (see the module docstring), every question
    asked through the engine with the frame's depth and K, and again on a grey image."""
    from vsre_ros.sim_data.render import pixel_centre_K

    from vsre_ros.core.config import EngineConfig
    from vsre_ros.core.engine import Engine

    engine = Engine(model_dir, EngineConfig(threads=torch.get_num_threads()))
    if "grounding" not in engine.model.heads:
        raise ValueError(f"{model_dir} has no grounding head; run `vsre grounding fit` first")
    prior = _mean_boxes([(n, box) for f in prior_frames for n, _, box in visible_objects(f)])
    ious: dict[str, list[float]] = {"image": [], "depth": [], "grey": [], "prior": []}
    found: list[bool] = []
    misses: list[tuple[float, str]] = []  # (the object's share of the image, why it missed)
    metric: dict[str, dict[str, list]] = {}
    for frame in frames:
        objects = {name: box for name, _, box in visible_objects(frame)}
        items = [it for it in frame.items if it["answer_kind"] in _KINDS]
        k = pixel_centre_K(frame.K)
        answers = {
            "depth": engine.answer([_query(it, frame.rgb, frame.depth, k) for it in items]),
            "image": engine.answer([_query(it, frame.rgb) for it in items]),
            "grey": engine.answer([_query(it, np.full_like(frame.rgb, 128)) for it in items]),
        }
        for j, item in enumerate(items):
            for name in item.get("objects", []):
                if name not in objects:
                    continue
                truth = objects[name]
                found.append(_box_of(answers["image"][j], name) is not None)
                for way, given in answers.items():
                    box = _box_of(given[j], name)
                    ious[way].append(iou(box, truth) if box is not None else 0.0)
                ious["prior"].append(iou(prior.get(_category(name), _CENTRE), truth))
                misses.append(_miss(_box_of(answers["image"][j], name), name, objects))
            if item["task"] != "metric":
                continue
            with_depth, without = answers["depth"][j], answers["image"][j]
            name = geometry.measure_asked(item["question"]) or "unrecognised"
            row = metric.setdefault(name, {key: [] for key in _KEYS})
            truth = float(item["value"])
            row["geo"].append(_ratio(with_depth.value, truth))
            row["model"].append(_ratio(without.value, truth))
            row["src"].append(with_depth.source == Source.GEOMETRY)
            row["mask_boxes"].append(_ratio(_measured(frame, k, item, objects), truth))
    report = {
        "frames": len(frames),
        "grounding": {
            "named_objects": len(ious["image"]),
            "phrase_found": share(found),
            **{f"iou>=0.5_{way}": share([v >= 0.5 for v in ious[way]]) for way in ious},
            **{f"median_iou_{way}": float(np.median(ious[way])) for way in ious if ious[way]},
        },
        "metric": {name: _metric_row(row) for name, row in sorted(metric.items())},
        "misses_by_size": _misses_by_size(misses),
    }
    for label, names in (("distances", ("between", "camera")), ("all", tuple(metric))):
        rows = [metric[n] for n in names if n in metric]
        report["metric"][label] = _metric_row({k: sum((r[k] for r in rows), []) for k in _KEYS})
    return report


_KINDS = {k.label: k for k in AnswerKind}
_KEYS = ("geo", "model", "src", "mask_boxes")
_CENTRE = np.array([0.25, 0.25, 0.75, 0.75])  # the prior's box for an unseen category


def _query(item: dict, image: np.ndarray, depth=None, k=None) -> Query:
    return Query(
        question=item["question"],
        images=[image],
        answer_kind=_KINDS[item["answer_kind"]],
        options=list(item.get("options", [])),
        depth=[depth] if depth is not None else [],
        intrinsics=[k] if k is not None else [],
    )


MISSES = ("hit", "no phrase", "other object", "imprecise", "off")
SIZE_BINS = (0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 1.01)  # the object's box's share of the image


def _miss(box, name: str, objects: dict) -> tuple[float, str]:
    """Why the box found for `name` does (not) reach IoU 0.5 with its mask's box: a `hit`, `no
    phrase` found in the question, another visible `other object`'s box matched better, the box
    is `imprecise` (its centre inside the object's box) or `off` (centre outside)."""
    truth = objects[name]
    area = float((truth[2] - truth[0]) * (truth[3] - truth[1]))
    if box is None:
        return area, "no phrase"
    value = iou(box, truth)
    if value >= 0.5:
        return area, "hit"
    if any(iou(box, b) > value for other, b in objects.items() if other != name):
        return area, "other object"
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    inside = truth[0] <= cx <= truth[2] and truth[1] <= cy <= truth[3]
    return area, "imprecise" if inside else "off"


def _misses_by_size(misses: list[tuple[float, str]]) -> list[dict]:
    """Per object size bin: how many objects and how many of each `MISSES` outcome."""
    rows = []
    for lo, hi in zip(SIZE_BINS[:-1], SIZE_BINS[1:], strict=True):
        outcomes = [why for area, why in misses if lo <= area < hi]
        rows.append({"area": [lo, min(hi, 1.0)], "n": len(outcomes)})
        rows[-1].update({why: outcomes.count(why) for why in MISSES})
    return rows


def _measured(frame, k, item: dict, objects: dict) -> float | None:
    """What geometry measures for a metric item from its objects' mask boxes (the grounding
    head's perfect boxes): the bound of the geometry alone."""
    asked = geometry.measure_asked(item["question"])
    names = item.get("objects", [])[: geometry.MEASURES.get(asked, 0)]
    if asked is None or not names or any(n not in objects for n in names):
        return None
    scene = geometry.FrameGeometry(
        frame.depth, geometry.Intrinsics.from_matrix(k), frame.rgb.shape[:2], frame.rgb
    )
    places = [scene.locate(objects[n]) for n in names]
    return None if None in places else geometry.measure(asked, places)


def _box_of(answer, name: str):
    return next((o.box for o in answer.objects if o.phrase == name), None)


def _ratio(value: float, truth: float) -> float:
    return value / truth if value is not None and math.isfinite(value) and truth else math.nan


def _metric_row(row: dict) -> dict:
    def scored(ratios):
        return {
            "within_10%": share([math.isfinite(r) and abs(r - 1) <= 0.1 for r in ratios]),
            "within_x2": share([number_correct(r, 1.0) for r in ratios]),
        }

    return {
        "with_depth": scored(row["geo"]),
        "source_geometry": share(row["src"]),
        "model_without_depth": scored(row["model"]),
        "geometry_of_mask_boxes": scored(row["mask_boxes"]),
    }


def _category(phrase: str) -> str:
    """A sim object's category from its name ("red side table" -> "side table")."""
    return " ".join(phrase.split()[1:]) or phrase


def _mean_boxes(pairs) -> dict[str, np.ndarray]:
    """The box-prior baseline: each category's mean box."""
    sums: dict[str, list] = {}
    for name, box in pairs:
        sums.setdefault(_category(name), []).append(box)
    return {k: np.mean(v, axis=0) for k, v in sums.items()}


# -- CLI -------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    f = sub.add_parser("fit", help="fit the grounding head on a frozen model")
    e = sub.add_parser("eval", help="measure grounding and metric answers on held-out scenes")
    for p in (f, e):
        p.add_argument("--model", required=True, help="model directory (its weights are kept)")
        p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    f.add_argument("--seed", type=int, default=101, help="generation seed of the fit frames")
    f.add_argument("--frames", type=int, default=10000, help="frames to render (default 10000)")
    f.add_argument("--steps", type=int, default=8000, help="optimizer steps (default 8000)")
    f.add_argument("--out", default="", help="directory to write to (default: --model)")
    f.add_argument(
        "--sub-cells",
        type=int,
        default=SUB_CELLS,
        help="colour blocks per grid cell side (box head)",
    )
    f.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (default 2e-3)")
    f.add_argument("--from-head", action="store_true", help="train the model's own head further")
    f.add_argument(
        "--head",
        choices=("mask", "box"),
        default="mask",
        help="mask: MaskHead, reading the frame's pixels (default); box: GroundingHead, "
        "reading the model's tokens and a few colours per cell",
    )
    f.add_argument(
        "--batch", type=int, default=0, help="frames per step (mask) or objects (box); 0: default"
    )
    f.add_argument(
        "--widths",
        default=",".join(str(c) for c in MASK_WIDTHS),
        help="a new mask head's channels at 1/2, 1/4, 1/8 and 1/16 of its side "
        f"(default {','.join(str(c) for c in MASK_WIDTHS)})",
    )
    f.add_argument(
        "--mirror",
        action="store_true",
        help="also fit on each frame's mirror image (mask head; twice the frames, no more steps)",
    )
    e.add_argument("--seed", type=int, default=202, help="generation seed of held-out frames")
    e.add_argument("--frames", type=int, default=300, help="frames to render (default 300)")
    e.add_argument("--prior-seed", type=int, default=101, help="seed of the box prior's frames")
    e.add_argument("--prior-frames", type=int, default=1000, help="frames of the box prior")
    e.add_argument("--json", default="", help="also write the report to this file")


def run(args: argparse.Namespace) -> int:
    from vsre_ros.core.model import VSREModel

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    if args.action == "fit":
        model = VSREModel.from_pretrained(args.model)
        frames = render(args.seed, args.frames)
        print(f"rendered {len(frames)} frames in {time.perf_counter() - start:.0f} s")
        initial = model.heads.get("grounding") if args.from_head else None
        kind = MaskHead if args.head == "mask" else GroundingHead
        if args.from_head and not isinstance(initial, kind):
            raise ValueError(f"{args.model} has no {args.head} grounding head to start from")
        if args.head == "mask":
            batch = args.batch or 16
            head = fit_masks(
                model,
                frames,
                steps=args.steps,
                batch=batch,
                lr=args.lr,
                seed=args.seed,
                start=initial,
                widths=tuple(int(c) for c in args.widths.split(",")),
                mirror=args.mirror,
            )
            head.fitted = {
                "command": f"vsre grounding fit --head mask --seed {args.seed} --frames "
                f"{args.frames} --steps {args.steps} --lr {args.lr:g} --batch {batch} "
                f"--widths {','.join(str(c) for c in head.widths)}"
                + (" --mirror" if args.mirror else "")
                + (" --from-head" if initial is not None else ""),
                "seconds": round(time.perf_counter() - start),
                "threads": args.threads,
            }
            if initial is not None:  # the record of the head it went on training
                head.fitted["started_from"] = initial.fitted
        else:
            head = fit(
                model,
                frames,
                steps=args.steps,
                batch=args.batch or 128,
                lr=args.lr,
                seed=args.seed,
                sub_cells=args.sub_cells,
                start=initial,
            )
        path = head.save(args.out or args.model)
        print(
            f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB) in "
            f"{time.perf_counter() - start:.0f} s"
        )
        return 0
    frames = render(args.seed, args.frames)
    prior = render(args.prior_seed, args.prior_frames)
    report = evaluate(args.model, frames, prior)
    report["seconds"] = round(time.perf_counter() - start, 1)
    print(summary(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    return 0


def summary(report: dict) -> str:
    """The report's shares as lines: share [95% CI] (n)."""

    def fmt(entry: dict) -> str:
        lo, hi = entry["ci95"]
        return f"{100 * entry['share']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] (n={entry['n']})"

    g = report["grounding"]
    lines = [f"{report['frames']} frames; {g['named_objects']} named objects"]
    lines.append(f"  phrase found in the question: {fmt(g['phrase_found'])}")
    for way in ("image", "depth", "grey", "prior"):
        lines.append(f"  IoU >= 0.5, {way:5s}: {fmt(g[f'iou>=0.5_{way}'])}")
    lines.append("  image only, by the object's share of the image: n, " + ", ".join(MISSES))
    for row in report["misses_by_size"]:
        lo, hi = row["area"]
        counts = ", ".join(str(row[why]) for why in MISSES)
        lines.append(f"    {100 * lo:4.1f}-{100 * hi:5.1f}%: {row['n']}, {counts}")
    for name, row in report["metric"].items():
        lines.append(f"metric {name}: source geometry {fmt(row['source_geometry'])}")
        for way in ("with_depth", "model_without_depth", "geometry_of_mask_boxes"):
            lines.append(
                f"  {way:22s} within 10% {fmt(row[way]['within_10%'])}, "
                f"within x2 {fmt(row[way]['within_x2'])}"
            )
    return "\n".join(lines)
