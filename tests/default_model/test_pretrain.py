"""Encoder pretraining: captions, point prompts, each family's objective, the recipe's hook."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_recipe_targets import five_step_recipe, generated, tiny_overrides, trained
from vsre_ros.training.items import load_items
from vsre_ros.training.model_api import build_model
from vsre_ros.training.recipes.pretrain import (
    PRETRAIN_LOG,
    ImageBatch,
    ImageText,
    PointMasks,
    PretrainConfig,
    SelfDistillation,
    caption,
    load_batch,
    objectives,
    point_targets,
    pretrain_encoders,
    random_crops,
    sim_images,
)


@pytest.fixture(scope="module")
def sim_data(tmp_path_factory):
    return generated(tmp_path_factory, 400, 4)


def all_items(root):
    splits = ("random_train", "random_val", "random_test")
    return [i for s in splits for i in load_items(root, s)]


def test_caption_names_the_visible_objects_left_to_right():
    mask = np.zeros((8, 12), dtype=np.int64)
    mask[2:4, 8:11] = 1  # right
    mask[5:7, 0:2] = 3  # left
    mask[0:2, 4:6] = 2  # middle
    objects = {1: ("red", "can"), 2: ("blue", "box"), 3: ("green", "mug"), 4: ("pink", "cup")}
    assert caption(mask, objects) == "green mug, blue box, red can"
    assert caption(np.zeros((4, 4), dtype=np.int64), objects) == "nothing"


def test_point_prompts_land_on_their_object_and_cover_its_cells():
    mask = np.zeros((16, 16), dtype=np.int64)
    mask[0:8, 0:8] = 5  # exactly cell (0, 0) of a 2x2 grid
    mask[8:16, 8:12] = 7  # half of cell (1, 1)
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(40):
        points, cover = point_targets([mask], (2, 2), rng)
        row, col = points[0]
        assert -0.5 <= row <= 1.5 and -0.5 <= col <= 1.5
        if row < 0.5:  # a point on object 5
            assert cover[0].tolist() == [1.0, 0.0, 0.0, 0.0]
            seen.add(5)
        else:
            assert col > 0.5 and cover[0].tolist() == [0.0, 0.0, 0.0, 0.5]
            seen.add(7)
    assert seen == {5, 7}, "both objects get prompted"


def test_sim_images_are_distinct_and_carry_their_scene(sim_data):
    images = sim_images(all_items(sim_data))
    assert len(images) >= 8
    assert len({i.rgb for i in images}) == len(images)
    batch = load_batch(images[:4])
    for rgb, mask, text in zip(batch.rgb, batch.masks, batch.captions, strict=True):
        assert rgb.shape == (64, 64, 3) and rgb.dtype == np.uint8
        assert mask.shape == (64, 64)
        assert text != "nothing"
    assert sim_images([]) == []


def test_random_crops_are_zooms_inside_the_image():
    pixels = torch.arange(16.0).view(1, 1, 4, 4).expand(3, 3, 4, 4).contiguous()
    gen = torch.Generator().manual_seed(0)
    crops = random_crops(pixels, gen, low=1.0)
    assert torch.allclose(crops, pixels, atol=1e-5), "a full-size crop is the image"
    crops = random_crops(pixels, gen, low=0.5)
    assert crops.shape == pixels.shape
    assert crops.min() >= pixels.min() - 1e-5 and crops.max() <= pixels.max() + 1e-5


def test_image_text_counts_every_equal_caption_as_a_match():
    model = build_model("vsre-tiny", tiny_overrides(), seed=0)
    for sigmoid in (False, True):
        encoder = model.encoders["siglip" if sigmoid else "clip"]
        head = ImageText(encoder, model.tokenizer, sigmoid=sigmoid)
        batch = ImageBatch([], [], ["red can", "red can", "blue box"])
        pixels = torch.randn(3, 3, 64, 64)
        loss, figures = head(encoder, pixels, batch, None)
        assert torch.isfinite(loss) and loss > 0
        assert 0.0 <= figures["retrieval"] <= 1.0
        same = ImageBatch([], [], ["red can"] * 3)
        assert head(encoder, pixels, same, None)[1]["retrieval"] == 1.0


def test_each_family_learns_its_objective_on_a_repeated_batch(sim_data):
    """Every objective is trainable: 25 steps on one batch of 8 images lower CLIP's, SigLIP's
    and SAM's losses, and DINOv2's student gets nearer its teacher."""
    torch.manual_seed(0)
    model = build_model("vsre-tiny", tiny_overrides(), seed=0)
    heads = objectives(model)
    assert {type(h) for h in heads.values()} == {ImageText, SelfDistillation, PointMasks}
    batch = load_batch(sim_images(all_items(sim_data))[:8])
    pixels = model.preprocess(batch.rgb)
    params = [p for p in [*model.encoders.parameters(), *heads.parameters()] if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=2e-3)
    first, last = {}, {}
    for step in range(25):
        total = 0.0
        for name, head in heads.items():
            rng = np.random.default_rng(0)  # the same point prompts every step
            term, _ = head(model.encoders[name], pixels[name], batch, rng)
            (first if step == 0 else last)[name] = float(term.detach())
            total = total + term
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
    for name in ("clip", "siglip", "sam"):
        assert last[name] < 0.8 * first[name], (name, first[name], last[name])


def test_pretraining_changes_the_encoders_only_and_logs_held_out_figures(sim_data, tmp_path):
    images = sim_images(all_items(sim_data))
    model = build_model("vsre-tiny", tiny_overrides(), seed=0)
    model.lm.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = PretrainConfig(steps=3, batch_size=4, log_every=1, val_every=3, val_images=8)
    rows = pretrain_encoders(model, images, images[:8], config, tmp_path, progress=False)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("encoders.") for k in changed), sorted(changed)[:3]
    for family in ("clip", "siglip", "sam", "dinov2"):
        assert any(k.startswith(f"encoders.{family}.") for k in changed), family
    assert not any(p.requires_grad for p in model.lm.parameters()), "flags are restored"
    logged = [json.loads(line) for line in (tmp_path / PRETRAIN_LOG).read_text().splitlines()]
    assert logged == rows and [r["step"] for r in rows] == [1, 2, 3]
    assert "val_clip_retrieval" in rows[-1] and "val_dinov2_prototypes_used" in rows[-1]
    assert "val_clip_retrieval" not in rows[0]
    assert (tmp_path / "pretrain_curve.png").stat().st_size > 0
    with pytest.raises(ValueError, match="at least 64 images"):
        pretrain_encoders(model, images[:3], [], PretrainConfig(steps=1, batch_size=64), tmp_path)


def test_the_recipe_pretrains_before_its_stages(sim_data, tmp_path):
    plain, _ = trained(five_step_recipe(sim_data, tmp_path / "plain"))
    config = five_step_recipe(sim_data, tmp_path / "pre", pretrain_steps=2, pretrain_batch=4)
    pretrained, _ = trained(config)
    log = tmp_path / "pre" / "pretrain" / PRETRAIN_LOG
    (row,) = [json.loads(line) for line in log.read_text().splitlines()]
    assert "val_sam_loss" in row, "without val items the last training images are held out"
    assert not (tmp_path / "plain" / "pretrain").exists()
    a, b = plain.state_dict(), pretrained.state_dict()
    differ = {
        k.split(".")[1] for k in a if k.startswith("encoders.") and not torch.equal(a[k], b[k])
    }
    assert differ == {"clip", "siglip", "sam", "dinov2"}, (
        "each encoder starts from its pretraining"
    )
