"""Each encoder's image preprocessing, read from its checkpoint's `preprocessor_config.json`.

A real checkpoint says how its frames were prepared in training: CLIP resizes the shortest
edge and crops the centre, SigLIP squashes to a square, DINOv2 resizes to 256 and crops 224,
SAM resizes the longest edge and pads bottom-right. `ImagePrep` holds those steps; `apply`
runs them with PIL's resampling on uint8 (what the transformers processors do), so the pixels
equal the checkpoint's own processor's. An encoder without a processor config (the tiny
presets, built from a config) keeps the batched torch path: squash, bilinear, antialiased.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

PROCESSOR_FILE = "preprocessor_config.json"
RESAMPLE = {2: "bilinear", 3: "bicubic", 1: "lanczos", 0: "nearest"}  # PIL's integer codes
PIL_RESAMPLE = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "nearest": Image.Resampling.NEAREST,
}


@dataclass(frozen=True)
class ImagePrep:
    """One encoder's preprocessing; `size` is the square side it outputs."""

    size: int  # output side (the encoder's input)
    resize: str  # "square" (to size x size), "shortest" / "longest" (that edge to `edge`)
    edge: int  # target of the shortest or longest edge ("square": = size)
    after: str  # "none", "crop" (centre crop to size) or "pad" (zeros bottom-right to size)
    resample: str  # bilinear | bicubic | lanczos | nearest
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    rescale: float = 1.0 / 255.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ImagePrep:
        data = dict(data)
        data["mean"] = tuple(data["mean"])
        data["std"] = tuple(data["std"])
        return cls(**data)

    def resized_shape(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) after the resize step (the transformers processors' rounding)."""
        if self.resize == "square":
            return self.edge, self.edge
        if self.resize == "shortest":
            short, long = (width, height) if width <= height else (height, width)
            new_long = int(self.edge * long / short)
            return (new_long, self.edge) if width <= height else (self.edge, new_long)
        scale = self.edge / max(height, width)
        return int(height * scale + 0.5), int(width * scale + 0.5)

    def apply(self, image: np.ndarray) -> torch.Tensor:
        """HxWx3 uint8 -> normalised float32 [3, size, size]."""
        h, w = image.shape[:2]
        new_h, new_w = self.resized_shape(h, w)
        if (new_h, new_w) != (h, w):
            pil = Image.fromarray(image).resize(
                (new_w, new_h), resample=PIL_RESAMPLE[self.resample], reducing_gap=None
            )
            image = np.asarray(pil)
        pixels = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float()
        if self.after == "crop":
            pixels = _center_crop(pixels, self.size)
        pixels = pixels * self.rescale
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        pixels = (pixels - mean) / std
        if self.after == "pad":
            out = torch.zeros(3, self.size, self.size)
            out[:, : pixels.shape[1], : pixels.shape[2]] = pixels
            pixels = out
        if pixels.shape[1:] != (self.size, self.size):
            raise ValueError(
                f"preprocessing gave {tuple(pixels.shape[1:])} pixels, expected "
                f"{self.size}x{self.size}; the preprocessor config does not fit the encoder"
            )
        return pixels


def _center_crop(pixels: torch.Tensor, size: int) -> torch.Tensor:
    """Centre crop (zero padding where the image is smaller), as transformers does."""
    _, h, w = pixels.shape
    if h < size or w < size:
        out = torch.zeros(3, max(h, size), max(w, size))
        top, left = (out.shape[1] - h) // 2, (out.shape[2] - w) // 2
        out[:, top : top + h, left : left + w] = pixels
        pixels, (_, h, w) = out, out.shape
    top, left = (h - size) // 2, (w - size) // 2
    return pixels[:, top : top + size, left : left + size]


def _side(value: Any, what: str) -> int:
    if isinstance(value, int):
        return value
    if isinstance(value, dict) and value.get("height") == value.get("width"):
        return int(value["height"])
    raise ValueError(f"{what} {value!r} is not a square; VSRE's encoders take square inputs")


def read_prep(directory: str | Path, image_size: int = 0) -> ImagePrep | None:
    """The ImagePrep a checkpoint's preprocessor_config.json describes, None without one.

    `image_size` is the encoder's input side; a config whose output differs is an error
    (0: any output side).
    """
    path = Path(directory) / PROCESSOR_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None
    size = data.get("size", {})
    if isinstance(size, int):
        size = {"shortest_edge": size}
    resample = RESAMPLE.get(int(data.get("resample", 2)), "bilinear")
    if not data.get("do_resize", True):
        raise ValueError(f"{path}: do_resize false is not supported (frames vary in size)")
    if size.get("longest_edge") and not size.get("shortest_edge"):
        resize, edge = "longest", int(size["longest_edge"])
    elif size.get("shortest_edge"):
        resize, edge = "shortest", int(size["shortest_edge"])
    else:
        resize, edge = "square", _side(size, f"{path}: size")
    after, out = "none", edge
    if data.get("do_center_crop"):
        after, out = "crop", _side(data.get("crop_size", edge), f"{path}: crop_size")
    elif data.get("do_pad"):
        after, out = "pad", _side(data.get("pad_size", edge), f"{path}: pad_size")
    elif resize != "square":
        raise ValueError(f"{path}: a {resize}-edge resize without a crop or pad is not square")
    if image_size and out != image_size:
        raise ValueError(
            f"{path} prepares {out}x{out} images but the encoder takes {image_size}; set the "
            f"encoder's image_size to {out} or drop the processor file"
        )
    mean = tuple(float(v) for v in data.get("image_mean", (0.0, 0.0, 0.0)))
    std = tuple(float(v) for v in data.get("image_std", (1.0, 1.0, 1.0)))
    if not data.get("do_normalize", True):
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    rescale = float(data.get("rescale_factor", 1 / 255)) if data.get("do_rescale", True) else 1.0
    return ImagePrep(out, resize, edge, after, resample, mean, std, rescale)
