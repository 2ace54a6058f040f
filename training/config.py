"""Typed training configs: a run is a list of stages; stage hyper-parameters live here only.

The paper's recipe is two stages: stage 1 aligns the adapters and projectors with the LM and
encoders frozen; stage 2 trains the projectors plus LoRA on the LM (and, optionally, the
encoders). A curriculum is more stages with the same freeze mode and different data (one
relation polarity first, then all; localization before relations), and a stage's extra loss
terms are named with weights. Every run writes the resolved config as `train_config.yaml`.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# What each freeze mode trains (VSREModel.freeze implements it; tests pin it).
FREEZE_MODES = ("stage1", "stage2", "stage2+encoders", "all")


@dataclass
class StageConfig:
    """One stage of training: what trains, on which data, with which optimiser settings."""

    name: str = "stage1"  # output sub-directory and id for --stages
    freeze: str = "stage1"  # trainable set, one of FREEZE_MODES
    steps: int = 1000  # optimiser steps in this stage
    batch_size: int = 16  # examples per step (per process under accelerate)
    lr: float = 2e-3  # peak learning rate (AdamW)
    betas: tuple[float, float] = (0.9, 0.98)  # AdamW betas
    weight_decay: float = 0.01  # AdamW weight decay
    warmup_steps: int = 100  # linear warm-up steps, then constant
    grad_clip: float = 1.0  # max gradient norm; 0 disables clipping
    templates: str = "train"  # template pool: train (50), none, or ids "t00,t20"
    template_share: float = 1.0  # chance a relation item is re-asked through a template
    balanced: bool = True  # balance relation x label (and tasks) in every epoch
    task_weights: dict[str, float] = field(default_factory=dict)  # task mix; {} = equal
    relations: list[str] = field(default_factory=list)  # only these relations; [] = all
    aux_losses: dict[str, float] = field(default_factory=dict)  # extra loss id -> weight
    split: str = "train"  # dataset split trained on


@dataclass
class TrainConfig:
    """A whole run: model, data, stages, bookkeeping."""

    model: str = "vsre-tiny"  # preset id or checkpoint directory to start from
    # ModelConfig field overrides, and the preset's arguments (vsre-paper: paths_file;
    # llava-start: llava_path, extra), whose relative paths are relative to this file
    model_overrides: dict[str, Any] = field(default_factory=dict)
    data: str = ""  # dataset directory
    data_format: str = "vsre"  # reader id (training.items.READERS)
    images: str = ""  # image folder for the vsr format
    val_split: str = ""  # split evaluated during training; "" = none
    val_items: int = 64  # val items evaluated each time (first N)
    output: str = "runs/vsre"  # run directory; each stage writes <output>/<stage name>/
    seed: int = 0  # seeds model init, data order, template draws and dropout
    threads: int = 0  # torch intra-op threads; 0 leaves torch's default
    save_every: int = 200  # steps between resumable checkpoints
    eval_every: int = 200  # steps between val evaluations (0 = only at the end)
    log_every: int = 10  # steps between metrics lines
    image_cache_dir: str = ""  # persistent preprocessed-image cache; "" = memory only
    stages: list[StageConfig] = field(
        default_factory=lambda: [
            StageConfig(name="stage1", freeze="stage1", lr=1e-3),
            StageConfig(name="stage2", freeze="stage2", lr=2e-4),
        ]
    )  # run in order; each starts from the previous one's result

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
            if stage.steps < 1 or stage.batch_size < 1:
                raise ValueError(f"stage {stage.name!r}: steps and batch_size must be >= 1")

    def select(self, names: list[str]) -> list[StageConfig]:
        """The stages named (in run order); an unknown name raises ValueError."""
        known = [s.name for s in self.stages]
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ValueError(f"unknown stages {unknown}; this config has {known}")
        return [s for s in self.stages if s.name in names]


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
