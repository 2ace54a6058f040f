"""The renderer's measurements agree with the scene's geometry."""

from __future__ import annotations

import numpy as np
import pytest
from sim_helpers import VIEW, ball, box
from vsre_ros.sim_data.render import GAP_CAP, Simulator
from vsre_ros.sim_data.scene import Appearance, LayoutConfig, Scene, View, sample_scene

PX_TOL = 0.75  # projected centre of a sphere vs its mask centroid, pixels
DEPTH_TOL = 0.005  # depth at a sphere's centre pixel vs its front surface, metres


def _scene(*objs, view=VIEW):
    return Scene("t", list(objs), [view], Appearance(shadows=False))


def test_outputs_have_documented_types_and_shapes(sim):
    scene = _scene(ball("red", 0, 0.1), box("blue", 0.1, -0.1))
    sim.load(scene)
    r = sim.render(VIEW)
    assert r.rgb.shape == (64, 64, 3) and r.rgb.dtype == np.uint8
    assert r.depth.shape == (64, 64) and r.depth.dtype == np.float32
    assert r.seg.shape == (64, 64) and set(np.unique(r.seg)) == {0, 1, 2}
    assert r.K.shape == (3, 3) and r.K[0, 2] == 32 and r.K[1, 2] == 32
    assert np.allclose(r.cam_rot.T @ r.cam_rot, np.eye(3), atol=1e-9)
    for o in r.objects:
        x0, y0, x1, y1 = o["bbox"]
        assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
        assert 0 < o["visible_fraction"] <= 1


@pytest.mark.parametrize(
    "view", [View((0, 0, 0.05), 1.2, 30, -30), View((0.1, 0, 0), 1.0, 120, -70)]
)
def test_projection_and_depth_match_pixels(view):
    r_ball = 0.03
    objs = [ball("red", 0.2, 0.1, r=r_ball), ball("blue", -0.2, -0.1, r=r_ball)]
    with Simulator(160, 120) as sim:  # non-square: checks that fx = fy and the centre point
        sim.load(_scene(*objs, view=view))
        r = sim.render(view)
    for k, o in enumerate(r.objects):
        ys, xs = np.nonzero(r.seg == k + 1)
        u, v = o["center_px"]
        assert abs(xs.mean() + 0.5 - u) < PX_TOL and abs(ys.mean() + 0.5 - v) < PX_TOL
        # The pixel under the centre sees the sphere's near surface, about r in front of it.
        d = r.depth[int(v), int(u)]
        dist = np.linalg.norm(objs[k].center() - r.cam_pos)
        z = o["center_cam"][2]
        assert abs((d + r_ball * z / dist) - z) < DEPTH_TOL


def test_gaps_are_exact_surface_distances(sim):
    objs = [
        ball("red", 0, 0.2, r=0.04),
        ball("blue", 0, -0.2, r=0.05),
        box("green", 0.3, 0.2),
        ball("white", 0, 0.28, r=0.04),
    ]
    sim.load(_scene(*objs))
    g = sim.gaps()
    assert g[0, 1] == pytest.approx(
        np.hypot(0.4, 0.01) - 0.09, abs=1e-6
    )  # centres 1 cm apart in z
    assert g[0, 2] == pytest.approx(0.3 - 0.05 - 0.04, abs=1e-6)  # box face along x
    assert g[0, 3] == pytest.approx(0.0, abs=1e-6)  # 8 cm apart, radii 4 + 4 cm: touching
    assert np.allclose(g, g.T) and np.all(g <= GAP_CAP)


def test_occluded_object_has_smaller_visible_fraction(sim):
    front, back = box("red", -0.25, 0, (0.08, 0.12, 0.12)), ball("blue", 0.1, 0, r=0.04)
    sim.load(_scene(front, back))
    r = sim.render(VIEW)
    assert r.objects[0]["visible_fraction"] > 0.99
    assert r.objects[1]["visible_fraction"] < 0.5


def test_rendering_is_deterministic_and_pool_is_reused(sim):
    a = sample_scene(np.random.default_rng(5), "a", config=LayoutConfig())
    b = sample_scene(np.random.default_rng(6), "b", config=LayoutConfig())
    sim.load(a)
    first = sim.render(a.views[0]).rgb
    sim.load(b)
    other = sim.render(b.views[0]).rgb
    sim.load(a)
    again = sim.render(a.views[0]).rgb
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_sampled_layouts_do_not_interpenetrate():
    from vsre_ros.sim_data.scene import objects_collide

    for seed in range(20):
        scene = sample_scene(np.random.default_rng(seed), str(seed))
        objs = scene.objects
        assert 2 <= len(objs) <= 8
        assert len({o.name for o in objs}) == len(objs)
        for i in range(len(objs)):
            assert objs[i].aabb()[0][2] >= -1e-9  # nothing sinks below the surface
            for j in range(i + 1, len(objs)):
                assert not objects_collide(objs[i], objs[j], clearance=-1e-4), (seed, i, j)


def test_too_small_images_are_refused():
    with pytest.raises(ValueError, match="too small"):
        Simulator(8, 8)
