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
import bisect
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .averaging import WeightAverage
from .config import (
    StageConfig,
    TrainConfig,
    add_config_arguments,
    apply_arguments,
    dump_config,
    load_config,
)
from .data import Example, TemplateSampler, WordingSampler, ask, epoch_order, templates_by_ids
from .items import Item, can_template, load_items
from .losses import LOSSES, Trainee, active, attach_exported, build_heads
from .perturb import row_augmentations
from .scoring import score

log = logging.getLogger(__name__)

FINAL = "final"
LATEST = "latest"


class ChunkEnded(Exception):
    """A run stopped at its time budget (`train(max_minutes=)`) after writing a checkpoint;
    the same command continues it exactly where it stopped."""

    def __init__(self, stage: str, step: int, steps: int, minutes: float):
        super().__init__(
            f"stopped after {minutes:g} minutes at stage {stage}, step {step} of {steps}, "
            "with a checkpoint; run the same command again to continue"
        )
        self.stage, self.step = stage, step


# Exit status of a command that stopped at its time budget (EX_TEMPFAIL: "try again"), so a
# driver loop can tell a chunk's end from an error: `until vsre train ...; do [ $? = 75 ] ||
# break; done`.
EXIT_CHUNK_ENDED = 75


@dataclass
class StageResult:
    """What a finished (or skipped) stage produced."""

    name: str  # stage name
    final_dir: Path  # the trained model directory
    steps_run: int  # steps run in this invocation (0 if it was already done)
    last_loss: float | None  # loss of the last step run
    metrics: list[dict] = field(default_factory=list)  # metrics lines of this invocation
    state: Any = None  # the RunState the next stage continues (carry_optimizer), else None


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


def stage_sampler(stage: StageConfig, seed: int) -> TemplateSampler | WordingSampler:
    if stage.templates == "grammar":
        return WordingSampler(share=stage.template_share, seed=seed, noise=stage.wording_noise)
    if stage.templates == "none":
        return TemplateSampler(templates=(), share=0.0, seed=seed)
    if stage.templates == "train":
        return TemplateSampler(share=stage.template_share, seed=seed)
    ids = [s.strip() for s in stage.templates.split(",") if s.strip()]
    return TemplateSampler(templates_by_ids(ids), stage.template_share, seed)


def step_examples(
    items: list[Item],
    stage: StageConfig,
    sampler: TemplateSampler | WordingSampler,
    seed: int,
    step: int,
    rank: int = 0,
    world: int = 1,
) -> list[Example]:
    """This process's share of the examples of one step: a pure function of (seed, step).
    A paired stage asks half as many items, each twice in adjacent rows (`WordingSampler.pair`).

    With `stage.length_window` w > 1, the w steps' examples of every process are sorted by
    length and cut into batches, which run in an order seeded by (seed, window): each batch
    pads to a near length (the step's token positions were 37% padding in the shipped recipe's
    last stage), and every example is still asked once.

    With `stage.per_image` k > 1, the step takes batch_size / k epoch-order positions, and each
    brings the next k - 1 positions of the epoch order that ask about the same image(s)
    (`_image_groups`), so the batch is batch_size / k images with k questions each."""
    share = stage.batch_size // 2 if stage.paired else stage.batch_size
    window = stage.length_window
    if stage.per_image > 1:
        groups = share // stage.per_image
        start = step * groups * world + rank * groups
        positions = [p for a in range(start, start + groups)
                     for p in _image_groups(items, stage, seed, a)]  # fmt: skip
        return [e for unit in _units_at(items, stage, sampler, seed, positions) for e in unit]
    if window <= 1:
        start = step * share * world + rank * share
        return [e for unit in _units(items, stage, sampler, seed, start, share) for e in unit]
    first, slot = divmod(step, window)
    units = _window_units(items, stage, sampler, seed, first * window * share * world,
                          window * share * world)  # fmt: skip
    by_length = sorted(range(len(units)), key=lambda u: (_length(units[u]), u))
    batches = [by_length[k : k + share] for k in range(0, len(by_length), share)]
    order = np.random.default_rng([seed, 17, first]).permutation(len(batches))
    return [e for u in batches[order[slot * world + rank]] for e in units[u]]


def _units(
    items: list[Item], stage: StageConfig, sampler, seed: int, start: int, count: int
) -> list[list[Example]]:
    """The examples of epoch-order positions [start, start + count): one per position, or two
    rows in a paired stage: the item under two wordings, or, for an item no wording can ask
    (a localization or metric question), that item and the item at the same position of a
    second epoch order, so that no row repeats another."""
    return _units_at(items, stage, sampler, seed, range(start, start + count))


def _units_at(items: list[Item], stage: StageConfig, sampler, seed: int,
              positions: Iterable[int]) -> list[list[Example]]:  # fmt: skip
    """`_units` of the given epoch-order positions."""
    n = len(items)
    out = []
    for position in positions:
        epoch, offset = divmod(position, n)
        index = _epoch_order(items, epoch, seed, stage)[offset]
        item = items[index]
        if not stage.paired:
            out.append([sampler.example(item, index, epoch)])
        elif can_template(item):
            out.append(list(sampler.pair(item, index, epoch)))
        else:
            partner = _partner(items, stage, seed, epoch, offset, index)
            out.append([sampler.example(item, index, epoch),
                        sampler.example(items[partner], partner, epoch)])  # fmt: skip
    return out


PARTNER_SEED = 7919  # offset of the second epoch order of a paired stage (`_units`)


def _partner(items: list[Item], stage: StageConfig, seed: int, epoch: int, offset: int,
             index: int) -> int:  # fmt: skip
    """The item sharing a paired unit with `items[index]` (at `offset` of the epoch order),
    which no wording can ask: the item at that offset of a second epoch order, or the first
    after it that is another item (a balanced order draws with replacement, so they can meet)."""
    second = _epoch_order(items, epoch, seed + PARTNER_SEED, stage)
    n = len(second)
    return next((second[(offset + j) % n] for j in range(n) if second[(offset + j) % n] != index),
                index)  # fmt: skip


_WINDOWS: dict[tuple, tuple[list[Item], list[list[Example]]]] = {}


def _window_units(items, stage, sampler, seed, start, count) -> list[list[Example]]:
    """`_units` of a length window, drawn once for the window's steps."""
    key = (id(items), id(sampler), stage.name, seed, start, count)
    hit = _WINDOWS.get(key)
    if hit is None or hit[0] is not items:
        _WINDOWS.clear()
        hit = _WINDOWS[key] = (items, _units(items, stage, sampler, seed, start, count))
    return hit[1]


def _length(unit: list[Example]) -> tuple[int, int]:
    """Sort key standing for a unit's token count: its images (each is many image tokens),
    then the characters of its longest wording."""
    return len(unit[0].item.images), max(len(e.question) + len(e.target) for e in unit)


def _image_groups(items: list[Item], stage: StageConfig, seed: int, anchor: int) -> list[int]:
    """Epoch-order positions of `anchor`'s group (`StageConfig.per_image`): the anchor, then
    the next positions of its epoch order that ask about the same image(s), cycling; an image
    with fewer than per_image items in the order repeats them."""
    epoch, offset = divmod(anchor, len(items))
    order = _epoch_order(items, epoch, seed, stage)
    if _GROUPS.get("order") is not order:  # offsets of each image key in this epoch order
        by_image: dict[tuple, list[int]] = {}
        for k, index in enumerate(order):
            by_image.setdefault(tuple(items[index].image_paths()), []).append(k)
        _GROUPS.clear()
        _GROUPS.update(order=order, by_image=by_image)
    same = _GROUPS["by_image"][tuple(items[order[offset]].image_paths())]
    at = bisect.bisect_left(same, offset)
    base = epoch * len(items)
    return [base + same[(at + j) % len(same)] for j in range(stage.per_image)]


_GROUPS: dict = {}  # the last epoch order and its offsets by image key (`_image_groups`)
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

# The last step's weights of a run with weight averaging, beside the averages in the last
# stage's final/ (`VSREModel.load_weights` reads them back).
LAST_WEIGHTS = "last_weights.safetensors"
# A stage's end state (heads, optimizer, averages, RNG) when the next stage continues it.
CARRY = "carry"


def write_checkpoint(
    stage_dir: Path, step: int, trainee, optimizer, average=None, name: str | None = None
) -> Path:
    """Write a resumable checkpoint for `step` (steps done) atomically; returns its directory.

    It holds every trainable tensor of the trainee (model and training-only heads), the
    optimizer, the weight averages and the torch RNG: all a resumed step depends on."""
    from safetensors.torch import save_file

    tmp = Path(tempfile.mkdtemp(dir=stage_dir, prefix=".ckpt-"))
    trainable = {
        n: p.detach().contiguous().cpu() for n, p in trainee.named_parameters() if p.requires_grad
    }
    save_file(trainable, tmp / "trainable.safetensors")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    save_file({"torch_rng": torch.get_rng_state()}, tmp / "rng.safetensors")
    state = {"step": step}
    if average is not None:
        save_file(average.state_tensors(), tmp / "average.safetensors")
        state["average_updates"] = average.updates
    (tmp / "state.json").write_text(json.dumps(state))
    target = stage_dir / (name or f"checkpoint-{step:08d}")
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)
    if name is None:
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


def load_checkpoint(path: Path, trainee, optimizer, average=None) -> int:
    """Restore trainable weights, optimizer, averages and RNG; returns the steps done."""
    from safetensors.torch import load_file

    weights = load_file(str(path / "trainable.safetensors"))
    params = dict(trainee.named_parameters())
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
    state = json.loads((path / "state.json").read_text())
    if average is not None:
        if "average_updates" not in state:
            raise ValueError(f"checkpoint {path} has no weight averages; ema_decay was changed")
        average.load_state_tensors(load_file(str(path / "average.safetensors")))
        average.updates = int(state["average_updates"])
    return int(state["step"])


def save_final(stage_dir: Path, model, extra: Callable[[Path], None] | None = None) -> Path:
    """save_pretrained into a temporary directory (plus what `extra` writes there), then
    rename it to final/. Only what the stages built or trained is written; the frozen base
    stays in its checkpoint directories (`vsre export` writes a standalone copy)."""
    final = stage_dir / FINAL
    tmp = Path(tempfile.mkdtemp(dir=stage_dir, prefix=".final-"))
    model.save_pretrained(tmp, standalone=False)
    if extra is not None:
        extra(tmp)
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
    """Linear warm-up to stage.lr, constant, then (over the stage's last `decay_share`) a
    linear decay to 10% of it."""
    if stage.warmup_steps > 0 and step < stage.warmup_steps:
        return stage.lr * (step + 1) / stage.warmup_steps
    start = int(stage.steps * (1 - stage.decay_share))
    if stage.decay_share > 0 and step >= start:
        left = (step - start) / max(1, stage.steps - start)
        return stage.lr * (1.0 - 0.9 * left)
    return stage.lr


def prepare_model(init: str | Path, config: TrainConfig, stage: StageConfig):
    """Build or load the stage's starting model and apply its freeze mode."""
    from .model_api import build_model, freeze, uncalibrated

    overrides = config.model_overrides if not Path(init).is_dir() else None
    model = uncalibrated(build_model(init, overrides, config.seed))
    summary = freeze(model, stage.freeze)
    return model, summary


def stage_losses(config: TrainConfig, stage: StageConfig) -> dict[str, float]:
    """The stage's extra loss terms with their weights: the run's, then the stage's on top.
    The consistency term applies to paired stages only: elsewhere adjacent rows are two items."""
    weights = active({**config.aux_losses, **stage.aux_losses})
    if not stage.paired:
        weights.pop("consistency", None)
    return weights


class PhaseClock:
    """Milliseconds of each phase of a step, wall and this process's CPU (the CPU figure is
    what a step costs on a machine shared with other work): `ms_<phase>`, `cpu_ms_<phase>`."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._wall, self._cpu = time.perf_counter(), time.process_time()

    def lap(self, phase: str) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        self.laps[f"ms_{phase}"] = 1000 * (wall - self._wall)
        self.laps[f"cpu_ms_{phase}"] = 1000 * (cpu - self._cpu)
        self._wall, self._cpu = wall, cpu


@dataclass
class RunState:
    """What one stage hands the next when they share one optimizer (`carry_optimizer`)."""

    trainee: Trainee  # the model and the training-only heads
    wrapped: torch.nn.Module  # the trainee as accelerate prepared it
    optimizer: torch.optim.Optimizer  # prepared as well
    average: WeightAverage | None  # weight averages of the model, when ema_decay > 0
    summary: dict  # what trains (freeze summary)


def new_state(
    config: TrainConfig, stage: StageConfig, init: str | Path, losses: list[str], accelerator
) -> RunState:
    """A fresh trainee and optimizer: the model from `init` in the stage's freeze mode and the
    heads `losses` train, drawn right after the run's seed is set."""
    model, summary = prepare_model(init, config, stage)
    model.to(accelerator.device)
    torch.manual_seed(config.seed)
    heads = build_heads(model, losses)
    trainee = Trainee(model, heads, losses, config.hop_layers, config.shape_weight,
                      config.pack_tokens)  # fmt: skip
    trainee.to(accelerator.device)
    trainee.train()
    params = [p for p in trainee.parameters() if p.requires_grad]
    # The fused kernel updates every tensor in one pass (the optimizer phase 30.6 -> 16.1 ms CPU
    # per step of the shipped model, bench/bench_train.py), with other rounding than the
    # per-tensor default: off unless asked, so runs stay comparable with earlier ones.
    fused = config.fused_optimizer and all(
        p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in params
    )
    optimizer = torch.optim.AdamW(
        params,
        lr=stage.lr,
        betas=tuple(stage.betas),
        weight_decay=stage.weight_decay,
        fused=fused or None,
    )
    average = WeightAverage(model, config.ema_decay) if config.ema_decay else None
    wrapped, optimizer = accelerator.prepare(trainee, optimizer)
    return RunState(trainee, wrapped, optimizer, average, summary)


def run_stage(
    config: TrainConfig,
    stage: StageConfig,
    init: str | Path,
    items: list[Item],
    val_items: list[Item],
    accelerator=None,
    progress: bool = True,
    *,
    state: RunState | None = None,
    carry_from: Path | None = None,
    head_losses: list[str] | None = None,
    step_offset: int = 0,
    last: bool = True,
    deadline: Deadline | None = None,
) -> StageResult:
    """Train one stage (resuming if it has a checkpoint); returns where its model went.

    `state` continues the previous stage's trainee and optimizer in memory; `carry_from` is
    that stage's directory, read when the state is not in memory (a resumed run). A stage that
    another continues (`last` False under `carry_optimizer`) keeps its end state in `carry/`.
    `head_losses` are the loss ids whose heads the run trains (default: this stage's);
    `step_offset` is the steps of the stages before (metrics' global_step, eval schedule).
    """
    from tqdm import tqdm

    from .model_api import MODEL_INPUTS, collate, first_token_correct
    from .model_api import image_cache as make_cache
    from .recipes.targets import TargetBuilder, batch_targets

    accelerator = accelerator or make_accelerator()
    weights = stage_losses(config, stage)
    carries = config.carry_optimizer and not last
    stage_dir = Path(config.output) / stage.name
    stage_dir.mkdir(parents=True, exist_ok=True)
    finished = (stage_dir / FINAL / "vsre_config.json").is_file()
    run_done = (
        Path(config.output) / config.stages[-1].name / FINAL / "vsre_config.json"
    ).is_file()
    done_before = finished and (
        not carries or run_done or (stage_dir / CARRY / "state.json").is_file()
    )
    if accelerator.num_processes > 1:  # every process takes the main process's decision
        from accelerate.utils import broadcast_object_list

        done_before = broadcast_object_list([done_before])[0]
    if done_before:
        log.info("stage %s already finished: %s", stage.name, stage_dir / FINAL)
        return StageResult(stage.name, stage_dir / FINAL, 0, None)
    main = accelerator.is_main_process  # the one process that writes the stage's files
    if main:
        dump_config(config, stage_dir / "train_config.yaml")
    items = stage_items(items, stage)
    sampler = stage_sampler(stage, config.seed)

    if state is None:
        state = new_state(config, stage, init, head_losses or list(weights), accelerator)
        if carry_from is not None:
            load_checkpoint(carry_from / CARRY, state.trainee, state.optimizer, state.average)
    trainee, wrapped, optimizer, average = (
        state.trainee,
        state.wrapped,
        state.optimizer,
        state.average,
    )
    model = trainee.model
    start = 0
    checkpoint = latest_checkpoint(stage_dir)
    metrics_path = stage_dir / "metrics.jsonl"
    if checkpoint is not None:
        start = load_checkpoint(checkpoint, trainee, optimizer, average)
        log.info("stage %s: resuming from %s (step %d)", stage.name, checkpoint, start)
    if main:
        rewrite_metrics(metrics_path, read_metrics(metrics_path, upto_step=start))
    accelerator.wait_for_everyone()
    cache = make_cache(model, config.image_cache_dir or None)
    wants = [LOSSES[name] for name in weights]
    builder = TargetBuilder(model) if any(t.targets for t in wants) else None
    params = [p for p in trainee.parameters() if p.requires_grad]

    rank, world = accelerator.process_index, accelerator.num_processes
    this_run: list[dict] = []
    bar = tqdm(total=stage.steps, initial=start, desc=stage.name, unit="step",
               disable=not (progress and accelerator.is_main_process))  # fmt: skip
    window: list[dict[str, float]] = []
    loss_value = None
    t0 = time.perf_counter()
    for step in range(start, stage.steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(stage, step)
        clock = PhaseClock()
        examples = step_examples(items, stage, sampler, config.seed, step, rank, world)
        transforms = row_augmentations(len(examples), stage.augment, config.seed, step, rank)
        batch = collate(model, examples, cache, transforms)
        clock.lap("batch")
        targets = batch_targets(builder, examples, batch) if builder is not None else {}
        clock.lap("targets")
        inputs = {k: batch[k] for k in MODEL_INPUTS}
        out = wrapped(inputs, batch, targets, weights)
        clock.lap("forward")
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(out.loss)
        clock.lap("backward")
        if stage.grad_clip > 0:
            accelerator.clip_grad_norm_(params, stage.grad_clip)
        optimizer.step()
        if average is not None:
            average.update()
        clock.lap("optimizer")
        loss_value = float(out.loss.detach())
        acc = float(first_token_correct(out.logits, batch).float().mean())
        window.append(
            {"loss": loss_value, "acc": acc, **{f"loss_{k}": v for k, v in out.parts.items()},
             **clock.laps}
        )  # fmt: skip
        done = step + 1
        global_done = step_offset + done
        bar.update(1)
        bar.set_postfix(loss=f"{loss_value:.4f}")
        row = None
        if done % config.log_every == 0 or done == stage.steps or done == start + 1:
            keys = sorted({k for w in window for k in w})
            row = {
                "step": done,
                "global_step": global_done,
                "stage": stage.name,
                "samples": global_done * stage.batch_size * world,
                "step_loss": loss_value,
                "lr": learning_rate(stage, step),
                "seconds": round(time.perf_counter() - t0, 3),
                **{k: sum(w[k] for w in window if k in w) / sum(1 for w in window if k in w)
                   for k in keys},
            }  # fmt: skip
            window = []
        is_eval = val_items and (
            done == stage.steps or (config.eval_every and global_done % config.eval_every == 0)
        )
        if is_eval and accelerator.is_main_process:
            row = row or {"step": done, "global_step": global_done, "stage": stage.name}
            row["val_acc"] = val_accuracy(model, val_items, 32)
            if average is not None:
                with average.swapped():
                    row["val_acc_ema"] = val_accuracy(model, val_items, 32)
        if row is not None and accelerator.is_main_process:
            this_run.append(row)
            with open(metrics_path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(row) + "\n")
        if done % config.save_every == 0 and done < stage.steps:
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                write_checkpoint(stage_dir, done, trainee, optimizer, average)
        if deadline is not None and done < stage.steps and deadline.passed(accelerator):
            bar.close()
            accelerator.wait_for_everyone()
            if accelerator.is_main_process and done % config.save_every:
                write_checkpoint(stage_dir, done, trainee, optimizer, average)
            accelerator.wait_for_everyone()
            raise ChunkEnded(stage.name, done, stage.steps, deadline.minutes)
    bar.close()
    accelerator.wait_for_everyone()
    final = stage_dir / FINAL
    attach_exported(model, trainee.heads)
    if accelerator.is_main_process:
        if carries:
            write_checkpoint(stage_dir, stage.steps, trainee, optimizer, average, name=CARRY)
            final = save_final(stage_dir, model)
        elif average is not None:
            # The stage's result is the averaged model; its last step's weights go beside.
            average.swap()
            final = save_final(stage_dir, model, lambda d: _save_swapped(model, average, d))
        else:
            final = save_final(stage_dir, model)
        plot_curves(read_metrics(metrics_path), stage_dir / "curves.png", stage.name)
        (stage_dir / "trainable.json").write_text(json.dumps(state.summary, indent=2))
        for old in stage_dir.glob("checkpoint-*"):
            shutil.rmtree(old, ignore_errors=True)
        (stage_dir / LATEST).unlink(missing_ok=True)
    accelerator.wait_for_everyone()  # the next stage, in every process, starts from final/
    if not carries:
        trainee.remove_hooks()
    result = StageResult(stage.name, final, stage.steps - start, loss_value, this_run)
    result.state = state if carries else None
    return result


def _save_swapped(model, average: WeightAverage, directory: Path) -> None:
    """Save the weights the averager holds (the live ones, after a swap) as LAST_WEIGHTS."""
    with average.swapped():
        model.save_weights(directory / LAST_WEIGHTS)


def spread(items: list[Item], n: int) -> list[Item]:
    """n items spread evenly over a split (a split file is in scene order)."""
    if n <= 0 or len(items) <= n:
        return items if n > 0 else []
    step = len(items) / n
    return [items[int(k * step)] for k in range(n)]


def make_accelerator():
    """The run's Accelerator: CUDA when there is one; on the CPU, several processes (torchrun)
    join one gloo group only when accelerate is told it runs on the CPU, so say so."""
    from accelerate import Accelerator, DistributedDataParallelKwargs

    # A term with nothing to learn in a batch leaves its head without a gradient: DDP (several
    # processes) must not wait for it.
    unused = DistributedDataParallelKwargs(find_unused_parameters=True)
    return Accelerator(cpu=not torch.cuda.is_available(), kwargs_handlers=[unused])


def pretrained_init(config: TrainConfig, init: str | Path, images_from: list[Item],
                    val_items: list[Item], progress: bool, accelerator) -> Path:  # fmt: skip
    """Each encoder trained alone with its family's own objective (`recipes/pretrain.py`) on
    the first stage's images, once per run: the first stage starts from `<output>/pretrain/`."""
    from .model_api import build_model, uncalibrated
    from .recipes.pretrain import PretrainConfig, pretrain_encoders, sim_images

    out = Path(config.output) / "pretrain"
    if (out / FINAL / "vsre_config.json").is_file():
        return out / FINAL
    out.mkdir(parents=True, exist_ok=True)
    overrides = config.model_overrides if not Path(init).is_dir() else None
    model = uncalibrated(build_model(init, overrides, config.seed))
    settings = PretrainConfig(steps=config.pretrain_steps, batch_size=config.pretrain_batch,
                              seed=config.seed)  # fmt: skip
    settings.val_every = max(1, settings.steps // 4)
    images, held_out = sim_images(images_from), sim_images(val_items)
    if not held_out:  # no val items: the last training images (up to a quarter) instead
        keep = len(images) - min(settings.val_images, len(images) // 4)
        images, held_out = images[:keep], images[keep:]
    log.info("encoder pretraining: %d images, %d steps", len(images), settings.steps)
    # Every process pretrains the same (seeded) weights; one saves them, the others wait.
    main = accelerator.is_main_process
    pretrain_encoders(model, images, held_out, settings, out, progress and main)
    if main:
        save_final(out, model)
    accelerator.wait_for_everyone()
    return out / FINAL


_now = time.monotonic  # the deadline's clock (a test moves it)


@dataclass
class Deadline:
    """A run's time budget: `passed` once `minutes` of wall time are spent (every process
    takes the main process's clock, so all stop after the same step)."""

    minutes: float
    start: float = field(default_factory=lambda: _now())

    def passed(self, accelerator) -> bool:
        over = _now() - self.start >= 60.0 * self.minutes
        if accelerator.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            over = broadcast_object_list([over])[0]
        return over


def train(
    config: TrainConfig,
    stage_names: list[str] | None = None,
    init: str | Path | None = None,
    progress: bool = True,
    max_minutes: float = 0.0,
) -> list[StageResult]:
    """Run the chosen stages in order; each starts from the previous stage's result (with
    `carry_optimizer`, the previous stage's trainee and optimizer carry on).

    With `max_minutes` > 0 the run stops after the first step past that budget, writes a
    checkpoint and raises `ChunkEnded`; calling `train` again with the same config continues
    exactly (a long run in chunks, e.g. one per session)."""
    deadline = Deadline(max_minutes) if max_minutes > 0 else None
    config.validate()
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    stages = config.select(stage_names) if stage_names else list(config.stages)
    if not config.data:
        raise ValueError("no training data: set data (a dataset directory) or --data")
    out = Path(config.output)
    out.mkdir(parents=True, exist_ok=True)
    accelerator = make_accelerator()
    if accelerator.is_main_process:
        dump_config(config, out / "train_config.yaml")
    by_split: dict[tuple[str, tuple[str, ...]], list[Item]] = {}

    def split_items(split: str, sources: Sequence[str] = ()) -> list[Item]:
        """`split` of the run's data, or of each of `sources` joined (a stage's `data`)."""
        key = (split, tuple(sources))
        if key not in by_split:
            by_split[key] = [
                item
                for source in sources or [config.data]
                for item in load_items(source, split, config.data_format, config.images or None)
            ]
        return by_split[key]

    val = spread(split_items(config.val_split), config.val_items) if config.val_split else []
    names = [s.name for s in config.stages]
    head_losses = sorted({n for s in config.stages for n in stage_losses(config, s)})
    if config.pretrain_steps > 0 and init is None:
        first = config.stages[0]
        init = pretrained_init(
            config, config.model, split_items(first.split, first.data), val, progress, accelerator
        )

    def ends_chain(position: int) -> bool:
        """Whether no stage continues this one's optimizer: the last stage, or one that the
        next stage restarts from (so its result is the averaged model, as a last stage's)."""
        return position == len(names) - 1 or config.stages[position + 1].restart

    results: list[StageResult] = []
    state = None
    for stage in stages:
        position = names.index(stage.name)
        previous = out / names[position - 1] if position else None
        start_from = init
        if start_from is None and previous is not None:
            if (previous / FINAL / "vsre_config.json").is_file():
                start_from = previous / FINAL
            elif stage.freeze != "all":
                log.warning("stage %s: %s not found, starting from %s", stage.name,
                            previous / FINAL, config.model)  # fmt: skip
        start_from = start_from or config.model
        carries = config.carry_optimizer and position > 0 and not ends_chain(position - 1)
        carry_from = previous if carries else None
        result = run_stage(
            config, stage, start_from, split_items(stage.split, stage.data), val, accelerator,
            progress, state=state, carry_from=carry_from if state is None else None,
            head_losses=head_losses if config.carry_optimizer else None,
            step_offset=sum(s.steps for s in config.stages[:position]),
            last=ends_chain(position), deadline=deadline,
        )  # fmt: skip
        results.append(result)
        state = result.state
        init = None
    if len(names) > 1 and stages[-1].name == names[-1] and accelerator.is_main_process:
        rows = [r for name in names for r in read_metrics(out / name / "metrics.jsonl")]
        plot_curves(rows, out / "learning_curve.png", Path(config.output).name)
        for name in names:  # the carried states are spent once the last stage is done
            shutil.rmtree(out / name / CARRY, ignore_errors=True)
    return results


# -- command line --------------------------------------------------------------------------

# recipe id -> its config file: the YAML files of training/recipes/.
RECIPES = {p.stem.replace("_", "-"): p for p in (Path(__file__).parent / "recipes").glob("*.yaml")}


def recipe_path(name: str) -> Path:
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; known: {sorted(RECIPES)}")
    return RECIPES[name]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`vsre train`'s flags: a config source, then one flag per scalar field of TrainConfig and
    of StageConfig (the latter applied to every chosen stage), generated from the fields."""
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--config", help="training config YAML (TrainConfig fields)")
    source.add_argument(
        "--recipe",
        help=f"a named config of training/recipes/ ({', '.join(sorted(RECIPES))}); "
        "vsre-tiny is the shipped model's",
    )
    parser.add_argument("--init", help="start the first chosen stage from this model directory")
    parser.add_argument(
        "--stages", default="all", help="stages to run, comma-separated names, or all"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_chunk_argument(parser)
    add_config_arguments(parser.add_argument_group("run (TrainConfig)"), TrainConfig)
    per_stage = parser.add_argument_group("every chosen stage (StageConfig)")
    add_config_arguments(per_stage, StageConfig, skip=("name",))


def add_chunk_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-minutes",
        type=float,
        default=0.0,
        help="stop after this much wall time with a checkpoint and exit status "
        f"{EXIT_CHUNK_ENDED}; the same command continues the run exactly (0: no limit)",
    )


def config_from_args(args: argparse.Namespace) -> tuple[TrainConfig, list[str] | None]:
    """The config file (or recipe, or defaults) with the command line's values on top."""
    if getattr(args, "recipe", None):
        config = load_config(recipe_path(args.recipe))
    else:
        config = load_config(args.config) if args.config else TrainConfig()
    apply_arguments(args, config)
    names = None if args.stages == "all" else [s.strip() for s in args.stages.split(",")]
    for stage in config.select(names) if names else config.stages:
        apply_arguments(args, stage, skip=("name",))
    config.validate()
    return config, names


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        config, names = config_from_args(args)
        results = train(config, names, init=args.init, progress=not args.no_progress,
                        max_minutes=args.max_minutes)  # fmt: skip
    except (FileNotFoundError, ValueError) as err:
        print(f"vsre train: {err}", file=sys.stderr)
        return 2
    except ChunkEnded as end:
        print(f"vsre train: {end}")
        return EXIT_CHUNK_ENDED
    for result in results:
        last = "-" if result.last_loss is None else f"{result.last_loss:.4f}"
        print(f"{result.name}: {result.steps_run} steps, last loss {last} -> {result.final_dir}")
    return 0
