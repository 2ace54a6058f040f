"""`vsre train`: two-stage tuning (or any list of stages), resumable after a hard kill.

A run directory holds the resolved config (`train_config.yaml`) and one sub-directory per
stage with `metrics.jsonl`, `curves.png`, resumable checkpoints and, when the stage is done,
`final/` (a `save_pretrained` model directory the next stage, the evaluator and the ROS node
load). Each stage starts from the previous stage's `final/`.

Checkpoints are atomic: a new one is written to a fresh directory, then a one-line `latest`
file is replaced (rename) to point at it, then older ones are removed; a SIGKILL at any moment
leaves a complete checkpoint to resume from. What a step sees depends only on (seed, step):
the epoch's order and the template draws are recomputed, and the torch RNG state is stored,
so a resumed run takes the same steps as an uninterrupted one.

accelerate drives the loop, so `accelerate launch -m vsre_ros train ...` runs it on several
GPUs: each process takes its slice of every step's batch.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .config import StageConfig, TrainConfig, dump_config, load_config
from .data import Example, TemplateSampler, ask, epoch_order, templates_by_ids
from .items import Item, load_items
from .scoring import score

log = logging.getLogger(__name__)

FINAL = "final"
LATEST = "latest"


@dataclass
class StageResult:
    """What a finished (or skipped) stage produced."""

    name: str  # stage name
    final_dir: Path  # the trained model directory
    steps_run: int  # steps run in this invocation (0 if it was already done)
    last_loss: float | None  # loss of the last step run
    metrics: list[dict] = field(default_factory=list)  # metrics lines of this invocation


# -- data ----------------------------------------------------------------------------------


def stage_items(items: list[Item], stage: StageConfig) -> list[Item]:
    """Items a stage trains on: its relation filter and task mix applied."""
    chosen = items
    if stage.relations:
        wanted = set(stage.relations)
        chosen = [i for i in chosen if i.relation in wanted or not i.relation]
    if stage.task_weights:
        chosen = [i for i in chosen if stage.task_weights.get(i.task, 0.0) > 0]
    if not chosen:
        raise ValueError(
            f"stage {stage.name!r}: no items left after relations={stage.relations} and "
            f"task_weights={stage.task_weights}"
        )
    return chosen


def stage_sampler(stage: StageConfig, seed: int) -> TemplateSampler:
    if stage.templates == "none":
        return TemplateSampler(templates=(), share=0.0, seed=seed)
    if stage.templates == "train":
        return TemplateSampler(share=stage.template_share, seed=seed)
    ids = [s.strip() for s in stage.templates.split(",") if s.strip()]
    return TemplateSampler(templates_by_ids(ids), stage.template_share, seed)


def step_examples(
    items: list[Item],
    stage: StageConfig,
    sampler: TemplateSampler,
    seed: int,
    step: int,
    rank: int = 0,
    world: int = 1,
) -> list[Example]:
    """This process's share of the examples of one step: a pure function of (seed, step)."""
    n = len(items)
    per_step = stage.batch_size * world
    start = step * per_step + rank * stage.batch_size
    out = []
    for position in range(start, start + stage.batch_size):
        epoch, offset = divmod(position, n)
        index = _epoch_order(items, epoch, seed, stage)[offset]
        out.append(sampler.example(items[index], index, epoch))
    return out


_ORDERS: dict[tuple, tuple[list[Item], list[int]]] = {}


def _epoch_order(items: list[Item], epoch: int, seed: int, stage: StageConfig) -> list[int]:
    """`epoch_order`, computed once per epoch rather than once per step (it walks every item:
    0.4 s for 44k items, more than a tiny model's whole step)."""
    weights = tuple(sorted((stage.task_weights or {}).items()))
    key = (id(items), len(items), epoch, seed, stage.balanced, weights)
    hit = _ORDERS.get(key)
    if hit is not None and hit[0] is items:
        return hit[1]
    order = epoch_order(items, epoch, seed, stage.balanced, stage.task_weights or None)
    if len(_ORDERS) >= 4:
        _ORDERS.pop(next(iter(_ORDERS)))
    _ORDERS[key] = (items, order)
    return order


# -- checkpoints ---------------------------------------------------------------------------


def write_checkpoint(stage_dir: Path, step: int, model, optimizer) -> Path:
    """Write a resumable checkpoint for `step` (steps done) atomically; returns its directory."""
    from safetensors.torch import save_file

    tmp = Path(tempfile.mkdtemp(dir=stage_dir, prefix=".ckpt-"))
    trainable = {
        name: p.detach().contiguous().cpu()
        for name, p in model.named_parameters()
        if p.requires_grad
    }
    save_file(trainable, tmp / "trainable.safetensors")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    save_file({"torch_rng": torch.get_rng_state()}, tmp / "rng.safetensors")
    (tmp / "state.json").write_text(json.dumps({"step": step}))
    target = stage_dir / f"checkpoint-{step:08d}"
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)
    pointer = stage_dir / f".{LATEST}.tmp"
    pointer.write_text(target.name)
    os.replace(pointer, stage_dir / LATEST)
    for old in stage_dir.glob("checkpoint-*"):
        if old != target:
            shutil.rmtree(old, ignore_errors=True)
    for stale in stage_dir.glob(".ckpt-*"):
        shutil.rmtree(stale, ignore_errors=True)
    return target


def latest_checkpoint(stage_dir: Path) -> Path | None:
    pointer = stage_dir / LATEST
    if not pointer.is_file():
        return None
    path = stage_dir / pointer.read_text().strip()
    return path if (path / "state.json").is_file() else None


def load_checkpoint(path: Path, model, optimizer) -> int:
    """Restore trainable weights, optimizer and RNG; returns the number of steps done."""
    from safetensors.torch import load_file

    weights = load_file(str(path / "trainable.safetensors"))
    params = dict(model.named_parameters())
    expected = {n for n, p in params.items() if p.requires_grad}
    if set(weights) != expected:
        missing, extra = sorted(expected - set(weights)), sorted(set(weights) - expected)
        raise ValueError(
            f"checkpoint {path} does not match this stage's trainable parameters "
            f"(missing {missing[:3]}, unexpected {extra[:3]}); was the config changed? "
            "Use a new --output or delete the stage directory to start over"
        )
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(tensor)
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    torch.set_rng_state(load_file(str(path / "rng.safetensors"))["torch_rng"])
    return int(json.loads((path / "state.json").read_text())["step"])


def save_final(stage_dir: Path, model) -> Path:
    """save_pretrained into a temporary directory, then rename it to final/. Only what the
    stages built or trained is written; the frozen base stays in its checkpoint directories
    (`vsre export` writes a standalone copy)."""
    final = stage_dir / FINAL
    tmp = Path(tempfile.mkdtemp(dir=stage_dir, prefix=".final-"))
    model.save_pretrained(tmp, standalone=False)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


# -- metrics -------------------------------------------------------------------------------


def read_metrics(path: Path, upto_step: int | None = None) -> list[dict]:
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if upto_step is None or r["step"] <= upto_step]


def rewrite_metrics(path: Path, rows: list[dict]) -> None:
    """Keep only `rows` (a resumed run drops lines logged after its checkpoint)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.replace(tmp, path)


def plot_curves(rows: list[dict], path: Path, title: str) -> None:
    """Loss and accuracy against step, as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.5))
    train = [r for r in rows if "loss" in r]
    ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("loss")
    ax_loss.set_title(f"{title}: loss")
    acc = [r for r in train if r.get("acc") is not None]
    ax_acc.plot([r["step"] for r in acc], [r["acc"] for r in acc], label="train (1st token)")
    val = [r for r in rows if r.get("val_acc") is not None]
    if val:
        ax_acc.plot([r["step"] for r in val], [r["val_acc"] for r in val], "o-", label="val")
    averaged = [r for r in rows if r.get("val_acc_ema") is not None]
    if averaged:
        steps, accs = [r["step"] for r in averaged], [r["val_acc_ema"] for r in averaged]
        ax_acc.plot(steps, accs, "s--", label="val, averaged weights")
    ax_acc.set_ylim(0, 1)
    ax_acc.set_xlabel("step")
    ax_acc.set_ylabel("accuracy")
    ax_acc.set_title(f"{title}: accuracy")
    ax_acc.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def val_accuracy(model, items: list[Item], batch_size: int) -> float:
    """Accuracy of the model on items asked their own question, through the engine."""
    from .model_api import answer_examples

    examples = [ask(item) for item in items]
    was_training = model.training
    try:
        # The engine moves the model it is given: keep it where and as precise as training has it.
        predictions = answer_examples(
            model,
            examples,
            batch_size=batch_size,
            device=str(model.device),
            dtype=str(model.dtype).removeprefix("torch."),
            progress=False,
        )
    finally:
        model.train(was_training)
    rows = [score(ex.item, p) for ex, p in zip(examples, predictions, strict=True)]
    return sum(r.correct for r in rows) / len(rows)


# -- the loop ------------------------------------------------------------------------------


def learning_rate(stage: StageConfig, step: int) -> float:
    """Linear warm-up to stage.lr, then constant."""
    if stage.warmup_steps > 0 and step < stage.warmup_steps:
        return stage.lr * (step + 1) / stage.warmup_steps
    return stage.lr


def prepare_model(init: str | Path, config: TrainConfig, stage: StageConfig):
    """Build or load the stage's starting model and apply its freeze mode."""
    from .model_api import build_model, freeze, uncalibrated

    overrides = config.model_overrides if not Path(init).is_dir() else None
    model = uncalibrated(build_model(init, overrides, config.seed))
    summary = freeze(model, stage.freeze)
    return model, summary


def run_stage(
    config: TrainConfig,
    stage: StageConfig,
    init: str | Path,
    items: list[Item],
    val_items: list[Item],
    accelerator=None,
    progress: bool = True,
) -> StageResult:
    """Train one stage (resuming if it has a checkpoint); returns where its model went."""
    from accelerate import Accelerator
    from tqdm import tqdm

    from .model_api import (
        ATTENTION_LOSSES,
        AUX_LOSSES,
        MODEL_INPUTS,
        check_aux,
        collate,
        first_token_correct,
    )
    from .model_api import image_cache as make_cache

    accelerator = accelerator or Accelerator(cpu=not torch.cuda.is_available())
    check_aux(list(stage.aux_losses))
    needs_attention = bool(ATTENTION_LOSSES & set(stage.aux_losses))
    stage_dir = Path(config.output) / stage.name
    stage_dir.mkdir(parents=True, exist_ok=True)
    if (stage_dir / FINAL / "vsre_config.json").is_file():
        log.info("stage %s already finished: %s", stage.name, stage_dir / FINAL)
        return StageResult(stage.name, stage_dir / FINAL, 0, None)
    dump_config(config, stage_dir / "train_config.yaml")
    items = stage_items(items, stage)
    sampler = stage_sampler(stage, config.seed)

    model, summary = prepare_model(init, config, stage)
    model.to(accelerator.device)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params, lr=stage.lr, betas=tuple(stage.betas), weight_decay=stage.weight_decay
    )
    start = 0
    checkpoint = latest_checkpoint(stage_dir)
    metrics_path = stage_dir / "metrics.jsonl"
    if checkpoint is not None:
        start = load_checkpoint(checkpoint, model, optimizer)
        log.info("stage %s: resuming from %s (step %d)", stage.name, checkpoint, start)
    rewrite_metrics(metrics_path, read_metrics(metrics_path, upto_step=start))
    wrapped, optimizer = accelerator.prepare(model, optimizer)
    cache = make_cache(model, config.image_cache_dir or None)

    rank, world = accelerator.process_index, accelerator.num_processes
    this_run: list[dict] = []
    bar = tqdm(
        total=stage.steps,
        initial=start,
        desc=stage.name,
        unit="step",
        disable=not (progress and accelerator.is_main_process),
    )
    window: list[tuple[float, float, float]] = []
    loss_value = None
    t0 = time.perf_counter()
    for step in range(start, stage.steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(stage, step)
        examples = step_examples(items, stage, sampler, config.seed, step, rank, world)
        batch = collate(model, examples, cache, attention_targets=needs_attention)
        output = wrapped(**{k: batch[k] for k in MODEL_INPUTS}, output_attentions=needs_attention)
        loss = output.loss
        parts = {"lm": float(loss.detach())}
        for name, weight in stage.aux_losses.items():
            term = AUX_LOSSES[name](model, batch, output)
            parts[name] = float(term.detach())
            loss = loss + weight * term
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        if stage.grad_clip > 0:
            accelerator.clip_grad_norm_(params, stage.grad_clip)
        optimizer.step()
        loss_value = float(loss.detach())
        acc = float(first_token_correct(output.logits.detach(), batch).float().mean())
        window.append((loss_value, acc, parts["lm"]))
        done = step + 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss_value:.4f}")
        row = None
        if done % config.log_every == 0 or done == stage.steps or done == start + 1:
            row = {
                "step": done,
                "loss": sum(w[0] for w in window) / len(window),
                "step_loss": loss_value,
                "acc": sum(w[1] for w in window) / len(window),
                "lr": learning_rate(stage, step),
                "seconds": round(time.perf_counter() - t0, 3),
                **{f"loss_{k}": v for k, v in parts.items()},
            }
            window = []
        is_eval = val_items and (
            done == stage.steps or (config.eval_every and done % config.eval_every == 0)
        )
        if is_eval and accelerator.is_main_process:
            row = row or {"step": done}
            row["val_acc"] = val_accuracy(model, val_items, stage.batch_size)
        if row is not None and accelerator.is_main_process:
            this_run.append(row)
            with open(metrics_path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(row) + "\n")
        if done % config.save_every == 0 and done < stage.steps:
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                write_checkpoint(stage_dir, done, accelerator.unwrap_model(wrapped), optimizer)
    bar.close()
    accelerator.wait_for_everyone()
    final = stage_dir / FINAL
    if accelerator.is_main_process:
        final = save_final(stage_dir, accelerator.unwrap_model(wrapped))
        plot_curves(read_metrics(metrics_path), stage_dir / "curves.png", stage.name)
        (stage_dir / "trainable.json").write_text(json.dumps(summary, indent=2))
        for old in stage_dir.glob("checkpoint-*"):
            shutil.rmtree(old, ignore_errors=True)
        (stage_dir / LATEST).unlink(missing_ok=True)
    accelerator.wait_for_everyone()  # the next stage, in every process, starts from final/
    return StageResult(stage.name, final, stage.steps - start, loss_value, this_run)


def train(
    config: TrainConfig,
    stage_names: list[str] | None = None,
    init: str | Path | None = None,
    progress: bool = True,
) -> list[StageResult]:
    """Run the chosen stages in order; each starts from the previous stage's final model."""
    config.validate()
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    stages = config.select(stage_names) if stage_names else list(config.stages)
    if not config.data:
        raise ValueError("no training data: set data (a dataset directory) or --data")
    out = Path(config.output)
    out.mkdir(parents=True, exist_ok=True)
    dump_config(config, out / "train_config.yaml")
    by_split: dict[str, list[Item]] = {}

    def split_items(split: str) -> list[Item]:
        if split not in by_split:
            by_split[split] = load_items(
                config.data, split, config.data_format, config.images or None
            )
        return by_split[split]

    val = split_items(config.val_split)[: config.val_items] if config.val_split else []
    names = [s.name for s in config.stages]
    results = []
    for stage in stages:
        start_from = init
        if start_from is None:
            position = names.index(stage.name)
            previous = out / names[position - 1] / FINAL if position else None
            if previous is not None and (previous / "vsre_config.json").is_file():
                start_from = previous
            elif previous is not None and stage.freeze != "all":
                log.warning("stage %s: %s not found, starting from %s", stage.name, previous,
                            config.model)  # fmt: skip
        start_from = start_from or config.model
        result = run_stage(config, stage, start_from, split_items(stage.split), val,
                           progress=progress)  # fmt: skip
        results.append(result)
        init = None
    return results


# -- command line --------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="training config YAML (TrainConfig fields)")
    parser.add_argument("--data", help="dataset directory")
    parser.add_argument("--format", dest="data_format", help="dataset format: vsre, vsr")
    parser.add_argument("--images", help="image folder (format vsr)")
    parser.add_argument("--model", help="preset id or model directory to start from")
    parser.add_argument("--init", help="start the first chosen stage from this model directory")
    parser.add_argument("--output", help="run directory (one sub-directory per stage)")
    parser.add_argument(
        "--stages", default="all", help="stages to run, comma-separated names, or all"
    )
    parser.add_argument("--steps", type=int, help="steps of every chosen stage")
    parser.add_argument("--batch-size", type=int, help="batch size of every chosen stage")
    parser.add_argument("--lr", type=float, help="learning rate of every chosen stage")
    parser.add_argument("--seed", type=int, help="run seed")
    parser.add_argument("--threads", type=int, help="torch threads (0: torch default)")
    parser.add_argument("--save-every", type=int, help="steps between checkpoints")
    parser.add_argument("--eval-every", type=int, help="steps between val evaluations")
    parser.add_argument("--log-every", type=int, help="steps between metrics lines")
    parser.add_argument("--val-split", help="split evaluated during training")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


_TOP_LEVEL = {
    "data": "data",
    "data_format": "data_format",
    "images": "images",
    "model": "model",
    "output": "output",
    "seed": "seed",
    "threads": "threads",
    "save_every": "save_every",
    "eval_every": "eval_every",
    "log_every": "log_every",
    "val_split": "val_split",
}
_PER_STAGE = {"steps": "steps", "batch_size": "batch_size", "lr": "lr"}


def config_from_args(args: argparse.Namespace) -> tuple[TrainConfig, list[str] | None]:
    """The config file (or defaults) with the command line's values on top."""
    config = load_config(args.config) if args.config else TrainConfig()
    for arg, key in _TOP_LEVEL.items():
        value = getattr(args, arg, None)
        if value is not None:
            setattr(config, key, value)
    names = None if args.stages == "all" else [s.strip() for s in args.stages.split(",")]
    chosen = config.select(names) if names else config.stages
    for arg, key in _PER_STAGE.items():
        value = getattr(args, arg, None)
        if value is not None:
            for stage in chosen:
                setattr(stage, key, value)
    config.validate()
    return config, names


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        config, names = config_from_args(args)
        results = train(config, names, init=args.init, progress=not args.no_progress)
    except (FileNotFoundError, ValueError) as err:
        print(f"vsre train: {err}", file=sys.stderr)
        return 2
    for result in results:
        last = "-" if result.last_loss is None else f"{result.last_loss:.4f}"
        print(f"{result.name}: {result.steps_run} steps, last loss {last} -> {result.final_dir}")
    return 0
