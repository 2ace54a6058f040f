"""Training steps that compute each thing once: distinct images, distinct tokens.

A collated batch is right-padded [B, L] rows, one question each, and every row carries its own
copy of its image prefix (BOS, the image tokens, the prompt's opening). Two kinds of that work
are repeated, and both are removed here without changing what the step computes:

- **Images.** Rows that ask about the same image(s) would encode them once per row. The four
  encoders now run once per distinct image (`encode_distinct`), and each row gets a view of
  the result, so the gradients of all its questions meet in one encoder pass.
- **Tokens.** The LM's linear layers, norms and MLPs run on `TokenLayout`'s packed tokens: no
  padding, and one copy of a prefix that rows on the same images share. Attention runs per
  row, in `AttentionChunks`: the rows sorted by length, a few per chunk, each chunk padded
  only to its longest row and causal (right padding comes after every real query). A shared
  prefix token is a key of every row that shares it, so its gradient sums over them, and its
  output is read at its first row.

Rows share work only when a batch asks several questions about one image, which a stage asks
for with `StageConfig.per_image`. Packing is exact either way: the loss and the gradients are
the padded step's up to float rounding (tests/default_model/test_packing.py); `TrainConfig.
pack_tokens` false runs the padded step, bit for bit as before.

The packed decoder calls the HF decoder's own modules (`rotary_emb`, `layers`, `norm`, as the
Llama family names them), so hooks on the layers still fire; it needs the LM to run the
"sdpa_rows" attention implementation (`attention_rows`), which reads the layout from the
`vsre_layout` keyword the decoder layers pass through to it.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch


def distinct(keys: Sequence[Hashable]) -> tuple[list[int], list[int]]:
    """(first, inverse): the index of each distinct key's first occurrence, and for every key
    the position of its distinct key in `first`. keys[first[inverse[i]]] == keys[i]."""
    seen: dict[Hashable, int] = {}
    first, inverse = [], []
    for i, key in enumerate(keys):
        if key not in seen:
            seen[key] = len(first)
            first.append(i)
        inverse.append(seen[key])
    return first, inverse


def encode_distinct(model, pixel_values: dict[str, torch.Tensor], batch: dict) -> torch.Tensor:
    """The batch's visual tokens per image slot [S, tokens, hidden], each distinct image
    encoded once (`batch["image_first"]`, `batch["image_inverse"]` from collate)."""
    first, inverse = batch.get("image_first"), batch.get("image_inverse")
    if first is None or len(first) == len(inverse):
        return model.encode_images(pixel_values)
    once = model.encode_images({name: p[first] for name, p in pixel_values.items()})
    return once[inverse]


def _select(packed: torch.Tensor, dim: int, index: torch.Tensor) -> torch.Tensor:
    """`packed`'s entries along `dim` at `index`, where index T (one past the last) reads
    zeros: how a padded or chunked view is gathered from packed tokens."""
    zero = packed.new_zeros(*packed.shape[:dim], 1, *packed.shape[dim + 1 :])
    return torch.cat([packed, zero], dim).index_select(dim, index)


@dataclass
class AttentionChunks:
    """Attention without the padded view's waste: the rows sorted by length and cut into
    chunks of `CHUNK_ROWS`, each padded only to its own longest row, so the score matrices
    cost about the sum of the rows' squared lengths instead of B * L^2. Each chunk is causal
    with no mask (its padding comes after every real query), and a packed token's output is
    read at its first row."""

    indices: list[torch.Tensor]  # per chunk [rows_c * width_c]: packed token per slot (T: none)
    shapes: list[tuple[int, int]]  # per chunk (rows_c, width_c)
    slot: torch.Tensor  # [T] each packed token's slot in the chunks' outputs, concatenated

    def gather(self, heads: torch.Tensor) -> list[torch.Tensor]:
        """Packed [heads, T, d] -> per chunk [rows_c, heads, width_c, d]."""
        return [_select(heads, 1, index).unflatten(1, shape).transpose(0, 1)
                for index, shape in zip(self.indices, self.shapes, strict=True)]  # fmt: skip

    def scatter(self, outputs: list[torch.Tensor]) -> torch.Tensor:
        """Per chunk [rows_c, width_c, heads, d] -> packed [T, heads, d]."""
        return torch.cat([o.flatten(0, 1) for o in outputs]).index_select(0, self.slot)


def _chunks(spread_index: torch.Tensor, rep: torch.Tensor, lengths: torch.Tensor,
            width: int) -> AttentionChunks:  # fmt: skip
    grid = spread_index.view(-1, width)
    order = torch.argsort(lengths, descending=True, stable=True).tolist()
    indices, shapes = [], []
    start = [0] * len(order)  # each row's first slot in the chunks' concatenated outputs
    offset = 0
    for k in range(0, len(order), CHUNK_ROWS):
        rows = order[k : k + CHUNK_ROWS]
        size = max(int(lengths[rows[0]]), 1)
        indices.append(grid[rows, :size].flatten())
        shapes.append((len(rows), size))
        for j, row in enumerate(rows):
            start[row] = offset + j * size
        offset += len(rows) * size
    starts = torch.tensor(start, device=rep.device)
    return AttentionChunks(indices, shapes, starts[rep // width] + rep % width)


@dataclass
class TokenLayout:
    """Where each position of a right-padded [B, L] batch lives among the packed tokens.

    `spread_index` [B * L] is the packed token at each padded position (T, one past the last,
    for padding); `rep` [T] is the padded position each packed token is computed at (its first
    row); `positions` [T] is each packed token's position in its row (the rotary phase);
    `chunks` is the layout attention runs in."""

    rows: int
    width: int
    spread_index: torch.Tensor
    rep: torch.Tensor
    positions: torch.Tensor
    chunks: AttentionChunks

    @property
    def tokens(self) -> int:
        return int(self.rep.numel())

    @classmethod
    def build(
        cls, attention_mask: torch.Tensor, prefix_of: torch.Tensor, prefix_len: torch.Tensor
    ) -> TokenLayout:
        """`attention_mask` [B, L] (right-padded); row b's first `prefix_len[b]` tokens are row
        `prefix_of[b]`'s (which must be an earlier row, or b itself, with the same tokens)."""
        rows, width = attention_mask.shape
        device = attention_mask.device
        col = torch.arange(width, device=device)
        real = attention_mask.bool()
        shared = (col[None, :] < prefix_len[:, None]) & (prefix_of[:, None] != torch.arange(
            rows, device=device)[:, None])  # fmt: skip
        owner = torch.where(shared, prefix_of[:, None], torch.arange(rows, device=device)[:, None])
        flat_owner = (owner * width + col[None, :]).flatten()
        new = (real & ~shared).flatten()
        rep = new.nonzero().squeeze(1)
        packed_of = torch.full((rows * width,), len(rep), dtype=torch.long, device=device)
        packed_of[rep] = torch.arange(len(rep), device=device)
        spread_index = torch.where(real.flatten(), packed_of[flat_owner], len(rep))
        chunks = _chunks(spread_index, rep, real.sum(1), width)
        return cls(rows, width, spread_index, rep, rep % width, chunks)

    @classmethod
    def from_batch(cls, batch: dict) -> TokenLayout:
        return cls.build(batch["attention_mask"], batch["prefix_of"], batch["prefix_len"])

    def spread(self, packed: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """Packed tokens along `dim` (T) -> [..., B, L, ...] there, zeros at padding."""
        return _select(packed, dim, self.spread_index).unflatten(dim, (self.rows, self.width))

    def pack(self, padded: torch.Tensor, dim: int = 0) -> torch.Tensor:
        """[..., B, L, ...] at (`dim`, `dim` + 1) -> the packed tokens there (T)."""
        return padded.flatten(dim, dim + 1).index_select(dim, self.rep)


# Rows per attention chunk (`AttentionChunks`): more chunks pad less, each costs a kernel call.
CHUNK_ROWS = 4


def supports(lm) -> bool:
    """Whether the packed decoder can run this HF causal LM (a Llama-family decoder)."""
    decoder = lm.get_decoder()
    full = all(t == "full_attention" for t in getattr(lm.config, "layer_types", None) or ())
    return full and all(hasattr(decoder, name) for name in ("rotary_emb", "layers", "norm"))


def decode(lm, embeds: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    """The decoder's last hidden states [B, L, H] for padded input embeddings [B, L, H],
    computed on the packed tokens (positions the layout does not hold read zeros)."""
    decoder = lm.get_decoder()
    hidden = layout.pack(embeds)[None]  # [1, T, H]
    positions = layout.positions[None]
    rotary = decoder.rotary_emb(hidden, position_ids=positions)
    for layer in decoder.layers[: decoder.config.num_hidden_layers]:
        hidden = layer(hidden, attention_mask=None, position_ids=positions,
                       position_embeddings=rotary, vsre_layout=layout)  # fmt: skip
    return layout.spread(decoder.norm(hidden)[0], dim=0)
