"""core.geometry given an object's mask: its pixels, not its box's, place and measure it."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vsre_ros.core import geometry as G


def _scene(boxes, tilt_deg=35.0, camera_height=0.8, w=160, h=120):
    """Exact depth of a camera looking down at a table (z = 0) with axis-aligned boxes
    (centre, size) on it, ray-cast analytically, and the instance mask (k + 1 for box k).
    Returns (depth, instance mask, K, camera-to-world rotation, camera position)."""
    f = 100.0
    k = G.Intrinsics(f, f, (w - 1) / 2, (h - 1) / 2)
    t = math.radians(tilt_deg)
    forward = np.array([0.0, math.cos(t), -math.sin(t)])
    right = np.array([1.0, 0.0, 0.0])
    rot = np.stack([right, np.cross(forward, right), forward], 1)
    pos = np.array([0.0, 0.0, camera_height])
    vs, us = np.mgrid[0:h, 0:w]
    rays = np.stack([(us - k.cx) / f, (vs - k.cy) / f, np.ones_like(us, float)], -1) @ rot.T
    with np.errstate(divide="ignore", invalid="ignore"):
        table = -pos[2] / rays[..., 2]
    depth = np.where(table > 0, table, np.inf)
    ids = np.zeros((h, w), np.uint8)
    for index, (centre, size) in enumerate(boxes):
        lo = np.array(centre) - np.array(size) / 2
        hi = np.array(centre) + np.array(size) / 2
        with np.errstate(divide="ignore", invalid="ignore"):
            t0, t1 = (lo - pos) / rays, (hi - pos) / rays
        near = np.nanmax(np.minimum(t0, t1), -1)
        far = np.nanmin(np.maximum(t0, t1), -1)
        hit = (near <= far) & (near > 0) & (near < depth)
        depth = np.where(hit, near, depth)  # a unit-z ray's length is its depth
        ids = np.where(hit, index + 1, ids)
    return depth.astype(np.float32), ids, k, rot, pos


def _box_of(mask: np.ndarray) -> list[float]:
    vs, us = np.nonzero(mask)
    h, w = mask.shape
    return [us.min() / w, vs.min() / h, (us.max() + 1) / w, (vs.max() + 1) / h]


def test_a_mask_places_its_box_beside_a_touching_neighbour():
    """A box with a taller box touching it from behind (both on the table): its mask places it
    at its centre and measures its size; a mask one pixel too wide all round (stray edge
    pixels that see the table and the neighbour, as a predicted mask has) still places it."""
    cup = ((0.0, 1.0, 0.05), (0.10, 0.10, 0.10))
    wall = ((0.0, 1.1, 0.15), (0.3, 0.1, 0.3))
    depth, ids, k, rot, pos = _scene([cup, wall])
    from scipy import ndimage

    mask = ndimage.binary_dilation(ids == 1)  # one pixel too wide all round
    frame = G.FrameGeometry(depth, k, depth.shape)
    place = frame.locate(_box_of(ids == 1), mask=mask)
    truth = rot.T @ (np.array(cup[0]) - pos)
    np.testing.assert_allclose(place.centre, truth, atol=0.01)
    assert G.measure("camera", [place]) == pytest.approx(np.linalg.norm(truth), rel=0.01)
    exact = frame.locate(_box_of(ids == 1), mask=ids == 1)
    np.testing.assert_allclose(exact.centre, truth, atol=0.01)
    assert exact.height == pytest.approx(0.10, abs=0.01)
    assert exact.width == pytest.approx(0.10, abs=0.015)


def test_a_mask_at_the_image_size_is_resized_to_the_depth():
    """The mask comes at the colour image's size (here twice the depth's): it is read at the
    depth's size by the nearest pixel, giving the place the depth-sized mask gives."""
    depth, ids, k, rot, pos = _scene([((0.05, 1.0, 0.06), (0.16, 0.1, 0.12))])
    image_k = k.scaled(2.0, 2.0)
    frame = G.FrameGeometry(depth, image_k, (2 * depth.shape[0], 2 * depth.shape[1]))
    big = np.repeat(np.repeat(ids == 1, 2, axis=0), 2, axis=1)
    box = _box_of(ids == 1)
    place = frame.locate(box, mask=big)
    same = G.FrameGeometry(depth, k, depth.shape).locate(box, mask=ids == 1)
    np.testing.assert_allclose(place.centre, same.centre, atol=1e-3)
    truth = rot.T @ (np.array([0.05, 1.0, 0.06]) - pos)
    np.testing.assert_allclose(place.centre, truth, atol=0.015)


def test_a_flat_object_on_another_keeps_its_own_height():
    """A thin book lying on a crate: its pixels hardly spread in height, but the crate's top is
    seen right around it, so it lies there (it is not a top standing on the table)."""
    crate = ((0.0, 1.0, 0.1), (0.3, 0.3, 0.2))
    book = ((0.0, 1.0, 0.21), (0.15, 0.12, 0.02))
    depth, ids, k, rot, pos = _scene([crate, book])
    frame = G.FrameGeometry(depth, k, depth.shape)
    place = frame.locate(_box_of(ids == 2), mask=ids == 2)
    assert place.height == pytest.approx(0.02, abs=0.012)
    truth = rot.T @ (np.array(book[0]) - pos)
    np.testing.assert_allclose(place.centre, truth, atol=0.015)


def test_a_mask_without_depth_places_nothing():
    depth, ids, k, _, _ = _scene([((0.0, 1.0, 0.05), (0.1, 0.1, 0.1))])
    frame = G.FrameGeometry(depth, k, depth.shape)
    box = _box_of(ids == 1)
    assert frame.locate(box, mask=np.zeros_like(ids, bool)) is None
