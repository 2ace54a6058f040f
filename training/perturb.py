"""Image perturbations that should not change an answer: brightness, a one-pixel shift, JPEG.

Each takes and returns an HxWx3 uint8 RGB array and is deterministic. `vsre evaluate` answers
a sample of questions again under each one and reports how many answers flip
(`metrics.flip_rates`): a model that reads the scene, not the pixels' accidents, keeps them.

Training can draw perturbations of the same kinds as augmentation (`StageConfig.augment`,
`row_augmentations`): brightness, contrast, a shift of up to 2 pixels, JPEG. The scene targets
built from the simulator's masks stay the unshifted picture's (2 pixels of 64 at most).
`UNTRAINED` holds kinds that no augmentation draws (gamma, blur, sensor noise), so `vsre
evaluate --perturbations` can tell robustness learnt in general from robustness to what was
trained.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageFilter


def _grey_levels(values: np.ndarray) -> np.ndarray:
    """Values rounded and clipped to 0..255, as uint8."""
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def brightness(factor: float) -> Callable[[np.ndarray], np.ndarray]:
    """Every channel scaled by `factor`, clipped to 0..255."""

    def apply(rgb: np.ndarray) -> np.ndarray:
        return _grey_levels(rgb.astype(np.float32) * factor)

    return apply


def contrast(factor: float) -> Callable[[np.ndarray], np.ndarray]:
    """Every pixel's distance from the picture's mean grey level scaled by `factor`."""

    def apply(rgb: np.ndarray) -> np.ndarray:
        x = rgb.astype(np.float32)
        mean = float(x.mean())
        return _grey_levels(mean + (x - mean) * factor)

    return apply


def gamma(value: float) -> Callable[[np.ndarray], np.ndarray]:
    """Each channel through the curve 255 * (x / 255) ** value."""
    table = _grey_levels(255 * (np.arange(256) / 255) ** value)

    def apply(rgb: np.ndarray) -> np.ndarray:
        return table[rgb]

    return apply


def blur(radius: float) -> Callable[[np.ndarray], np.ndarray]:
    """A Gaussian blur of `radius` pixels."""

    def apply(rgb: np.ndarray) -> np.ndarray:
        image = Image.fromarray(rgb).filter(ImageFilter.GaussianBlur(radius))
        return np.asarray(image, dtype=np.uint8)

    return apply


def noise(sigma: float, seed: int = 0) -> Callable[[np.ndarray], np.ndarray]:
    """Gaussian sensor noise of `sigma` grey levels, the same draw for a given picture size."""

    def apply(rgb: np.ndarray) -> np.ndarray:
        draw = np.random.default_rng(seed).normal(0.0, sigma, rgb.shape)
        return _grey_levels(rgb.astype(np.float32) + draw)

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


# perturbation id -> transform; what `vsre evaluate --perturb` runs by default.
PERTURBATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "brightness_0.8": brightness(0.8),
    "brightness_1.2": brightness(1.2),
    "shift_1px": shift(1),
    "jpeg_70": jpeg(70),
}

# kinds of change no training augmentation draws (`--perturbations` may name them)
UNTRAINED: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "gamma_0.7": gamma(0.7),
    "blur_0.8": blur(0.8),
    "noise_6": noise(6.0),
}


def by_ids(ids: str) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """The perturbations named in the comma-separated `ids` (of `PERTURBATIONS` and
    `UNTRAINED`), in that order; ValueError for an unknown id or none."""
    known = {**PERTURBATIONS, **UNTRAINED}
    names = [name.strip() for name in ids.split(",") if name.strip()]
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        raise ValueError(f"unknown perturbations {unknown or [ids]}; known: {', '.join(known)}")
    return {name: known[name] for name in names}


def augmentation(rng: np.random.Generator) -> Callable[[np.ndarray], np.ndarray]:
    """One training augmentation drawn from `rng`: each of brightness x0.7..1.3, contrast
    x0.75..1.25, a shift of -2..2 pixels each way and JPEG quality 40..95 with chance 1/2, at
    least one of them, applied in that order."""
    while True:
        chosen = rng.random(4) < 0.5
        if chosen.any():
            break
    steps = []
    if chosen[0]:
        steps.append(brightness(float(rng.uniform(0.7, 1.3))))
    if chosen[1]:
        steps.append(contrast(float(rng.uniform(0.75, 1.25))))
    if chosen[2]:
        dx, dy = (int(v) for v in rng.integers(-2, 3, size=2))
        steps.append(shift(dx, dy))
    if chosen[3]:
        steps.append(jpeg(int(rng.integers(40, 96))))

    def apply(rgb: np.ndarray) -> np.ndarray:
        for step in steps:
            rgb = step(rgb)
        return rgb

    return apply


def row_augmentations(
    rows: int, share: float, seed: int, step: int, rank: int = 0
) -> list[Callable[[np.ndarray], np.ndarray] | None]:
    """For each of a step's `rows`, an augmentation with chance `share`, else None: a pure
    function of (seed, step, rank), so a resumed run draws what the uninterrupted one drew."""
    if share <= 0:
        return [None] * rows
    rng = np.random.default_rng([seed, step, rank, 0xA06])
    picked = rng.random(rows) < share
    return [augmentation(rng) if p else None for p in picked]


def grey(rgb: np.ndarray) -> np.ndarray:
    """A mid-grey image of the same size (the blind baseline's picture)."""
    return np.full_like(rgb, 128)
