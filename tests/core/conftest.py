"""Fixtures: a very small four-encoder model (random), built once per session."""

from __future__ import annotations

import numpy as np
import pytest
import torch

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


@pytest.fixture(scope="session", autouse=True)
def _threads():
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_model():
    from vsre_ros.core.model import VSREModel

    torch.manual_seed(0)
    return VSREModel(small_config()).eval()


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def random_image(rng, h: int = 24, w: int = 32) -> np.ndarray:
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
