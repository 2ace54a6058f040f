"""The thin layer between training and `vsre_ros.core`: building, freezing, batching, answering.

Training needs a few things the model does not do itself: batches whose pixels come from the
preprocessed-image cache, a first-answer-token accuracy, named extra loss terms, and
predictions in the evaluator's form. They are built here from the model's public API
(`prefix_ids`, `suffix_ids`, `answer_ids`, `preprocess`, `forward`, `freeze`) and the engine.
"""

from __future__ import annotations

import dataclasses
import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from vsre_ros.core.answers import AnswerKind, Query
from vsre_ros.core.config import (
    PRESETS,
    ModelConfig,
    is_model_file,
    preset_config,
    read_model_file,
)
from vsre_ros.core.model import VSREModel

from . import packing
from .data import Example, ImageCache, load_rgb
from .items import ALL_TEMPLATES
from .scoring import Prediction

# freeze mode (StageConfig.freeze) -> keyword arguments of VSREModel.freeze
FREEZE_ARGS: dict[str, dict[str, Any]] = {
    "stage1": {"stage": 1},  # adapters, projectors, image positions
    "stage2": {"stage": 2, "lm": "lora"},  # the above plus LoRA on the LM
    "stage2+encoders": {"stage": 2, "lm": "lora", "encoders": True},  # plus the encoders
    "all": {"stage": 0},  # everything (a tiny model trained from scratch)
}


def model_config(ref: str, overrides: dict[str, Any] | None = None) -> ModelConfig:
    """A preset's config with field overrides; nested parts (lm, lora) merge one level deep.
    Keys that are not ModelConfig fields are the preset's arguments (paths_file, llava_path)."""
    if ref not in PRESETS:
        raise ValueError(f"unknown preset {ref!r}; known presets: {sorted(PRESETS)}")
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    overrides = overrides or {}
    data = preset_config(ref, **{k: v for k, v in overrides.items() if k not in fields}).to_dict()
    for key, value in overrides.items():
        if key not in fields:
            continue
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return ModelConfig.from_dict(data)


def uncalibrated(model: VSREModel) -> VSREModel:
    """The model with its verdict bias at 0. A bias is fitted for the weights it was saved with
    (`training.default_model.calibration.calibrate_verdict`); training changes them, so a model
    that is about to train starts uncalibrated rather than carrying a stale shift."""
    model.config.verdict_bias = 0.0
    return model


def build_model(ref: str | Path, overrides: dict[str, Any] | None = None, seed: int = 0):
    """A saved model directory, or a preset built with seeded random initialisation."""
    path = Path(ref)
    if path.is_dir():
        if overrides:
            raise ValueError(f"model overrides {sorted(overrides)} apply to presets, not {path}")
        return VSREModel.from_pretrained(path)
    if is_model_file(path):  # a preset with its arguments (paths_file, llava_path)
        ref, args = read_model_file(path)
        overrides = {**args, **(overrides or {})}
    torch.manual_seed(seed)
    return VSREModel(model_config(str(ref), overrides))


def freeze(model: VSREModel, mode: str) -> dict:
    """Apply a freeze mode; returns the model's {part: trainable parameter count}."""
    if mode not in FREEZE_ARGS:
        raise ValueError(f"unknown freeze mode {mode!r}; known: {', '.join(FREEZE_ARGS)}")
    return model.freeze(**FREEZE_ARGS[mode])


def trainable_names(model: torch.nn.Module) -> list[str]:
    return [name for name, p in model.named_parameters() if p.requires_grad]


def preprocess_signature(model: VSREModel) -> str:
    """What the preprocessed pixels depend on: each encoder's size and normalisation, dtype."""
    parts = [
        f"{name}:{enc.image_size}:{enc.mean.flatten().tolist()}:{enc.std.flatten().tolist()}"
        + (f":{sorted(enc.prep.to_dict().items())}" if enc.prep is not None else "")
        for name, enc in model.encoders.items()
    ]
    return "|".join(parts) + f"|{model.dtype}"


def image_cache(model: VSREModel, disk_dir: str | Path | None = None) -> ImageCache:
    """A cache of one image's per-encoder pixel arrays [1, 3, S, S]."""

    def preprocess(rgb: np.ndarray) -> dict[str, np.ndarray]:
        with torch.no_grad():
            pixels = model.preprocess([rgb])
        return {name: t.float().cpu().numpy() for name, t in pixels.items()}

    return ImageCache(preprocess, preprocess_signature(model), disk_dir=disk_dir)


def collate(
    model: VSREModel,
    examples: Sequence[Example],
    cache: ImageCache,
    transforms: Sequence[Callable[[np.ndarray], np.ndarray] | None] | None = None,
) -> dict[str, Any]:
    """A training batch in VSREModel.forward's format, pixels from the cache; a row with a
    transform (`perturb.row_augmentations`) reads its images through it, as images of its own.

    Also returns `answer_start` (index of each row's first answer token) and, for yes/no and
    two-option questions, `verdict_ids` [B, 2] (the first tokens where the positive and
    negative answer words differ, `VSREModel.verdict_tokens`), `verdict_at` [B] (the position
    whose logits predict them), `truth` [B] (1 positive, 0 negative, -1 not a verdict
    question) and `same_item` [B // 2] (rows 2k and 2k + 1 ask the same item).

    What rows share (`training/packing.py`): `image_first` and `image_inverse` (the distinct
    images among the pixel slots, `packing.distinct`), and `prefix_of` [B] and `prefix_len`
    [B] (row b's first `prefix_len[b]` tokens, its image prefix, are those of the earlier row
    `prefix_of[b]` on the same images; b itself if none).
    """
    transforms = transforms or [None] * len(examples)
    rows, pixels = [], []
    slots, images = [], []  # what each image slot and each row's images are, for sharing
    verdict_ids, truth, verdict_lead = [], [], []
    for b, (ex, transform) in enumerate(zip(examples, transforms, strict=True)):
        paths = ex.item.image_paths()
        pixels.extend(cache.get(p, transform) for p in paths)
        own = () if transform is None else (b,)  # an augmented row's images are its own
        slots.extend((p, *own) for p in paths)
        images.append((*paths, *own))
        rows.append((len(paths), ex.question, ex.target))
        words = _verdict_words(ex)
        if words is None:
            verdict_ids.append([0, 0])
            truth.append(-1)
            verdict_lead.append(0)
        else:
            lead, pos, neg = model.verdict_tokens([words[0]], [words[1]])
            verdict_ids.append([pos[0], neg[0]])
            truth.append(int(bool(ex.truth)))
            verdict_lead.append(len(lead))
    tokens = model.tokenize_rows(rows)
    device, dtype = model.device, model.dtype
    image_first, image_inverse = packing.distinct(slots)
    row_first, row_inverse = packing.distinct(images)
    prefix_sizes = {n: len(model.prefix_ids(n)) for n in {n for n, _, _ in rows}}
    prefix_len = [prefix_sizes[n] for n, _, _ in rows]
    pixel_values = {
        name: torch.from_numpy(np.concatenate([p[name] for p in pixels])).to(device, dtype)
        for name in model.encoders
    }
    return {
        "pixel_values": pixel_values,
        **tokens,
        "verdict_ids": torch.tensor(verdict_ids, device=device),
        "verdict_at": tokens["answer_start"] - 1 + torch.tensor(verdict_lead, device=device),
        "truth": torch.tensor(truth, device=device),
        "image_first": torch.tensor(image_first, dtype=torch.long, device=device),
        "image_inverse": torch.tensor(image_inverse, dtype=torch.long, device=device),
        "prefix_of": torch.tensor([row_first[k] for k in row_inverse], device=device),
        "prefix_len": torch.tensor(prefix_len, device=device),
        # rows 2k and 2k + 1 ask the same item (a paired stage's two wordings)
        "same_item": torch.tensor(
            [a.item.id == b.item.id for a, b in zip(examples[0::2], examples[1::2], strict=False)],
            dtype=torch.bool,
            device=device,
        ),
    }


def _verdict_words(ex: Example) -> tuple[str, str] | None:
    """(positive, negative) answer words of a yes/no question as asked, else None."""
    if ex.truth is None:
        return None
    template = ALL_TEMPLATES.get(ex.template_id or ex.item.template_id)
    if template is not None:
        return template.yes, template.no
    return "yes", "no"


MODEL_INPUTS = ("pixel_values", "input_ids", "attention_mask", "labels")


def first_token_correct(logits: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
    """Whether each row's first deciding answer token is the argmax [B] (bool): the first
    answer token, or for a yes/no answer the first token where its two words differ
    (`verdict_at`), since a shared lead such as sentencepiece's "▁" decides nothing."""
    rows = torch.arange(logits.shape[0], device=logits.device)
    at = batch["verdict_at"]
    return logits[rows, at].argmax(-1) == batch["labels"][rows, at + 1]


def verdict_loss(model: VSREModel, batch: dict[str, Any], output: Any) -> torch.Tensor:
    """Cross-entropy between only the two answer words of yes/no questions (a 1-bit target
    that ignores the rest of the vocabulary)."""
    keep = batch["truth"] >= 0
    if not bool(keep.any()):
        return output.logits.sum() * 0.0
    rows = torch.arange(output.logits.shape[0], device=output.logits.device)
    # At the first token where the two words differ: a shared lead ("▁") would give ln 2.
    first = output.logits[rows, batch["verdict_at"]][keep]
    pair = first.gather(1, batch["verdict_ids"][keep])
    # Column 0 is the positive word, so the target class is 0 for a relation that holds.
    return F.cross_entropy(pair.float(), (1 - batch["truth"][keep]).long())


def image_token_norm(model: VSREModel, batch: dict[str, Any], output: Any) -> torch.Tensor:
    """Keeps projected image tokens near the scale of word embeddings (a stability term)."""
    if output.image_embeds is None:
        return output.logits.sum() * 0.0
    words = model.lm.get_input_embeddings().weight
    target = words.detach().norm(dim=-1).mean()
    return (output.image_embeds.norm(dim=-1).mean() - target).pow(2) / target.pow(2)


def query_for(example: Example, images: list[np.ndarray]) -> Query:
    return Query(
        question=example.question,
        images=images,
        answer_kind=example.kind,
        options=list(example.options),
        subj=example.item.subj,
        relation=example.item.relation,
        obj=example.item.obj,
        query_id=example.item.id,
    )


def prediction_from(example: Example, answer: Any) -> Prediction:
    """An engine Answer in the evaluator's form, worded in the question's own answer words."""
    value = answer.value if math.isfinite(answer.value) else None
    template = ALL_TEMPLATES.get(example.template_id or example.item.template_id)
    text, probability = answer.text, answer.probability
    if example.truth is not None and template is not None:
        if example.kind is AnswerKind.CHOICE:
            # Two options: P(positive option) follows from the chosen option's probability.
            positive = answer.text == template.yes
            probability = answer.probability if positive else 1.0 - answer.probability
            text = answer.text
        else:
            text = template.answer(answer.verdict)
    if answer.error and not text:
        text = ""
    return Prediction(example.item.id, text, example.template_id, probability, value)


def answer_examples(
    model: VSREModel | str | Path,
    examples: Sequence[Example],
    batch_size: int = 32,
    device: str = "cpu",
    progress: bool = True,
    blank_images: bool = False,
    dtype: str = "auto",
    image_transform: Callable[[np.ndarray], np.ndarray] | None = None,
) -> list[Prediction]:
    """Predictions of a model (object, directory or preset id) through the engine.

    `blank_images` replaces every image by a mid-grey one of the same size: the model then
    answers from the text alone (the "blind model" baseline); `image_transform` changes every
    image before it is asked about (training.perturb). The engine moves a model object
    to `device` and `dtype`; pass the model's own to evaluate it in place during training.
    """
    from tqdm import tqdm

    from vsre_ros.core.config import EngineConfig
    from vsre_ros.core.engine import Engine

    engine = Engine(model, EngineConfig(device=device, dtype=dtype, max_batch=batch_size))
    # Questions about one item come together (every template in a row), so a small LRU of
    # decoded images is enough and memory stays flat on large splits.
    images: OrderedDict[Path, np.ndarray] = OrderedDict()
    out = []
    bar = tqdm(total=len(examples), desc="evaluate", unit="q", disable=not progress)
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        queries = []
        for ex in chunk:
            pics = []
            for path in ex.item.image_paths():
                if path not in images:
                    images[path] = load_rgb(path)
                    if blank_images:
                        images[path] = np.full_like(images[path], 128)
                    if image_transform is not None:
                        images[path] = image_transform(images[path])
                    if len(images) > 256:
                        images.popitem(last=False)
                images.move_to_end(path)
                pics.append(images[path])
            queries.append(query_for(ex, pics))
        for ex, answer in zip(chunk, engine.answer(queries), strict=True):
            out.append(prediction_from(ex, answer))
        bar.update(len(chunk))
    bar.close()
    return out


def resolved_model_config(model: VSREModel) -> dict[str, Any]:
    return dataclasses.asdict(model.config)
