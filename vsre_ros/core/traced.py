"""Static-shape parts of the model recorded once at load, then replayed on the answer path.

A small model spends most of its time in Python between tiny operations (the shipped vsre-tiny's
encoders: about 10 ms eager for 0.1 GFLOP). `torch.jit.trace` records the operations of one
call; replaying them skips that Python, with the same operations in the same order, so the
results are the same (to the bit, on the CPU, for the same shapes).

- `TracedVision`: encoders, fusion and object tokens for one image (about 0.6x the eager time).
- `TracedLM`: the LM pass of one new frame (its image prefix and a few question tokens), of
  a few question tokens after an encoded frame's cached prefix, and of a decoding step after a
  longer cache, for token counts padded up to a few buckets and caches padded up to a few
  lengths (about 0.6x the eager time). Padding tokens see only themselves and stay out of the
  cache, and padding cache slots are seen by no token, so the logits and the cache are a plain
  pass's, to float rounding.

A recording holds for the shapes it was made with, in the model's dtype and on its device (CPU
or CUDA alike); other shapes take the eager path. It reads the model's own parameters, not
copies; the engine records again whenever it loads a model or an adapter, and only for a model
it loaded itself. Each recording is checked against the eager model on a second input and is
not used if they differ (a model whose operations depend on the values, not only the shapes).
TorchScript is deprecated in recent torch; if tracing fails, the engine answers eagerly.
"""

from __future__ import annotations

import logging
import warnings

import torch
from torch import nn
from transformers import DynamicCache

log = logging.getLogger(__name__)


class _Vision(nn.Module):
    """`VSREModel.encode_images` with one positional pixel tensor per encoder (traceable)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.names = list(model.encoders)

    def forward(self, *pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_images(dict(zip(self.names, pixels, strict=True)))


def _record(module: nn.Module, example: tuple[torch.Tensor, ...], check: tuple[torch.Tensor, ...]):
    """`module` traced on `example`, checked against the eager module on `check`."""
    with torch.inference_mode(), warnings.catch_warnings():
        # Shape checks become constants of the recording: right for the shapes it holds.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.trace(module, example, check_trace=False)
        # TorchScript profiles a recording's first run and optimises it on the second (about
        # 0.1 s each for the LM): both happen here, not on the first questions asked.
        traced(*example)
        got, expected = traced(*check), module(*check)
    got = got if isinstance(got, tuple) else (got,)
    expected = expected if isinstance(expected, tuple) else (expected,)
    if not all(
        torch.allclose(a, b, rtol=1e-4, atol=1e-5) for a, b in zip(got, expected, strict=True)
    ):
        raise ValueError(f"the traced {type(module).__name__} differs from the eager model")
    return traced


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
        self._traced = _record(
            _Vision(model), self._example(device, seed=0), self._example(device, seed=1)
        )

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


def lm_pass(
    lm: nn.Module,
    embeds: torch.Tensor,
    mask: torch.Tensor,
    positions: torch.Tensor,
    cache: DynamicCache,
    keep: int,
) -> torch.Tensor:
    """Logits [1, keep, vocab] of the last `keep` of `embeds` [1, new, hidden] run after
    `cache` (updated), with an additive `mask` [1, 1, new, cached + new] and `positions`."""
    return lm(
        inputs_embeds=embeds,
        attention_mask=mask,
        position_ids=positions,
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=keep,
    ).logits


class _LMPass(nn.Module):
    """One LM pass after a cache given as tensors: (logits, keys and values of every layer)."""

    def __init__(self, lm: nn.Module, keep: int):
        super().__init__()
        self.lm = lm
        self.keep = keep

    def forward(
        self,
        embeds: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
        *past: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        pairs = [(past[i], past[i + 1]) for i in range(0, len(past), 2)]
        cache = DynamicCache(ddp_cache_data=pairs) if pairs else DynamicCache()
        logits = lm_pass(self.lm, embeds, mask, positions, cache, self.keep)
        return (logits, *[t for layer in cache.layers for t in (layer.keys, layer.values)])


class TracedLM:
    """LM passes for a new frame and after its cached prefix, traced at construction for
    question-token counts up to each of `buckets`, and decoding steps of up to each of
    `step_buckets` tokens after a cache of up to the prefix and each of `step_caches` tokens
    (see the module docstring)."""

    def __init__(
        self,
        model: nn.Module,
        buckets: tuple[int, ...] = (16, 32, 48, 64),
        step_buckets: tuple[int, ...] = (16, 32),
        step_caches: tuple[int, ...] = (64, 128, 192),
    ):
        self.buckets = tuple(sorted(set(buckets) | set(step_buckets)))
        self.dtype, self.device = model.dtype, model.device
        self.hidden = model.hidden_size
        self.prefix = len(model.prefix_ids(1))  # the image prefix of one frame
        with torch.inference_mode():  # the cache's per-layer shapes, from a real prefix pass
            probe = model.lm(
                inputs_embeds=torch.zeros(1, 1, self.hidden, dtype=self.dtype, device=self.device),
                use_cache=True,
            ).past_key_values
            self.kv_shape = [
                tuple(layer.keys.shape[1:2] + layer.keys.shape[3:]) for layer in probe.layers
            ]
        # (cached tokens, new tokens, logits kept) -> the recorded pass
        self.graphs: dict[tuple[int, int, int], torch.jit.ScriptModule] = {}
        shapes = [(0, self.prefix + b, b) for b in buckets] + [
            (self.prefix, b, b) for b in buckets
        ]
        shapes += [(self.prefix + c, b, b) for c in step_caches for b in step_buckets]
        for cached, new, bucket in shapes:
            if (cached, new, bucket) not in self.graphs:
                example = self._example(cached, new, seed=0)
                check = self._example(cached, new, seed=1)
                graph = _record(_LMPass(model.lm, bucket), example, check)
                self.graphs[(cached, new, bucket)] = graph
        self.rooms = sorted({cached for cached, _, _ in self.graphs})

    def _example(self, cached: int, new: int, seed: int) -> tuple[torch.Tensor, ...]:
        gen = torch.Generator().manual_seed(seed)
        allowed = torch.rand(new, cached + new, generator=gen) < 0.7
        allowed[:, cached:] |= torch.eye(new, dtype=torch.bool)  # no token sees nothing
        mask = torch.zeros(allowed.shape).masked_fill_(~allowed, torch.finfo(self.dtype).min)
        past = []  # an empty cache is no tensors (the pass of a new frame)
        for heads, dim in self.kv_shape if cached else ():
            past += [torch.randn(1, heads, cached, dim, generator=gen) for _ in range(2)]
        tensors = [torch.randn(1, new, self.hidden, generator=gen), mask[None, None], *past]
        tensors = [t.to(self.device, self.dtype) for t in tensors]
        positions = torch.arange(cached, cached + new, device=self.device)[None]
        return (tensors[0], tensors[1], positions, *tensors[2:])

    def __call__(
        self,
        embeds: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
        cache: DynamicCache,
        keep: int,
    ) -> torch.Tensor | None:
        """`lm_pass(model.lm, ...)[0]` from a recording, `cache` updated the same way; None
        when no recording fits (the caller runs the LM eagerly)."""
        cached, new = cache.get_seq_length(), embeds.shape[1]
        bucket = next((b for b in self.buckets if b >= keep), None)
        if bucket is None or embeds.dtype != self.dtype:
            return None
        pad = bucket - keep
        room, graph = next(
            (
                (room, self.graphs[(room, new + pad, bucket)])
                for room in self.rooms
                if (room == cached or room > cached > 0)  # an empty cache has no layers to pad
                and (room, new + pad, bucket) in self.graphs
            ),
            (cached, None),
        )
        if graph is None:
            return None
        if pad or room > cached:
            # Padding tokens after the real ones, each seeing only itself; padding cache slots
            # after the real ones, seen by no token.
            embeds = torch.cat([embeds, embeds.new_zeros(1, pad, self.hidden)], dim=1)
            positions = torch.cat([positions, positions.new_zeros(1, pad)], dim=1)
            full = mask.new_full((1, 1, new + pad, room + new + pad), torch.finfo(mask.dtype).min)
            full[..., :new, :cached] = mask[..., :cached]
            full[..., :new, room : room + new] = mask[..., cached:]
            full[..., new:, room + new :].diagonal(dim1=-2, dim2=-1).fill_(0)
            mask = full
        past = []
        for layer in cache.layers:
            for t in (layer.keys, layer.values):
                past.append(
                    torch.nn.functional.pad(t, (0, 0, 0, room - cached)) if room > cached else t
                )
        out = graph(embeds, mask, positions, *past)
        for i in range(len(self.kv_shape)):
            keys, values = out[1 + 2 * i], out[2 + 2 * i]
            cache.update(keys[:, :, room : room + new], values[:, :, room : room + new], i)
        return out[0][0, :keep]


def trace_vision(model: nn.Module) -> TracedVision | None:
    """A TracedVision of `model`, or None (logged) when it cannot be traced."""
    return _traced(TracedVision, model, "vision side")


def trace_lm(model: nn.Module) -> TracedLM | None:
    """A TracedLM of `model`, or None (logged) when it cannot be traced."""
    return _traced(TracedLM, model, "LM")


def _traced(cls: type, model: nn.Module, part: str):
    try:
        return cls(model)
    except Exception as err:  # any failure leaves the eager path, which always works
        log.warning("%s not traced, answering eagerly: %s: %s", part, type(err).__name__, err)
        return None
