"""Short recipe experiments on an existing dataset.

Run as `python -m vsre_ros.training.recipes.experiment --data DIR --out DIR ...`.
The default model's curriculum was found with runs like these: one stage (or a curriculum's
stages) with the tasks and relations narrowed, optionally continuing from a saved model,
then held-out accuracy by task and relation (on `random_val` by default). Each run writes
the recipe, the metrics, the model and `val.json` to `--out`; the recipes table in
`docs/recipes-tried.md` quotes these commands.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from ..default_model import (
    add_recipe_arguments,
    evaluate_split,
    recipe_config,
)
from ..default_model.data import dataset_version


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m vsre_ros.training.recipes.experiment", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--data", required=True, help="dataset directory (vsre train-default's)")
    parser.add_argument("--out", required=True, help="run directory")
    parser.add_argument("--curriculum", default="basics-first", help="stage plan id")
    parser.add_argument("--steps-a", type=int, default=600, help="stage A steps (600)")
    parser.add_argument(
        "--steps-b", type=int, default=0, help="stage B steps; 0 runs the first stage only"
    )
    parser.add_argument("--tasks", default="", help="comma-separated tasks replacing each stage's")
    parser.add_argument(
        "--relations", default=None, help="comma-separated relations replacing each stage's"
    )
    parser.add_argument("--init", default="", help="saved model to continue from")
    parser.add_argument("--warmup", type=int, default=100, help="first stage's warm-up steps")
    parser.add_argument("--eval", type=int, default=600, help="items evaluated (600)")
    parser.add_argument("--split", default="random_val", help="split evaluated (random_val)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1)")
    parser.add_argument("--seed", type=int, default=0, help="init and order seed (0)")
    add_recipe_arguments(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from vsre_ros.core.config import ENCODER_FAMILIES
    from vsre_ros.core.model import VSREModel

    from ..train import train

    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    data, out = Path(args.data), Path(args.out)
    args.batch_size, args.val_every, steps_b = 16, 0, args.steps_b
    args.data_version = dataset_version(data)  # the tokenizer's text follows the data's
    args.steps_b = max(1, steps_b)
    config = recipe_config(args, data, out / "train", ENCODER_FAMILIES)
    config.val_split = ""
    if args.init:
        config.model = args.init
    stages = config.stages if steps_b else config.stages[:1]
    config.stages = stages
    for k, stage in enumerate(stages):
        stage.warmup_steps = args.warmup if k == 0 else 0
        if args.tasks:
            stage.task_weights = {t.strip(): 1.0 for t in args.tasks.split(",") if t.strip()}
        if args.relations is not None:
            stage.relations = [r.strip() for r in args.relations.split(",") if r.strip()]
    results = train(config)
    model = VSREModel.from_pretrained(results[-1].final_dir).eval()
    model.save_pretrained(out / "model")
    report = evaluate_split(model, data, args.split, "item", args.eval, out / "eval", False)
    result = {
        "accuracy": report["accuracy"],
        **{
            f"by_{key}": {name: [row["accuracy"], row["n"]] for name, row in rows.items()}
            for key, rows in report["by"].items()
            if key in ("task", "relation")
        },
    }
    (out / "val.json").write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "by_relation"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
