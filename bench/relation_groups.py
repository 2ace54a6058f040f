"""Held-out relation accuracy by the curriculum stage that first grows each relation.

    PYTHONPATH=. python bench/relation_groups.py vsre_ros/models/vsre-tiny/eval runs/22/eval

Each argument is an evaluation directory (`vsre train-default`'s `eval/`, or the one shipped
beside the weights) holding `random_test/report.json` and `zeroshot_test/report.json`. The
relations are grouped by the `relations-grow-all` stage that first asks them: the lateral
pair, one polarity of vertical and depth, their opposites, one polarity of the rest
(proximity, contact, containment, orientation), and those rest's opposites. `relations-grow`
grows only the first three groups and leaves the last two to its all-relations stage, so the
table shows whether growing them one polarity first pays.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vsre_ros.training.recipes.curriculum import (
    LATERAL,
    OTHERS_ONE,
    OTHERS_OPPOSITE,
    VERTICAL_DEPTH_ONE,
    VERTICAL_DEPTH_OTHER,
)

GROUPS = {
    "lateral": LATERAL,
    "vertical/depth, one polarity": VERTICAL_DEPTH_ONE,
    "vertical/depth, opposites": VERTICAL_DEPTH_OTHER,
    "others, one polarity": OTHERS_ONE,
    "others, opposites": OTHERS_OPPOSITE,
}
SPLITS = ("random_test", "zeroshot_test")


def grouped(report: dict) -> dict[str, tuple[int, int]]:
    """group -> (correct, n) from a report's per-relation counts."""
    by = report["by"]["relation"]
    out = {}
    for group, relations in GROUPS.items():
        rows = [by[r] for r in relations if r in by]
        out[group] = (sum(r["correct"] for r in rows), sum(r["n"] for r in rows))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("eval_dirs", nargs="+", help="evaluation directories (see above)")
    args = parser.parse_args(argv)
    tables = {}
    for d in args.eval_dirs:
        try:
            tables[d] = {
                s: grouped(json.loads((Path(d) / s / "report.json").read_text())) for s in SPLITS
            }
        except (OSError, KeyError, json.JSONDecodeError) as err:
            print(f"relation_groups: {d}: not an evaluation directory ({err})")
            return 2
    print("| group | " + " | ".join(f"{d} ({'/'.join(SPLITS)})" for d in tables) + " |")
    print("|---|" + "---:|" * len(tables))
    for group in GROUPS:
        cells = []
        for table in tables.values():
            parts = []
            for s in SPLITS:
                correct, n = table[s][group]
                parts.append(f"{correct}/{n}" + (f" {100 * correct / n:.0f}%" if n else ""))
            cells.append(" · ".join(parts))
        print(f"| {group} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
