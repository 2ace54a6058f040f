"""Held-out accuracy by task and by the size, in the image, of the smallest object a question
names.

    PYTHONPATH=. python bench/val_samples.py --model MODEL --data runs/D200K --out runs/X/val
    PYTHONPATH=. python bench/object_size.py --data runs/D200K runs/X/val/val3000

Each argument is an evaluation directory with the `predictions.jsonl` and `report.json` that
`training.default_model.evaluate_split` writes (`bench/val_samples.py --out DIR` keeps one per
sample; `vsre train-default` leaves them in `OUT/eval/SPLIT`). Every prediction is scored again
against its item and put in a bucket by the area, in pixels of the (first) image, of the 2D box
of the smallest object its question names (the item's `boxes`). At the 64 px the default model
is trained on, a 30 px box is about 5 x 5 pixels: the table shows how much of each skill's
error sits on such objects, which a larger input would see and the model cannot.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from vsre_ros.training.items import load_items
from vsre_ros.training.scoring import read_predictions, score

# Upper edges of the box-area buckets, in pixels; the last bucket is open.
EDGES = (30, 60, 120, 250)


def bucket(area: float | None) -> str:
    """The bucket label of a box area ("<30", ..., ">=250"); "none" without boxes."""
    if area is None:
        return "none"
    for edge in EDGES:
        if area < edge:
            return f"<{edge}"
    return f">={EDGES[-1]}"


def smallest_box_area(boxes: list[list[float]]) -> float | None:
    """Area of the smallest of `boxes` ([x0, y0, x1, y1) in pixels), None for no boxes."""
    areas = [max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1]) for b in boxes]
    return min(areas) if areas else None


def tally(data: Path, run: Path) -> dict[str, dict[str, list[int]]]:
    """task -> bucket -> [right, asked] for one evaluation directory."""
    report = json.loads((run / "report.json").read_text())
    items = {i.id: i for i in load_items(data, report["split"])}
    out: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    for prediction in read_predictions(run / "predictions.jsonl"):
        item = items.get(prediction.item_id)
        if item is None:
            raise SystemExit(
                f"{run}: prediction for {prediction.item_id!r}, which {report['split']} of"
                f" {data} does not hold: is --data the dataset that run was evaluated on?"
            )
        cell = out[item.task][bucket(smallest_box_area(item.extra.get("boxes") or []))]
        cell[0] += int(score(item, prediction).correct)
        cell[1] += 1
    return out


def table(counts: dict[str, dict[str, list[int]]]) -> list[str]:
    """Markdown rows: one per task, one column per bucket ("acc% (n)") and the task's total."""
    labels = [f"<{e}" for e in EDGES] + [f">={EDGES[-1]}", "none"]
    used = [b for b in labels if any(b in by for by in counts.values())]
    lines = [
        "| task | " + " | ".join(f"box {b} px" for b in used) + " | all |",
        "|---|" + "---:|" * (len(used) + 1),
    ]
    for task in sorted(counts):
        by = counts[task]
        cells = [
            f"{by[b][0] / by[b][1]:.1%} ({by[b][1]})" if by.get(b, [0, 0])[1] else "-"
            for b in used
        ]
        right, asked = sum(v[0] for v in by.values()), sum(v[1] for v in by.values())
        lines.append(f"| {task} | " + " | ".join(cells) + f" | {right / asked:.1%} ({asked}) |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="evaluation directories (predictions.jsonl)")
    parser.add_argument("--data", required=True, help="the dataset they were evaluated on")
    args = parser.parse_args(argv)
    for run in args.runs:
        print(f"== {run}")
        print("\n".join(table(tally(Path(args.data), Path(run)))), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
