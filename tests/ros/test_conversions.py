"""Image conversions against hand-built sensor_msgs messages: encodings, padding, byte order."""

from __future__ import annotations

import array
import sys

import numpy as np
import pytest
from sensor_msgs.msg import CompressedImage, Image

from vsre_ros.ros.conversions import (
    ENCODINGS,
    ImageConversionError,
    compressed_imgmsg_to_numpy,
    convert,
    cv2_to_compressed_imgmsg,
    imgmsg_to_cv2,
    imgmsg_to_numpy,
    numpy_to_compressed_imgmsg,
    numpy_to_imgmsg,
    to_rgb8,
)

H, W = 3, 5


def _pixels(encoding: str, rng: np.random.Generator) -> np.ndarray:
    enc = ENCODINGS[encoding]
    shape = (H, W, enc.channels) if enc.channels > 1 else (H, W)
    if enc.dtype == "float32":
        return rng.uniform(0.1, 9.0, shape).astype(np.float32)
    top = 65535 if enc.dtype == "uint16" else 255
    return rng.integers(0, top + 1, shape).astype(enc.dtype)


def _hand_built(pixels: np.ndarray, encoding: str, pad: int = 0, bigendian: bool = False):
    """An Image built byte by byte, the way a driver on another machine would."""
    order = ">" if bigendian else "<"
    typed = pixels.astype(pixels.dtype.newbyteorder(order))
    row_bytes = typed[0].tobytes()
    rows = [typed[r].tobytes() + bytes([0xAB]) * pad for r in range(pixels.shape[0])]
    msg = Image()
    msg.height, msg.width = pixels.shape[0], pixels.shape[1]
    msg.encoding = encoding
    msg.is_bigendian = int(bigendian)
    msg.step = len(row_bytes) + pad
    msg.data = array.array("B", b"".join(rows))
    return msg


@pytest.mark.parametrize("encoding", list(ENCODINGS))
@pytest.mark.parametrize("pad", [0, 7])
@pytest.mark.parametrize("bigendian", [False, True])
def test_hand_built_message_reads_back_exactly(encoding, pad, bigendian):
    pixels = _pixels(encoding, np.random.default_rng(len(encoding) + pad))
    msg = _hand_built(pixels, encoding, pad=pad, bigendian=bigendian)
    out = imgmsg_to_numpy(msg)
    assert out.dtype == np.dtype(ENCODINGS[encoding].dtype)
    assert out.dtype.isnative
    np.testing.assert_array_equal(out, pixels)


@pytest.mark.parametrize("encoding", list(ENCODINGS))
def test_round_trip_through_message_keeps_pixels_and_encoding(encoding):
    pixels = _pixels(encoding, np.random.default_rng(1))
    msg = numpy_to_imgmsg(pixels, encoding=encoding)
    assert (msg.encoding, msg.height, msg.width) == (encoding, H, W)
    assert msg.step == W * pixels.itemsize * ENCODINGS[encoding].channels
    assert msg.is_bigendian == int(sys.byteorder == "big")
    np.testing.assert_array_equal(imgmsg_to_numpy(msg), pixels)


def test_native_message_reads_as_a_view_of_its_buffer():
    pixels = _pixels("rgb8", np.random.default_rng(2))
    msg = _hand_built(pixels, "rgb8", pad=4)
    view = imgmsg_to_numpy(msg)
    msg.data[0] = 255 - msg.data[0]
    assert view[0, 0, 0] == msg.data[0]


def test_numpy_to_message_does_not_keep_a_reference_to_the_array():
    pixels = _pixels("mono8", np.random.default_rng(3))
    msg = numpy_to_imgmsg(pixels)
    pixels[0, 0] ^= 0xFF
    assert msg.data[0] != pixels[0, 0]
    assert isinstance(msg.data, array.array)


def test_non_contiguous_array_is_packed_rows():
    pixels = _pixels("rgb8", np.random.default_rng(4))
    flipped = pixels[:, ::-1]
    msg = numpy_to_imgmsg(flipped, "rgb8")
    np.testing.assert_array_equal(imgmsg_to_numpy(msg), flipped)


def test_passthrough_infers_encoding_from_dtype_and_channels():
    assert numpy_to_imgmsg(np.zeros((2, 2), np.uint16)).encoding == "16UC1"
    assert numpy_to_imgmsg(np.zeros((2, 2), np.float32)).encoding == "32FC1"
    assert numpy_to_imgmsg(np.zeros((2, 2, 3), np.uint8)).encoding == "rgb8"
    with pytest.raises(ImageConversionError, match="no encoding for a float64"):
        numpy_to_imgmsg(np.zeros((2, 2), np.float64))


def test_array_not_matching_named_encoding_is_refused():
    with pytest.raises(ImageConversionError, match="is not bgra8"):
        numpy_to_imgmsg(np.zeros((2, 2, 3), np.uint8), "bgra8")


def test_desired_encoding_swaps_channels_like_cv_bridge():
    rgb = _pixels("rgb8", np.random.default_rng(5))
    msg = numpy_to_imgmsg(rgb, "rgb8")
    np.testing.assert_array_equal(imgmsg_to_cv2(msg, desired_encoding="bgr8"), rgb[..., ::-1])
    bgra = imgmsg_to_numpy(msg, "bgra8")
    np.testing.assert_array_equal(bgra[..., :3], rgb[..., ::-1])
    assert (bgra[..., 3] == 255).all()


def test_grey_uses_bt601_luma():
    rgb = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255]]], np.uint8)
    grey = convert(rgb, "rgb8", "mono8")
    np.testing.assert_array_equal(grey, [[76, 150, 29]])


def test_sixteen_bit_scales_to_eight_bit():
    mono16 = np.array([[0, 257, 65535]], np.uint16)
    msg = numpy_to_imgmsg(mono16, "mono16")
    np.testing.assert_array_equal(imgmsg_to_numpy(msg, "mono8"), [[0, 1, 255]])
    np.testing.assert_array_equal(imgmsg_to_numpy(msg, "16UC1"), mono16)


def test_depth_cannot_become_colour():
    msg = numpy_to_imgmsg(np.ones((2, 2), np.float32))
    with pytest.raises(ImageConversionError, match="cannot convert 32FC1 to rgb8"):
        imgmsg_to_numpy(msg, "rgb8")


def test_to_rgb8_gives_three_uint8_channels_for_every_image_encoding():
    for encoding in ("rgb8", "bgr8", "rgba8", "bgra8", "mono8", "mono16", "16UC1"):
        msg = numpy_to_imgmsg(_pixels(encoding, np.random.default_rng(6)), encoding)
        out = to_rgb8(msg)
        assert out.shape == (H, W, 3) and out.dtype == np.uint8, encoding


# --- malformed messages: one test per case -------------------------------------------------


def test_unknown_encoding_is_named():
    msg = _hand_built(_pixels("mono8", np.random.default_rng(7)), "mono8")
    msg.encoding = "yuv422_yuy2"
    with pytest.raises(ImageConversionError, match="unknown image encoding 'yuv422_yuy2'"):
        imgmsg_to_numpy(msg)


def test_data_length_not_step_times_height():
    msg = _hand_built(_pixels("rgb8", np.random.default_rng(8)), "rgb8")
    msg.data = msg.data[:-1]
    with pytest.raises(ImageConversionError, match=r"data has 44 bytes but step x height"):
        imgmsg_to_numpy(msg)


def test_zero_size_image():
    msg = Image(height=0, width=4, encoding="mono8", step=4)
    with pytest.raises(ImageConversionError, match="empty image: height=0"):
        imgmsg_to_numpy(msg)


def test_step_smaller_than_a_row():
    msg = _hand_built(_pixels("rgb8", np.random.default_rng(9)), "rgb8")
    msg.step = 14
    msg.data = msg.data[: 14 * H]
    with pytest.raises(ImageConversionError, match="step 14 is smaller than one row"):
        imgmsg_to_numpy(msg)


def test_odd_padding_of_sixteen_bit_rows_reads_aligned():
    pixels = _pixels("16UC1", np.random.default_rng(10))
    out = imgmsg_to_numpy(_hand_built(pixels, "16UC1", pad=1))
    assert out.flags.aligned
    np.testing.assert_array_equal(out, pixels)


def test_empty_compressed_image():
    with pytest.raises(ImageConversionError, match="compressed image has no data"):
        compressed_imgmsg_to_numpy(CompressedImage(format="jpeg"))


def test_corrupt_compressed_image():
    msg = CompressedImage(format="jpeg")
    msg.data = array.array("B", b"\xff\xd8not really a jpeg")
    with pytest.raises(ImageConversionError, match="cannot decode compressed image") as err:
        compressed_imgmsg_to_numpy(msg)
    assert "0x" not in str(err.value)  # Pillow's text names its BytesIO object


def test_garbage_compressed_image_says_what_it_got_not_an_object_repr():
    msg = CompressedImage(format="png")
    msg.data = array.array("B", b"garbage!")
    with pytest.raises(ImageConversionError) as err:
        compressed_imgmsg_to_numpy(msg)
    text = str(err.value)
    assert "format 'png', 8 bytes starting 67 61 72 62" in text
    assert "not an image format Pillow reads" in text
    assert "BytesIO" not in text and " at 0x" not in text


# --- compressed images ----------------------------------------------------------------------


def test_png_round_trip_is_lossless_for_colour_grey_and_sixteen_bit():
    rng = np.random.default_rng(11)
    for encoding in ("rgb8", "rgba8", "bgr8", "mono8", "mono16"):
        pixels = _pixels(encoding, rng)
        msg = numpy_to_compressed_imgmsg(pixels, "png", encoding=encoding)
        assert msg.format == "png"
        np.testing.assert_array_equal(compressed_imgmsg_to_numpy(msg, encoding), pixels)


def test_jpeg_round_trip_is_close_and_passthrough_is_bgr_like_cv_bridge():
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[..., 0] = 200  # a red image: bgr passthrough puts it last
    msg = numpy_to_compressed_imgmsg(rgb, "jpeg", encoding="rgb8")
    assert msg.format == "jpeg"
    assert np.abs(compressed_imgmsg_to_numpy(msg, "rgb8").astype(int) - rgb).max() <= 3
    assert compressed_imgmsg_to_numpy(msg)[..., 2].mean() > 190
    assert to_rgb8(msg)[..., 0].mean() > 190


def test_cv2_style_compress_takes_bgr():
    bgr = np.zeros((8, 8, 3), np.uint8)
    bgr[..., 0] = 255
    msg = cv2_to_compressed_imgmsg(bgr, "png")
    np.testing.assert_array_equal(compressed_imgmsg_to_numpy(msg, "bgr8"), bgr)


def test_jpeg_refuses_sixteen_bit_and_depth():
    with pytest.raises(ImageConversionError, match="JPEG holds 8-bit images"):
        numpy_to_compressed_imgmsg(np.zeros((4, 4), np.uint16), "jpeg", encoding="mono16")
    with pytest.raises(ImageConversionError, match="32FC1 cannot be compressed"):
        numpy_to_compressed_imgmsg(np.zeros((4, 4), np.float32), "png", encoding="32FC1")
    with pytest.raises(ImageConversionError, match="unknown compressed format 'webp'"):
        numpy_to_compressed_imgmsg(np.zeros((4, 4, 3), np.uint8), "webp")
