"""The LM's attention maps for the losses that read them, without eager attention.

The binding losses (hop0, hop1, hop2, the objects' link term) read a few rows of three layers'
attention maps: one (example, head, query position) triple per object phrase or answer. Eager
attention builds every layer's full [batch, heads, L, L] map to return them, and that was 11% of
the shipped recipe's step (`bench/bench_train.py`). Instead the LM runs torch's fused SDPA
kernel under the attention implementation registered here, "sdpa_rows", which keeps the query
and key states of the layers a `record_rows` block asks for; `LayerRows[rows, heads, query]`
then computes softmax(q k^T * scaling) for those triples only. The probabilities are eager
attention's, up to rounding (tests/training/test_attention_rows.py), and the gradient reaches
the model through the same query and key states.

The same implementation runs the packed tokens of `packing.decode` (the `vsre_layout` keyword):
it attends in the layout's chunks (`packing.AttentionChunks`) and keeps the padded view's rows.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

IMPLEMENTATION = "sdpa_rows"

# layer index -> its kept states, for the layers the active `record_rows` block wants.
_RECORDER: contextvars.ContextVar[tuple[frozenset[int], dict] | None] = contextvars.ContextVar(
    "vsre_attention_rows", default=None
)


@dataclass
class LayerRows:
    """One layer's query and key states; indexing it like a [batch, heads, L, L] attention map
    computes only the rows asked for."""

    query: torch.Tensor  # [B, heads, L, d], after the rotary embedding
    key: torch.Tensor  # [B, kv_heads, L, d]
    mask: torch.Tensor | None  # SDPA's mask: None (causal), bool (True: attend) or additive
    scaling: float

    def __getitem__(self, index: tuple) -> torch.Tensor:
        """`[rows, heads, query]` (index tensors of one length K, `heads` may be an int): the
        attention probabilities of those query positions over every key, [K, L], float32."""
        rows, heads, query = index
        groups = self.query.shape[1] // self.key.shape[1]
        heads = torch.as_tensor(heads, device=rows.device).expand_as(rows)
        q = self.query[rows, heads, query]  # [K, d]
        k = self.key[rows, torch.div(heads, groups, rounding_mode="floor")]  # [K, L, d]
        scores = torch.einsum("kd,kld->kl", q, k).float() * self.scaling
        if self.mask is None:
            keys = torch.arange(k.shape[1], device=k.device)
            scores = scores.masked_fill(keys[None, :] > query[:, None], float("-inf"))
        else:
            mask = self.mask[rows, 0, query]  # [K, L]: the mask's head dimension is 1
            if mask.dtype == torch.bool:
                scores = scores.masked_fill(~mask, float("-inf"))
            else:
                scores = scores + mask.float()
        return scores.softmax(-1)


def _sdpa_keeping_rows(module, query, key, value, attention_mask, vsre_layout=None, **kwargs):
    if vsre_layout is not None:
        return _packed_sdpa(module, query, key, value, vsre_layout, **kwargs)
    if _recording(module):
        _record(module, query, key, attention_mask, kwargs)
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def _recording(module) -> bool:
    """Whether the active `record_rows` block keeps this layer's states."""
    recorder = _RECORDER.get()
    return recorder is not None and module.layer_idx in recorder[0]


def _record(module, query, key, attention_mask, kwargs) -> None:
    """Keep a recorded layer's states (`_recording` says which layers are)."""
    scaling = kwargs.get("scaling")
    scaling = module.scaling if scaling is None else scaling
    _RECORDER.get()[1][module.layer_idx] = LayerRows(query, key, attention_mask, scaling)


def _packed_sdpa(module, query, key, value, layout, **kwargs):
    """Attention of packed tokens (`packing.decode`: [1, heads, T, d]) in the layout's chunks;
    the rows kept for the losses are the padded [B, L] view's."""
    if _recording(module):  # spread only the layers whose rows are kept
        padded = [layout.spread(x[0], dim=1).transpose(0, 1) for x in (query, key)]
        _record(module, *padded, None, kwargs)
    chunks = layout.chunks
    q, k, v = chunks.gather(query[0]), chunks.gather(key[0]), chunks.gather(value[0])
    outputs = [sdpa_attention_forward(module, *qkv, None, **kwargs)[0]
               for qkv in zip(q, k, v, strict=True)]  # fmt: skip
    return chunks.scatter(outputs)[None], None


AttentionInterface.register(IMPLEMENTATION, _sdpa_keeping_rows)
ALL_MASK_ATTENTION_FUNCTIONS.register(IMPLEMENTATION, sdpa_mask)


@contextlib.contextmanager
def record_rows(layers: Sequence[int]) -> Iterator[dict[int, LayerRows]]:
    """Keep `layers`' states while the block runs an LM whose attention implementation is
    `IMPLEMENTATION`; the yielded dict maps each layer index to its `LayerRows`."""
    kept: dict[int, LayerRows] = {}
    token = _RECORDER.set((frozenset(layers), kept))
    try:
        yield kept
    finally:
        _RECORDER.reset(token)


def use_rows_attention(lm_config) -> None:
    """Run an HF LM config's attention as "sdpa_rows" (SDPA everywhere, states kept on demand)."""
    lm_config._attn_implementation = IMPLEMENTATION
