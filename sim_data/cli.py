"""`vsre generate`: write a simulated spatial-QA dataset with a progress bar and a contact sheet.

Example: `vsre generate --out data/sim --n 10000 --seed 0 --size 96` writes the dataset
directory (images, depth, masks, scenes, six split files, dataset.json), checks its splits for
duplicates and zero-shot concept overlap, and draws `contact_sheet.png`.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import replace

from .contact_sheet import sheet_for_dataset
from .dataset import DATA_VERSIONS, GenConfig, generate
from .questions import QuestionConfig
from .splits import check


def parse_size(text: str) -> tuple[int, int]:
    """ "96" -> (96, 96); "320x240" -> (320, 240)."""
    try:
        if "x" in text.lower():
            w, h = (int(v) for v in text.lower().split("x"))
        else:
            w = h = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be N or WxH, got {text!r}") from None
    if w < 16 or h < 16:
        raise argparse.ArgumentTypeError(f"size {w}x{h} is too small; use at least 16")
    return w, h


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="dataset directory to write")
    parser.add_argument("--n", type=int, default=10000, help="number of items (default 10000)")
    parser.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    parser.add_argument(
        "--size", type=parse_size, default=(96, 96), help="image size, N or WxH (default 96)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 2,
        help="processes rendering scenes (default: all cores)",
    )
    parser.add_argument(
        "--multi-view-share",
        type=float,
        default=0.3,
        help="share of scenes rendered from a second viewpoint (default 0.3)",
    )
    parser.add_argument(
        "--moved-share",
        type=float,
        default=0.15,
        help="share of scenes with a before/after image pair (default 0.15)",
    )
    parser.add_argument(
        "--heldout",
        action="store_true",
        help="also ask every relation item through a held-out wording (template or grammar)",
    )
    parser.add_argument(
        "--data-version",
        type=int,
        default=1,
        choices=sorted(DATA_VERSIONS),
        help="; ".join(f"{k}: {v}" for k, v in DATA_VERSIONS.items()) + " (default 1)",
    )
    parser.add_argument("--no-depth", action="store_true", help="do not write depth files")
    parser.add_argument("--no-masks", action="store_true", help="do not write mask files")
    parser.add_argument(
        "--sheet", type=int, default=16, help="examples on the contact sheet (0: none; default 16)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    if args.n <= 0:
        print(f"vsre generate: --n must be positive, got {args.n}")
        return 2
    if os.path.exists(os.path.join(args.out, "dataset.json")):
        print(f"vsre generate: {args.out} already holds a dataset; choose another --out")
        return 2
    width, height = args.size
    config = GenConfig(
        seed=args.seed,
        width=width,
        height=height,
        multi_view_share=args.multi_view_share,
        moved_share=args.moved_share,
        questions=replace(QuestionConfig(), heldout=args.heldout),
        depth=not args.no_depth,
        masks=not args.no_masks,
        data_version=args.data_version,
    )
    start = time.perf_counter()
    meta = generate(
        args.out, args.n, config, workers=max(1, args.workers), progress=not args.no_progress
    )
    took = time.perf_counter() - start
    counts = meta["counts"]
    print(
        f"wrote {counts['items']} items from {counts['scenes']} scenes to {args.out} "
        f"in {took:.1f} s ({counts['scenes'] / took:.1f} scenes/s, "
        f"{counts['items'] / took:.0f} items/s)"
    )
    print(
        "splits: "
        + ", ".join(f"{k} {v}" for k, v in counts.items() if k not in ("items", "scenes"))
    )
    report = check(args.out)
    with open(os.path.join(args.out, "split_check.json"), "w") as fh:
        json.dump(report, fh, indent=1)
    dups = sum(len(v) for v in report["duplicates"].values())
    print(
        f"split check: {'ok' if report['ok'] else 'PROBLEMS'} ({dups} duplicated items, "
        f"{len(report['zeroshot_concept_overlap'])} zero-shot concepts shared)"
    )
    if args.sheet > 0:
        sheet = sheet_for_dataset(args.out, count=args.sheet)
        print(f"contact sheet: {sheet}")
    return 0 if report["ok"] else 1
