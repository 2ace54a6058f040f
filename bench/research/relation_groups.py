"""Held-out relation accuracy by the curriculum stage that first grows each relation, or by
VSR meta-category.

    PYTHONPATH=. python bench/research/relation_groups.py vsre_ros/models/vsre-tiny/eval \
        runs/22/eval
    PYTHONPATH=. python bench/research/relation_groups.py --by meta runs/24/val --splits valrel2000

Each argument is an evaluation directory holding `SPLIT/report.json` for each of `--splits`:
`vsre train-default`'s `eval/` or the one shipped beside the weights (random_test and
zeroshot_test, the default), or `bench/research/val_samples.py --out DIR` (valrel2000, val3000,
...).
By stage (the default), the relations are grouped by the `relations-grow-all` stage that
first asks them: the lateral pair, one polarity of vertical and depth, their opposites, one
polarity of the rest (proximity, contact, containment, orientation), and those rest's
opposites. `relations-grow` grows only the first three groups and leaves the last two to its
all-relations stage, so the table shows whether growing them one polarity first pays. By
meta-category (`--by meta`) the groups are those `bench/research/relation_ceiling.py` reports what
perfect 2.5D and 3D features reach on.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vsre_ros.sim_data.relations import GENERATED, relation
from vsre_ros.training.recipes.curriculum import (
    LATERAL,
    OTHERS_ONE,
    OTHERS_OPPOSITE,
    VERTICAL_DEPTH_ONE,
    VERTICAL_DEPTH_OTHER,
)

STAGE_GROUPS = {
    "lateral": LATERAL,
    "vertical/depth, one polarity": VERTICAL_DEPTH_ONE,
    "vertical/depth, opposites": VERTICAL_DEPTH_OTHER,
    "others, one polarity": OTHERS_ONE,
    "others, opposites": OTHERS_OPPOSITE,
}
GROUPS = STAGE_GROUPS  # the default grouping
SPLITS = ("random_test", "zeroshot_test")


def meta_groups() -> dict[str, list[str]]:
    """VSR meta-category -> its generated relations."""
    out: dict[str, list[str]] = {}
    for name in GENERATED:
        out.setdefault(relation(name).meta, []).append(name)
    return dict(sorted(out.items()))


def grouped(report: dict, groups: dict[str, list[str]] = GROUPS) -> dict[str, tuple[int, int]]:
    """group -> (correct, n) from a report's per-relation counts."""
    by = report["by"]["relation"]
    out = {}
    for group, relations in groups.items():
        rows = [by[r] for r in relations if r in by]
        out[group] = (sum(r["correct"] for r in rows), sum(r["n"] for r in rows))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("eval_dirs", nargs="+", help="evaluation directories (see above)")
    parser.add_argument(
        "--by", choices=("stage", "meta"), default="stage", help="grouping (stage)"
    )
    parser.add_argument(
        "--splits", nargs="+", default=list(SPLITS), help="report subdirectories (test splits)"
    )
    args = parser.parse_args(argv)
    groups = STAGE_GROUPS if args.by == "stage" else meta_groups()
    tables = {}
    for d in args.eval_dirs:
        try:
            tables[d] = {
                s: grouped(json.loads((Path(d) / s / "report.json").read_text()), groups)
                for s in args.splits
            }
        except (OSError, KeyError, json.JSONDecodeError) as err:
            print(f"relation_groups: {d}: not an evaluation directory ({err})")
            return 2
    print("| group | " + " | ".join(f"{d} ({'/'.join(args.splits)})" for d in tables) + " |")
    print("|---|" + "---:|" * len(tables))
    for group in groups:
        cells = []
        for table in tables.values():
            parts = []
            for s in args.splits:
                correct, n = table[s][group]
                parts.append(f"{correct}/{n}" + (f" {100 * correct / n:.0f}%" if n else ""))
            cells.append(" · ".join(parts))
        print(f"| {group} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
