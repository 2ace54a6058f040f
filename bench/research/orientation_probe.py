"""Is Orientation (facing, facing away from, parallel to, perpendicular to) a matter of too few
training items, or is it not in the 64x64 pixels? Two datasets for that question:

    # training items: data version 2 scenes, only Orientation relations asked (grammar wordings)
    python bench/research/orientation_probe.py train runs/orient/D31 --n 15000 --seed 31
    python bench/research/orientation_probe.py train runs/orient/D32 --n 15000 --seed 32
    python bench/research/orientation_probe.py merge runs/orient/D runs/orient/D31 runs/orient/D32
    # a one-stage config: the base run's B4-all stage, asked only the four relations
    python bench/research/orientation_probe.py config RUN/train/train_config.yaml \\
        runs/orient/c.yaml --data runs/orient/D --output runs/orient/train
    vsre train --config runs/orient/c.yaml --init RUN/train/B4-all/final --threads 2
    # held-out items: every Orientation item of fresh datasets' splits, in one split "orient"
    python bench/research/orientation_probe.py heldout runs/orient/E DATA_DIR [DATA_DIR ...]

The first writes a dataset whose `default_train` holds Orientation items only (the sim's usual
scenes and labels; the generator is asked for no other question kind; `merge` joins several
such datasets' training items); train on it with
`vsre train --config C --init MODEL` (a one-stage config with `relations` set to the four). The
second gathers `random_*`/`zeroshot_*` Orientation items of datasets generated with other
seeds (never trained on) into `E/orient.jsonl`, linking their files, for
`vsre evaluate --data E --split orient --templates item`.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

ORIENTATION = ("facing", "facing away from", "parallel to", "perpendicular to")
SPLITS = ("random_train", "zeroshot_train", "random_val", "zeroshot_val", "random_test",
          "zeroshot_test")  # fmt: skip


def make_train(out: Path, n: int, seed: int, workers: int) -> None:
    from vsre_ros.sim_data.dataset import GenConfig, generate
    from vsre_ros.sim_data.questions import QuestionConfig
    from vsre_ros.training.default_model.data import TRAIN_SPLIT, load_items, write_items

    none = dict(direction=0, distance=0, localization=0, composite=0, metric=0, compare=0)
    asked = QuestionConfig(relations_per_view=4, relations=ORIENTATION, multi_image=0, **none)
    config = GenConfig(seed=seed, width=64, height=64, multi_view_share=0.1, moved_share=0.0,
                       questions=asked, data_version=2)  # fmt: skip
    generate(out, n, config, workers=workers, progress=True)
    zeroshot = {item.id for item in load_items(out, "zeroshot_train")}
    both = [item for item in load_items(out, "random_train") if item.id in zeroshot]
    write_items(out / f"{TRAIN_SPLIT}.jsonl", both)
    print(f"{out}: {len(both)} Orientation training items")


def _link_files(item: dict, src: Path, out: Path) -> None:
    files = [item.get("image")] + list(item.get("images") or [])
    files += list(item.get("depth") or []) + list(item.get("masks") or [])
    for rel in files:
        if isinstance(rel, str) and rel and not (out / rel).exists():
            os.symlink((src / rel).resolve(), out / rel)


def _new_dir(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for sub in ("images", "depth", "masks"):
        (out / sub).mkdir(exist_ok=True)


def merge_train(out: Path, sources: list[Path]) -> None:
    _new_dir(out)
    # The training split and the training loop's val splits, each joined over the sources.
    for split in ("default_train", "random_val", "zeroshot_val"):
        lines = []
        for src in sources:
            for line in (src / f"{split}.jsonl").read_text().splitlines():
                _link_files(json.loads(line), src, out)
                lines.append(line + "\n")
        (out / f"{split}.jsonl").write_text("".join(lines))
        print(f"{out}/{split}.jsonl: {len(lines)} items")
    (out / "dataset.json").write_text((sources[0] / "dataset.json").read_text())


def gather_heldout(out: Path, sources: list[Path]) -> None:
    _new_dir(out)
    kept = []
    for src in sources:
        seen = set()
        for split in SPLITS:
            for line in (src / f"{split}.jsonl").read_text().splitlines():
                item = json.loads(line)
                if item.get("relation") not in ORIENTATION or item["id"] in seen:
                    continue
                seen.add(item["id"])
                _link_files(item, src, out)
                kept.append(item)
        print(f"{src}: {len(seen)} Orientation items")
    (out / "dataset.json").write_text((sources[0] / "dataset.json").read_text())
    (out / "orient.jsonl").write_text("".join(json.dumps(item) + "\n" for item in kept))
    print(f"{out}/orient.jsonl: {len(kept)} items")


def write_config(base: Path, out: Path, data: Path, output: Path, steps: int) -> None:
    import yaml

    config = yaml.safe_load(base.read_text())
    stage = dict(next(s for s in config["stages"] if s["name"] == "B4-all"))
    stage.update(name="O-orientation", steps=steps, lr=0.001, warmup_steps=100,
                 task_weights={"relation": 1.0}, relations=list(ORIENTATION))  # fmt: skip
    config.update(stages=[stage], pretrain_steps=0, data=str(data), output=str(output),
                  eval_every=800)  # fmt: skip
    out.write_text(yaml.safe_dump(config, sort_keys=False))
    print(f"{out}: one stage of {steps} steps on {data}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    train = sub.add_parser("train", help="an Orientation-only training dataset")
    train.add_argument("out", type=Path)
    train.add_argument("--n", type=int, default=30000, help="items to generate (30000)")
    train.add_argument("--seed", type=int, default=31, help="generation seed (31)")
    train.add_argument("--workers", type=int, default=2, help="generator processes (2)")
    merge = sub.add_parser("merge", help="one training dataset from several")
    merge.add_argument("out", type=Path)
    merge.add_argument("sources", type=Path, nargs="+")
    conf = sub.add_parser("config", help="a one-stage Orientation config from a run's config")
    conf.add_argument("base", type=Path, help="a run's train_config.yaml (with a B4-all stage)")
    conf.add_argument("out", type=Path)
    conf.add_argument("--data", type=Path, required=True)
    conf.add_argument("--output", type=Path, required=True)
    conf.add_argument("--steps", type=int, default=2400, help="steps (2400)")
    held = sub.add_parser("heldout", help="the Orientation items of fresh datasets")
    held.add_argument("out", type=Path)
    held.add_argument("sources", type=Path, nargs="+")
    args = parser.parse_args(argv)
    if args.what == "train":
        make_train(args.out, args.n, args.seed, args.workers)
    elif args.what == "config":
        write_config(args.base, args.out, args.data, args.output, args.steps)
    elif args.what == "merge":
        merge_train(args.out, args.sources)
    else:
        gather_heldout(args.out, args.sources)


if __name__ == "__main__":
    main()
