"""Weight averaging (Polyak / EMA) over a training run's steps."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


class WeightAverage:
    """An exponential moving average of a module's trainable weights.

    `update()` after each optimizer step moves each average toward its weight by 1 - d, with
    d = min(decay, (1 + n) / (10 + n)) after n updates, so the random init is forgotten within
    the first steps rather than over 1 / (1 - decay) of them. `swapped()` puts the averages in
    the module for a while (a val pass); `swap()` exchanges them for good.
    """

    def __init__(self, module: torch.nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1) (0 turns it off), got {decay}")
        named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        self.names = [n for n, _ in named]
        self.live = [p for _, p in named]
        self.average = [p.detach().clone() for p in self.live]
        self.decay = decay
        self.updates = 0

    @torch.no_grad()
    def update(self) -> None:
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        # One multi-tensor kernel rather than a Python loop over the tensors.
        torch._foreach_lerp_(self.average, [w.detach() for w in self.live], 1.0 - d)
        self.updates += 1

    @torch.no_grad()
    def swap(self) -> None:
        for mean, weight in zip(self.average, self.live, strict=True):
            held = weight.detach().clone()
            weight.copy_(mean)
            mean.copy_(held)

    @contextmanager
    def swapped(self) -> Iterator[None]:
        self.swap()
        try:
            yield
        finally:
            self.swap()

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The averages by parameter name (a checkpoint's)."""
        pairs = zip(self.names, self.average, strict=True)
        return {name: mean.detach().contiguous().cpu() for name, mean in pairs}

    @torch.no_grad()
    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        if set(tensors) != set(self.names):
            missing = sorted(set(self.names) - set(tensors))[:3]
            raise ValueError(f"weight averages do not match the trainable set (missing {missing})")
        for name, mean in zip(self.names, self.average, strict=True):
            mean.copy_(tensors[name])
