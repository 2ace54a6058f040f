"""What one step of the default recipe costs at each channel-fusion grid (image tokens per image),
with or without object tokens.

    PYTHONPATH=. python bench/research/recipe_step_cost.py --data runs/vsre-tiny/data --grids 8 4
    PYTHONPATH=. python bench/research/recipe_step_cost.py --data runs/vsre-tiny/data --grids 8 \
        --object-tokens 0 8
    PYTHONPATH=. python bench/research/recipe_step_cost.py --data runs/D200K96 --grids 8 \
        --image-size 96

For each grid and object-token count, the shipped model's size
(`default_overrides`) is built with that `fusion_grid` and `object_tokens` and trained for
`--steps-a` + `--steps-b` steps of the `relations-grow` curriculum with every training-only
target on. It prints the median seconds per step over the B half (relation questions, the
long part of a real run), and the ratio to the first setting.
Nothing is evaluated: this answers "how many more steps would fewer image tokens buy", not
whether they would learn as well.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def step_seconds(rows: list[dict], after: int) -> float:
    """Median seconds per step between consecutive logged rows past step `after`."""
    timed = [r for r in rows if "seconds" in r and r["global_step"] > after]
    gaps = [
        (b["seconds"] - a["seconds"]) / (b["step"] - a["step"])
        for a, b in zip(timed, timed[1:], strict=False)
        if b["stage"] == a["stage"] and b["step"] > a["step"]
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
    args = parser.parse_args(argv)

    from vsre_ros.training.default_model import add_arguments, recipe_config
    from vsre_ros.training.recipes.curriculum import default_overrides
    from vsre_ros.training.train import read_metrics, train

    from vsre_ros.core.config import ENCODER_FAMILIES

    first = None
    for grid, objects in [(g, k) for g in args.grids for k in args.object_tokens]:
        flags = argparse.ArgumentParser()
        add_arguments(flags)
        recipe_args = flags.parse_args(
            ["--steps-a", str(args.steps_a), "--steps-b", str(args.steps_b), "--val-every", "0",
             "--threads", str(args.threads), "--pretrain-steps", "0", "--ema-decay", "0"]
        )  # fmt: skip
        with tempfile.TemporaryDirectory() as out:
            config = recipe_config(recipe_args, Path(args.data), Path(out), ENCODER_FAMILIES)
            config.model_overrides = default_overrides(
                fusion_grid=grid, object_tokens=objects, image_size=args.image_size
            )
            config.val_split = ""
            t = time.perf_counter()
            train(config, progress=False)
            wall = time.perf_counter() - t
            rows = [r for s in config.stages for r in read_metrics(Path(out) / s.name /
                    "metrics.jsonl")]  # fmt: skip
        per_step = step_seconds(rows, args.steps_a)
        first = first or per_step
        print(
            f"{args.image_size} px, grid {grid} ({grid * grid} image tokens),"
            f" {objects} object tokens: {per_step:.3f}"
            f" s/step median over the B steps, {per_step / first:.2f}x the first setting;"
            f" {wall:.0f} s in all",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
