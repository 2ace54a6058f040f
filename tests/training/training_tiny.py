"""The tiny model and run config the training tests share (imported by test modules)."""

from __future__ import annotations

from pathlib import Path

from vsre_ros.training.config import StageConfig, TrainConfig

# One small CLIP-style encoder (2x2 patch grid at 16 px) and a 2-layer Llama.
TINY = {
    "encoders": [
        {
            "family": "clip",
            "hf_config": {
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
                "image_size": 16,
                "patch_size": 8,
            },
        }
    ],
    "lm": {
        "hf_config": {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "max_position_embeddings": 512,
            "tie_word_embeddings": True,
            "initializer_range": 0.125,
        }
    },
    "projector_depth": 2,
}


def tiny_config(data: Path, output: Path, stages: list[StageConfig], **kw) -> TrainConfig:
    return TrainConfig(
        model="vsre-tiny",
        model_overrides=TINY,
        data=str(data),
        output=str(output),
        threads=1,
        log_every=1,
        eval_every=0,
        stages=stages,
        **kw,
    )
