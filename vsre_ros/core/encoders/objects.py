"""Object tokens: a fixed number of tokens per image read from the SAM branch's feature map.

Grid tokens describe places; a relation is about two objects. `ObjectTokens` gives the LM one
token per object candidate: K learned queries attend to the SAM map (cross-attention, a
DETR-style decoder of a few rounds, with self-attention between the queries so two of them
can settle on different objects), then a projector takes them to the LM's width. They follow
the image's grid tokens in the sequence.

Nothing tells them which object to take at inference: the model sees pixels only. During
training (`training/recipes/targets.py`) each image's visible objects are matched to the
queries (Hungarian, on the predicted box and colour/category) and the matched tokens are
supervised with their object's box, depth range, colour, category and pose.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from vsre_ros.core.projector import MLPProjector, sincos_2d


class _Round(nn.Module):
    """Queries read the map, then each other, then an MLP; pre-norm residuals."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm_cross = nn.LayerNorm(dim)
        self.cross = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm_self = nn.LayerNorm(dim)
        self.self_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        q = self.norm_cross(queries)
        queries = queries + self.cross(q, keys, keys, need_weights=False)[0]
        q = self.norm_self(queries)
        queries = queries + self.self_attn(q, q, q, need_weights=False)[0]
        return queries + self.mlp(self.norm_mlp(queries))


class ObjectTokens(nn.Module):
    """`count` object tokens [B, count, out_dim] from a feature map [B, C, H, W]."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        count: int,
        grid: tuple[int, int],
        rounds: int = 2,
        heads: int = 4,
    ):
        super().__init__()
        if count < 1:
            raise ValueError(f"object tokens need count >= 1, got {count}")
        if in_dim % heads:
            raise ValueError(f"feature width {in_dim} is not divisible by {heads} heads")
        self.count = count
        self.grid = tuple(grid)
        self.queries = nn.Parameter(torch.randn(count, in_dim) / math.sqrt(in_dim))
        self.norm_map = nn.LayerNorm(in_dim)
        # Where a map cell is must be in the keys: the tokens report their object's box.
        self.register_buffer("positions", sincos_2d(*self.grid, in_dim), persistent=False)
        self.rounds = nn.ModuleList(_Round(in_dim, heads) for _ in range(rounds))
        self.out = MLPProjector(in_dim, out_dim, depth=2)

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        if tuple(fmap.shape[-2:]) != self.grid:
            raise ValueError(
                f"object tokens were built for a {self.grid} map, got {tuple(fmap.shape[-2:])}"
            )
        keys = self.norm_map(fmap.flatten(2).transpose(1, 2)) + self.positions.to(fmap.dtype)
        queries = self.queries.to(fmap.dtype).expand(fmap.shape[0], -1, -1)
        for block in self.rounds:
            queries = block(queries, keys)
        return self.out(queries)
