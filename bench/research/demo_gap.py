"""What the camera's frame size costs the model: the demo camera's scenes at several sizes.

    PYTHONPATH=. python bench/research/demo_gap.py --scenes 30 --sizes 160x120 128x128 64x64

The demo's sim camera renders scene 0, 1, 2, ... of seed 0 with the generator's default
question mix, and the model squashes each frame to its encoders' 64x64; the embedded model
was trained and tested on 64x64 renders. This renders the same scenes at each `--sizes` entry
(160x120 is what `config/vsre-tiny.yaml` filmed before it went to 128x128), asks every view-0
question of the kinds the demo asks (the demo picks 3 per scene), answers it with the engine
the server uses, asked as the offline evaluation asks it, and scores it with the demo's
rule (`core.answers.agrees_with_item`). Printed per size: accuracy overall and per task.
Questions are generated from each render, so a few differ between sizes where an object's
visibility does; `common` scores only the questions asked at every size.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict

from tqdm import tqdm
from vsre_ros.training.data import ask
from vsre_ros.training.items import Item
from vsre_ros.training.model_api import query_for

from vsre_ros.core.answers import agrees_with_item
from vsre_ros.core.engine import Engine, load_model
from vsre_ros.ros.engines import resolve_model_ref
from vsre_ros.ros.params import DemoClientParams

KINDS = DemoClientParams().kinds  # what the demo client asks by default


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        default="vsre-tiny",
        help="preset id (its embedded trained weights, as the server resolves it) or directory",
    )
    parser.add_argument("--seed", type=int, default=0, help="scene seed (the demo camera's: 0)")
    parser.add_argument("--scenes", type=int, default=60, help="scenes rendered per size (60)")
    parser.add_argument(
        "--sizes",
        nargs="+",
        default=["160x120", "128x128", "64x64"],
        help="camera sizes WxH (128x128: the demo's; 64x64: the training data's)",
    )
    parser.add_argument(
        "--training-questions",
        action="store_true",
        help="generate questions with the training data's mix (default: the demo camera's)",
    )
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    from vsre_ros.sim_data.dataset import GenConfig, build_scene
    from vsre_ros.sim_data.render import Simulator

    extra = {}
    if args.training_questions:
        from vsre_ros.training.default_model.data import question_config

        extra["questions"] = question_config()
    ref, note, random_weights = resolve_model_ref(args.model)
    if random_weights:
        print(f"demo_gap: {note}", file=sys.stderr)
        return 2
    engine = Engine(load_model(ref))
    print(f"{note}; seed {args.seed}, scenes 0-{args.scenes - 1}")
    scored: dict[str, dict[str, bool]] = {}  # size -> question key -> right
    tasks: dict[str, str] = {}
    for size in args.sizes:
        width, height = (int(v) for v in size.lower().split("x"))
        config = GenConfig(seed=args.seed, width=width, height=height, **extra)
        right: dict[str, bool] = {}
        start = time.perf_counter()
        with Simulator(width, height) as sim:
            for index in tqdm(range(args.scenes), desc=size, disable=args.no_progress):
                result = build_scene(sim, config, index)
                items = [it for it in result.view_items(0) if it["answer_kind"] in KINDS]
                images = [result.renders[0].rgb]
                answers = engine.answer(
                    [query_for(ask(Item.from_json(it)), images) for it in items]
                )
                for item, answer in zip(items, answers, strict=True):
                    key = f"{index}|{item['question']}|{'|'.join(item.get('options', []))}"
                    right[key] = agrees_with_item(item, answer)
                    tasks[key] = item.get("task", item["answer_kind"])
        scored[size] = right
        print(f"{size}: {len(right)} questions in {time.perf_counter() - start:.0f} s")
    common = set.intersection(*(set(r) for r in scored.values()))
    print(f"\n{len(common)} questions asked at every size\n")
    task_names = sorted({tasks[k] for k in common})
    print(f"{'size':>9} {'all':>14} {'common':>14} " + " ".join(f"{t:>14}" for t in task_names))
    for size, right in scored.items():
        by = defaultdict(list)
        for key in common:
            by[tasks[key]].append(right[key])
        cells = [_pct(list(right.values())), _pct([right[k] for k in common])]
        cells += [_pct(by[t]) for t in task_names]
        print(f"{size:>9} " + " ".join(f"{c:>14}" for c in cells))
    return 0


def _pct(values: list[bool]) -> str:
    return f"{sum(values) / len(values):.1%} ({len(values)})" if values else "-"


if __name__ == "__main__":
    raise SystemExit(main())
