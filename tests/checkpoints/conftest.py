"""Fixtures: the hub-layout checkpoints (built once per session) and models loaded from them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hub_fixture import build_hub


@pytest.fixture(scope="session", autouse=True)
def _threads():
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def hub(tmp_path_factory):
    return build_hub(tmp_path_factory.mktemp("hub"))


@pytest.fixture(scope="session")
def paper(hub):
    from vsre_ros.core.model import VSREModel

    torch.manual_seed(0)
    return VSREModel.from_preset("vsre-paper", paths_file=str(hub["paper_paths"]))


@pytest.fixture
def rng():
    return np.random.default_rng(0)
