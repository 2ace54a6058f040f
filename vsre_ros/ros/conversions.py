"""sensor_msgs/Image and CompressedImage to and from numpy, with cv_bridge's names and meanings.

No ROS 2 build of cv_bridge installs from PyPI (the `cv-bridge` there is a ROS 1 copy that
breaks on NumPy 2), so this module is the conversion the package runs. Function names, encoding
names and `desired_encoding` behave like cv_bridge's, so code written against either reads alike:

- `imgmsg_to_numpy(msg, desired_encoding="passthrough")`  (cv_bridge: `imgmsg_to_cv2`)
- `numpy_to_imgmsg(array, encoding="passthrough", header=None)`  (`cv2_to_imgmsg`)
- `compressed_imgmsg_to_numpy(msg, desired_encoding="passthrough")`  (`compressed_imgmsg_to_cv2`)
- `numpy_to_compressed_imgmsg(array, dst_format="jpeg", encoding="rgb8")`
  (`cv2_to_compressed_imgmsg`)

Costs: numpy to message is one memcpy (the bytes go into an `array.array` that the message
adopts as is; assigning a numpy array instead copies element by element, ~70 ms at 640x480).
Message to numpy is a view of the message's buffer when the data is native-endian and the
requested encoding is the message's own; `step` padding is skipped by strides, not copied.
A malformed message raises `ImageConversionError` (a ValueError) saying what is wrong.
"""

from __future__ import annotations

import array
import io
import re
from dataclasses import dataclass

import numpy as np

__all__ = [
    "ENCODINGS",
    "ImageConversionError",
    "compressed_imgmsg_to_cv2",
    "compressed_imgmsg_to_numpy",
    "cv2_to_compressed_imgmsg",
    "cv2_to_imgmsg",
    "imgmsg_to_cv2",
    "imgmsg_to_numpy",
    "numpy_to_compressed_imgmsg",
    "numpy_to_imgmsg",
    "to_rgb8",
]


class ImageConversionError(ValueError):
    """A message or array that cannot be converted; the text says what is wrong."""


@dataclass(frozen=True)
class Encoding:
    """Memory layout of one sensor_msgs/Image encoding."""

    channels: int  # values per pixel
    dtype: str  # numpy dtype of one value, native byte order ("uint8", "uint16", "float32")
    order: str  # channel order for colour encodings ("RGB", "BGRA", "L" for one channel)


# The encodings this package reads and writes (cv_bridge's names, sensor_msgs image_encodings).
ENCODINGS: dict[str, Encoding] = {
    "rgb8": Encoding(3, "uint8", "RGB"),
    "bgr8": Encoding(3, "uint8", "BGR"),
    "rgba8": Encoding(4, "uint8", "RGBA"),
    "bgra8": Encoding(4, "uint8", "BGRA"),
    "mono8": Encoding(1, "uint8", "L"),
    "mono16": Encoding(1, "uint16", "L"),
    "16UC1": Encoding(1, "uint16", "L"),
    "32FC1": Encoding(1, "float32", "L"),
}
_COLOUR = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8")
# ITU-R BT.601 luma, as OpenCV's RGB2GRAY (and therefore cv_bridge) uses.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _encoding(name: str) -> Encoding:
    try:
        return ENCODINGS[name]
    except KeyError:
        known = ", ".join(ENCODINGS)
        raise ImageConversionError(
            f"unknown image encoding {name!r}; supported: {known}"
        ) from None


def _native_dtype(enc: Encoding, bigendian: bool) -> np.dtype:
    dtype = np.dtype(enc.dtype)
    if dtype.itemsize == 1:
        return dtype
    return dtype.newbyteorder(">" if bigendian else "<")


def imgmsg_to_numpy(msg, desired_encoding: str = "passthrough") -> np.ndarray:
    """The image of a sensor_msgs/Image as an HxW (one channel) or HxWxC array.

    `desired_encoding="passthrough"` keeps the message's encoding and returns a view of its
    buffer when the data is in native byte order; any other name converts (see `convert`).
    """
    enc = _encoding(msg.encoding)
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height == 0 or width == 0:
        raise ImageConversionError(f"empty image: height={height}, width={width}")
    dtype = _native_dtype(enc, bool(msg.is_bigendian))
    row_bytes = width * enc.channels * dtype.itemsize
    if step < row_bytes:
        raise ImageConversionError(
            f"step {step} is smaller than one row of {width} {msg.encoding} pixels "
            f"({row_bytes} bytes)"
        )
    data = msg.data
    size = len(data)
    if size != step * height:
        raise ImageConversionError(
            f"data has {size} bytes but step x height = {step} x {height} = {step * height}"
        )
    buffer = data if not isinstance(data, (list, tuple)) else bytes(data)
    shape = (height, width, enc.channels) if enc.channels > 1 else (height, width)
    strides = (step, enc.channels * dtype.itemsize, dtype.itemsize)[: len(shape)]
    image = np.ndarray(shape=shape, dtype=dtype, buffer=buffer, strides=strides)
    if not dtype.isnative or not image.flags.aligned:
        # Swapped bytes, or rows padded by an odd count: one copy into native, aligned memory.
        image = image.astype(dtype.newbyteorder("="))
    if desired_encoding in ("passthrough", msg.encoding):
        return image
    return convert(image, msg.encoding, desired_encoding)


def convert(image: np.ndarray, src: str, dst: str) -> np.ndarray:
    """Convert between encodings as cv_bridge does.

    Colour encodings (rgb8, bgr8, rgba8, bgra8, mono8) convert among themselves (grey by BT.601
    luma, alpha added as 255); mono16 and 16UC1 share one layout; mono8 <-> mono16/16UC1 scale
    by 257 (0..255 <-> 0..65535). 32FC1 depth converts to nothing else.
    """
    _encoding(src)
    _encoding(dst)
    if src == dst:
        return image
    sixteen = ("mono16", "16UC1")
    if src in sixteen and dst in sixteen:
        return image
    if src in sixteen and dst == "mono8":
        return (image // 257).astype(np.uint8)
    if src == "mono8" and dst in sixteen:
        return image.astype(np.uint16) * np.uint16(257)
    if src in _COLOUR and dst in _COLOUR:
        return _convert_colour(image, ENCODINGS[src].order, ENCODINGS[dst].order)
    raise ImageConversionError(
        f"cannot convert {src} to {dst}; colour encodings convert among {', '.join(_COLOUR)}, "
        "mono16/16UC1 to mono8, and 32FC1 only to itself"
    )


def _convert_colour(image: np.ndarray, src: str, dst: str) -> np.ndarray:
    if src == "L":
        grey = image[..., None]
        planes = {"R": grey, "G": grey, "B": grey}
    else:
        planes = {ch: image[..., src.index(ch) : src.index(ch) + 1] for ch in src}
    if dst == "L":
        rgb = np.concatenate([planes["R"], planes["G"], planes["B"]], axis=-1)
        return np.clip(np.rint(rgb.astype(np.float32) @ _LUMA), 0, 255).astype(np.uint8)
    alpha = planes.get("A")
    if alpha is None:
        alpha = np.full(image.shape[:2] + (1,), 255, dtype=np.uint8)
    picked = {**planes, "A": alpha}
    return np.ascontiguousarray(np.concatenate([picked[ch] for ch in dst], axis=-1))


def to_rgb8(msg) -> np.ndarray:
    """An Image or CompressedImage as an HxWx3 uint8 RGB array (what the engine takes)."""
    if hasattr(msg, "format"):
        return compressed_imgmsg_to_numpy(msg, desired_encoding="rgb8")
    if msg.encoding in ("mono16", "16UC1"):
        return imgmsg_to_numpy(msg, desired_encoding="mono8")[..., None].repeat(3, axis=-1)
    return imgmsg_to_numpy(msg, desired_encoding="rgb8")


def _infer_encoding(image: np.ndarray) -> str:
    channels = 1 if image.ndim == 2 else image.shape[2]
    by_layout = {
        ("uint8", 1): "mono8",
        ("uint8", 3): "rgb8",
        ("uint8", 4): "rgba8",
        ("uint16", 1): "16UC1",
        ("float32", 1): "32FC1",
    }
    try:
        return by_layout[(image.dtype.name, channels)]
    except KeyError:
        raise ImageConversionError(
            f"no encoding for a {image.dtype.name} array with {channels} channel(s); "
            "pass encoding= explicitly"
        ) from None


def numpy_to_imgmsg(image: np.ndarray, encoding: str = "passthrough", header=None):
    """A sensor_msgs/Image holding `image` (HxW or HxWxC), with one memcpy of the pixels.

    `encoding="passthrough"` picks it from dtype and channels (uint8: mono8/rgb8/rgba8,
    uint16: 16UC1, float32: 32FC1); a named encoding must match the array's layout.
    """
    from sensor_msgs.msg import Image

    image = np.asarray(image)
    if image.ndim not in (2, 3) or image.shape[0] == 0 or image.shape[1] == 0:
        raise ImageConversionError(
            f"expected an HxW or HxWxC array with pixels, got {image.shape}"
        )
    if encoding == "passthrough":
        encoding = _infer_encoding(image)
    enc = _encoding(encoding)
    channels = 1 if image.ndim == 2 else image.shape[2]
    if channels != enc.channels or image.dtype.name != enc.dtype:
        raise ImageConversionError(
            f"a {image.dtype.name} array with {channels} channel(s) is not {encoding} "
            f"({enc.channels} x {enc.dtype})"
        )
    image = np.ascontiguousarray(image, dtype=np.dtype(enc.dtype).newbyteorder("="))
    msg = Image()
    if header is not None:
        msg.header = header
    msg.height, msg.width = int(image.shape[0]), int(image.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = int(not np.little_endian)
    msg.step = int(image.strides[0])
    data = array.array("B")
    data.frombytes(memoryview(image).cast("B"))
    msg.data = data  # an array.array('B') is adopted without another copy
    return msg


def compressed_imgmsg_to_numpy(msg, desired_encoding: str = "passthrough") -> np.ndarray:
    """Decode a sensor_msgs/CompressedImage (JPEG or PNG, via Pillow).

    As in cv_bridge, "passthrough" gives what the decoder holds in OpenCV's conventions:
    bgr8 for colour, bgra8 with alpha, mono8 or mono16 for grey.
    """
    from PIL import Image as PILImage

    data = bytes(msg.data)
    if not data:
        raise ImageConversionError("compressed image has no data")
    try:
        pil = PILImage.open(io.BytesIO(data))
        pil.load()
    except Exception as err:  # Pillow raises several types for corrupt data
        what = f"{len(data)} bytes starting {data[:8].hex(' ')}"
        if isinstance(err, PILImage.UnidentifiedImageError):
            # Pillow's text names the BytesIO object ("<_io.BytesIO object at 0x...>").
            reason = "not an image format Pillow reads (send JPEG or PNG)"
        else:
            reason = (
                re.sub(r"<[^<>]*? at 0x[0-9a-fA-F]+>", "the data", str(err)) or type(err).__name__
            )
        raise ImageConversionError(
            f"cannot decode compressed image (format {msg.format!r}, {what}): {reason}"
        ) from err
    if pil.mode in ("I;16", "I;16B", "I"):
        image, encoding = np.asarray(pil, dtype=np.uint16), "mono16"
    elif pil.mode == "L":
        image, encoding = np.asarray(pil), "mono8"
    elif pil.mode in ("RGBA", "LA", "PA") or "transparency" in pil.info:
        image, encoding = np.asarray(pil.convert("RGBA")), "rgba8"
    else:
        image, encoding = np.asarray(pil.convert("RGB")), "rgb8"
    if desired_encoding == "passthrough":
        desired_encoding = {"rgb8": "bgr8", "rgba8": "bgra8"}.get(encoding, encoding)
    return convert(image, encoding, desired_encoding)


_PIL_FORMATS = {"jpeg": "JPEG", "jpg": "JPEG", "png": "PNG"}


def numpy_to_compressed_imgmsg(
    image: np.ndarray, dst_format: str = "jpeg", encoding: str = "rgb8", header=None, quality=90
):
    """A sensor_msgs/CompressedImage of `image`, whose pixels are in `encoding`.

    JPEG takes 8-bit encodings; PNG also keeps mono16/16UC1 and alpha. `format` is the plain
    "jpeg" or "png" that cv_bridge writes.
    """
    from PIL import Image as PILImage
    from sensor_msgs.msg import CompressedImage

    try:
        pil_format = _PIL_FORMATS[dst_format.lower()]
    except KeyError:
        raise ImageConversionError(
            f"unknown compressed format {dst_format!r}; supported: {', '.join(_PIL_FORMATS)}"
        ) from None
    image = np.asarray(image)
    enc = _encoding(encoding)
    if enc.dtype == "float32":
        raise ImageConversionError("32FC1 cannot be compressed as JPEG/PNG; send it as Image")
    if pil_format == "JPEG" and enc.dtype != "uint8":
        raise ImageConversionError(f"JPEG holds 8-bit images; {encoding} needs png")
    if encoding in _COLOUR and encoding != "mono8":
        target = "rgba8" if enc.channels == 4 and pil_format == "PNG" else "rgb8"
        pil = PILImage.fromarray(convert(image, encoding, target))
    elif enc.dtype == "uint16":
        pil = PILImage.fromarray(np.ascontiguousarray(image, dtype=np.uint16))
    else:
        pil = PILImage.fromarray(np.ascontiguousarray(image, dtype=np.uint8))
    out = io.BytesIO()
    pil.save(out, format=pil_format, **({"quality": quality} if pil_format == "JPEG" else {}))
    msg = CompressedImage()
    if header is not None:
        msg.header = header
    msg.format = "jpeg" if pil_format == "JPEG" else "png"
    data = array.array("B")
    data.frombytes(out.getbuffer())
    msg.data = data
    return msg


# cv_bridge's names, for code ported from or to cv_bridge.
imgmsg_to_cv2 = imgmsg_to_numpy
cv2_to_imgmsg = numpy_to_imgmsg
compressed_imgmsg_to_cv2 = compressed_imgmsg_to_numpy


def cv2_to_compressed_imgmsg(image: np.ndarray, dst_format: str = "jpeg"):
    """cv_bridge's signature: the array is taken as OpenCV's bgr8 (or mono8)."""
    encoding = "mono8" if image.ndim == 2 else ("bgra8" if image.shape[2] == 4 else "bgr8")
    return numpy_to_compressed_imgmsg(image, dst_format, encoding)
