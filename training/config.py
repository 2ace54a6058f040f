"""Typed training configs: a run is a list of stages; stage hyper-parameters live here only.

The paper's recipe is two stages: stage 1 aligns the adapters and projectors with the LM and
encoders frozen; stage 2 trains the projectors plus LoRA on the LM (and, optionally, the
encoders). A curriculum is more stages with the same freeze mode and different data (one
relation polarity first, then all; localization before relations), and a stage's extra loss
terms are named with weights. Every run writes the resolved config as `train_config.yaml`.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vsre_ros.core.config import documented

# What each freeze mode trains (VSREModel.freeze implements it; tests pin it).
FREEZE_MODES = ("stage1", "stage2", "stage2+encoders", "all")


_f = documented  # a config field: its default and its help text (`vsre train --help`)


@dataclass
class StageConfig:
    """One stage of training: what trains, on which data, with which optimiser settings."""

    name: str = _f("stage1", "output sub-directory and id for --stages")
    freeze: str = _f("stage1", f"trainable set: {', '.join(FREEZE_MODES)}")
    steps: int = _f(1000, "optimiser steps in this stage")
    batch_size: int = _f(16, "examples per step (per process under accelerate)")
    lr: float = _f(2e-3, "peak learning rate (AdamW)")
    betas: tuple[float, float] = _f((0.9, 0.98), "AdamW betas")
    weight_decay: float = _f(0.01, "AdamW weight decay")
    warmup_steps: int = _f(100, "linear warm-up steps, then constant")
    decay_share: float = _f(0.0, "last share of the stage over which the lr decays to 10%")
    grad_clip: float = _f(1.0, "max gradient norm; 0 disables clipping")
    templates: str = _f(
        "train",
        "wording pool: train (the 50 templates), grammar (the question grammar's seen "
        "wordings, core/grammar.py), none, or template ids 't00,t20'",
    )
    paired: bool = _f(
        False,
        "ask batch_size / 2 items per step, each under two wordings of different framings in "
        "adjacent rows (the consistency loss compares their verdicts)",
    )
    template_share: float = _f(1.0, "chance a relation item is re-asked through a template")
    wording_noise: float = _f(
        0.0,
        "grammar stages: chance a re-asked relation question gets filler words before, inside "
        "or after it (training/wording_noise.py), never splitting the relation, the objects or "
        "the offered answer words",
    )
    balanced: bool = _f(True, "balance relation x label (and tasks) in every epoch")
    length_window: int = _f(
        1,
        "steps whose examples are sorted by length together and cut into batches, so a batch "
        "pads less (the batches then run in a seeded order); 1 = off",
    )
    per_image: int = _f(
        1,
        "rows asked about each image in a batch: a batch of batch_size rows is batch_size / "
        "per_image images (or image sets), each encoded once, with its image prefix run "
        "through the LM once (pack_tokens); 1 = every row an item of its own (4 cost 12.7 "
        "points of accuracy while the encoders learn: docs/training.md)",
    )
    augment: float = _f(
        0.0,
        "share of rows whose pictures are perturbed before preprocessing (training/perturb.py: "
        "brightness, contrast, a shift of up to 2 pixels, JPEG), drawn from (seed, step, "
        "rank); augmented pictures skip the image cache, and scene targets stay the "
        "unperturbed picture's",
    )
    task_weights: dict[str, float] = _f({}, "task mix; {} = equal")
    relations: list[str] = _f([], "only these relations; [] = all")
    aux_losses: dict[str, float] = _f(
        {}, "extra loss id -> weight, on top of the run's aux_losses (training.losses.LOSSES)"
    )
    split: str = _f("train", "dataset split trained on")
    data: list[str] = _f(
        [],
        "dataset directories whose `split` this stage trains on, joined (e.g. fresh scenes of "
        "another data version); [] = the run's data",
    )
    restart: bool = _f(
        False,
        "start from the previous stage's final (averaged) model with a new optimizer, weight "
        "average and training-only heads (the grounding head it ships goes on training), as "
        "`vsre train --init` does, even when the run carries the optimizer across stages",
    )


@dataclass
class TrainConfig:
    """A whole run: model, data, stages, bookkeeping."""

    model: str = _f("vsre-tiny", "preset id or checkpoint directory to start from")
    model_overrides: dict[str, Any] = _f(
        {},
        "ModelConfig field overrides, and the preset's arguments (vsre-paper: paths_file; "
        "llava-start: llava_path, extra), whose relative paths are relative to the config file",
    )
    data: str = _f("", "dataset directory")
    data_format: str = _f("vsre", "dataset reader id (training.items.READERS): vsre, vsr")
    images: str = _f("", "image folder for the vsr format")
    val_split: str = _f("", "split evaluated during training; '' = none")
    val_items: int = _f(64, "val items evaluated each time (spread over the split)")
    output: str = _f("runs/vsre", "run directory; each stage writes <output>/<stage name>/")
    seed: int = _f(0, "seeds model init, data order, wording draws and dropout")
    threads: int = _f(0, "torch intra-op threads; 0 leaves torch's default")
    save_every: int = _f(200, "steps between resumable checkpoints")
    eval_every: int = _f(200, "steps between val evaluations (0 = only at each stage's end)")
    log_every: int = _f(10, "steps between metrics lines")
    image_cache_dir: str = _f("", "persistent preprocessed-image cache; '' = memory only")
    aux_losses: dict[str, float] = _f(
        {}, "extra loss id -> weight in every stage (training.losses.LOSSES)"
    )
    carry_optimizer: bool = _f(
        False,
        "one optimizer, heads and weight averages across all stages (a curriculum), instead of "
        "each stage starting afresh from the previous one's model",
    )
    ema_decay: float = _f(
        0.0,
        "average the weights over steps (e.g. 0.999); the last stage's model is the average, "
        "its last step's weights go beside it; 0 = off",
    )
    pretrain_steps: int = _f(
        0,
        "before the stages, each encoder trained alone with its family's objective on the "
        "first stage's images (recipes/pretrain.py); 0 = off",
    )
    pretrain_batch: int = _f(32, "images per encoder-pretraining step")
    hop_layers: list[int] = _f(
        [0, 1, 2], "LM layers of the binding hops 0, 1 (and the phrase probe's input), 2"
    )
    shape_weight: float = _f(1.0, "weight of the object-shape term inside the probe loss")
    fused_optimizer: bool = _f(
        False,
        "AdamW's fused kernel: about 2% of a CPU step cheaper, but rounds differently, so a "
        "run is not step-for-step comparable with one without it",
    )
    pack_tokens: bool = _f(
        True,
        "run the LM on each batch's packed tokens: no padding, and one copy of an image prefix "
        "that rows share (training/packing.py); the padded step's loss and gradients up to "
        "rounding; false reproduces earlier runs bit for bit",
    )
    stages: list[StageConfig] = field(
        default_factory=lambda: [
            StageConfig(name="stage1", freeze="stage1", lr=1e-3),
            StageConfig(name="stage2", freeze="stage2", lr=2e-4),
        ],
        metadata={"help": "run in order; each starts from the previous one's result"},
    )

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for stage in data["stages"]:
            stage["betas"] = list(stage["betas"])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Inverse of to_dict; unknown keys are an error naming the known ones."""
        data = copy.deepcopy(data)
        _check_keys(cls, data, "TrainConfig")
        stages = []
        for raw in data.pop("stages", None) or []:
            _check_keys(StageConfig, raw, "StageConfig")
            if "betas" in raw:
                raw["betas"] = tuple(raw["betas"])
            stages.append(StageConfig(**raw))
        config = cls(**data)
        if stages:
            config.stages = stages
        config.validate()
        return config

    def validate(self) -> None:
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique, got {names}")
        for stage in self.stages:
            if stage.freeze not in FREEZE_MODES:
                raise ValueError(
                    f"stage {stage.name!r}: unknown freeze mode {stage.freeze!r}; "
                    f"known: {', '.join(FREEZE_MODES)}"
                )
            if stage.steps < 1 or stage.batch_size < 1 or stage.length_window < 1:
                raise ValueError(
                    f"stage {stage.name!r}: steps, batch_size and length_window must be >= 1"
                )
            if stage.per_image < 1 or stage.batch_size % stage.per_image:
                raise ValueError(
                    f"stage {stage.name!r}: per_image must be >= 1 and divide batch_size, got "
                    f"{stage.per_image} and {stage.batch_size}"
                )
            if stage.per_image > 1 and (stage.paired or stage.length_window > 1):
                raise ValueError(
                    f"stage {stage.name!r}: per_image > 1 does not combine with paired or "
                    f"length_window > 1"
                )
            if stage.paired and (stage.batch_size % 2 or stage.templates != "grammar"):
                raise ValueError(
                    f"stage {stage.name!r}: paired wordings need templates: grammar and an even "
                    f"batch_size, got {stage.templates!r} and {stage.batch_size}"
                )
            if not 0.0 <= stage.augment <= 1.0:
                raise ValueError(
                    f"stage {stage.name!r}: augment is a share of the rows, in [0, 1]; "
                    f"got {stage.augment}"
                )
            if not 0.0 <= stage.decay_share <= 1.0:
                raise ValueError(
                    f"stage {stage.name!r}: decay_share is a share of the stage, in [0, 1]; "
                    f"got {stage.decay_share}"
                )
        if self.carry_optimizer and len({s.freeze for s in self.stages}) > 1:
            raise ValueError("carry_optimizer needs one freeze mode in every stage")
        if self.ema_decay and not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1) (0 turns it off), got {self.ema_decay}")

    def select(self, names: list[str]) -> list[StageConfig]:
        """The stages named (in run order); an unknown name raises ValueError."""
        known = [s.name for s in self.stages]
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ValueError(f"unknown stages {unknown}; this config has {known}")
        return [s for s in self.stages if s.name in names]


# Field types a command-line flag can set (the others, lists and mappings, come from a file).
FLAG_TYPES = {"str": str, "int": int, "float": float, "bool": bool}


def flag_fields(cls: type, skip: tuple[str, ...] = ()) -> list[dataclasses.Field]:
    """The fields of a config class that a command-line flag can set."""
    return [f for f in dataclasses.fields(cls) if f.type in FLAG_TYPES and f.name not in skip]


def add_config_arguments(parser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """One `--field-name` flag per scalar field of `cls` (but `skip`), typed and helped from the
    field; booleans take true/false. Defaults are None: only the flags given override."""
    for f in flag_fields(cls, skip):
        kind = FLAG_TYPES[f.type]
        parser.add_argument(
            f"--{f.name.replace('_', '-')}",
            type=_parse_bool if kind is bool else kind,
            metavar="true|false" if kind is bool else None,
            help=f"{f.metadata.get('help', '')} (default {f.default!r})".replace("%", "%%"),
        )


def apply_arguments(args: argparse.Namespace, target: Any, skip: tuple[str, ...] = ()) -> None:
    """Set each scalar field of `target` whose flag was given."""
    for f in flag_fields(type(target), skip):
        value = getattr(args, f.name, None)
        if value is not None:
            setattr(target, f.name, value)


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered not in ("true", "false", "1", "0", "yes", "no"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return lowered in ("true", "1", "yes")


def _check_keys(cls: type, data: dict[str, Any], what: str) -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown {what} fields {unknown}; known: {sorted(known)}")


def load_config(path: str | Path) -> TrainConfig:
    from vsre_ros.core.config import resolve_preset_paths

    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a training config is a mapping of TrainConfig fields")
    base = Path(path).resolve().parent
    if isinstance(data.get("model_overrides"), dict):
        data["model_overrides"] = resolve_preset_paths(data["model_overrides"], base)
    model = data.get("model")
    if isinstance(model, str) and not Path(model).is_absolute() and (base / model).exists():
        data["model"] = str((base / model).resolve())  # a model file or directory beside it
    return TrainConfig.from_dict(data)


def dump_config(config: TrainConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
