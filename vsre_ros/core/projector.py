"""Projectors (MLP with GELU), the strided conv adapter for SAM-like maps, image positions."""

from __future__ import annotations

import math

import torch
from torch import nn


class MLPProjector(nn.Sequential):
    """Linear (-> GELU -> Linear) x (depth - 1): VSRE uses depth 3, LLaVA-1.5 depth 2."""

    def __init__(self, in_dim: int, out_dim: int, depth: int = 2, hidden: int = 0):
        if depth < 1:
            raise ValueError(f"projector depth must be >= 1, got {depth}")
        hidden = hidden or out_dim
        dims = [in_dim] + [hidden] * (depth - 1) + [out_dim]
        layers: list[nn.Module] = []
        for i in range(depth):
            if i:
                layers.append(nn.GELU())
            layers.append(nn.Linear(dims[i], dims[i + 1]))
        super().__init__(*layers)


class ConvAdapter(nn.Sequential):
    """Each stage halves the side and doubles the channels (VSRE: 64x64x256 -> 16x16x1024)."""

    def __init__(self, channels: int, stages: int):
        layers: list[nn.Module] = []
        for i in range(stages):
            c_in = channels * 2**i
            layers += [nn.Conv2d(c_in, 2 * c_in, 3, stride=2, padding=1), nn.GELU()]
        super().__init__(*layers)
        self.out_channels = channels * 2**stages

    @staticmethod
    def out_grid(grid: tuple[int, int], stages: int) -> tuple[int, int]:
        h, w = grid
        for _ in range(stages):
            h, w = (h + 1) // 2, (w + 1) // 2
        return h, w


def sincos_2d(h: int, w: int, dim: int) -> torch.Tensor:
    """Fixed 2D sine-cosine positions [h*w, dim]: half the channels code rows, half columns."""
    rows = torch.arange(h, dtype=torch.float32)[:, None].expand(h, w).reshape(-1)
    cols = torch.arange(w, dtype=torch.float32)[None, :].expand(h, w).reshape(-1)
    return sincos_at(rows, cols, dim)


def sincos_at(rows: torch.Tensor, cols: torch.Tensor, dim: int) -> torch.Tensor:
    """`sincos_2d`'s code [N, dim] of any (fractional) row and column positions [N]: a point
    in an image gets the code of the grid cells it lies between."""
    quarter = max(1, dim // 4)
    freq = 1.0 / (10000 ** (torch.arange(quarter, dtype=torch.float32) / quarter))
    freq = freq.to(rows.device)
    row = rows.float()[:, None] * freq[None]
    col = cols.float()[:, None] * freq[None]
    code = torch.cat([row.sin(), row.cos(), col.sin(), col.cos()], dim=1)
    out = torch.zeros(len(rows), dim, device=rows.device)
    out[:, : min(dim, code.shape[1])] = code[:, :dim]
    return out


class ImagePositions(nn.Module):
    """Learned row and column embeddings plus fixed 2D sincos, added to a grid of tokens.

    The small models need explicit 2D position on image tokens to learn left/right/above.
    """

    def __init__(self, grid: tuple[int, int], dim: int):
        super().__init__()
        h, w = grid
        self.grid = grid
        self.row = nn.Parameter(torch.zeros(h, dim))
        self.col = nn.Parameter(torch.zeros(w, dim))
        nn.init.normal_(self.row, std=1.0 / math.sqrt(dim))
        nn.init.normal_(self.col, std=1.0 / math.sqrt(dim))
        self.register_buffer("fixed", sincos_2d(h, w, dim), persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h, w = self.grid
        learned = (self.row[:, None, :] + self.col[None, :, :]).reshape(h * w, -1)
        return tokens + (learned + self.fixed).to(tokens.dtype)
