"""Fusion of several encoders' feature maps into one sequence of LM-sized image tokens.

Two modes, looked up by id in `FUSIONS`:
- `sequence` (VSRE): an adapter per encoder where its family needs one (SAM's conv), a
  projector per encoder, tokens concatenated along the sequence.
- `channel` (Prismatic, Eagle): every map resampled to one grid, channels concatenated, one
  projector; far fewer tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vsre_ros.core.config import EncoderConfig
from vsre_ros.core.encoders import VisionEncoder
from vsre_ros.core.projector import ConvAdapter, ImagePositions, MLPProjector


class SequenceFusion(nn.Module):
    """One projector per encoder, tokens concatenated along the sequence."""

    def __init__(
        self,
        encoders: dict[str, VisionEncoder],
        encoder_configs: dict[str, EncoderConfig],
        out_dim: int,
        depth: int,
        hidden: int,
        pos_embed: bool,
        grid: int = 0,
    ):
        super().__init__()
        self.adapters = nn.ModuleDict()
        self.projectors = nn.ModuleDict()
        self.positions = nn.ModuleDict()
        self.grids: dict[str, tuple[int, int]] = {}
        for name, enc in encoders.items():
            dim, grid_hw = enc.embed_dim, enc.grid
            if enc.spec.adapter == "conv" and encoder_configs[name].adapter_stages > 0:
                stages = encoder_configs[name].adapter_stages
                adapter = ConvAdapter(dim, stages)
                self.adapters[name] = adapter
                dim, grid_hw = adapter.out_channels, ConvAdapter.out_grid(grid_hw, stages)
            self.projectors[name] = MLPProjector(dim, out_dim, depth, hidden)
            if pos_embed:
                self.positions[name] = ImagePositions(grid_hw, out_dim)
            self.grids[name] = grid_hw
        self.num_tokens = sum(h * w for h, w in self.grids.values())

    def forward(self, maps: dict[str, torch.Tensor]) -> torch.Tensor:
        parts = []
        for name, fmap in maps.items():
            if name in self.adapters:
                fmap = self.adapters[name](fmap)
            tokens = self.projectors[name](fmap.flatten(2).transpose(1, 2))
            if name in self.positions:
                tokens = self.positions[name](tokens)
            parts.append(tokens)
        return torch.cat(parts, dim=1)


class ChannelFusion(nn.Module):
    """Maps resampled to one grid, channels concatenated, one projector."""

    def __init__(
        self,
        encoders: dict[str, VisionEncoder],
        encoder_configs: dict[str, EncoderConfig],
        out_dim: int,
        depth: int,
        hidden: int,
        pos_embed: bool,
        grid: int = 8,
    ):
        super().__init__()
        if grid < 1:
            raise ValueError(f"channel fusion needs fusion_grid >= 1, got {grid}")
        self.grid = (grid, grid)
        in_dim = sum(enc.embed_dim for enc in encoders.values())
        self.projector = MLPProjector(in_dim, out_dim, depth, hidden)
        self.position = ImagePositions(self.grid, out_dim) if pos_embed else None
        self.num_tokens = grid * grid

    def forward(self, maps: dict[str, torch.Tensor]) -> torch.Tensor:
        # Area averaging when shrinking keeps every patch's evidence; bilinear when growing.
        resampled = []
        for fmap in maps.values():
            if fmap.shape[-2] >= self.grid[0] and fmap.shape[-1] >= self.grid[1]:
                resampled.append(F.adaptive_avg_pool2d(fmap, self.grid))
            else:
                resampled.append(
                    F.interpolate(fmap, size=self.grid, mode="bilinear", align_corners=False)
                )
        tokens = self.projector(torch.cat(resampled, dim=1).flatten(2).transpose(1, 2))
        return self.position(tokens) if self.position is not None else tokens


FUSIONS: dict[str, type[nn.Module]] = {"sequence": SequenceFusion, "channel": ChannelFusion}


def build_fusion(
    mode: str,
    encoders: dict[str, VisionEncoder],
    encoder_configs: dict[str, EncoderConfig],
    out_dim: int,
    depth: int,
    hidden: int,
    pos_embed: bool,
    grid: int,
) -> nn.Module:
    if mode not in FUSIONS:
        raise ValueError(f"unknown fusion mode {mode!r}; known: {sorted(FUSIONS)}")
    return FUSIONS[mode](encoders, encoder_configs, out_dim, depth, hidden, pos_embed, grid)
