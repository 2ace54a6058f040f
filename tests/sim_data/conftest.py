"""Fixtures for sim_data tests: one small offscreen renderer and hand-placed scenes."""

from __future__ import annotations

import numpy as np
import pytest
from sim_helpers import VIEW
from vsre_ros.sim_data.relations import Facts
from vsre_ros.sim_data.render import Simulator
from vsre_ros.sim_data.scene import Appearance, Scene, SceneObject, View


@pytest.fixture(scope="session")
def sim():
    s = Simulator(64, 64)
    yield s
    s.close()


@pytest.fixture
def facts(sim):
    """facts(*objects) -> Facts of that hand-placed scene seen from VIEW."""

    def make(*objects: SceneObject, view: View = VIEW) -> Facts:
        scene = Scene("hand", list(objects), [view], Appearance(shadows=False))
        sim.load(scene)
        gaps = sim.gaps()
        r = sim.render(view, amodal=False)
        return Facts(scene, gaps, np.array([o["center_cam"] for o in r.objects]))

    return make
