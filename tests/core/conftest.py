"""Fixtures: a very small four-encoder model (random), built once per session."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from core_helpers import small_config


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
