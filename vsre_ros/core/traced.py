"""The vision side (encoders, fusion, object tokens) recorded once for one image, then replayed.

A small model's encoders spend most of their time in Python between tiny operations (the
shipped vsre-tiny: about 10 ms eager for 1 GFLOP/s of work). `torch.jit.trace` records the
operations of one call; replaying them skips that Python (about 6 ms there), with the same
operations in the same order, so the visual tokens are the same (to the bit, on the CPU).

A recording holds for the shapes it was made with: one image at each encoder's size, in the
model's dtype and on its device (CPU or CUDA alike); other batches take the eager path. It reads
the model's own parameters, not copies, so weights updated in place are seen; the engine records
again whenever it loads a model. The recording is checked against the eager model on a second
input and is not used if they differ (a model whose operations depend on the pixels' values).
TorchScript is deprecated in recent torch; if tracing fails, the engine answers eagerly.
"""

from __future__ import annotations

import logging
import warnings

import torch
from torch import nn

log = logging.getLogger(__name__)


class _Vision(nn.Module):
    """`VSREModel.encode_images` with one positional pixel tensor per encoder (traceable)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.names = list(model.encoders)

    def forward(self, *pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_images(dict(zip(self.names, pixels, strict=True)))


class TracedVision:
    """`encode_images` for one image, traced at construction (see the module docstring)."""

    def __init__(self, model: nn.Module):
        self.names = list(model.encoders)
        self.shapes = {
            name: ((1, 3, enc.image_size, enc.image_size), enc.dtype)
            for name, enc in model.encoders.items()
        }
        self._eager = model.encode_images
        device = model.device
        example = self._example(device, seed=0)
        with torch.inference_mode(), warnings.catch_warnings():
            # Shape checks become constants of the recording: right for the shapes it holds.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            self._traced = torch.jit.trace(_Vision(model), example, check_trace=False)
            check = self._example(device, seed=1)
            expected = self._eager(dict(zip(self.names, check, strict=True)))
            if not torch.allclose(self._traced(*check), expected, rtol=1e-4, atol=1e-5):
                raise ValueError("the traced vision side differs from the eager model")

    def _example(self, device: torch.device, seed: int) -> tuple[torch.Tensor, ...]:
        gen = torch.Generator().manual_seed(seed)
        return tuple(
            torch.randn(shape, generator=gen).to(device, dtype)
            for shape, dtype in self.shapes.values()
        )

    def fits(self, pixels: dict[str, torch.Tensor]) -> bool:
        return all(
            tuple(pixels[name].shape) == shape and pixels[name].dtype == dtype
            for name, (shape, dtype) in self.shapes.items()
        )

    def __call__(self, pixels: dict[str, torch.Tensor]) -> torch.Tensor:
        """Visual tokens [N, tokens, hidden]: the recording when the pixels fit it, else eager."""
        if self.fits(pixels):
            return self._traced(*(pixels[name] for name in self.names))
        return self._eager(pixels)


def trace_vision(model: nn.Module) -> TracedVision | None:
    """A TracedVision of `model`, or None (logged) when it cannot be traced."""
    try:
        return TracedVision(model)
    except Exception as err:  # any failure leaves the eager path, which always works
        log.warning("vision side not traced, answering eagerly: %s: %s", type(err).__name__, err)
        return None
