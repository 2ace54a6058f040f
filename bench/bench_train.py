"""Training and evaluation benchmark: prints step times, cache speed-up and evaluator speed.

    PYTHONPATH=. python bench/bench_train.py --threads 2
    PYTHONPATH=. python bench/bench_train.py --data data/sim --split random_train
    PYTHONPATH=. python bench/bench_train.py --recipe-only --threads 1 --processes 2 \
        --per-image 4 --fused-optimizer

Figures (random weights; a step costs the same trained or not):
0. the named recipe's last stage through the training loop (`--recipe`, vsre-tiny): samples/s,
   each phase's wall and CPU time, FLOPs against the GEMM rate, padding and packed tokens;
   `--per-image`, `--fused-optimizer`, `--processes`, `--length-window` try the loop's knobs;
1. optimiser step time (median over steps, after warm-up) per preset and freeze mode at the
   given batch size, on the dataset's own images;
2. batch collation with the preprocessed-image cache: first epoch (decode + resize) against
   later epochs (cache hits);
3. the evaluator: scoring and aggregating hand-made predictions per second (no model).
Without --data a small vsre-format dataset of random images is drawn in a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from vsre_ros.training.data import TemplateSampler
from vsre_ros.training.items import Item, load_items
from vsre_ros.training.metrics import evaluate_predictions
from vsre_ros.training.model_api import (
    MODEL_INPUTS,
    build_model,
    collate,
    freeze,
    image_cache,
)
from vsre_ros.training.scoring import Prediction

ROOT = Path(__file__).resolve().parents[1]


def random_dataset(root: Path, n: int, size: int) -> Path:
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    rows = []
    for k in range(n):
        name = f"images/{k:05d}.png"
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / name)
        rows.append(
            Item(
                id=f"i{k}",
                image=name,
                label=k % 2,
                relation="left of",
                subj="red cup",
                obj="blue box",
                answer="yes" if k % 2 else "no",
            ).to_json()  # fmt: skip
        )
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "dataset.json").write_text(json.dumps({"schema": "vsre-dataset/1"}))
    return root


def bench_steps(items, preset: str, mode: str, batch: int, steps: int) -> float:
    model = build_model(preset, seed=0)
    freeze(model, mode)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    cache = image_cache(model)
    sampler = TemplateSampler(seed=0)
    times = []
    for step in range(steps + 2):
        examples = [sampler.example(items[(step * batch + j) % len(items)], j, step)
                    for j in range(batch)]  # fmt: skip
        start = time.perf_counter()
        out = model(**{k: v for k, v in collate(model, examples, cache).items()
                       if k in MODEL_INPUTS})  # fmt: skip
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= 2:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_cache(items, preset: str, batch: int) -> tuple[float, float]:
    model = build_model(preset, seed=0)
    cache = image_cache(model)
    sampler = TemplateSampler(seed=0)
    epochs = []
    for epoch in range(2):
        times = []
        for start in range(0, len(items) - batch + 1, batch):
            examples = [sampler.example(items[i], i, epoch) for i in range(start, start + batch)]
            t0 = time.perf_counter()
            collate(model, examples, cache)
            times.append(time.perf_counter() - t0)
        epochs.append(statistics.median(times))
    return epochs[0], epochs[1]


def bench_evaluator(n: int) -> float:
    rng = np.random.default_rng(0)
    items = [
        Item(
            id=f"e{k}",
            image=f"{k}.png",
            label=int(rng.integers(2)),
            relation="left of",
            subj=f"s{k % 50}",
            obj="box",
            answer="yes",
        )  # fmt: skip
        for k in range(n)
    ]
    predictions = [
        Prediction(item.id, "yes" if rng.random() < 0.6 else "no", probability=rng.random())
        for item in items
    ]
    start = time.perf_counter()
    evaluate_predictions(items, predictions, train_items=items[: n // 2])
    return n / (time.perf_counter() - start)


PHASES = ("batch", "targets", "forward", "backward", "optimizer")


def bench_recipe(
    recipe: str,
    data: Path | None,
    steps: int,
    threads: int,
    tmp: Path,
    batch: int = 0,
    length_window: int = 0,
    processes: int = 1,
    per_image: int = 0,
    fused_optimizer: bool = False,
    padded: bool = False,
) -> dict:
    """The named recipe's last stage (every task and extra loss) for `steps` steps through the
    training loop: median wall and CPU milliseconds per phase of a step (of the first
    process), and samples/s from the wall time between steps. `batch` and `length_window` (0:
    the recipe's) and `per_image` (0: the recipe's) override the stage's, `fused_optimizer`
    turns the run's fused AdamW on, `padded` turns token packing off; with `processes` > 1
    the run is launched as that many processes (torch.distributed.run, gloo), each with
    `threads` threads and its share of every step's batch, as `accelerate launch` runs it."""
    from vsre_ros.sim_data.dataset import GenConfig, generate
    from vsre_ros.training.config import dump_config, load_config
    from vsre_ros.training.train import read_metrics, recipe_path, train

    config = load_config(recipe_path(recipe))
    if data is None:
        data = tmp / "sim"
        generate(data, 600, GenConfig(seed=11, width=64, height=64), workers=1, progress=False)
    stage = config.stages[-1]
    stage.steps, stage.warmup_steps, stage.split = steps, 0, "random_train"
    stage.data = []  # the bench's dataset, not the stage's own fresh scenes
    total = batch or stage.batch_size
    if total % processes:
        raise ValueError(f"a batch of {total} does not split over {processes} processes")
    stage.batch_size = total // processes
    stage.length_window = length_window or stage.length_window
    stage.per_image = per_image or stage.per_image
    config.stages, config.data, config.output = [stage], str(data), str(tmp / "run")
    config.pretrain_steps, config.val_split, config.log_every, config.threads = 0, "", 1, threads
    config.save_every = steps + 1
    config.fused_optimizer = config.fused_optimizer or fused_optimizer
    config.pack_tokens = config.pack_tokens and not padded
    if processes == 1:
        train(config, progress=False)
    else:
        dump_config(config, tmp / "recipe.yaml")
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   "--nproc_per_node", str(processes), "-m", "vsre_ros", "train",
                   "--config", str(tmp / "recipe.yaml"), "--no-progress"]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
        subprocess.run(command, env=env, check=True, capture_output=True)
    rows = read_metrics(tmp / "run" / stage.name / "metrics.jsonl")[2:]  # past the warm-up
    median = {
        f"{kind}{phase}": statistics.median(r[f"{kind}{phase}"] for r in rows)
        for phase in PHASES
        for kind in ("ms_", "cpu_ms_")
    }
    seconds = [r["seconds"] for r in rows]
    step_ms = 1000 * statistics.median(b - a for a, b in zip(seconds, seconds[1:], strict=False))
    cpu_ms = sum(median[f"cpu_ms_{p}"] for p in PHASES)
    return {"batch_size": total, "processes": processes, "threads": threads,
            "length_window": stage.length_window, "per_image": stage.per_image,
            "fused_optimizer": config.fused_optimizer, "pack_tokens": config.pack_tokens,
            "step_ms": step_ms, "cpu_ms": cpu_ms,
            "samples_per_s": 1000 * total / step_ms,
            "samples_per_cpu_s": 1000 * stage.batch_size / cpu_ms, **median,
            **step_compute(config, stage, data, steps), "gemm_gflops": gemm_rate()}  # fmt: skip


def step_compute(config, stage, data: Path, steps: int) -> dict:
    """GFLOP of one forward and backward of the stage's first batch (torch's counter), and the
    share of the token positions of the timed steps' batches that are padding, and the tokens
    the LM's linear layers run on (packed: no padding, shared image prefixes once) as a share
    of the padded positions."""
    from torch.utils.flop_counter import FlopCounterMode
    from vsre_ros.training.losses import Trainee, active, build_heads
    from vsre_ros.training.model_api import MODEL_INPUTS, build_model, collate
    from vsre_ros.training.packing import TokenLayout
    from vsre_ros.training.recipes.targets import TargetBuilder, batch_targets
    from vsre_ros.training.train import stage_items, stage_sampler, step_examples

    model = build_model(config.model, config.model_overrides, config.seed)
    model.train()
    weights = active({**config.aux_losses, **stage.aux_losses})
    heads = build_heads(model, list(weights))
    trainee = Trainee(model, heads, list(weights), config.hop_layers, config.shape_weight,
                      config.pack_tokens)  # fmt: skip
    items = stage_items(load_items(data, stage.split), stage)
    sampler, cache = stage_sampler(stage, 0), image_cache(model)
    examples = step_examples(items, stage, sampler, 0, 0)
    batch = collate(model, examples, cache)
    targets = batch_targets(TargetBuilder(model), examples, batch)
    with FlopCounterMode(display=False) as counter:
        out = trainee({k: batch[k] for k in MODEL_INPUTS}, batch, targets, weights)
        out.loss.backward()
    real = padded = run = 0
    for step in range(steps):
        examples = step_examples(items, stage, sampler, 0, step)
        batch = collate(model, examples, cache)
        mask = batch["attention_mask"]
        real, padded = real + int(mask.sum()), padded + mask.numel()
        run += TokenLayout.from_batch(batch).tokens if trainee.pack_tokens else mask.numel()
    return {"gflop": counter.get_total_flops() / 1e9, "padding": 1.0 - real / padded,
            "lm_tokens": run / padded}  # fmt: skip


def gemm_rate() -> float:
    """This machine's fp32 matrix-multiply rate, GFLOP per CPU-second (the compute floor)."""
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    for _ in range(3):
        a @ b
    start = time.process_time()
    for _ in range(20):
        a @ b
    return 20 * 2 * 1024**3 / (time.process_time() - start) / 1e9


def print_recipe(recipe: str, figures: dict) -> None:
    print(
        f"recipe {recipe}: {figures['samples_per_s']:.1f} samples/s (batch "
        f"{figures['batch_size']} over {figures['processes']} process(es) of "
        f"{figures['threads']} thread(s), length window {figures['length_window']}, "
        f"{figures['per_image']} row(s) per image, fused AdamW "
        f"{'on' if figures['fused_optimizer'] else 'off'}, tokens "
        f"{'packed' if figures['pack_tokens'] else 'padded'}; step "
        f"{figures['step_ms']:.0f} ms wall, {figures['cpu_ms']:.0f} ms CPU per process; "
        f"{figures['samples_per_cpu_s']:.1f} samples per CPU-second)"
    )
    if figures["processes"] > 1:
        print("  phases of the first process:")
    for phase in PHASES:
        wall, cpu = figures[f"ms_{phase}"], figures[f"cpu_ms_{phase}"]
        print(f"  {phase:10s} {wall:8.1f} ms wall {cpu:8.1f} ms CPU "
              f"({cpu / figures['cpu_ms']:5.1%} of the CPU)")  # fmt: skip
    floor = 1000 * figures["gflop"] / figures["gemm_gflops"]
    model_ms = figures["cpu_ms_forward"] + figures["cpu_ms_backward"]
    print(
        f"  compute: {figures['gflop']:.1f} GFLOP per step (forward and backward); GEMM rate "
        f"{figures['gemm_gflops']:.0f} GFLOP per CPU-second, so a floor of {floor:.0f} ms CPU;"
        f" forward and backward take {model_ms:.0f} ms CPU ({model_ms / floor:.1f}x the floor);"
        f" {figures['padding']:.0%} of the timed batches' token positions are padding; the LM's"
        f" linear layers run on {figures['lm_tokens']:.0%} of them"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="", help="vsre dataset (default: random images)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--presets", default="vsre-tiny,vsre-tiny-channel")
    parser.add_argument("--modes", default="stage1,stage2,all")
    parser.add_argument(
        "--recipe",
        default="vsre-tiny",
        help="recipe whose step is timed phase by phase ('' skips it; vsre-tiny)",
    )
    parser.add_argument("--recipe-steps", type=int, default=20, help="recipe steps timed (20)")
    parser.add_argument(
        "--recipe-batch", type=int, default=0, help="recipe batch size (0: the recipe's)"
    )
    parser.add_argument(
        "--length-window",
        type=int,
        default=0,
        help="steps sorted by length together (StageConfig.length_window; 0: the recipe's)",
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="train the recipe in this many processes of --threads threads each, splitting "
        "every step's batch (torch.distributed.run, gloo; 1)",
    )
    parser.add_argument(
        "--per-image",
        type=int,
        default=0,
        help="rows asked about each image in a batch (StageConfig.per_image; 0: the recipe's)",
    )
    parser.add_argument(
        "--fused-optimizer", action="store_true", help="AdamW's fused kernel (TrainConfig)"
    )
    parser.add_argument(
        "--padded", action="store_true", help="the padded step (TrainConfig.pack_tokens false)"
    )
    parser.add_argument("--recipe-only", action="store_true", help="only the recipe's figures")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.recipe:
        with tempfile.TemporaryDirectory() as tmp:
            data = Path(args.data) if args.data else None
            figures = bench_recipe(
                args.recipe, data, args.recipe_steps, args.threads, Path(tmp),
                args.recipe_batch, args.length_window, args.processes, args.per_image,
                args.fused_optimizer, args.padded,
            )  # fmt: skip
        print_recipe(args.recipe, figures)
        if args.recipe_only:
            return
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(args.data) if args.data else random_dataset(Path(tmp) / "d", 96, 96)
        items = load_items(data, args.split)
        print(f"threads {args.threads}, batch {args.batch}, {len(items)} items from {data}")
        for preset in args.presets.split(","):
            for mode in args.modes.split(","):
                median = bench_steps(items, preset, mode, args.batch, args.steps)
                print(f"step  {preset:18s} {mode:8s} median {1000 * median:8.1f} ms")
        first, later = bench_cache(items, args.presets.split(",")[0], args.batch)
        print(
            f"collate first epoch {1000 * first:.1f} ms/batch, later epochs "
            f"{1000 * later:.1f} ms/batch ({first / max(later, 1e-9):.1f}x)"
        )
    print(f"evaluator {bench_evaluator(20000):,.0f} predictions/s (20,000, with overlap check)")


if __name__ == "__main__":
    main()
