"""Causal language models by family id: built from a config or loaded from a local directory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from vsre_ros.core.checkpoints import checkpoint_dtype, dtype_of, read_checkpoint_config
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


def build_lm(cfg: LMConfig, vocab_size: int | None = None, dtype: str = "auto") -> PreTrainedModel:
    """Load `cfg.path` in `dtype` ("auto": the checkpoint's own), or build a random fp32 LM
    from `cfg.hf_config`. The vocabulary is the config's `vocab_size` (a saved or real
    checkpoint's embedding rows); `vocab_size` (the tokenizer's length) fills it only when
    the config has none (the tiny presets)."""
    spec = lm_spec(cfg.family)
    if cfg.path:
        path = Path(cfg.path)
        data = read_checkpoint_config(path, f"the {cfg.family} LM", (spec.model_type,))
        want = dtype_of(dtype) or checkpoint_dtype(data) or torch.float32
        model, info = spec.model_cls.from_pretrained(
            str(path),
            attn_implementation=cfg.attn_implementation,
            output_loading_info=True,
            dtype=want,
            use_safetensors=True,
        )
        missing = sorted(info.get("missing_keys", []))
        if missing:
            raise ValueError(
                f"LM checkpoint {path} lacks {len(missing)} weights (e.g. {missing[:2]})"
            )
        return model
    fields: dict[str, Any] = dict(cfg.hf_config)
    if vocab_size is not None and not fields.get("vocab_size"):
        fields["vocab_size"] = vocab_size
    config = spec.config_cls(**fields)
    config._attn_implementation = cfg.attn_implementation
    return spec.model_cls(config)


def context_length(lm: PreTrainedModel) -> int | None:
    """How many positions the LM was trained for (None when its config does not say)."""
    value = getattr(lm.config, "max_position_embeddings", None)
    return int(value) if value else None


def resolved_hf_config(lm: PreTrainedModel) -> dict[str, Any]:
    data = lm.config.to_dict()
    for key in ("transformers_version", "architectures", "_name_or_path", "model_type"):
        data.pop(key, None)
    data.pop("_attn_implementation_autoset", None)
    return data
