"""What one step of the default recipe costs at each channel-fusion grid (image tokens per image),
with or without object tokens and with or without the batch built ahead on a second thread.

    PYTHONPATH=. python bench/recipe_step_cost.py --data runs/vsre-tiny/data --grids 8 4
    PYTHONPATH=. python bench/recipe_step_cost.py --data runs/vsre-tiny/data --grids 8 \
        --prefetch off on
    PYTHONPATH=. python bench/recipe_step_cost.py --data runs/vsre-tiny/data --grids 8 \
        --object-tokens 0 8
    PYTHONPATH=. python bench/recipe_step_cost.py --data runs/D200K96 --grids 8 --image-size 96

For each grid, object-token count and prefetch setting, the shipped model's size
(`default_overrides`) is built with that `fusion_grid` and `object_tokens` and trained for
`--steps-a` + `--steps-b` steps of the `relations-grow` curriculum with every training-only
target on. It prints the median seconds per step over the B half (relation questions, the
long part of a real run), and the ratio to the first setting.
Nothing is evaluated: this answers "how many more steps would fewer image tokens buy", not
whether they would learn as well.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path


def step_seconds(rows: list[dict], after: int) -> float:
    """Median seconds per step between consecutive logged rows past step `after`."""
    timed = [r for r in rows if "seconds" in r and r["step"] > after]
    gaps = [
        (b["seconds"] - a["seconds"]) / (b["step"] - a["step"])
        for a, b in zip(timed, timed[1:], strict=False)
        if b["step"] > a["step"]
    ]
    if not gaps:
        raise SystemExit(f"fewer than two logged steps after step {after}: raise --steps-b")
    return statistics.median(gaps)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="a `vsre train-default` dataset directory")
    parser.add_argument("--grids", type=int, nargs="+", default=[8, 4], help="fusion grids (8 4)")
    parser.add_argument("--steps-a", type=int, default=50, help="stage A steps (50)")
    parser.add_argument("--steps-b", type=int, default=100, help="stage B steps, timed (100)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (2)")
    parser.add_argument(
        "--image-size",
        type=int,
        default=64,
        help="encoders' input side (64; patch an eighth of it); give --data rendered at it",
    )
    parser.add_argument(
        "--object-tokens",
        type=int,
        nargs="+",
        default=[0],
        help="object tokens per image read from the SAM map (0: none)",
    )
    parser.add_argument(
        "--prefetch",
        nargs="+",
        choices=("on", "off"),
        default=["off"],
        help="build the next batch on a second thread (RecipeConfig.prefetch; off)",
    )
    args = parser.parse_args(argv)

    from vsre_ros.training.default_model import TRAIN_SPLIT
    from vsre_ros.training.items import load_items
    from vsre_ros.training.recipes.curriculum import (
        RecipeConfig,
        curriculum,
        default_overrides,
        train_recipe,
    )

    items = {TRAIN_SPLIT: load_items(Path(args.data), TRAIN_SPLIT)}
    first = None
    settings = [(g, k, p) for g in args.grids for k in args.object_tokens for p in args.prefetch]
    for grid, objects, prefetch in settings:
        overrides = default_overrides(
            fusion_grid=grid, object_tokens=objects, image_size=args.image_size
        )
        stages = curriculum("relations-grow", args.steps_a, args.steps_b, 16)
        recipe = RecipeConfig(
            seed=0,
            stages=stages,
            val_every=0,
            threads=args.threads,
            model_overrides=overrides,
            prefetch=prefetch == "on",
        )
        with tempfile.TemporaryDirectory() as out:
            t = time.perf_counter()
            train_recipe(recipe, items, [], Path(out), progress=False)
            wall = time.perf_counter() - t
            lines = (Path(out) / "metrics.jsonl").read_text().splitlines()
        per_step = step_seconds([json.loads(x) for x in lines], args.steps_a)
        first = first or per_step
        print(
            f"{args.image_size} px, grid {grid} ({grid * grid} image tokens),"
            f" {objects} object tokens,"
            f" prefetch {prefetch}: {per_step:.3f}"
            f" s/step median over the B steps, {per_step / first:.2f}x the first setting;"
            f" {wall:.0f} s in all",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
