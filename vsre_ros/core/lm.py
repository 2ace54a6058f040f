"""Causal language models by family id: built from a config or loaded from a local directory."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from vsre_ros.core.config import LMConfig


@dataclass(frozen=True)
class LMSpec:
    """One LM family: its transformers config and causal-LM classes and model_type."""

    family: str  # registry id
    model_type: str  # config.json "model_type" a checkpoint of this family carries
    config_cls: type  # transformers config class
    model_cls: type  # transformers causal LM class


LMS: dict[str, LMSpec] = {
    "llama": LMSpec("llama", "llama", LlamaConfig, LlamaForCausalLM),
    "qwen2": LMSpec("qwen2", "qwen2", Qwen2Config, Qwen2ForCausalLM),
}


def lm_spec(family: str) -> LMSpec:
    if family not in LMS:
        raise ValueError(f"unknown LM family {family!r}; known: {sorted(LMS)}")
    return LMS[family]


def build_lm(cfg: LMConfig, vocab_size: int | None = None) -> PreTrainedModel:
    """Random LM from `cfg.hf_config` (vocab_size set from the tokenizer), or load `cfg.path`."""
    spec = lm_spec(cfg.family)
    if cfg.path:
        path = Path(cfg.path)
        config_file = path / "config.json"
        if not config_file.is_file():
            raise FileNotFoundError(
                f"LM directory {path} has no config.json; expected a Hugging Face checkpoint "
                f"saved by {spec.model_cls.__name__}.save_pretrained"
            )
        model_type = json.loads(config_file.read_text()).get("model_type")
        if model_type != spec.model_type:
            raise ValueError(
                f"{config_file}: model_type {model_type!r} does not match LM family "
                f"{cfg.family!r} (expects {spec.model_type!r}); set lm.family accordingly"
            )
        model, info = spec.model_cls.from_pretrained(
            str(path), attn_implementation=cfg.attn_implementation, output_loading_info=True
        )
        missing = sorted(info.get("missing_keys", []))
        if missing:
            raise ValueError(
                f"LM checkpoint {path} lacks {len(missing)} weights (e.g. {missing[:2]})"
            )
        return model
    fields: dict[str, Any] = dict(cfg.hf_config)
    if vocab_size is not None:
        fields["vocab_size"] = vocab_size
    config = spec.config_cls(**fields)
    config._attn_implementation = cfg.attn_implementation
    return spec.model_cls(config)


def resolved_hf_config(lm: PreTrainedModel) -> dict[str, Any]:
    data = lm.config.to_dict()
    for key in ("transformers_version", "architectures", "_name_or_path", "model_type"):
        data.pop(key, None)
    data.pop("_attn_implementation_autoset", None)
    return data
