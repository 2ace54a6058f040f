"""Steps that share work: several questions per image, each image encoded once, the LM on the
packed tokens; the same loss and gradients as the padded step."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_recipe_targets import RECIPE_WEIGHTS, generated, tiny_overrides
from vsre_ros.training import packing
from vsre_ros.training.config import StageConfig, TrainConfig
from vsre_ros.training.items import load_items
from vsre_ros.training.losses import Trainee, build_heads
from vsre_ros.training.model_api import MODEL_INPUTS, build_model, collate, image_cache
from vsre_ros.training.packing import TokenLayout, distinct
from vsre_ros.training.recipes.targets import TargetBuilder, batch_targets
from vsre_ros.training.train import stage_items, stage_losses, stage_sampler, step_examples


@pytest.fixture(scope="module")
def sim_data(tmp_path_factory):
    return generated(tmp_path_factory, 60, 5)


def stage(per_image: int, batch_size: int = 8) -> StageConfig:
    return StageConfig(name="s", freeze="all", steps=4, batch_size=batch_size,
                       per_image=per_image, split="random_train")  # fmt: skip


def test_distinct_keys_map_back_to_every_key():
    keys = ["a", "b", "a", "c", "b", "a"]
    first, inverse = distinct(keys)
    assert first == [0, 1, 3]
    assert [keys[first[k]] for k in inverse] == keys


def test_a_layout_keeps_one_copy_of_a_shared_prefix_and_no_padding():
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    prefix_of = torch.tensor([0, 0, 2])  # row 1 shares row 0's first 2 tokens
    layout = TokenLayout.build(mask, prefix_of, torch.tensor([2, 2, 2]))
    assert layout.tokens == 4 + 3 + 3
    x = torch.arange(15.0).view(3, 5) + 1
    x[1, :2] = x[0, :2]  # the shared tokens are equal in the padded batch
    packed = layout.pack(x)
    assert packed.tolist() == [1, 2, 3, 4, 8, 9, 10, 11, 12, 13]
    spread = layout.spread(packed, dim=0)
    assert torch.equal(spread, x * mask)
    assert layout.positions.tolist() == [0, 1, 2, 3, 2, 3, 4, 0, 1, 2]


def test_chunked_attention_equals_the_padded_views(monkeypatch):
    monkeypatch.setattr(packing, "CHUNK_ROWS", 2)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0],
                         [1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])  # fmt: skip
    # rows 0-1 share 2 tokens; row 2 is all prefix, which rows 3 and 4 share
    layout = TokenLayout.build(mask, torch.tensor([0, 0, 2, 2, 2]), torch.tensor([2, 2, 3, 3, 3]))
    chunks = layout.chunks
    assert chunks.shapes == [(2, 6), (2, 4), (1, 3)]  # by length, each as wide as its longest
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, layout.tokens, 4, requires_grad=True) for _ in range(3))
    view = [layout.spread(x, dim=1).transpose(0, 1) for x in (q, k, v)]
    padded = layout.pack(F.scaled_dot_product_attention(*view, is_causal=True).transpose(1, 2))
    parts = zip(chunks.gather(q), chunks.gather(k), chunks.gather(v), strict=True)
    chunked = chunks.scatter(
        [F.scaled_dot_product_attention(*p, is_causal=True).transpose(1, 2) for p in parts]
    )
    torch.testing.assert_close(chunked, padded)
    weights = torch.randn_like(padded)
    grads = [torch.autograd.grad((out * weights).sum(), (q, k, v)) for out in (padded, chunked)]
    for a, b in zip(*grads, strict=True):  # a shared prefix key's gradient sums over its rows
        torch.testing.assert_close(b, a)


def test_a_per_image_stage_asks_each_image_several_questions(sim_data):
    items = load_items(sim_data, "random_train")
    s = stage(per_image=4)
    sampler = stage_sampler(s, 0)
    distinct_items = []
    for step in range(6):
        examples = step_examples(items, s, sampler, 0, step)
        assert len(examples) == 8
        for group in (examples[:4], examples[4:]):
            assert len({tuple(e.item.image_paths()) for e in group}) == 1
            distinct_items.append(len({e.item.id for e in group}))
        assert examples == step_examples(items, s, stage_sampler(s, 0), 0, step), "pure"
    # a group is other questions about the image, not one question repeated
    assert sum(distinct_items) / len(distinct_items) > 2.5
    with pytest.raises(ValueError, match="per_image must be >= 1 and divide batch_size"):
        TrainConfig(stages=[stage(per_image=3)]).validate()
    with pytest.raises(ValueError, match="does not combine with paired"):
        TrainConfig(stages=[StageConfig(per_image=2, paired=True, templates="grammar")]).validate()


@pytest.mark.parametrize("per_image", [1, 4])
def test_the_packed_step_has_the_padded_steps_loss_and_gradients(sim_data, per_image):
    s = stage(per_image)
    config = TrainConfig(aux_losses=RECIPE_WEIGHTS, stages=[s])
    weights = stage_losses(config, s)

    def trainee(pack: bool) -> Trainee:
        model = build_model("vsre-tiny", {**tiny_overrides(), "object_tokens": 4}, seed=0)
        torch.manual_seed(0)
        return Trainee(model, build_heads(model, list(weights)), list(weights), pack_tokens=pack)

    padded, packed = trainee(False), trainee(True)
    padded.load_state_dict(packed.state_dict())
    assert packed.pack_tokens and not padded.pack_tokens
    items = stage_items(load_items(sim_data, "random_train"), s)
    examples = step_examples(items, s, stage_sampler(s, 0), 0, 1)
    batch = collate(packed.model, examples, image_cache(packed.model))
    targets = batch_targets(TargetBuilder(packed.model), examples, batch)
    layout = TokenLayout.from_batch(batch)
    real = int(batch["attention_mask"].sum())
    sharing = [b for b, owner in enumerate(batch["prefix_of"].tolist()) if owner != b]
    assert len(sharing) >= len(examples) - len(examples) // per_image
    # every row that shares an image prefix runs only its own tokens
    assert layout.tokens == real - sum(int(batch["prefix_len"][b]) for b in sharing)
    assert len(batch["image_first"]) <= len(examples) // per_image

    def step(t: Trainee, batch: dict):
        t.zero_grad()
        out = t({k: batch[k] for k in MODEL_INPUTS}, batch, targets, weights)
        out.loss.backward()
        return out, {n: p.grad for n, p in t.named_parameters() if p.grad is not None}

    # the reference encodes every row's image and runs the padded rows, as before packing
    plain = {k: v for k, v in batch.items() if k not in ("image_first", "image_inverse")}
    (a, grads_a), (b, grads_b) = step(padded, plain), step(packed, batch)
    assert set(a.parts) == set(b.parts) and len(a.parts) > 5  # every recipe term ran
    torch.testing.assert_close(b.loss, a.loss, rtol=1e-5, atol=1e-5)
    for name in a.parts:
        assert b.parts[name] == pytest.approx(a.parts[name], rel=1e-4, abs=1e-5), name
    assert grads_a.keys() == grads_b.keys()
    for name, grad in grads_a.items():
        if name.endswith("k_proj.bias"):  # its true gradient is 0 (softmax ignores it): noise
            continue
        torch.testing.assert_close(grads_b[name], grad, rtol=1e-3, atol=1e-6, msg=name)
