"""Object tokens on the SAM branch: the model part, their training targets and their matching."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_recipe_targets import (
    five_step_recipe,
    generated,
    single_image_items,
    tiny_overrides,
    trained,
)
from vsre_ros.training.data import ask
from vsre_ros.training.model_api import build_model, collate, image_cache
from vsre_ros.training.recipes.curriculum import default_overrides
from vsre_ros.training.recipes.targets import (
    COLOUR_IDS,
    IGNORE,
    SHAPE_SIZE,
    ObjectHead,
    ObjectTargets,
    TargetBuilder,
    batch_targets,
    match_objects,
    object_hop_loss,
    object_loss,
)

from vsre_ros.core.model import VSREModel

K = 4


def with_objects(fusion: str = "channel", count: int = K) -> dict:
    return {**tiny_overrides(fusion), "object_tokens": count}


@pytest.fixture(scope="module")
def sim_data(tmp_path_factory):
    return generated(tmp_path_factory, 40, 5)


@pytest.fixture(scope="module")
def model():
    return build_model("vsre-tiny", with_objects(), seed=0)


def test_object_tokens_follow_the_grid_tokens_and_read_the_pixels(model, tmp_path):
    assert model.num_image_tokens == 64 + K
    assert model.parameter_counts()["objects"] > 0
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(2)]
    model.eval()
    with torch.no_grad():
        tokens = model.encode_images(model.preprocess(images))
        grid = model.fusion({n: e(model.preprocess(images)[n]) for n, e in model.encoders.items()})
    assert tokens.shape == (2, 64 + K, model.hidden_size)
    assert torch.equal(tokens[:, :64], grid), "the grid tokens are the fusion's, unchanged"
    assert not torch.allclose(tokens[0, 64:], tokens[1, 64:]), "object tokens depend on pixels"
    assert not torch.allclose(tokens[0, 64], tokens[0, 65]), "each query reads its own token"
    model.save_pretrained(tmp_path / "m")
    again = VSREModel.from_pretrained(tmp_path / "m").eval()
    assert again.config.object_tokens == K
    with torch.no_grad():
        assert torch.allclose(again.encode_images(again.preprocess(images)), tokens, atol=1e-5)


def test_object_tokens_need_the_sam_family():
    overrides = with_objects()
    overrides["encoders"] = [e for e in overrides["encoders"] if e["family"] != "sam"]
    with pytest.raises(ValueError, match="reads the SAM branch"):
        build_model("vsre-tiny", overrides, seed=0)
    assert "object_tokens" not in default_overrides(("clip", "dinov2"), object_tokens=8)
    assert default_overrides(object_tokens=8)["object_tokens"] == 8
    assert "object_tokens" not in default_overrides(), "off by default: the shipped model"


def test_object_tokens_get_no_patch_targets(sim_data, model):
    builder = TargetBuilder(model)
    assert (builder.grid_tokens, builder.object_tokens) == (64, K)
    item = single_image_items(sim_data, "relation")[0]
    target = builder.image(ask(item), 0)
    assert target.colour.shape == (64 + K,)
    assert (target.colour[64:] == IGNORE).all() and (target.category[64:] == IGNORE).all()
    assert np.isnan(target.log_depth[64:]).all()
    assert all((cover[64:] == 0).all() for cover in target.coverage.values())
    assert set(target.labels) == set(target.shape), "every visible object is labelled"
    for phrase, mask_id in zip(item.extra["objects"], item.extra["mask_ids"], strict=True):
        assert target.labels[mask_id][0] == COLOUR_IDS[phrase.split()[0]]


def test_object_targets_list_each_images_objects_and_link_the_phrases(sim_data, model):
    builder = TargetBuilder(model)
    examples = [ask(i) for i in single_image_items(sim_data, "relation")[:5]]
    batch = collate(model, examples, image_cache(model))
    t: ObjectTargets = batch_targets(builder, examples, batch)["objects"]
    per_image = [len(builder.image(ex, 0).labels) for ex in examples]
    assert t.image.tolist() == [n for n, m in enumerate(per_image) for _ in range(m)]
    assert t.shape.shape == (sum(per_image), SHAPE_SIZE) and torch.isfinite(t.shape).all()
    assert len(t.link_rows) == sum(len(ex.item.extra["mask_ids"]) for ex in examples)
    named = [ex.item.extra["objects"] for ex in examples]
    colours = [COLOUR_IDS[phrase.split()[0]] for phrases in named for phrase in phrases]
    assert t.colour[t.link_object].tolist() == colours, "each phrase names its own object"
    ids = batch["input_ids"]
    for row, query, obj, start in zip(
        t.link_rows, t.link_query, t.link_object, t.link_start, strict=True
    ):
        image_pos = (ids[row] == model.image_token_id).nonzero().flatten()
        assert int(start) == int(image_pos[64]), "the first object token"
        assert int(t.image[obj]) == int(row), "one image per row here"
        assert query < batch["answer_start"][row]


def test_matching_finds_the_token_that_predicts_each_object():
    head_sizes = ObjectHead(8).sizes
    n_tokens, boxes = 4, torch.tensor([[0.1, 0.1, 0.3, 0.3], [0.6, 0.5, 0.9, 0.8]])
    shape = torch.rand(1, n_tokens, SHAPE_SIZE)
    shape[0, 3, :4], shape[0, 1, :4] = boxes[0], boxes[1]  # token 3 sees object 0, 1 sees 1
    predictions = (
        torch.zeros(1, n_tokens),
        torch.zeros(1, n_tokens, head_sizes[1]),
        torch.zeros(1, n_tokens, head_sizes[2]),
        shape,
        torch.zeros(1, n_tokens, head_sizes[4]),
    )
    objects = ObjectTargets(
        torch.tensor([0, 0]),
        torch.tensor([1, 2]),
        torch.tensor([1, 1]),
        torch.cat([boxes, torch.zeros(2, SHAPE_SIZE - 4)], 1),
        torch.zeros(2, 10),
        *(torch.zeros(0, dtype=torch.long) for _ in range(4)),
    )
    assert match_objects(predictions, objects).tolist() == [3, 1]
    # Colour evidence outweighs a slightly worse box.
    colour = torch.zeros(1, n_tokens, head_sizes[1])
    colour[0, 2, 1] = 20.0
    shape[0, 2, :4] = boxes[0] + 0.05
    predictions = (predictions[0], colour, *predictions[2:])
    assert match_objects(predictions, objects).tolist()[0] == 2
    # More objects than tokens: the ones left over are unmatched.
    many = ObjectTargets(
        torch.zeros(6, dtype=torch.long),
        torch.ones(6, dtype=torch.long),
        torch.ones(6, dtype=torch.long),
        torch.rand(6, SHAPE_SIZE),
        torch.zeros(6, 10),
        *(torch.zeros(0, dtype=torch.long) for _ in range(4)),
    )
    slot = match_objects(predictions, many)
    assert (slot >= 0).sum() == n_tokens and sorted(slot[slot >= 0].tolist()) == [0, 1, 2, 3]


def test_object_loss_teaches_the_tokens_their_objects(sim_data):
    torch.manual_seed(0)
    model = build_model("vsre-tiny", with_objects(), seed=0)
    builder = TargetBuilder(model)
    examples = [ask(i) for i in single_image_items(sim_data)[:8]]
    batch = collate(model, examples, image_cache(model))
    targets = batch_targets(builder, examples, batch)
    head = ObjectHead(model.hidden_size)
    params = [*model.encoders.parameters(), *model.objects.parameters(), *head.parameters()]
    optimizer = torch.optim.Adam(params, lr=3e-3)
    losses = []
    for _ in range(40):
        loss, slot = object_loss(head, model.encode_images(batch["pixel_values"]), targets, 64)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0], losses[::8]
    t = targets["objects"]
    for n in t.image.unique():
        chosen = slot[t.image == n]
        matched = chosen[chosen >= 0].tolist()
        assert len(matched) == min(K, len(chosen)) == len(set(matched)), "one object a token"


def test_object_hop_pulls_the_phrase_to_its_objects_token(sim_data, model):
    builder = TargetBuilder(model)
    examples = [ask(i) for i in single_image_items(sim_data, "relation")[:3]]
    batch = collate(model, examples, image_cache(model))
    targets = batch_targets(builder, examples, batch)
    t = targets["objects"]
    length = batch["input_ids"].shape[1]
    attn = torch.full((3, 4, length, length), 1e-3)
    slot = torch.arange(len(t.image)) % K
    keys = t.link_start + slot[t.link_object]
    attn[t.link_rows, 1, t.link_query, keys] = 1.0
    low = object_hop_loss([attn, attn], targets, slot, layer=1)
    assert float(low) == pytest.approx(0.0, abs=1e-6)
    high = object_hop_loss([attn, attn], targets, (slot + 1) % K, layer=1)
    assert float(high) == pytest.approx(-np.log(1e-3), rel=1e-4)
    assert float(object_hop_loss([attn, attn], targets, torch.full_like(slot, -1), 1)) == 0.0


def test_recipe_trains_with_object_tokens(sim_data, tmp_path):
    config = five_step_recipe(sim_data, tmp_path / "on", model_overrides=with_objects())
    model, rows = trained(config)
    assert model.num_object_tokens == K
    assert all("loss_objects" in r and np.isfinite(r["loss_objects"]) for r in rows)
    # Off, the same model trains without the term and draws the same init.
    config = five_step_recipe(sim_data, tmp_path / "off", {"objects": 0.0},
                              model_overrides=with_objects())  # fmt: skip
    _, rows_off = trained(config)
    assert not any("loss_objects" in r for r in rows_off)
    assert rows_off[0]["loss_lm"] == pytest.approx(rows[0]["loss_lm"])
