"""Held-out accuracy by task and by the share of the image that the smallest object a
question names covers.

    PYTHONPATH=. python bench/research/val_samples.py --model MODEL --data runs/D200K \
        --out runs/X/val
    PYTHONPATH=. python bench/research/object_size.py --data runs/D200K runs/X/val/val3000
    PYTHONPATH=. python bench/research/object_size.py --data runs/D200K runs/34a/eval \
        --data runs/D200K96 runs/34b/eval      # one --data per run, in order

Each argument is an evaluation directory with the `predictions.jsonl` and `report.json` that
`training.default_model.data.evaluate_split` writes (`bench/research/val_samples.py --out DIR`
keeps one per sample; `vsre train-default` leaves them in `OUT/eval/SPLIT`). Every prediction is
scored again against its item and put in a bucket by the area of the 2D box of the smallest object
its question names (the item's `boxes`), as a share of the (first) image's area. The buckets are
resolution-free, so runs on the same scenes rendered at two sizes compare bucket by bucket; at the
64 px the default model is trained on, the first edge (0.75%) is a box of about 30 pixels, 5 x 5.
The table shows how much of each skill's error sits on small objects. """

from __future__ import annotations

import argparse
import json
from bisect import bisect_right
from collections import defaultdict
from pathlib import Path

from vsre_ros.training.items import load_items
from vsre_ros.training.metrics import accuracy_by
from vsre_ros.training.scoring import Scored, read_predictions, score

# Upper edges of the box-area buckets, in % of the image area (at 64 x 64: about 30, 60,
# 120 and 250 pixels); the last bucket is open.
EDGES = (0.75, 1.5, 3.0, 6.0)
LABELS = [f"<{e}%" for e in EDGES] + [f">={EDGES[-1]}%", "none"]


def bucket(share: float | None) -> str:
    """The bucket label of a box's share of the image in % ("<0.75%", ...); "none" without."""
    return "none" if share is None else LABELS[bisect_right(EDGES, share)]


def smallest_box_area(boxes: list[list[float]]) -> float | None:
    """Area of the smallest of `boxes` ([x0, y0, x1, y1) in pixels), None for no boxes."""
    areas = [max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1]) for b in boxes]
    return min(areas) if areas else None


def image_area(data: Path) -> int:
    """Pixels in one of the dataset's images (its generator config's width x height)."""
    config = json.loads((data / "dataset.json").read_text())["config"]
    return int(config["width"]) * int(config["height"])


def scored_by_bucket(data: Path, run: Path) -> dict[str, list[Scored]]:
    """One evaluation directory's answers scored again, by bucket of the smallest named box."""
    report = json.loads((run / "report.json").read_text())
    pixels = image_area(data)
    items = {i.id: i for i in load_items(data, report["split"])}
    out: dict[str, list[Scored]] = defaultdict(list)
    for prediction in read_predictions(run / "predictions.jsonl"):
        item = items.get(prediction.item_id)
        if item is None:
            raise SystemExit(
                f"{run}: prediction for {prediction.item_id!r}, which {report['split']} of"
                f" {data} does not hold: is --data the dataset that run was evaluated on?"
            )
        area = smallest_box_area(item.extra.get("boxes") or [])
        out[bucket(None if area is None else 100.0 * area / pixels)].append(
            score(item, prediction)
        )
    return out


def table(by_bucket: dict[str, list[Scored]]) -> list[str]:
    """Markdown rows: one per task, one column per bucket ("acc% (n)") and the task's total."""
    used = [b for b in LABELS if by_bucket.get(b)]
    cells = {b: accuracy_by(by_bucket[b], "task") for b in used}
    total = accuracy_by([row for b in used for row in by_bucket[b]], "task")
    lines = [
        "| task | " + " | ".join(f"box {b}" for b in used) + " | all |",
        "|---|" + "---:|" * (len(used) + 1),
    ]
    for task, all_of in total.items():
        row = [
            f"{cells[b][task]['accuracy']:.1%} ({cells[b][task]['n']})"
            if task in cells[b]
            else "-"
            for b in used
        ]
        lines.append(
            f"| {task} | " + " | ".join(row) + f" | {all_of['accuracy']:.1%} ({all_of['n']}) |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="evaluation directories (predictions.jsonl)")
    parser.add_argument(
        "--data",
        action="append",
        required=True,
        help="the dataset the runs were evaluated on; once for all, or once per run in order",
    )
    args = parser.parse_args(argv)
    if len(args.data) not in (1, len(args.runs)):
        parser.error(f"give --data once or once per run ({len(args.runs)}), not {len(args.data)}")
    datasets = args.data * len(args.runs) if len(args.data) == 1 else args.data
    for data, run in zip(datasets, args.runs, strict=True):
        print(f"== {run} (on {data})")
        print("\n".join(table(scored_by_bucket(Path(data), Path(run)))), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
