"""Encoder pretraining on simulation images, each family with its own objective.

Real VSRE checkpoints start from encoders pretrained by their authors; the default model's
tiny encoders start random, and the curriculum then asks them to find objects from the LM's
losses alone. This stage gives each family, before the curriculum, a version of the objective
it was made with, on the simulator's images and their ground truth:

- clip: contrastive image-text (softmax over the batch, both directions, learned temperature)
  against a small CLIP text tower. The text is a caption of the image's visible objects
  named left to right ("red can, blue box, green mug"), so matching it needs colour,
  category and order;
- siglip: the same pairs under SigLIP's pairwise sigmoid loss (learned temperature and bias)
  with a small SigLIP text tower;
- dinov2: self-distillation without labels: an exponential-average teacher's centred,
  sharpened prototype distribution on one crop is the student's target on the other (DINO),
  and on the patches the student sees masked (iBOT). Only crops: a flip would make left and
  right, and a colour jitter the colour words, things the features are taught to ignore;
- sam: promptable segmentation: a point on one object is decoded against the SAM map into
  that object's mask over the map's cells (binary cross-entropy and dice against the mask's
  coverage of each cell).

Captions are the same for two images with the same objects in the same order; the contrastive
targets count every such pair as a match. The heads, text towers and teacher are discarded
afterwards: only the encoders' weights carry on. Objects' identities never reach the model at
inference.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vsre_ros.core.encoders import VisionEncoder
from vsre_ros.core.encoders.objects import _Round
from vsre_ros.core.model import VSREModel
from vsre_ros.core.projector import MLPProjector, sincos_2d, sincos_at

from ..items import Item
from .targets import _cells, read_mask, scene_file, scene_owners

log = logging.getLogger(__name__)

PRETRAIN_LOG = "pretrain.jsonl"


@dataclass
class PretrainConfig:
    steps: int = 0  # optimizer steps (0: no pretraining)
    batch_size: int = 32  # images per step, every family sees the same batch
    lr: float = 1e-3  # peak learning rate (linear warmup, cosine to 10%)
    warmup: int = 50
    seed: int = 0
    log_every: int = 20  # steps between metric rows
    val_every: int = 0  # steps between held-out measurements (0: only at the end)
    val_images: int = 128  # held-out images measured


# ---------------------------------------------------------------------------------- data
class SimImage(NamedTuple):
    """One rendered image with what pretraining reads of its ground truth."""

    rgb: Path
    mask: Path
    objects: dict[int, tuple[str, str]]  # mask id -> (colour, category)


def sim_images(items: Sequence[Item]) -> list[SimImage]:
    """Every distinct image of `items` that has an instance mask and a scene file, in order."""
    seen: set[Path] = set()
    owners: dict[Path, dict[int, tuple[str, str]] | None] = {}  # scene file -> its objects
    out = []
    for item in items:
        if not item.scene_id:
            continue
        path = scene_file(item)
        if path not in owners:
            owners[path] = scene_owners(json.loads(path.read_text())) if path.is_file() else None
        if owners[path] is None:
            continue
        root, masks = Path(item.root), item.masks or []
        for image, mask in zip(item.images, masks, strict=False):
            if mask and root / image not in seen:
                seen.add(root / image)
                out.append(SimImage(root / image, root / mask, owners[path]))
    return out


def caption(mask: np.ndarray, objects: dict[int, tuple[str, str]]) -> str:
    """The visible objects named left to right by their mask's mean column."""
    named = []
    for mask_id in np.unique(mask):
        if mask_id == 0 or int(mask_id) not in objects:
            continue
        col = float(np.nonzero(mask == mask_id)[1].mean())
        colour, category = objects[int(mask_id)]
        named.append((col, f"{colour} {category}"))
    return ", ".join(name for _, name in sorted(named)) or "nothing"


class ImageBatch(NamedTuple):
    rgb: list[np.ndarray]  # HxWx3 uint8
    masks: list[np.ndarray]  # HxW instance ids, 0 background
    captions: list[str]


def load_batch(images: Sequence[SimImage]) -> ImageBatch:
    from PIL import Image

    rgb, masks, captions = [], [], []
    for image in images:
        with Image.open(image.rgb) as im:
            rgb.append(np.asarray(im.convert("RGB")))
        mask = read_mask(image.mask)
        masks.append(mask)
        captions.append(caption(mask, image.objects))
    return ImageBatch(rgb, masks, captions)


# ---------------------------------------------------------------------------- objectives
def _same(captions: Sequence[str], device: torch.device) -> torch.Tensor:
    """[B, B] 1.0 where two captions are equal."""
    ids = {c: k for k, c in enumerate(dict.fromkeys(captions))}
    codes = torch.tensor([ids[c] for c in captions], device=device)
    return (codes[:, None] == codes[None, :]).float()


class ImageText(nn.Module):
    """CLIP's (softmax) or SigLIP's (sigmoid) image-caption objective with its own text tower."""

    def __init__(self, encoder: VisionEncoder, tokenizer, sigmoid: bool, dim: int = 64):
        super().__init__()
        from transformers import CLIPTextConfig, CLIPTextModel, SiglipTextConfig, SiglipTextModel

        width = int(encoder.model.config.hidden_size)
        text = {
            "vocab_size": len(tokenizer),
            "hidden_size": width,
            "intermediate_size": 4 * width,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 64,
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
        }
        if sigmoid:
            self.text = SiglipTextModel(SiglipTextConfig(**text, projection_size=width))
        else:
            self.text = CLIPTextModel(CLIPTextConfig(**text))
        self.tokenizer, self.sigmoid = tokenizer, sigmoid
        self.image_proj = nn.Linear(width, dim, bias=False)
        self.text_proj = nn.Linear(width, dim, bias=False)
        # CLIP: temperature 0.07; SigLIP: t = 10, b = -10 (their papers' initialisations).
        self.scale = nn.Parameter(torch.tensor(math.log(10.0 if sigmoid else 1 / 0.07)))
        self.bias = nn.Parameter(torch.tensor(-10.0)) if sigmoid else None

    def embed_text(self, captions: Sequence[str], device: torch.device) -> torch.Tensor:
        enc = self.tokenizer(
            list(captions), padding=True, add_special_tokens=False, return_tensors="pt"
        )
        ids, keep = enc["input_ids"].to(device), enc["attention_mask"].to(device)
        hidden = self.text(input_ids=ids, attention_mask=keep).last_hidden_state
        pooled = (hidden * keep[..., None]).sum(1) / keep.sum(1, keepdim=True).clamp(min=1)
        return F.normalize(self.text_proj(pooled), dim=-1)

    def logits(self, encoder: VisionEncoder, pixels: torch.Tensor, captions) -> torch.Tensor:
        image = encoder.model(pixel_values=pixels).pooler_output  # the family's own pooling
        image = F.normalize(self.image_proj(image), dim=-1)
        text = self.embed_text(captions, pixels.device)
        out = self.scale.clamp(max=math.log(100.0)).exp() * image @ text.T
        return out + self.bias if self.bias is not None else out

    def forward(self, encoder, pixels, batch: ImageBatch, rng) -> tuple[torch.Tensor, dict]:
        logits = self.logits(encoder, pixels, batch.captions)
        same = _same(batch.captions, logits.device)
        if self.sigmoid:
            loss = -F.logsigmoid((2 * same - 1) * logits).sum() / len(logits)
        else:
            target = same / same.sum(1, keepdim=True)
            loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target.T))
        # Image -> caption retrieval within the batch: the best caption is the image's own.
        hit = same.gather(1, logits.argmax(1, keepdim=True)).mean()
        return loss, {"loss": float(loss.detach()), "retrieval": float(hit)}


class _PrototypeHead(nn.Module):
    """DINO's head: an MLP to a bottleneck, then cosine scores against learned prototypes."""

    def __init__(self, width: int, prototypes: int, bottleneck: int = 64):
        super().__init__()
        self.mlp = MLPProjector(width, bottleneck, depth=3, hidden=2 * width)
        self.prototypes = nn.Parameter(torch.randn(prototypes, bottleneck) / math.sqrt(bottleneck))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.mlp(x), dim=-1) @ F.normalize(self.prototypes, dim=-1).T


def random_crops(pixels: torch.Tensor, gen: torch.Generator, low: float = 0.5) -> torch.Tensor:
    """One square crop per image (side a share in [low, 1] of the image), resized back."""
    b = pixels.shape[0]
    side = low + (1 - low) * torch.rand(b, generator=gen)
    shift = (1 - side)[:, None] * (2 * torch.rand(b, 2, generator=gen) - 1)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = side, side
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta.to(pixels), list(pixels.shape), align_corners=False)
    return F.grid_sample(pixels, grid, mode="bilinear", align_corners=False)


class SelfDistillation(nn.Module):
    """DINOv2's objective: DINO on the CLS token across two crops, iBOT on masked patches."""

    def __init__(self, encoder: VisionEncoder, prototypes: int = 128, mask_ratio: float = 0.3):
        super().__init__()
        width = int(encoder.model.config.hidden_size)
        self.cls_head = _PrototypeHead(width, prototypes)
        self.patch_head = _PrototypeHead(width, prototypes)
        self.teacher = copy.deepcopy(encoder.model).requires_grad_(False)
        self.teacher_heads = copy.deepcopy(nn.ModuleList([self.cls_head, self.patch_head]))
        self.teacher_heads.requires_grad_(False)
        self.register_buffer("cls_center", torch.zeros(prototypes))
        self.register_buffer("patch_center", torch.zeros(prototypes))
        self.mask_ratio = mask_ratio
        self.student_temp, self.teacher_temp, self.center_momentum = 0.1, 0.04, 0.9
        self.gen = torch.Generator().manual_seed(0)

    def _teacher(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            out = self.teacher(pixel_values=pixels)
            cls = self.teacher_heads[0](out.pooler_output)
            patches = self.teacher_heads[1](out.last_hidden_state[:, 1:])
        return cls, patches

    def _soft(self, scores: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
        return F.softmax((scores - center) / self.teacher_temp, dim=-1)

    def forward(self, encoder, pixels, batch: ImageBatch, rng) -> tuple[torch.Tensor, dict]:
        views = [random_crops(pixels, self.gen), random_crops(pixels, self.gen)]
        teacher = [self._teacher(view) for view in views]
        b, n = pixels.shape[0], encoder.num_tokens
        cls_loss = patch_loss = pixels.new_zeros(())
        for i, view in enumerate(views):
            masked = (torch.rand(b, n, generator=self.gen) < self.mask_ratio).to(view.device)
            out = encoder.model(pixel_values=view, bool_masked_pos=masked)
            # DINO: the other crop's teacher CLS distribution is this crop's student target.
            s_cls = F.log_softmax(self.cls_head(out.pooler_output) / self.student_temp, dim=-1)
            target = self._soft(teacher[1 - i][0], self.cls_center)
            cls_loss = cls_loss - (target * s_cls).sum(-1).mean() / 2
            # iBOT: on the patches the student saw masked, the teacher saw them (same crop).
            if masked.any():
                scores = self.patch_head(out.last_hidden_state[:, 1:]) / self.student_temp
                target = self._soft(teacher[i][1], self.patch_center)
                term = (target * F.log_softmax(scores, dim=-1)).sum(-1)[masked].mean()
                patch_loss = patch_loss - term / 2
        t_cls = torch.cat([t[0] for t in teacher])
        if self.training:
            with torch.no_grad():
                t_patch = torch.cat([t[1] for t in teacher]).flatten(0, 1)
                m = self.center_momentum
                self.cls_center.mul_(m).add_(t_cls.mean(0), alpha=1 - m)
                self.patch_center.mul_(m).add_(t_patch.mean(0), alpha=1 - m)
        loss = cls_loss + patch_loss
        return loss, {
            "loss": float(loss.detach()),
            "dino": float(cls_loss.detach()),
            "ibot": float(patch_loss.detach()),
            # Collapse shows as one prototype taking every image.
            "prototypes_used": t_cls.argmax(-1).unique().numel(),
        }

    @torch.no_grad()
    def after_step(self, encoder: VisionEncoder, momentum: float) -> None:
        """The teacher follows the student: an exponential average of its weights."""
        students = (encoder.model, self.cls_head, self.patch_head)
        teachers = (self.teacher, *self.teacher_heads)
        for teacher, student in zip(teachers, students, strict=True):
            for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
                t.lerp_(s, 1 - momentum)


def point_targets(
    masks: Sequence[np.ndarray], grid: tuple[int, int], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """For each mask one random visible object and one random pixel of it: the point [B, 2]
    as (row, col) in map-cell units and the object's coverage of each cell [B, H*W]."""
    points, cover = [], []
    for mask in masks:
        ids = [m for m in np.unique(mask) if m != 0]
        cells = _cells(mask.shape, grid)
        n = grid[0] * grid[1]
        if not ids:  # an empty view: the point lands on background, nothing is covered
            points.append((grid[0] / 2, grid[1] / 2))
            cover.append(np.zeros(n))
            continue
        mask_id = ids[rng.integers(len(ids))]
        ys, xs = np.nonzero(mask == mask_id)
        k = rng.integers(len(ys))
        h, w = mask.shape
        # Cell units: a pixel's centre at (y + 0.5) / h of the image is that share of the rows.
        points.append(((ys[k] + 0.5) / h * grid[0] - 0.5, (xs[k] + 0.5) / w * grid[1] - 0.5))
        inside = np.bincount(cells.ravel(), weights=(mask == mask_id).ravel(), minlength=n)
        cover.append(inside / np.bincount(cells.ravel(), minlength=n))
    return np.array(points, dtype=np.float32), np.array(cover, dtype=np.float32)


class PointMasks(nn.Module):
    """SAM's objective at this scale: a point prompt decoded into its object's mask."""

    def __init__(self, encoder: VisionEncoder, rounds: int = 2, heads: int = 4):
        super().__init__()
        width = encoder.embed_dim
        self.grid = encoder.grid
        self.point = nn.Parameter(torch.randn(width) / math.sqrt(width))
        self.output = nn.Parameter(torch.randn(width) / math.sqrt(width))
        self.norm_map = nn.LayerNorm(width)
        self.register_buffer("positions", sincos_2d(*self.grid, width), persistent=False)
        self.rounds = nn.ModuleList(_Round(width, heads) for _ in range(rounds))
        self.query_out = MLPProjector(width, width, depth=2)
        self.cell_out = nn.Linear(width, width)

    def mask_logits(self, fmap: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        width = fmap.shape[1]
        keys = self.norm_map(fmap.flatten(2).transpose(1, 2)) + self.positions
        prompt = sincos_at(points[:, 0], points[:, 1], width).to(fmap) + self.point
        queries = torch.stack([prompt, self.output.expand_as(prompt)], dim=1)
        for block in self.rounds:
            queries = block(queries, keys)
        query = self.query_out(queries[:, 1])
        return torch.einsum("bc,bnc->bn", query, self.cell_out(keys)) / math.sqrt(width)

    def forward(self, encoder, pixels, batch: ImageBatch, rng) -> tuple[torch.Tensor, dict]:
        points, cover = point_targets(batch.masks, self.grid, rng)
        points = torch.from_numpy(points).to(pixels.device)
        cover = torch.from_numpy(cover).to(pixels.device)
        logits = self.mask_logits(encoder(pixels), points)
        bce = F.binary_cross_entropy_with_logits(logits, cover)
        prob = logits.sigmoid()
        dice = 1 - (2 * (prob * cover).sum(1) + 1) / (prob.sum(1) + cover.sum(1) + 1)
        loss = bce + dice.mean()
        figures = {"loss": float(loss.detach())}
        # IoU over the cells an object covers at least half of; an object smaller than that
        # everywhere has no cell to find and is left out of it.
        predicted, truth = prob > 0.5, cover >= 0.5
        found = truth.any(1)
        if found.any():
            iou = (predicted & truth).sum(1)[found] / (predicted | truth).sum(1)[found]
            figures["iou"] = float(iou.mean())
        return loss, figures


def objectives(model: VSREModel) -> nn.ModuleDict:
    """Each of the model's encoders' objective, by encoder name."""
    out = nn.ModuleDict()
    for name, encoder in model.encoders.items():
        family = encoder.family
        if family in ("clip", "siglip"):
            out[name] = ImageText(encoder, model.tokenizer, sigmoid=family == "siglip")
        elif family == "dinov2":
            out[name] = SelfDistillation(encoder)
        elif family == "sam":
            out[name] = PointMasks(encoder)
        else:
            raise ValueError(f"no pretraining objective for encoder family {family!r}")
    return out


# ------------------------------------------------------------------------------ training
def _lr(config: PretrainConfig, step: int) -> float:
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    left = (step - config.warmup) / max(1, config.steps - config.warmup)
    return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * left)))


def _teacher_momentum(config: PretrainConfig, step: int) -> float:
    """DINO's schedule: 0.996 rising to 1 along a cosine."""
    return 1 - (1 - 0.996) * 0.5 * (1 + math.cos(math.pi * step / max(1, config.steps)))


def measure(
    model: VSREModel, heads: nn.ModuleDict, images: Sequence[SimImage], batch_size: int, seed: int
) -> dict[str, float]:
    """Held-out figures of every objective ("<encoder>_<metric>"), batch by batch."""
    rng = np.random.default_rng(seed)
    sums: dict[str, list[float]] = {}
    was_training = model.training
    model.eval()
    heads.eval()
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            batch = load_batch(images[start : start + batch_size])
            pixels = model.preprocess(batch.rgb)
            for name, head in heads.items():
                _, figures = head(model.encoders[name], pixels[name], batch, rng)
                for key, value in figures.items():
                    sums.setdefault(f"{name}_{key}", []).append(float(value))
    model.train(was_training)
    heads.train(was_training)
    return {k: round(sum(v) / len(v), 4) for k, v in sums.items()}


def pretrain_encoders(
    model: VSREModel,
    images: Sequence[SimImage],
    val_images: Sequence[SimImage],
    config: PretrainConfig,
    out_dir: str | Path,
    progress: bool = True,
) -> list[dict]:
    """Train `model`'s encoders in place with their families' objectives; returns the metric
    rows, also written to `out_dir/pretrain.jsonl` (and a plot, pretrain_curve.png)."""
    from tqdm import tqdm

    if config.steps < 1:
        return []
    if len(images) < config.batch_size:
        raise ValueError(
            f"encoder pretraining needs at least {config.batch_size} images with masks and "
            f"scene files, got {len(images)}; is the data from sim_data?"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    heads = objectives(model).to(model.device)
    encoders = nn.ModuleList(model.encoders.values())
    held = [p.requires_grad for p in encoders.parameters()]
    encoders.requires_grad_(True)  # the teachers stay frozen: they are averages
    params = [p for p in [*encoders.parameters(), *heads.parameters()] if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.05)
    rng = np.random.default_rng(config.seed)
    val = list(val_images[: config.val_images])
    path = out / PRETRAIN_LOG
    path.write_text("")
    rows, window = [], []
    t0 = time.perf_counter()
    model.train()
    for step in tqdm(range(config.steps), desc="pretrain", unit="step", disable=not progress):
        for group in optimizer.param_groups:
            group["lr"] = _lr(config, step)
        picks = rng.choice(len(images), size=config.batch_size, replace=False)
        batch = load_batch([images[i] for i in picks])
        pixels = model.preprocess(batch.rgb)
        loss, figures = 0.0, {}
        for name, head in heads.items():
            term, parts = head(model.encoders[name], pixels[name], batch, rng)
            loss = loss + term
            figures.update({f"{name}_{k}": v for k, v in parts.items()})
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        for name, head in heads.items():
            if isinstance(head, SelfDistillation):
                head.after_step(model.encoders[name], _teacher_momentum(config, step))
        window.append({"loss": float(loss.detach()), **figures})
        done = step + 1
        if done % config.log_every and done != config.steps:
            continue
        row = {"step": done, "seconds": round(time.perf_counter() - t0, 1)}
        for key in dict.fromkeys(k for w in window for k in w):
            values = [w[key] for w in window if key in w]
            row[key] = round(sum(values) / len(values), 4)
        window = []
        if val and (done == config.steps or (config.val_every and done % config.val_every == 0)):
            row.update({f"val_{k}": v for k, v in measure(model, heads, val, 32, 1).items()})
            log.info("pretrain step %d: %s", done, {k: v for k, v in row.items() if "val" in k})
        rows.append(row)
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")
    for p, flag in zip(encoders.parameters(), held, strict=True):
        p.requires_grad_(flag)
    plot_pretrain(rows, out / "pretrain_curve.png")
    return rows


def plot_pretrain(rows: Sequence[dict], path: Path) -> None:
    """One panel per encoder: its training loss and its held-out figures."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted({k.split("_")[0] for r in rows for k in r if k.endswith("_loss")} - {"val"})
    if not names:
        return
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.2), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        steps = [r["step"] for r in rows]
        ax.plot(steps, [r[f"{name}_loss"] for r in rows], label="loss")
        ax.set_title(name)
        ax.set_xlabel("step")
        twin = ax.twinx()
        for key in sorted({k for r in rows for k in r if k.startswith(f"val_{name}_")}):
            if key.endswith("_loss"):
                continue
            marked = [(r["step"], r[key]) for r in rows if key in r]
            twin.plot(*zip(*marked, strict=True), "o--", label=key.removeprefix("val_"))
        if twin.get_legend_handles_labels()[0]:
            twin.legend(loc="upper right", fontsize=7)
        ax.legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
