"""The loss registry: every term a stage can add to the answer loss, and the heads they train.

A stage names its extra terms with weights (`StageConfig.aux_losses`, on top of the run's
`TrainConfig.aux_losses`); `LOSSES` maps each id to a `LossTerm` that says what the term
needs from the step: attention maps, the scene targets built from the simulator's masks and
poses (`recipes/targets.py`), the hidden states of a hop layer, a training-only head. The loop
(`train.run_stage`) computes only what the active terms ask for, and `Trainee` puts the model,
the heads and the terms into one module, so that accelerate wraps (and, on several GPUs,
synchronises) all of it.

Heads (`HEADS`) are built once per run, in the registry's order, right after the run's seed is
set, and checkpointed with the model. Most are training-only; those in `EXPORTED` (the
grounding head) are saved with the model the run writes (`attach_exported`), and answer at
inference.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import nn

from vsre_ros.core import grounding
from vsre_ros.core.model import VSREModel, VSREOutput

from . import packing
from .attention_rows import LayerRows, record_rows, use_rows_attention
from .model_api import image_token_norm, verdict_loss
from .recipes.targets import (
    POSE_SIZE,
    BankProbe,
    DenseHead,
    LayerOutput,
    ObjectHead,
    PhraseProbe,
    TargetBuilder,
    bank_loss,
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


@dataclass
class StepContext:
    """What a loss term may read about one step."""

    model: VSREModel  # the model being trained
    batch: dict[str, Any]  # the collated batch (`model_api.collate`)
    output: Any  # the model's forward output (logits, image_embeds)
    attentions: dict[int, LayerRows] | None  # hop layers' attention rows, if a term reads them
    targets: dict[str, Any]  # scene targets (`recipes.targets.batch_targets`); {} if none
    heads: nn.ModuleDict  # training-only heads by HEADS id
    states: dict[str, torch.Tensor | None]  # hidden states after the hop layers ("hop1", "hop2")
    hop_layers: Sequence[int]  # LM layers of hop 0, hop 1, hop 2
    shape_weight: float  # weight of the phrase probe's object-shape term
    grid_tokens: int  # image tokens of the fused grid (object tokens follow them)


@dataclass(frozen=True)
class LossTerm:
    """One extra loss: a function of the step, and what it needs computed for it."""

    fn: Callable[[StepContext], torch.Tensor | None]  # None: nothing to learn in this batch
    doc: str  # one line for --help and the docs
    head: str | None = None  # the HEADS id it trains
    attentions: bool = False  # reads rows of the LM's attention maps (`attention_rows`)
    targets: bool = False  # needs the scene targets
    states: tuple[str, ...] = ()  # hop layers whose output states it reads
    hops: bool = False  # reads the binding-hop layers (`hop_layers` must exist in the LM)


def _needs(ctx: StepContext, key: str) -> bool:
    return key in ctx.targets


def _dense(ctx: StepContext):
    return dense_loss(ctx.heads["dense"], ctx.output.image_embeds, ctx.targets)


def _hop(loss: Callable, key: str, layer: int) -> Callable[[StepContext], torch.Tensor | None]:
    def term(ctx: StepContext):
        if not _needs(ctx, key):
            return None
        return loss(ctx.attentions, ctx.targets, ctx.hop_layers[layer])

    return term


def _objects(ctx: StepContext):
    if "objects" not in ctx.heads or not _needs(ctx, "objects"):
        return None
    embeds = ctx.output.image_embeds
    term, slot = object_loss(ctx.heads["objects"], embeds, ctx.targets, ctx.grid_tokens)
    if ctx.attentions is not None and len(ctx.targets["objects"].link_rows):
        term = term + object_hop_loss(ctx.attentions, ctx.targets, slot, ctx.hop_layers[1])
    return term


def _probe(ctx: StepContext):
    if not _needs(ctx, "hop1"):
        return None
    return probe_loss(ctx.heads["probe"], ctx.states["hop1"], ctx.targets, ctx.shape_weight)


def _pose(ctx: StepContext):
    if not _needs(ctx, "hop1"):
        return None
    return pose_loss(ctx.heads["pose"], ctx.states["hop1"], ctx.targets)


def _grounding(ctx: StepContext):
    """The grounding head's box for each object phrase (the mean of its tokens' embeddings)
    in its row's image, against its mask's box."""
    if "grounding" not in ctx.heads or not _needs(ctx, "hop1"):
        return None
    t = ctx.targets["hop1"]
    truth = t.shape[:, :4]
    known = torch.isfinite(truth).all(-1) & t.span.any(-1)
    if not bool(known.any()):
        return None
    rows = ctx.batch["input_ids"][t.rows[known]]
    embeds = ctx.model.lm.get_input_embeddings()(rows).float()
    span = t.span[known].float()[..., None]
    phrases = (embeds * span).sum(1) / span.sum(1)
    head = ctx.heads["grounding"]
    colours = grounding.pixel_colours(ctx.model, ctx.batch["pixel_values"], head)
    images = t.image[known]
    boxes, _ = head(ctx.output.image_embeds[images], phrases, colours[images])
    return grounding.box_loss(boxes, truth[known])


def _answer_bits(key: str, head: str) -> Callable[[StepContext], torch.Tensor | None]:
    def term(ctx: StepContext):
        if not _needs(ctx, key):
            return None
        return bank_loss(ctx.heads[head], ctx.states["hop2"], ctx.targets, key)

    return term


def _first_layer_binding(ctx: StepContext):
    """The hop-1 target (object phrase -> its object's image tokens) at the LM's first layer,
    for models without the recipe's hop layers."""
    return hop1_loss(ctx.attentions, ctx.targets, 0) if _needs(ctx, "hop1") else None


def consistency_loss(ctx: StepContext):
    """Symmetric KL between the verdicts of adjacent rows (2k, 2k + 1) that ask the same item
    under two wordings (`StageConfig.paired`; rows asking two items are left out). Each verdict
    is read between the two answer words its own question invites (`verdict_ids`), so "yes/no"
    and "true/false" wordings compare."""
    truth = ctx.batch["truth"]
    if truth.shape[0] < 2:
        return None
    rows = torch.arange(truth.shape[0] // 2 * 2, device=truth.device)
    # At the first token where the two words differ (`verdict_at`), as the verdict loss reads.
    first = ctx.output.logits[rows, ctx.batch["verdict_at"][rows]]
    pair = first.gather(1, ctx.batch["verdict_ids"][rows]).float().log_softmax(-1)
    a, b = pair[0::2], pair[1::2]
    keep = (truth[rows][0::2] >= 0) & (truth[rows][1::2] >= 0) & ctx.batch["same_item"]
    if not bool(keep.any()):
        return None
    kl = (a.exp() * (a - b)).sum(-1) + (b.exp() * (b - a)).sum(-1)
    return kl[keep].mean()


def _plain(fn: Callable) -> Callable[[StepContext], torch.Tensor]:
    return lambda ctx: fn(ctx.model, ctx.batch, ctx.output)


# loss id -> term. The order is the order the terms are added to the loss.
LOSSES: dict[str, LossTerm] = {
    "verdict": LossTerm(
        _plain(verdict_loss), "cross-entropy between the two answer words of yes/no questions"
    ),
    "image_token_norm": LossTerm(
        _plain(image_token_norm), "keeps projected image tokens at the word embeddings' scale"
    ),
    "object_attention": LossTerm(
        _first_layer_binding,
        "first LM layer's head 0, at each object's last word, pulled to its image tokens",
        attentions=True,
        targets=True,
    ),
    "consistency": LossTerm(
        consistency_loss, "the same item's verdicts under two wordings (paired stages) agree"
    ),
    "dense": LossTerm(
        _dense,
        "each image token's colour, category and depth from the masks",
        head="dense",
        targets=True,
    ),  # fmt: skip
    "hop0": LossTerm(
        _hop(hop0_loss, "hop0", 0),
        "object phrase's last token -> the phrase's other words",
        attentions=True,
        targets=True,
        hops=True,
    ),  # fmt: skip
    "objects": LossTerm(
        _objects,
        "object tokens matched to the image's objects; phrases pulled to their token",
        head="objects",
        targets=True,
        hops=True,
    ),  # fmt: skip
    "hop1": LossTerm(
        _hop(hop1_loss, "hop1", 1),
        "object phrase -> its object's image tokens",
        attentions=True,
        targets=True,
        hops=True,
    ),  # fmt: skip
    "probe": LossTerm(
        _probe,
        "object phrase after the hop-1 layer -> its object's place, depth and shape",
        head="probe",
        targets=True,
        hops=True,
        states=("hop1",),
    ),  # fmt: skip
    "pose": LossTerm(
        _pose,
        "object phrase after the hop-1 layer -> its object's 3D pose",
        head="pose",
        targets=True,
        hops=True,
        states=("hop1",),
    ),  # fmt: skip
    "grounding": LossTerm(
        _grounding,
        "object phrase -> its mask's box in the image (the exported grounding head)",
        head="grounding",
        targets=True,
    ),  # fmt: skip
    "bank": LossTerm(
        _answer_bits("bank", "bank"),
        "answer position after hop 2 -> every bank relation's truth",
        head="bank",
        targets=True,
        hops=True,
        states=("hop2",),
    ),  # fmt: skip
    "verdict_probe": LossTerm(
        _answer_bits("verdict", "verdict"),
        "answer position after hop 2 -> the statement's truth",
        head="verdict",
        targets=True,
        hops=True,
        states=("hop2",),
    ),  # fmt: skip
    "hop2": LossTerm(
        _hop(hop2_loss, "hop2", 2),
        "answer position -> the object and relation phrases",
        attentions=True,
        targets=True,
        hops=True,
    ),  # fmt: skip
}


def _object_head(model: VSREModel) -> nn.Module | None:
    return ObjectHead(model.hidden_size) if TargetBuilder(model).object_tokens else None


def _grounding_head(model: VSREModel) -> nn.Module | None:
    try:
        return grounding.for_model(model)
    except ValueError:  # a fusion with several token grids: no grounding
        return None


# head id -> factory(model). Built in this order, so a run draws the same init for a head
# whatever other heads it has.
HEADS: dict[str, Callable[[VSREModel], nn.Module | None]] = {
    "dense": lambda m: DenseHead(m.hidden_size),
    "probe": lambda m: PhraseProbe(m.hidden_size, m.num_image_tokens),
    "bank": lambda m: BankProbe(m.hidden_size),
    "verdict": lambda m: BankProbe(m.hidden_size, 2),
    "pose": lambda m: BankProbe(m.hidden_size, POSE_SIZE),
    "objects": _object_head,
    "grounding": _grounding_head,
}
EXPORTED = ("grounding",)  # heads saved with the model (`VSREModel.heads`)


def attach_exported(model: VSREModel, heads: nn.ModuleDict) -> None:
    """Give the model the exported heads the run trained, so that saving it saves them."""
    for name in EXPORTED:
        if name in heads:
            model.heads[name] = heads[name]


def check_losses(names: Sequence[str]) -> None:
    unknown = sorted(set(names) - set(LOSSES))
    if unknown:
        raise ValueError(f"unknown extra losses {unknown}; known: {sorted(LOSSES)}")


def active(weights: dict[str, float]) -> dict[str, float]:
    """The terms with a non-zero weight, in the registry's order (the order they are added)."""
    check_losses(list(weights))
    return {name: weights[name] for name in LOSSES if weights.get(name, 0.0) != 0.0}


def build_heads(model: VSREModel, loss_names: Sequence[str]) -> nn.ModuleDict:
    """The heads the named losses train, in HEADS order. An exported head the model already
    has (loaded with it, e.g. the grounding head of the model a stage starts from) goes on
    training; a fresh one is drawn first all the same, so the other heads' inits do not
    depend on it."""
    wanted = {LOSSES[name].head for name in loss_names} - {None}
    heads = nn.ModuleDict()
    for name, factory in HEADS.items():
        if name in wanted:
            head = factory(model)
            kept = model.heads.get(name) if name in EXPORTED else None
            if head is not None and _same_shape(kept, head):
                head = kept
            elif kept is not None and head is not None:
                log.warning(
                    "the model's %s head (%s) is not what the %s loss trains: the run trains "
                    "a new %s and saves it in its place (a mask head is refitted after "
                    "training: `vsre grounding fit --model <the run's model>`)",
                    name, type(kept).__name__, name, type(head).__name__,
                )  # fmt: skip
            if head is not None:
                heads[name] = head
    return heads


def _same_shape(kept: nn.Module | None, fresh: nn.Module) -> bool:
    """Whether a loaded head is of the fresh one's kind and shape (an older head format is
    not trained on: a fresh head replaces it)."""
    if kept is None or type(kept) is not type(fresh):
        return False
    a, b = kept.state_dict(), fresh.state_dict()
    return a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)


class StepOutput(NamedTuple):
    """A training step's loss and what it logs (a tuple, which DDP looks into)."""

    loss: torch.Tensor  # the weighted sum, to back-propagate
    parts: dict[str, float]  # each term's value ("lm": the answer's cross-entropy)
    logits: torch.Tensor  # the answer logits (detached)


class Trainee(nn.Module):
    """The model and its training-only heads as one module whose forward returns the loss.

    When one of `losses` reads the binding hops, `hop_layers` must name three LM layers, and
    forward hooks keep the hidden states of the hop-1 and hop-2 layers.

    Each distinct image of a batch is encoded once, and with `pack_tokens` (and an LM that
    `packing.supports`) the LM runs on the batch's packed tokens (`packing`): the same loss and
    gradients as the padded step, up to rounding, with less work when rows share images.
    """

    def __init__(
        self,
        model: VSREModel,
        heads: nn.ModuleDict,
        losses: Sequence[str] = (),
        hop_layers: Sequence[int] = (0, 1, 2),
        shape_weight: float = 1.0,
        pack_tokens: bool = False,
    ):
        super().__init__()
        depth = int(model.base_lm().config.num_hidden_layers)
        hops = any(LOSSES[name].hops for name in losses)
        if hops and (len(hop_layers) != 3 or not all(0 <= k < depth for k in hop_layers)):
            raise ValueError(
                f"hop_layers {list(hop_layers)} must be three LM layers (hop 0, hop 1, hop 2) "
                f"below the LM's {depth}"
            )
        self.model = model
        self.heads = heads
        self.hop_layers = list(hop_layers)
        self.shape_weight = shape_weight
        self.grid_tokens = TargetBuilder(model).grid_tokens
        # The attention-map terms read rows of these layers' maps; the LM runs SDPA and keeps
        # their query and key states (`attention_rows`) instead of building eager maps.
        self._attention_layers = sorted({0, *self.hop_layers})
        self.pack_tokens = pack_tokens and packing.supports(model.base_lm())
        if self.pack_tokens or any(LOSSES[name].attentions for name in losses):
            use_rows_attention(model.base_lm().config)
        wanted = {state for name in losses for state in LOSSES[name].states}
        layers = {"hop1": self.hop_layers[1], "hop2": self.hop_layers[2]}
        self._layers = {k: LayerOutput(model, layers[k]) for k in sorted(wanted)}

    def remove_hooks(self) -> None:
        for layer in self._layers.values():
            layer.remove()

    def forward(
        self,
        inputs: dict[str, torch.Tensor],
        batch: dict[str, Any],
        targets: dict[str, Any],
        weights: dict[str, float],
    ) -> StepOutput:
        reads_maps = any(LOSSES[name].attentions for name in weights)
        pixels = inputs.get("pixel_values")
        image_embeds = (
            None if pixels is None else packing.encode_distinct(self.model, pixels, batch)
        )
        layout = packing.TokenLayout.from_batch(batch) if self.pack_tokens else None
        with record_rows(self._attention_layers if reads_maps else ()) as rows:
            if layout is None:
                output = self.model(**inputs, image_embeds=image_embeds, labelled_logits_only=True)
            else:
                embeds = self.model.embed(inputs["input_ids"], image_embeds)
                hidden = packing.decode(self.model.base_lm(), embeds, layout)
                loss, logits = self.model.labelled_logits(hidden, inputs["labels"])
                output = VSREOutput(loss, logits, None, image_embeds)
        states = {k: layer.states for k, layer in self._layers.items()}
        if layout is not None:  # the hooks kept packed tokens [1, T, H]
            states = {k: v if v is None else layout.spread(v[0], dim=0) for k, v in states.items()}
        loss = output.loss
        parts = {"lm": float(loss.detach())}
        ctx = StepContext(
            model=self.model,
            batch=batch,
            output=output,
            attentions=rows if reads_maps else None,
            targets=targets,
            heads=self.heads,
            states=states,
            hop_layers=self.hop_layers,
            shape_weight=self.shape_weight,
            grid_tokens=self.grid_tokens,
        )
        for name, weight in weights.items():
            term = LOSSES[name].fn(ctx)
            if term is None:
                continue
            parts[name] = float(term.detach())
            loss = loss + weight * term
        return StepOutput(loss, parts, output.logits.detach())
