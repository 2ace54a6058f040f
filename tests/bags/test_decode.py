"""Numpy-only image decoding and the project's message types, as ingestion uses them."""

from __future__ import annotations

import io
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from vsre_ros.training import bags


def _msg(pixels, encoding, pad=0, bigendian=False):
    height, width = pixels.shape[:2]
    if bigendian:
        pixels = pixels.astype(pixels.dtype.newbyteorder(">"))
    row = np.ascontiguousarray(pixels).reshape(height, -1).view(np.uint8)
    data = np.zeros((height, row.shape[1] + pad), np.uint8)
    data[:, : row.shape[1]] = row
    return SimpleNamespace(
        height=height,
        width=width,
        encoding=encoding,
        step=data.shape[1],
        is_bigendian=int(bigendian),
        data=data.reshape(-1),
    )


def test_rgb_with_step_padding_and_bgr_reorder():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (5, 7, 3), dtype=np.uint8)
    np.testing.assert_array_equal(bags.decode_image(_msg(rgb, "rgb8", pad=3)), rgb)
    np.testing.assert_array_equal(bags.decode_image(_msg(rgb[:, :, ::-1], "bgr8")), rgb)
    rgba = np.dstack([rgb, np.full((5, 7), 9, np.uint8)])
    np.testing.assert_array_equal(bags.decode_image(_msg(rgba, "rgba8", pad=1)), rgb)
    mono = bags.decode_image(_msg(rgb[:, :, 0], "mono8"))
    assert mono.shape == (5, 7, 3) and (mono[:, :, 2] == rgb[:, :, 0]).all()


def test_depth_encodings_become_metres():
    mm = np.array([[1000, 2500], [0, 65535]], np.uint16)
    expected = mm.astype(np.float32) / 1000
    np.testing.assert_allclose(bags.decode_image(_msg(mm, "16UC1", bigendian=True)), expected)
    metres = np.array([[0.5, 1.5]], np.float32)
    np.testing.assert_array_equal(bags.decode_image(_msg(metres, "32FC1", pad=2)), metres)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"encoding": "yuv422"}, "unknown image encoding 'yuv422'"),
        ({"step": 3}, "step 3 is smaller than one row"),
        ({"height": 50}, "data has 48 bytes"),
        ({"width": 0}, "empty image"),
    ],
)
def test_bad_images_say_what_is_wrong(change, match):
    msg = _msg(np.zeros((4, 4, 3), np.uint8), "rgb8")
    for key, value in change.items():
        setattr(msg, key, value)
    with pytest.raises(ValueError, match=match):
        bags.decode_image(msg)


def test_compressed_png_and_corrupt_data():
    rgb = np.random.default_rng(1).integers(0, 255, (6, 5, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    msg = SimpleNamespace(format="png", data=np.frombuffer(buffer.getvalue(), np.uint8))
    np.testing.assert_array_equal(bags.decode_compressed(msg), rgb)
    with pytest.raises(ValueError, match="cannot decode compressed image"):
        bags.decode_compressed(SimpleNamespace(format="jpeg", data=np.zeros(10, np.uint8)))


def test_project_types_come_from_the_msg_files(tmp_path):
    types = bags.project_types()
    assert {
        "vsre_ros/msg/SpatialQuery",
        "vsre_ros/msg/SpatialAnswer",
        "vsre_ros/msg/SpatialCorrection",
        "vsre_ros/msg/SceneTruth",
    } <= set(types)
    store = bags.make_typestore()
    assert "images" in store.types["vsre_ros/msg/SpatialQuery"].__dataclass_fields__
    with pytest.raises(bags.BagError, match="no vsre_ros .msg files"):
        bags.project_types([tmp_path])


def test_compressed_depth_skips_its_header_and_gives_metres():
    mm = np.array([[500, 1500], [2000, 0]], np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(mm).save(buffer, format="PNG")
    data = b"\x00" * 12 + buffer.getvalue()  # image_transport's config header, then the PNG
    msg = SimpleNamespace(format="16UC1; compressedDepth png", data=np.frombuffer(data, np.uint8))
    np.testing.assert_allclose(bags.decode_compressed(msg), mm / 1000.0)
    with pytest.raises(ValueError, match="without PNG data"):
        bags.decode_compressed(SimpleNamespace(format="16UC1; compressedDepth", data=b"\x00" * 20))
