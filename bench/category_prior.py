"""How much of compare and metric a model could answer from the object categories alone.

    PYTHONPATH=. python bench/category_prior.py --data DATA_V1 --data DATA_V2

A "category prior" is fitted on a dataset's `random_train` split and scored on `random_test`
with the evaluator's own rules (`training.scoring.score`: compare by the option named, metric
within a factor of 2):
- compare: the option whose category is larger on average in the measure asked (training
  items' answers tell which of two categories won; ties and unseen pairs go to the first);
- metric: the median training answer of the same question about the same category (sizes),
  or of the same question (distances).
It never looks at an image: where it comes close to a sighted model, the task measures
priors, not vision. Run it on a version 1 and a version 2 dataset (`vsre generate
--data-version`) to see what the version 2 sizes take away.
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict

from vsre_ros.training.items import Item, load_items
from vsre_ros.training.scoring import Prediction, score


def _category_of(item: Item, name: str) -> str:
    # Names are "<colour> <category>"; colours are single words.
    return name.split(" ", 1)[-1] if " " in name else name


def fit(train: list[Item]) -> tuple[dict, dict]:
    wins: dict[tuple[str, str, str], int] = defaultdict(int)  # (template, winner, loser)
    answers: dict[tuple, list[float]] = defaultdict(list)
    for it in train:
        if it.task == "compare" and len(it.options) == 2:
            winner = _category_of(it, it.answer)
            loser = _category_of(it, [o for o in it.options if o != it.answer][0])
            wins[it.template_id, winner, loser] += 1
        elif it.task == "metric" and it.value is not None:
            answers[it.template_id, _category_of(it, it.subj)].append(it.value)
            answers[it.template_id, ""].append(it.value)
    return wins, answers


def predict(it: Item, wins: dict, answers: dict) -> Prediction | None:
    if it.task == "compare" and len(it.options) == 2:
        a, b = (_category_of(it, o) for o in it.options)
        first = wins[it.template_id, a, b] >= wins[it.template_id, b, a]
        return Prediction(it.id, it.options[0] if first else it.options[1])
    if it.task == "metric" and it.value is not None:
        pool = answers.get((it.template_id, _category_of(it, it.subj))) or answers.get(
            (it.template_id, "")
        )
        return Prediction(it.id, f"{statistics.median(pool):.2f}" if pool else "")
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", action="append", required=True, help="dataset directory")
    args = parser.parse_args(argv)
    print("| data | task | n | category prior % |")
    print("|---|---|---:|---:|")
    for root in args.data:
        wins, answers = fit(load_items(root, "random_train"))
        right: dict[str, list[bool]] = defaultdict(list)
        for it in load_items(root, "random_test"):
            prediction = predict(it, wins, answers)
            if prediction is not None:
                right[it.task].append(score(it, prediction).correct)
                right[f"{it.task} {it.template_id}"].append(score(it, prediction).correct)
        for task, marks in sorted(right.items()):
            print(f"| {root} | {task} | {len(marks)} | {100 * sum(marks) / len(marks):.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
