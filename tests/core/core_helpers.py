"""Small model configs and inputs shared by the core tests (imported by name: `core_helpers`)."""

from __future__ import annotations

import numpy as np

from vsre_ros.core.config import ModelConfig, tiny_encoders, tiny_lm


def small_config(fusion: str = "sequence", **overrides) -> ModelConfig:
    cfg = ModelConfig(
        name="test-tiny",
        encoders=tiny_encoders(hidden=32, layers=2, heads=2, image=32, patch=8),
        fusion=fusion,
        fusion_grid=4,
        projector_depth=2,
        lm=tiny_lm(hidden=64, layers=2, heads=2, ffn=128),
    )
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def random_image(rng, h: int = 24, w: int = 32) -> np.ndarray:
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
