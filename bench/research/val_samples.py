"""A trained model's raw validation figures on the seeded samples the recipes table compares.

    PYTHONPATH=. python bench/research/val_samples.py --model runs/22/train/model --data runs/D200K

Three seeded `random_val` samples through `training.default_model.data.evaluate_split`, each item
asked its own question: 600 items (seed 0), 3000 items (seed 2) and 2000 relation items
(seed 1). The verdict bias is set to 0 first, so models trained with and without calibration
compare on their raw answers (`docs/recipes-tried.md` quotes these columns).
Prints accuracy, accuracy by task and the predicted-True rate per sample; `--out` keeps the
report files. `--weights` first puts other weights in the model, e.g. the last step's that a
run with `--ema-decay` kept beside its averages (`train/last_weights.safetensors`).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from vsre_ros.training.default_model.data import evaluate_split

from vsre_ros.core.model import VSREModel

# name -> (items, relation items only, seed)
SAMPLES = {"val600": (600, False, 0), "val3000": (3000, False, 2), "valrel2000": (2000, True, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="saved model directory")
    parser.add_argument("--data", required=True, help="dataset directory (vsre train-default's)")
    parser.add_argument("--out", default="", help="directory for the report files (temporary)")
    parser.add_argument(
        "--weights",
        default="",
        help="weights file to load into the model (VSREModel.load_weights reads it)",
    )
    parser.add_argument("--samples", nargs="+", default=list(SAMPLES), choices=list(SAMPLES))
    args = parser.parse_args(argv)
    model = VSREModel.from_pretrained(args.model).eval()
    if args.weights:
        model.load_weights(args.weights)
    model.config.verdict_bias = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp)
        for name in args.samples:
            n, relation_only, seed = SAMPLES[name]
            report = evaluate_split(
                model, Path(args.data), "random_val", "item", n, out / name, relation_only, seed
            )
            tasks = ", ".join(
                f"{t} {v['accuracy']:.1%} ({v['n']})" for t, v in report["by"]["task"].items()
            )
            bias = report["bias"]
            print(
                f"{name}: accuracy {report['accuracy']:.2%} on {report['n_items']} items;"
                f" predicted True {bias.get('predicted_true_rate', 0):.2%}"
                f" (true {bias.get('label_true_rate', 0):.2%}); {tasks}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
