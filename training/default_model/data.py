"""The default model's data: the seeded simulator dataset, its training split, held-out samples
evaluated through the project's evaluator.

The training split is the intersection of `random_train` and `zeroshot_train`: it shares no
scene with `random_test` and no scene or category-colour concept with `zeroshot_test`, so both
tests stay held out for one model.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

from ..items import Item, load_items, write_items

TRAIN_SPLIT = "default_train"


def question_config():
    """Questions per scene: fewer per scene than the generator's default, so the same number
    of items spans more scenes (images are what the model has to learn from)."""
    from vsre_ros.sim_data.questions import QuestionConfig

    return QuestionConfig(
        relations_per_view=4,
        direction=2,
        distance=1,
        localization=2,
        composite=1,
        metric=1,
        compare=1,
        multi_image=2,
    )


def make_data(
    data: Path, n: int, seed: int, size: int, workers: int, progress: bool, version: int = 1
) -> Path:
    """Generate the dataset in `data` (unless present) and write the combined training split."""
    from vsre_ros.sim_data.dataset import GenConfig, generate

    if (data / "dataset.json").is_file():
        _check_dataset(data, n, seed, size, version)
    else:
        config = GenConfig(
            seed=seed,
            width=size,
            height=size,
            multi_view_share=0.1,
            moved_share=0.05,
            questions=question_config(),
            data_version=version,
        )
        start = time.perf_counter()
        generate(data, n, config, workers=workers, progress=progress)
        (data / "generate_seconds.json").write_text(json.dumps(time.perf_counter() - start))
    if not (data / f"{TRAIN_SPLIT}.jsonl").is_file():
        zs = {i.id for i in load_items(data, "zeroshot_train")}
        both = [i for i in load_items(data, "random_train") if i.id in zs]
        write_items(data / f"{TRAIN_SPLIT}.jsonl", both)
    return data


def dataset_version(data: Path) -> int:
    """The data version a generated dataset was made with (`sim_data.dataset.DATA_VERSIONS`;
    datasets from before versions were recorded are version 1)."""
    meta = json.loads((data / "dataset.json").read_text())
    return int(meta.get("config", {}).get("data_version", 1))


def _check_dataset(data: Path, n: int, seed: int, size: int, version: int = 1) -> None:
    """A dataset reused through --data must be the one the flags describe: the model card's
    reproduction command regenerates from them."""
    meta = json.loads((data / "dataset.json").read_text())
    config = meta.get("config", {})
    have = (meta.get("seed"), meta.get("counts", {}).get("items"), config.get("width"),
            int(config.get("data_version", 1)))  # fmt: skip
    if have != (seed, n, size, version):
        raise ValueError(
            f"{data} holds the dataset of data seed {have[0]}, {have[1]} items, {have[2]} px, "
            f"data version {have[3]}; this run asks for data seed {seed}, {n} items, {size} px,"
            f" data version {version}. Pass the dataset's --data-seed, --n, --size and "
            "--data-version, or another --data directory to generate into"
        )


def evaluate_split(
    model,
    data: Path,
    split: str,
    templates: str,
    limit: int,
    out: Path,
    relation_only: bool,
    seed: int = 0,
) -> dict:
    """Evaluate the model on a split through the project's evaluator; writes report files."""
    from ..evaluate import build_examples, resolve_templates
    from ..metrics import evaluate_predictions
    from ..model_api import answer_examples
    from ..report import write_report
    from ..scoring import write_predictions

    items = load_items(data, split)
    if relation_only:
        items = [i for i in items if i.task == "relation" and i.truth is not None]
    items = sample(items, limit, seed)
    examples = build_examples(items, resolve_templates(templates))
    predictions = answer_examples(model, examples, batch_size=32, progress=False)
    out.mkdir(parents=True, exist_ok=True)
    write_predictions(out / "predictions.jsonl", predictions)
    report = evaluate_predictions(items, predictions)
    report.update(model="vsre-tiny", data=str(data), split=split, templates=templates)
    write_report(report, out, plots=False)
    return report


def sample(items: list[Item], limit: int, seed: int) -> list[Item]:
    """A seeded sample of at most `limit` items, in split order (0 keeps all). Seeded rather
    than strided: the split file lists a relation's True and False items in pairs, so an evenly
    strided pick could take one polarity only."""
    if not limit or len(items) <= limit:
        return items
    keep = sorted(random.Random(seed).sample(range(len(items)), limit))
    return [items[k] for k in keep]
