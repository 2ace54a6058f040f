"""The default model's curriculum: stages of `StageConfig` trained with the recipe's extra losses.

Stage data, template draws and batch order are the trainer's own (`training.train`'s
`stage_items`, `stage_sampler`, `step_examples`: a pure function of seed and step); this loop
adds what the generic trainer has no inputs for: dense patch targets and attention targets
computed from each batch's items (`targets.batch_targets`), with a small training-only head.
One optimizer runs across the stages, so a later stage continues rather than restarts.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from vsre_ros.core.config import ENCODER_FAMILIES, tiny_encoders, tiny_lm

from ..config import StageConfig
from ..items import Item
from ..model_api import (
    MODEL_INPUTS,
    build_model,
    collate,
    first_token_correct,
    freeze,
    uncalibrated,
)
from ..model_api import image_cache as make_cache
from ..train import plot_curves, stage_items, stage_sampler, step_examples, val_accuracy
from .targets import (
    POSE_SIZE,
    BankProbe,
    DenseHead,
    LayerOutput,
    ObjectHead,
    PhraseProbe,
    TargetBuilder,
    bank_loss,
    batch_targets,
    dense_loss,
    hop0_loss,
    hop1_loss,
    hop2_loss,
    object_hop_loss,
    object_loss,
    pose_loss,
    probe_loss,
)

log = logging.getLogger(__name__)

# One polarity of each pair of opposite relations: with both polarities asked, the answer's
# correlation with any single image feature averages to zero (the XOR trap), so the first stage
# asks only these.
ONE_POLARITY = [
    "left of", "in front of", "above", "on", "close to", "near", "touching", "next to",
]  # fmt: skip
BASIC_TASKS = {"localization": 1.0, "direction": 1.0, "distance": 0.5, "relation": 1.5}
ALL_TASKS = {
    "relation": 3.0, "localization": 0.75, "direction": 0.75, "distance": 0.5, "compare": 0.5,
    "metric": 0.5, "composite": 0.25, "multi_image": 0.25,
}  # fmt: skip


def default_stages(steps_a: int, steps_b: int, batch_size: int = 16) -> list[StageConfig]:
    """Stage A: basic skills and one polarity; stage B: every task and relation."""
    return [
        StageConfig(
            name="A-basics-one-polarity",
            freeze="all",
            steps=steps_a,
            batch_size=batch_size,
            lr=2e-3,
            warmup_steps=100,
            templates="train",
            task_weights=dict(BASIC_TASKS),
            relations=list(ONE_POLARITY),
            split="default_train",
        ),
        StageConfig(
            name="B-all",
            freeze="all",
            steps=steps_b,
            batch_size=batch_size,
            lr=2e-3,
            warmup_steps=0,
            templates="train",
            task_weights=dict(ALL_TASKS),
            split="default_train",
        ),
    ]


def image_plane_stages(steps_a: int, steps_b: int, batch_size: int = 16) -> list[StageConfig]:
    """Narrower start: "left of" with localization and direction (all read the image plane),
    then both left/right polarities, then every task and relation (the last 40% of B)."""
    base = {"freeze": "all", "batch_size": batch_size, "lr": 2e-3, "templates": "train"}
    base["split"] = "default_train"
    lateral = ["left of", "right of", "at the left side of", "at the right side of"]
    tail = max(1, int(0.4 * steps_b))
    return [
        StageConfig(
            name="A-left-of-localization",
            steps=steps_a,
            warmup_steps=100,
            task_weights={"relation": 1.0, "localization": 1.0, "direction": 0.5},
            relations=["left of"],
            **base,
        ),
        StageConfig(
            name="B-left-right",
            steps=max(1, steps_b - tail),
            warmup_steps=0,
            task_weights={"relation": 1.5, "localization": 0.5, "direction": 0.5},
            relations=lateral,
            **base,
        ),
        StageConfig(
            name="C-all", steps=tail, warmup_steps=0, task_weights=dict(ALL_TASKS), **base
        ),
    ]


def binding_first_stages(
    steps_a: int, steps_b: int, batch_size: int = 16, tasks: dict[str, float] | None = None
) -> list[StageConfig]:
    """Sparkle's order: the basic skills alone (localization, direction, distance: each needs
    only "find the named object(s), read where they are") for the first half of A, then
    basics-first's A and B."""
    plain = default_stages(steps_a - steps_a // 2, steps_b, batch_size)
    skills = StageConfig(
        name="A0-skills" if tasks is None else "A0-localization",
        freeze="all",
        steps=max(1, steps_a // 2),
        batch_size=batch_size,
        lr=2e-3,
        warmup_steps=100,
        templates="train",
        task_weights=tasks or {"localization": 1.0, "direction": 1.0, "distance": 0.5},
        split="default_train",
    )
    plain[0].warmup_steps = 0
    return [skills, *plain]


def localization_first_stages(
    steps_a: int, steps_b: int, batch_size: int = 16
) -> list[StageConfig]:
    """binding-first with localization alone in the first half of A: one named object, one
    answer read off its place. Alone it reached 80% held out in 1,500 steps, while mixed with
    the other tasks it stayed near 30%; binding learned there carries the later stages."""
    return binding_first_stages(steps_a, steps_b, batch_size, {"localization": 1.0})


LATERAL = ["left of", "right of", "at the left side of", "at the right side of"]
# One polarity of the vertical and depth comparisons first, then the other (the XOR trap again).
VERTICAL_DEPTH_ONE = ["above", "in front of", "over", "ahead of"]
VERTICAL_DEPTH_OTHER = [
    "below", "behind", "under", "beneath", "at the back of", "beyond", "on top of",
]  # fmt: skip


def _grown(halves, batch_size) -> list[StageConfig]:
    """Stages from (steps, plan) halves, each plan a list of (name, share of its half's steps,
    tasks, relations); a half's last stage takes what the others' rounded shares leave."""
    base = {"freeze": "all", "batch_size": batch_size, "lr": 2e-3, "templates": "train"}
    base["split"] = "default_train"
    stages = []
    for total, plan in halves:
        steps = [max(1, round(share * total)) for _, share, _, _ in plan[:-1]]
        steps.append(max(1, total - sum(steps)))
        for (name, _, tasks, relations), n in zip(plan, steps, strict=True):
            stages.append(
                StageConfig(
                    name=name,
                    steps=n,
                    warmup_steps=100 if not stages else 0,
                    task_weights=dict(tasks),
                    relations=list(relations),
                    **base,
                )
            )
    return stages


LOCALIZE = {"localization": 1.0}
RELATE = {"relation": 2.0, "localization": 0.5}
RELATE_BASICS = {**RELATE, "direction": 0.5, "distance": 0.5}
# Stage A of both relation-growing curricula: binding alone, then "left of".
GROW_A = [
    ("A0-localization", 0.6, LOCALIZE, []),
    ("A1-left-of", None, {"relation": 1.0, "localization": 0.5}, ["left of"]),
]
PROJECTIVE = LATERAL + VERTICAL_DEPTH_ONE + VERTICAL_DEPTH_OTHER


def relations_grow_stages(steps_a: int, steps_b: int, batch_size: int = 16) -> list[StageConfig]:
    """Binding first, then relations added a few at a time, each new comparison one polarity
    before the other.

    A: localization alone (60%), then "left of" with localization. A run with "left of" alone
    learned the comparison (84% on "left of") and applied it to "right of" too (19%): it had
    learned left-ness, not the relation, which the next stage's opposite polarity teaches.
    B: both lateral polarities (20%); plus one polarity of vertical and depth (20%); plus their
    opposites with direction and distance (20%); then every task and relation (40%).
    Localization stays in every stage, so binding is not forgotten.
    """
    plan_b = [
        ("B1-lateral", 0.2, RELATE, LATERAL),
        ("B2-vertical-depth-one-polarity", 0.2, RELATE, LATERAL + VERTICAL_DEPTH_ONE),
        ("B3-projective", 0.2, RELATE_BASICS, PROJECTIVE),
        ("B4-all", None, ALL_TASKS, []),
    ]
    return _grown([(steps_a, GROW_A), (steps_b, plan_b)], batch_size)


# The relations relations-grow leaves to its last, everything-at-once stage, split the same way:
# one polarity of proximity, contact, containment and orientation first, then the opposites
# (far against near, outside and contains against inside, facing away against facing).
OTHERS_ONE = [
    "near", "close to", "by", "next to", "beside", "adjacent to", "alongside", "at the side of",
    "touching", "against", "on", "inside", "in", "within", "enclosed by", "facing",
    "parallel to", "between",
]  # fmt: skip
OTHERS_OPPOSITE = [
    "far from", "far away from", "outside", "contains", "around", "surrounding",
    "facing away from", "perpendicular to", "at the edge of", "in the middle of",
]  # fmt: skip


def relations_grow_all_stages(
    steps_a: int, steps_b: int, batch_size: int = 16
) -> list[StageConfig]:
    """relations-grow with every generated relation grown, not only the projective ones.

    In run 20 (relations-grow) the relations its B stages grew one polarity at a time scored
    86-100% on random_test (left of, right of, behind, beyond, under, in front of), while most
    of those met only in its last, all-relations stage scored 33-67% (facing, touching,
    between, beside, by, near). Here two more stages grow them the same way before the last:
    B1-B3 as relations-grow (16% of B each), B4 one polarity of the rest (14%), B5 their
    opposites with the comparison and metric tasks (14%), B6 every task and relation (24%).
    """
    grown = PROJECTIVE + OTHERS_ONE
    plan_b = [
        ("B1-lateral", 0.16, RELATE, LATERAL),
        ("B2-vertical-depth-one-polarity", 0.16, RELATE, LATERAL + VERTICAL_DEPTH_ONE),
        ("B3-projective", 0.16, RELATE_BASICS, PROJECTIVE),
        ("B4-others-one-polarity", 0.14, RELATE_BASICS, grown),
        (
            "B5-others-opposites",
            0.14,
            {**RELATE_BASICS, "compare": 0.25, "metric": 0.25},
            grown + OTHERS_OPPOSITE,
        ),
        ("B6-all", None, ALL_TASKS, []),
    ]
    return _grown([(steps_a, GROW_A), (steps_b, plan_b)], batch_size)


# curriculum id -> stages(steps_a, steps_b, batch_size)
CURRICULA = {
    "basics-first": default_stages,
    "image-plane-first": image_plane_stages,
    "binding-first": binding_first_stages,
    "localization-first": localization_first_stages,
    "relations-grow": relations_grow_stages,
    "relations-grow-all": relations_grow_all_stages,
}


def curriculum(name: str, steps_a: int, steps_b: int, batch_size: int) -> list[StageConfig]:
    if name not in CURRICULA:
        raise ValueError(f"unknown curriculum {name!r}; known: {sorted(CURRICULA)}")
    return CURRICULA[name](steps_a, steps_b, batch_size)


def default_overrides(
    families: Sequence[str] = ENCODER_FAMILIES,
    lm_layers: int = 4,
    fusion_grid: int = 8,
    object_tokens: int = 0,
    image_size: int = 64,
) -> dict[str, Any]:
    """The shipped size: the encoder families at width 64 x 3 layers, a Llama 128 x 4, channel
    fusion (64 image tokens). About 2M parameters with all four families.

    `families` keeps a subset (the ablation drops one at a time). The LM has four layers so
    that each binding hop gets its own layer (hop 0, hop 1, hop 2) and one is left to compare;
    `lm_layers` above 4 leaves more layers after hop 2 to pick the answer. `fusion_grid` is
    the side of the fused token grid (8: 64 image tokens; 4: 16, about 0.75x a step's cost,
    `bench/recipe_step_cost.py`). `object_tokens` adds that many object tokens read from
    the SAM map (`encoders/objects.py`); a family list without sam has none. `image_size` is
    the encoders' input side; the patch is an eighth of it, so the encoder grids stay 8x8 and
    a larger input costs the patch embeddings only (small objects get more pixels each).
    """
    if lm_layers < 4:
        raise ValueError(
            f"lm_layers must be at least 4 (three hops and one to answer), got {lm_layers}"
        )
    if fusion_grid < 1:
        raise ValueError(f"fusion_grid must be at least 1, got {fusion_grid}")
    if object_tokens < 0:
        raise ValueError(f"object_tokens must be at least 0, got {object_tokens}")
    if image_size < 8 or image_size % 8:
        raise ValueError(f"image_size must be a positive multiple of 8, got {image_size}")
    unknown = sorted(set(families) - set(ENCODER_FAMILIES))
    if unknown or not families:
        known = list(ENCODER_FAMILIES)
        raise ValueError(f"unknown or no encoder families {unknown}; known: {known}")
    encoders = [
        dataclasses.asdict(e)
        for e in tiny_encoders(
            hidden=64, layers=3, heads=4, image=image_size, patch=image_size // 8
        )
        if e.family in families
    ]
    lm = dataclasses.asdict(tiny_lm(hidden=128, layers=lm_layers, heads=4, ffn=512))
    # Eager attention returns the maps the hop targets need; the export switches to sdpa.
    lm["attn_implementation"] = "eager"
    overrides = {"fusion": "channel", "fusion_grid": fusion_grid, "encoders": encoders, "lm": lm}
    if object_tokens and "sam" in families:
        overrides["object_tokens"] = object_tokens
    return overrides


@dataclass
class RecipeConfig:
    """The whole recipe: model, stages, extra-loss weights, bookkeeping."""

    preset: str = "vsre-tiny"  # preset the model is built from (random init)
    init: str = ""  # or a saved model directory to continue from (its config wins)
    model_overrides: dict[str, Any] = field(
        default_factory=default_overrides
    )  # ModelConfig fields replaced in the preset (see default_overrides)
    seed: int = 0  # model init, data order, template draws
    stages: list[StageConfig] = field(default_factory=lambda: default_stages(600, 1800))
    dense_weight: float = 1.0  # patch colour/category/depth loss weight
    hop0_weight: float = 1.0  # object phrase's last token -> the phrase's other words, head 0
    hop1_weight: float = 1.0  # object phrase -> its object's mask, head 0
    hop2_weight: float = 1.0  # answer position -> object/relation phrases
    probe_weight: float = 1.0  # object phrase after the hop-1 layer -> its object's place, depth
    shape_weight: float = 1.0  # the probe's object shape (box, area, depth range) term
    pose_weight: float = 0.0  # the pose probe: object phrase -> its 3D pose (off by default)
    bank_weight: float = 1.0  # answer position after the hop-2 layer -> every BANK relation
    verdict_weight: float = 1.0  # the same -> statement's truth, its option listed second
    # Object tokens (a model with them only): each image's objects matched to the tokens and
    # read back by a training-only head, and each object phrase's second hop-1 head pulled
    # to its object's token.
    object_weight: float = 1.0
    hop_layers: list[int] = field(
        default_factory=lambda: [0, 1, 2]
    )  # LM layers of hop 0, hop 1 (and the probe's output), hop 2
    final_decay: float = 0.3  # last share of the last stage: lr decays linearly to 10%
    log_every: int = 20  # steps between metrics lines
    val_every: int = 400  # steps between val evaluations (0: only at the end)
    val_items: int = 96  # val items asked (their own question) each time
    threads: int = 0  # torch threads; 0 leaves torch's default
    # Build the next step's batch and targets on a second thread while this step trains. Off:
    # on 2 CPU cores the thread's Python competes with the step's for the GIL, 1.23x slower
    # (bench/recipe_step_cost.py --prefetch off on); it pays where a GPU does the step.
    prefetch: bool = False
    # Average the weights over steps (Polyak): after each step every average moves toward its
    # weight by 1 - ema_decay. 0: off. On, the val figures are taken for both, the trained
    # model carries the averages and the last step's weights go to last_weights.safetensors.
    ema_decay: float = 0.0
    # Before the stages, each encoder trained alone with its family's own objective on the
    # first stage's split's images (`pretrain.py`): this many steps of this many images.
    pretrain_steps: int = 0
    pretrain_batch: int = 32

    def __post_init__(self) -> None:
        if not 0.0 <= self.final_decay <= 1.0:
            raise ValueError(
                f"final_decay is a share of the last stage, in [0, 1]; got {self.final_decay}"
            )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for stage in data["stages"]:
            stage["betas"] = list(stage["betas"])
        return data


def _lr(stage: StageConfig, step: int, last: bool, decay: float) -> float:
    if stage.warmup_steps and step < stage.warmup_steps:
        return stage.lr * (step + 1) / stage.warmup_steps
    start = int(stage.steps * (1 - decay))
    if last and decay > 0 and step >= start:
        left = (step - start) / max(1, stage.steps - start)
        return stage.lr * (1.0 - 0.9 * left)
    return stage.lr


class _Batches:
    """A stage's batches in step order, the next one built ahead on `pool` (None: inline)."""

    def __init__(self, prepare: Callable[[int], tuple], steps: int, pool: Executor | None):
        self.prepare, self.steps, self.pool = prepare, steps, pool
        self.pending: tuple[int, Future] | None = None

    def _submit(self, step: int) -> None:
        if self.pool is not None and step < self.steps:
            self.pending = (step, self.pool.submit(self.prepare, step))

    def get(self, step: int) -> tuple:
        if self.pending is not None and self.pending[0] == step:
            out = self.pending[1].result()  # re-raises what the worker raised
        else:
            self.settle()
            out = self.prepare(step)
        self.pending = None
        self._submit(step + 1)
        return out

    def settle(self) -> None:
        """Wait for the batch being built, so nothing else runs beside the caller."""
        if self.pending is not None:
            wait([self.pending[1]])


class WeightAverage:
    """An exponential moving average of a model's trainable weights.

    `update()` after each optimizer step moves each average toward its weight by 1 - d, with
    d = min(decay, (1 + n) / (10 + n)) after n updates, so the random init is forgotten within
    the first steps rather than over 1 / (1 - decay) of them. `swapped()` puts the averages in
    the model for a while (a val pass); `swap()` exchanges them for good.
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1) (0 turns it off), got {decay}")
        self.live = [p for p in model.parameters() if p.requires_grad]
        self.average = [p.detach().clone() for p in self.live]
        self.decay = decay
        self.updates = 0

    @torch.no_grad()
    def update(self) -> None:
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for mean, weight in zip(self.average, self.live, strict=True):
            mean.lerp_(weight, 1.0 - d)
        self.updates += 1

    @torch.no_grad()
    def swap(self) -> None:
        for mean, weight in zip(self.average, self.live, strict=True):
            held = weight.detach().clone()
            weight.copy_(mean)
            mean.copy_(held)

    @contextmanager
    def swapped(self) -> Iterator[None]:
        self.swap()
        try:
            yield
        finally:
            self.swap()


# The last step's weights of a run with weight averaging, in the model's own weight format
# (`VSREModel.load_weights` reads them back).
LAST_WEIGHTS = "last_weights.safetensors"


def _pretrain(model, recipe: RecipeConfig, items_by_split, val_items, out: Path, progress) -> None:
    from .pretrain import PretrainConfig, pretrain_encoders, sim_images

    config = PretrainConfig(
        steps=recipe.pretrain_steps, batch_size=recipe.pretrain_batch, seed=recipe.seed
    )
    config.val_every = max(1, config.steps // 4)
    images = sim_images(items_by_split[recipe.stages[0].split])
    held_out = sim_images(val_items)
    if not held_out:  # no val items: the last training images (up to a quarter) instead
        keep = len(images) - min(config.val_images, len(images) // 4)
        images, held_out = images[:keep], images[keep:]
    log.info("encoder pretraining: %d images, %d steps", len(images), config.steps)
    pretrain_encoders(model, images, held_out, config, out, progress)


def train_recipe(
    recipe: RecipeConfig,
    items_by_split: dict[str, list[Item]],
    val_items: list[Item],
    out_dir: str | Path,
    progress: bool = True,
):
    """Train the recipe from a random init; returns (model, metrics rows). Writes metrics.jsonl,
    recipe.json and learning_curve.png to `out_dir`."""
    from tqdm import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if recipe.threads > 0:
        torch.set_num_threads(recipe.threads)
    (out / "recipe.json").write_text(json.dumps(recipe.to_dict(), indent=2))
    if recipe.init:
        from vsre_ros.core.model import VSREModel

        model = uncalibrated(VSREModel.from_pretrained(recipe.init))
        # The hop targets read attention maps, which only eager attention returns.
        model.config.lm.attn_implementation = "eager"
        model.base_lm().config._attn_implementation = "eager"
    else:
        model = build_model(recipe.preset, recipe.model_overrides, recipe.seed)
    if recipe.pretrain_steps > 0:
        _pretrain(model, recipe, items_by_split, val_items, out, progress)
    depth = int(model.base_lm().config.num_hidden_layers)
    if len(recipe.hop_layers) != 3 or not all(0 <= k < depth for k in recipe.hop_layers):
        raise ValueError(
            f"hop_layers {recipe.hop_layers} must be three LM layers (hop 0, hop 1, hop 2) "
            f"below the LM's {depth}"
        )
    freeze(model, "all")
    model.train()
    torch.manual_seed(recipe.seed)
    head = DenseHead(model.hidden_size)
    builder = TargetBuilder(model)
    probe = PhraseProbe(model.hidden_size, model.num_image_tokens)
    hop0_layer, hop1_layer, hop2_layer = recipe.hop_layers
    bound = LayerOutput(model, hop1_layer)
    gathered = LayerOutput(model, hop2_layer)
    bank = BankProbe(model.hidden_size)
    verdict = BankProbe(model.hidden_size, 2)
    # Built only when used, after the others, so a recipe without it draws the same init.
    pose = BankProbe(model.hidden_size, POSE_SIZE) if recipe.pose_weight > 0 else None
    use_objects = builder.object_tokens > 0 and recipe.object_weight > 0
    objects = ObjectHead(model.hidden_size) if use_objects else None
    params = [p for p in model.parameters() if p.requires_grad]
    for extra in (head, probe, bank, verdict, pose, objects):
        if extra is None:
            continue
        params += list(extra.parameters())
    first = recipe.stages[0]
    optimizer = torch.optim.AdamW(
        params, lr=first.lr, betas=tuple(first.betas), weight_decay=first.weight_decay
    )
    average = WeightAverage(model, recipe.ema_decay) if recipe.ema_decay != 0 else None
    cache = make_cache(model)
    metrics_path = out / "metrics.jsonl"
    metrics_path.write_text("")
    rows: list[dict] = []
    global_step = 0
    t0 = time.perf_counter()
    need_attn = max(recipe.hop0_weight, recipe.hop1_weight, recipe.hop2_weight) > 0
    # Batches are a pure function of (stage, step), so the one ahead can be built on a second
    # thread (reading images, masks and scene files is a fifth of a CPU step), same result.
    pool = ThreadPoolExecutor(max_workers=1) if recipe.prefetch else None
    for s, stage in enumerate(recipe.stages):
        last = s == len(recipe.stages) - 1
        items = stage_items(items_by_split[stage.split], stage)
        sampler = stage_sampler(stage, recipe.seed)
        log.info("stage %s: %d items, %d steps", stage.name, len(items), stage.steps)
        window: list[dict[str, float]] = []
        bar = tqdm(total=stage.steps, desc=stage.name, unit="step", disable=not progress)

        def prepare(step: int, items=items, stage=stage, sampler=sampler) -> tuple:
            examples = step_examples(items, stage, sampler, recipe.seed, step)
            batch = collate(model, examples, cache)
            return examples, batch, batch_targets(builder, examples, batch)

        batches = _Batches(prepare, stage.steps, pool)
        for step in range(stage.steps):
            for group in optimizer.param_groups:
                group["lr"] = _lr(stage, step, last, recipe.final_decay)
            examples, batch, targets = batches.get(step)
            output = model(**{k: batch[k] for k in MODEL_INPUTS}, output_attentions=need_attn)
            loss = output.loss
            parts = {"lm": float(loss.detach())}
            if recipe.dense_weight > 0:
                term = dense_loss(head, output.image_embeds, targets)
                parts["dense"] = float(term.detach())
                loss = loss + recipe.dense_weight * term
            if recipe.hop0_weight > 0 and "hop0" in targets:
                term = hop0_loss(output.attentions, targets, hop0_layer)
                parts["hop0"] = float(term.detach())
                loss = loss + recipe.hop0_weight * term
            if objects is not None and "objects" in targets:
                embeds, grid = output.image_embeds, builder.grid_tokens
                term, slot = object_loss(objects, embeds, targets, grid)
                if output.attentions is not None and len(targets["objects"].link_rows):
                    term = term + object_hop_loss(output.attentions, targets, slot, hop1_layer)
                parts["objects"] = float(term.detach())
                loss = loss + recipe.object_weight * term
            if recipe.hop1_weight > 0 and "hop1" in targets:
                term = hop1_loss(output.attentions, targets, hop1_layer)
                parts["hop1"] = float(term.detach())
                loss = loss + recipe.hop1_weight * term
            if recipe.probe_weight > 0 and "hop1" in targets:
                term = probe_loss(probe, bound.states, targets, recipe.shape_weight)
                parts["probe"] = float(term.detach())
                loss = loss + recipe.probe_weight * term
            if pose is not None and "hop1" in targets:
                term = pose_loss(pose, bound.states, targets)
                parts["pose"] = float(term.detach())
                loss = loss + recipe.pose_weight * term
            if recipe.bank_weight > 0 and "bank" in targets:
                term = bank_loss(bank, gathered.states, targets)
                parts["bank"] = float(term.detach())
                loss = loss + recipe.bank_weight * term
            if recipe.verdict_weight > 0 and "verdict" in targets:
                term = bank_loss(verdict, gathered.states, targets, "verdict")
                parts["verdict"] = float(term.detach())
                loss = loss + recipe.verdict_weight * term
            if recipe.hop2_weight > 0 and "hop2" in targets:
                term = hop2_loss(output.attentions, targets, hop2_layer)
                parts["hop2"] = float(term.detach())
                loss = loss + recipe.hop2_weight * term
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if stage.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, stage.grad_clip)
            optimizer.step()
            if average is not None:
                average.update()
            acc = float(first_token_correct(output.logits.detach(), batch).float().mean())
            window.append({"loss": float(loss.detach()), "acc": acc, **parts})
            global_step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}", lm=f"{parts['lm']:.3f}")
            done = step + 1
            row = None
            if done % recipe.log_every == 0 or done == stage.steps:
                keys = sorted({k for w in window for k in w})
                row = {
                    "step": global_step,
                    "stage": stage.name,
                    "samples": global_step * stage.batch_size,
                    "seconds": round(time.perf_counter() - t0, 1),
                    **{
                        k: sum(w[k] for w in window if k in w)
                        / max(1, sum(1 for w in window if k in w))
                        for k in keys
                    },
                }
                window = []
            is_val = val_items and (
                done == stage.steps or (recipe.val_every and global_step % recipe.val_every == 0)
            )
            if is_val:
                batches.settle()  # the engine shares the tokenizer, which is not thread-safe
                row = row or {"step": global_step, "stage": stage.name}
                row["val_acc"] = val_accuracy(model, val_items, 32)
                log.info("step %d: val accuracy %.3f", global_step, row["val_acc"])
                if average is not None:
                    with average.swapped():
                        row["val_acc_ema"] = val_accuracy(model, val_items, 32)
                    log.info("step %d: averaged weights %.3f", global_step, row["val_acc_ema"])
            if row is not None:
                rows.append(row)
                with open(metrics_path, "a", encoding="utf-8") as handle:
                    handle.write(json.dumps(row) + "\n")
        bar.close()
    if pool is not None:
        pool.shutdown()
    bound.remove()
    gathered.remove()
    if average is not None:
        model.save_weights(out / LAST_WEIGHTS)
        average.swap()
    plot_curves(rows, out / "learning_curve.png", "vsre-tiny")
    model.eval()
    return model, rows
