"""Training augmentation: perturbed pictures drawn from (seed, step), each an image of its own
row, and the kinds no augmentation draws kept apart for the evaluator."""

from __future__ import annotations

import numpy as np
import pytest
from vsre_ros.training import perturb
from vsre_ros.training.config import StageConfig, TrainConfig


def picture(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(30, 220, (24, 32, 3), dtype=np.uint8)


def test_the_new_perturbations_keep_size_and_type_and_their_neutral_setting_is_identity():
    rgb = picture()
    for transform in (perturb.contrast(1.3), perturb.gamma(0.7), perturb.blur(0.8),
                      perturb.noise(6.0), *perturb.UNTRAINED.values()):  # fmt: skip
        out = transform(rgb)
        assert out.shape == rgb.shape and out.dtype == np.uint8
        assert not np.array_equal(out, rgb)
    assert np.array_equal(perturb.contrast(1.0)(rgb), rgb)
    assert np.array_equal(perturb.gamma(1.0)(rgb), rgb)
    flat = np.full_like(rgb, 90)
    assert np.array_equal(perturb.contrast(1.5)(flat), flat)  # nothing to stretch
    assert perturb.gamma(0.7)(rgb).mean() > rgb.mean()  # gamma < 1 brightens
    assert np.array_equal(perturb.noise(6.0)(rgb), perturb.noise(6.0)(rgb))
    assert 4 < np.abs(perturb.noise(6.0)(rgb).astype(float) - rgb).mean() < 6


def test_augmentations_are_drawn_from_seed_step_and_rank_and_cover_the_share():
    rgb = picture(1)

    def images(seed, step, rank=0, share=0.5, rows=64):
        return [None if t is None else t(rgb)
                for t in perturb.row_augmentations(rows, share, seed, step, rank)]  # fmt: skip

    first = images(0, 3)
    again = images(0, 3)
    assert [a is None for a in first] == [b is None for b in again]
    assert all(a is None or np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    picked = [a is not None for a in first]
    assert 16 < sum(picked) < 48
    assert picked != [a is not None for a in images(0, 4)]
    assert picked != [a is not None for a in images(0, 3, rank=1)]
    assert perturb.row_augmentations(8, 0.0, 0, 3) == [None] * 8
    assert all(t is not None for t in perturb.row_augmentations(8, 1.0, 0, 3))
    changed = [a for a in images(0, 5, share=1.0) if not np.array_equal(a, rgb)]
    assert len(changed) >= 60  # every draw applies at least one change


def test_augment_is_a_share_of_the_rows():
    with pytest.raises(ValueError, match="augment is a share of the rows"):
        TrainConfig(stages=[StageConfig(augment=1.5)]).validate()


def test_an_augmented_row_reads_its_own_perturbed_images(tmp_path):
    import torch
    from PIL import Image
    from vsre_ros.training.data import ask
    from vsre_ros.training.items import Item
    from vsre_ros.training.model_api import build_model, collate, image_cache

    path = tmp_path / "a.png"
    Image.fromarray(picture(2)).save(path)
    model = build_model("vsre-tiny", {"object_tokens": 0}, seed=0)
    item = Item(id="i", task="relation", image=str(path), relation="left of",
                subj="cup", obj="box", answer="yes", label=1)  # fmt: skip
    examples = [ask(item), ask(item), ask(item)]
    cache = image_cache(model)
    plain = collate(model, examples, cache)
    assert plain["image_first"].tolist() == [0]  # one image, encoded once
    dim = perturb.brightness(0.5)
    batch = collate(model, examples, cache, [None, dim, None])
    assert batch["image_first"].tolist() == [0, 1]
    assert batch["image_inverse"].tolist() == [0, 1, 0]
    assert batch["prefix_of"].tolist() == [0, 1, 0]
    for name, pixels in batch["pixel_values"].items():
        assert torch.equal(pixels[0], plain["pixel_values"][name][0])
        assert torch.equal(pixels[2], plain["pixel_values"][name][2])
        assert not torch.equal(pixels[1], pixels[0])
    hits = cache.hits
    collate(model, examples, cache, [dim, dim, dim])
    assert cache.hits == hits  # augmented pictures are not served from the cache
