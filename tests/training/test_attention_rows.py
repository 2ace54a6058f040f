"""Attention rows under SDPA equal eager attention's maps, values and gradients."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from vsre_ros.training.attention_rows import record_rows, use_rows_attention


def _lm(heads: int, kv_heads: int) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=50,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        attn_implementation="eager",
    )
    return LlamaForCausalLM(config)


def _batch(padded: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    ids = torch.randint(3, 50, (3, 9), generator=torch.Generator().manual_seed(1))
    if not padded:
        return ids, None
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0  # right padding, as `collate` pads
    mask[2, 4:] = 0
    return ids, mask


# (example, head, query position) triples, as the binding losses index the maps
ROWS = torch.tensor([0, 1, 2, 2, 0])
HEADS = torch.tensor([0, 3, 1, 2, 3])
QUERY = torch.tensor([8, 5, 3, 0, 2])


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("kv_heads", [4, 2])
def test_rows_equal_eager_maps_and_gradients(padded, kv_heads):
    lm = _lm(4, kv_heads)
    ids, mask = _batch(padded)
    out = lm(input_ids=ids, attention_mask=mask, output_attentions=True)
    eager = [a[ROWS, HEADS, QUERY] for a in out.attentions]
    (eager[1] * torch.linspace(0, 1, 9)).sum().backward()
    eager_grad = lm.model.layers[0].self_attn.q_proj.weight.grad.clone()
    lm.zero_grad()

    use_rows_attention(lm.config)
    with record_rows([0, 1]) as rows:
        out_rows = lm(input_ids=ids, attention_mask=mask)
    assert sorted(rows) == [0, 1]  # layer 2 was not asked for
    torch.testing.assert_close(out_rows.logits, out.logits, atol=1e-5, rtol=1e-4)
    for layer in (0, 1):
        got = rows[layer][ROWS, HEADS, QUERY]
        torch.testing.assert_close(got, eager[layer].float(), atol=1e-6, rtol=1e-5)
        assert torch.allclose(got.sum(-1), torch.ones(len(ROWS)))
    # a position never attends to later keys (nor, when padded, to padding)
    assert float(rows[0][ROWS, HEADS, QUERY][2, 4:].detach().sum()) == 0.0
    (rows[1][ROWS, HEADS, QUERY] * torch.linspace(0, 1, 9)).sum().backward()
    torch.testing.assert_close(
        lm.model.layers[0].self_attn.q_proj.weight.grad, eager_grad, atol=1e-6, rtol=1e-4
    )


def test_an_int_head_and_no_rows():
    lm = _lm(4, 4)
    use_rows_attention(lm.config)
    ids, _ = _batch(False)
    with record_rows([2]) as rows:
        lm(input_ids=ids)
    by_int = rows[2][ROWS, 1, QUERY]
    by_tensor = rows[2][ROWS, torch.ones_like(ROWS), QUERY]
    assert torch.equal(by_int, by_tensor)
    none = rows[2][ROWS[:0], 1, QUERY[:0]]
    assert none.shape == (0, 9) and none.requires_grad


def test_nothing_is_kept_outside_a_block():
    lm = _lm(4, 4)
    use_rows_attention(lm.config)
    ids, _ = _batch(False)
    with record_rows([]) as rows:
        lm(input_ids=ids)
    assert rows == {}
    lm(input_ids=ids)  # no block: runs plain SDPA
