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
import sys

from .modes import DIFFUSION_MODES, layout_boxes, object_extra
from .runner import ExpandReport, Shard, done_units, expand, make_producer, merge, plan
from .units import MODES, ExpandConfig, Output, Unit, retarget, source_geometry
from .verify import FAILED_CHECKS, Box, ObjectGeometry, Verdict, check_relation

__all__ = [
    "DIFFUSION_MODES",
    "FAILED_CHECKS",
    "MODES",
    "Box",
    "ExpandConfig",
    "ExpandReport",
    "ObjectGeometry",
    "Output",
    "Shard",
    "Unit",
    "Verdict",
    "add_arguments",
    "check_relation",
    "config_from_args",
    "done_units",
    "expand",
    "layout_boxes",
    "make_producer",
    "merge",
    "object_extra",
    "plan",
    "retarget",
    "run",
    "source_geometry",
]


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
    parser.add_argument(
        "--split",
        action="append",
        default=[],
        help="source split (repeatable; default: train, or the only *train split; never a "
        "val/test split)",
    )
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
        "--save-rejected", action="store_true", help="write rejected images to OUT/rejected/"
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
    parser.add_argument(
        "--min-smoothness",
        type=float,
        default=d.min_smoothness,
        help="diffusion: least neighbour-pixel correlation of a generated image (noise ~0)",
    )
    parser.add_argument(
        "--min-box-contrast",
        type=float,
        default=d.min_box_contrast,
        help="layout: least colour contrast (0-255) between a box and its surroundings",
    )
    parser.add_argument(
        "--size",
        type=int,
        default=g.size,
        help="generated size, pixels (0: SDXL 1024, GLIGEN 512)",
    )
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
        min_smoothness=args.min_smoothness,
        min_box_contrast=args.min_box_contrast,
        keep_unverified=args.keep_unverified,
        save_rejected=args.save_rejected,
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
        print("  rejections by failed check (an output failing two checks counts under both):")
        for check, count in sorted(report.reasons.items(), key=lambda kv: -kv[1]):
            print(f"  {count:5d}  {check}: {FAILED_CHECKS.get(check, 'not recorded by that run')}")
        noise, checked = report.noise
        if checked:
            print(f"  noise: {noise} of {checked} generated images ({100 * noise / checked:.0f}%)")
    return 0
