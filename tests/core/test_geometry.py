"""core.geometry: back-projection against the simulator's camera, planes, places, measures."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vsre_ros.core import geometry as G
from vsre_ros.core.grounding import iou


@pytest.fixture(scope="module")
def sim_frame():
    from vsre_ros.sim_data import SimCamera

    with SimCamera(seed=3, width=96, height=72) as cam:
        return cam.frame(0)


def _k(frame) -> G.Intrinsics:
    from vsre_ros.sim_data.render import pixel_centre_K

    return G.Intrinsics.from_matrix(pixel_centre_K(frame.K))


def test_sim_object_centres_project_to_their_pixels_under_camera_info_k(sim_frame):
    """K as the sim camera publishes it (CameraInfo convention) maps each object's camera-frame
    centre to the renderer's pixel coordinates, less the half pixel of the convention."""
    k = _k(sim_frame)
    for seen in sim_frame.truth["renders"][0]["objects"]:
        uv = G.project(np.array(seen["center_cam"]), k)[0]
        np.testing.assert_allclose(uv + 0.5, seen["center_px"], atol=1e-9)


def test_back_projected_mask_pixels_lie_on_their_object(sim_frame):
    """Every pixel inside an object's mask (its silhouette's edge pixels are left out: the
    mask and the depth come from two render passes), back-projected with its depth and K and
    moved to the world with the render's pose, is a point of that object's box (to the depth
    buffer's rounding)."""
    from scipy import ndimage

    camera = sim_frame.truth["renders"][0]["camera"]
    rot, pos = np.array(camera["cam_rot"]), np.array(camera["cam_pos"])
    k = _k(sim_frame)
    checked = 0
    for index, obj in enumerate(sim_frame.truth["objects"]):
        vs, us = np.nonzero(ndimage.binary_erosion(sim_frame.seg == index + 1))
        if len(us) == 0:
            continue
        world = G.back_project(sim_frame.depth, k, us, vs) @ rot.T + pos
        lo, hi = np.array(obj["aabb_min"]), np.array(obj["aabb_max"])
        slack = 0.002  # depth buffer rounding, metres
        assert np.all(world >= lo - slack) and np.all(world <= hi + slack), obj["name"]
        checked += 1
    assert checked >= 2


def test_back_projection_inverts_projection():
    k = G.Intrinsics(100.0, 90.0, 31.5, 23.5)
    depth = np.full((48, 64), 2.0, np.float32)
    us, vs = np.array([0, 10, 63]), np.array([0, 20, 47])
    points = G.back_project(depth, k, us, vs)
    np.testing.assert_allclose(G.project(points, k), np.stack([us, vs], 1), atol=1e-9)
    np.testing.assert_allclose(points[:, 2], 2.0)


def test_depth_in_millimetres_and_invalid_pixels():
    mm = np.array([[1500, 0], [65535, 250]], np.uint16)
    np.testing.assert_allclose(G.depth_metres(mm), [[1.5, np.nan], [65.535, 0.25]])
    floats = np.array([[1.0, np.inf], [-1.0, 0.5]], np.float32)
    np.testing.assert_allclose(G.depth_metres(floats), [[1.0, np.nan], [np.nan, 0.5]])
    with pytest.raises(ValueError, match="uint16 millimetres"):
        G.depth_metres(np.zeros((2, 2), np.int32))
    with pytest.raises(ValueError, match="HxW"):
        G.depth_metres(np.zeros((2, 2, 3), np.float32))


def test_intrinsics_from_camera_info_and_bad_k():
    k = G.Intrinsics.from_matrix([100.0, 0, 32, 0, 90.0, 24, 0, 0, 1])
    assert (k.fx, k.fy, k.cx, k.cy) == (100.0, 90.0, 32.0, 24.0)
    with pytest.raises(ValueError, match="focal"):
        G.Intrinsics.from_matrix(np.zeros(9))  # a CameraInfo never filled in
    with pytest.raises(ValueError, match="9 entries"):
        G.Intrinsics.from_matrix([1.0, 2.0])


def _tabletop(box_centre, box_size, tilt_deg=35.0, camera_height=0.8, w=160, h=120, f=100.0):
    """Exact depth of a camera looking down at a table (z = 0) with one box standing on it:
    ray-cast analytically. Returns (depth, K, camera-to-world rotation, camera position)."""
    k = G.Intrinsics(f, f, (w - 1) / 2, (h - 1) / 2)
    t = math.radians(tilt_deg)
    # Camera axes in the world: x right, y down, z forward (looking along +y, pitched down).
    forward = np.array([0.0, math.cos(t), -math.sin(t)])
    right = np.array([1.0, 0.0, 0.0])
    down = np.cross(forward, right)
    rot = np.stack([right, down, forward], 1)
    pos = np.array([0.0, 0.0, camera_height])
    vs, us = np.mgrid[0:h, 0:w]
    rays = np.stack([(us - k.cx) / f, (vs - k.cy) / f, np.ones_like(us, float)], -1) @ rot.T
    depth = np.full((h, w), np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        table = -pos[2] / rays[..., 2]
    depth = np.where(table > 0, table, np.inf)
    lo = np.array(box_centre) - np.array(box_size) / 2
    hi = np.array(box_centre) + np.array(box_size) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        t0 = (lo - pos) / rays
        t1 = (hi - pos) / rays
    near = np.nanmax(np.minimum(t0, t1), -1)
    far = np.nanmin(np.maximum(t0, t1), -1)
    hit = (near <= far) & (near > 0)
    depth = np.where(hit & (near < depth), near, depth)  # ray length along a unit-z ray = z
    return depth.astype(np.float32), k, rot, pos


def test_a_box_on_a_table_is_placed_and_measured():
    centre, size = (0.05, 1.0, 0.06), (0.16, 0.1, 0.12)
    depth, k, rot, pos = _tabletop(centre, size)
    world = np.array(centre)
    # Its image box from the depth edge: where the depth is nearer than the table's.
    table, _, _, _ = _tabletop((9.0, 9.0, -9.0), (0.0, 0.0, 0.0))
    vs, us = np.nonzero(depth < table - 1e-4)
    h, w = depth.shape
    box = [us.min() / w, vs.min() / h, (us.max() + 1) / w, (vs.max() + 1) / h]
    place = G.locate_all([box], depth, k)[0]
    assert place is not None
    truth_cam = rot.T @ (world - pos)
    np.testing.assert_allclose(place.centre, truth_cam, atol=0.015)
    assert place.height == pytest.approx(0.12, abs=0.01)
    assert place.width == pytest.approx(0.16, abs=0.015)
    assert G.measure("camera", [place]) == pytest.approx(np.linalg.norm(truth_cam), rel=0.02)
    # Its pixels fill the box it was found in, but for its lowest row (less than ABOVE_PLANE
    # over the table).
    assert iou(place.box, box) > 0.9


def test_a_camera_sized_depth_image_is_read_at_every_nth_pixel(monkeypatch):
    """A 640x480 depth image is read at every 2nd pixel (`GEOMETRY_SIDE`): the place, sizes and
    measured box are those of reading every pixel, to about a pixel's worth; a mask of
    another size (a grounding head's 128x128) is read at the pixels read."""
    centre, size = (0.05, 1.0, 0.06), (0.16, 0.1, 0.12)
    depth, k, rot, pos = _tabletop(centre, size, w=640, h=480, f=400.0)
    table, _, _, _ = _tabletop((9.0, 9.0, -9.0), (0.0, 0.0, 0.0), w=640, h=480, f=400.0)
    on_box = depth < table - 1e-4
    vs, us = np.nonzero(on_box)
    box = [us.min() / 640, vs.min() / 480, (us.max() + 1) / 640, (vs.max() + 1) / 480]
    mask = on_box[np.arange(128) * 480 // 128][:, np.arange(128) * 640 // 128]  # 128x128
    read = []  # pixels back-projected per call
    project = G.back_project
    monkeypatch.setattr(G, "back_project", lambda *a: read.append(a[2].size) or project(*a))
    strided = G.FrameGeometry(depth, k, (480, 640)).locate(box, mask)
    strided_pixels = read[-1]
    monkeypatch.setattr(G, "GEOMETRY_SIDE", 10_000)
    every = G.FrameGeometry(depth, k, (480, 640)).locate(box, mask)
    assert 3.5 < read[-1] / strided_pixels < 4.5  # every 2nd row and column
    truth = rot.T @ (np.array(centre) - pos)
    for place in (strided, every):
        np.testing.assert_allclose(place.centre, truth, atol=0.015)
        assert place.height == pytest.approx(0.12, abs=0.01)
        assert place.width == pytest.approx(0.16, abs=0.015)
    np.testing.assert_allclose(strided.centre, every.centre, atol=0.003)
    np.testing.assert_allclose(strided.box, every.box, atol=2.5 / 480)


def test_fit_plane_recovers_the_table():
    depth, k, rot, pos = _tabletop((9.0, 9.0, -9.0), (0.0, 0.0, 0.0))
    plane = G.fit_plane(G.back_project(depth, k))
    up_in_camera = rot.T @ np.array([0.0, 0.0, 1.0])
    np.testing.assert_allclose(plane.normal, up_in_camera, atol=1e-6)
    assert plane.offset == pytest.approx(pos[2], abs=1e-6)  # the camera's height above it


@pytest.mark.parametrize(
    ("question", "measure"),
    [
        ("How far apart are the red cup and the blue box, in metres?", "between"),
        ("What is the distance between the red cup and the blue box in metres?", "between"),
        ("How far is the red cup from the camera, in metres?", "camera"),
        ("How wide is the red cup, in metres?", "width"),
        ("How tall is the red cup, in metres?", "height"),
        ("Is the red cup left of the blue box?", None),
    ],
)
def test_measure_asked(question, measure):
    assert G.measure_asked(question) == measure


def test_measure_needs_its_objects():
    box = (0.0, 0.0, 1.0, 1.0)
    place = G.Located(np.array([0.0, 0.0, 2.0]), np.ones(3), 0.1, math.nan, 10, box)
    other = G.Located(np.array([0.0, 0.3, 2.4]), np.ones(3), 0.1, 0.2, 10, box)
    assert G.measure("between", [place, other]) == pytest.approx(0.5)
    assert G.measure("between", [place]) is None
    assert G.measure("height", [place]) is None  # unknown without a support plane
    with pytest.raises(ValueError, match="known: between"):
        G.measure("volume", [place])


def test_two_objects_touching_at_one_depth_are_told_apart_by_colour():
    k = G.Intrinsics(100.0, 100.0, 32.0, 32.0)
    depth = np.full((64, 64), 2.0, np.float32)  # a wall behind
    depth[20:40, 20:60] = 1.0  # a red and a blue block side by side, 0.2 m wide each
    rgb = np.zeros((64, 64, 3), np.uint8)
    rgb[20:40, 20:40] = (200, 30, 30)
    rgb[20:40, 40:60] = (30, 30, 200)
    red = [20 / 64, 20 / 64, 46 / 64, 40 / 64]  # a grounded box a little wide: some blue
    apart = G.locate(G.widened(red, G.SEARCH_MARGIN), depth, k, rgb=rgb)
    merged = G.locate(G.widened(red, G.SEARCH_MARGIN), depth, k)
    assert apart.extent[0] == pytest.approx(0.2, abs=0.02)
    assert merged.extent[0] > 0.25
    frame = G.FrameGeometry(depth, k, (64, 64), rgb)
    assert frame.locate(red).extent == pytest.approx(apart.extent)


@pytest.mark.parametrize("shape", [(1,), (2,), (7, 3), (300, 4), (800, 60)])
@pytest.mark.parametrize("qs", [(2, 98), (50,), (1.0, 99.0), (2, 98, 50), (0, 100)])
def test_percentiles_are_numpys(shape, qs):
    values = np.random.default_rng(len(shape) + sum(shape)).normal(size=shape)
    np.testing.assert_array_equal(G.percentiles(values, qs), np.percentile(values, qs, axis=0))
