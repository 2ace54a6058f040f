"""Image perturbations that should not change an answer: brightness, a one-pixel shift, JPEG.

Each takes and returns an HxWx3 uint8 RGB array and is deterministic. `vsre evaluate` answers
a sample of questions again under each one and reports how many answers flip
(`metrics.flip_rates`): a model that reads the scene, not the pixels' accidents, keeps them.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image


def brightness(factor: float) -> Callable[[np.ndarray], np.ndarray]:
    """Every channel scaled by `factor`, clipped to 0..255."""

    def apply(rgb: np.ndarray) -> np.ndarray:
        return np.clip(np.rint(rgb.astype(np.float32) * factor), 0, 255).astype(np.uint8)

    return apply


def shift(dx: int, dy: int = 0) -> Callable[[np.ndarray], np.ndarray]:
    """The picture moved by (dx, dy) pixels, the uncovered border repeating the edge."""

    def apply(rgb: np.ndarray) -> np.ndarray:
        h, w = rgb.shape[:2]
        padded = np.pad(rgb, ((abs(dy),) * 2, (abs(dx),) * 2, (0, 0)), mode="edge")
        y0, x0 = abs(dy) - dy, abs(dx) - dx
        return np.ascontiguousarray(padded[y0 : y0 + h, x0 : x0 + w])

    return apply


def jpeg(quality: int) -> Callable[[np.ndarray], np.ndarray]:
    """The picture JPEG-encoded at `quality` and decoded again."""

    def apply(rgb: np.ndarray) -> np.ndarray:
        buffer = io.BytesIO()
        Image.fromarray(rgb).save(buffer, format="JPEG", quality=quality)
        buffer.seek(0)
        with Image.open(buffer) as image:
            return np.asarray(image.convert("RGB"), dtype=np.uint8)

    return apply


# perturbation id -> transform; what `vsre evaluate --perturb` runs.
PERTURBATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "brightness_0.8": brightness(0.8),
    "brightness_1.2": brightness(1.2),
    "shift_1px": shift(1),
    "jpeg_70": jpeg(70),
}


def grey(rgb: np.ndarray) -> np.ndarray:
    """A mid-grey image of the same size (the blind baseline's picture)."""
    return np.full_like(rgb, 128)
