"""Encoders: one interface, shapes from the parts, real HF layouts load back exactly."""

from __future__ import annotations

import pytest
import torch
from transformers import CLIPConfig, CLIPModel, SamConfig, SamModel, SiglipConfig, SiglipModel

from vsre_ros.core.config import EncoderConfig, tiny_encoders
from vsre_ros.core.encoders import build_encoder, encoder_spec
from vsre_ros.core.encoders.fused import build_fusion
from vsre_ros.core.projector import ConvAdapter

TINY = {e.family: e for e in tiny_encoders(hidden=32, layers=2, heads=2, image=32, patch=8)}


@pytest.mark.parametrize("family", ["clip", "siglip", "sam", "dinov2"])
def test_encoder_map_shape_comes_from_its_config(family):
    enc = build_encoder(TINY[family])
    out = enc(torch.randn(2, 3, enc.image_size, enc.image_size))
    assert out.shape == (2, enc.embed_dim, *enc.grid)
    assert enc.num_tokens == enc.grid[0] * enc.grid[1] == (32 // 8) ** 2


@pytest.mark.parametrize("family", ["clip", "siglip", "sam", "dinov2"])
def test_encoder_loads_from_saved_hf_directory_and_matches(family, tmp_path):
    torch.manual_seed(1)
    enc = build_encoder(TINY[family]).eval()
    enc.model.save_pretrained(tmp_path / family)
    assert (tmp_path / family / "config.json").is_file()
    assert (tmp_path / family / "model.safetensors").is_file()
    loaded = build_encoder(EncoderConfig(family, path=str(tmp_path / family))).eval()
    assert type(loaded.model) is encoder_spec(family).model_cls
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(enc(x), loaded(x))


def _full_checkpoint(family):
    vision = TINY[family].hf_config
    text = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1}
    text["num_attention_heads"] = 2
    if family == "clip":
        return CLIPModel(CLIPConfig(vision_config=vision, text_config=text)), "vision_model"
    if family == "siglip":
        return SiglipModel(SiglipConfig(vision_config=vision, text_config=text)), "vision_model"
    return SamModel(SamConfig(vision_config=vision)), "vision_encoder"


@pytest.mark.parametrize("family", ["clip", "siglip", "sam"])
def test_encoder_reads_the_vision_part_of_a_full_checkpoint(family, tmp_path):
    full, part = _full_checkpoint(family)
    full.eval().save_pretrained(tmp_path / family)
    enc = build_encoder(EncoderConfig(family, path=str(tmp_path / family))).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        expected = getattr(full, part)(pixel_values=x).last_hidden_state
        got = enc(x)
    if family == "sam":
        assert torch.equal(got, expected)
    else:
        prefix = 1 if family == "clip" else 0
        assert torch.equal(got.flatten(2).transpose(1, 2), expected[:, prefix:])


def test_checkpoint_of_another_family_is_refused(tmp_path):
    build_encoder(TINY["dinov2"]).model.save_pretrained(tmp_path / "dino")
    with pytest.raises(ValueError, match="holds a 'dinov2' checkpoint.*expects model_type 'clip'"):
        build_encoder(EncoderConfig("clip", path=str(tmp_path / "dino")))


def test_unknown_family_names_the_known_ones():
    with pytest.raises(ValueError, match="unknown encoder family 'vit'.*clip.*dinov2"):
        build_encoder(EncoderConfig("vit"))


def test_missing_checkpoint_directory_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.*config.json"):
        build_encoder(EncoderConfig("clip", path=str(tmp_path / "nowhere")))


def test_sam_refuses_other_sizes_but_dinov2_resizes():
    with pytest.raises(ValueError, match="native image size 32"):
        build_encoder(EncoderConfig("sam", hf_config=TINY["sam"].hf_config, image_size=48))
    dino_cfg = EncoderConfig("dinov2", hf_config=TINY["dinov2"].hf_config, image_size=48)
    dino = build_encoder(dino_cfg)
    assert dino(torch.randn(1, 3, 48, 48)).shape[-2:] == (6, 6)


def test_sequence_fusion_token_count_is_the_sum_of_the_parts():
    encoders = {f: build_encoder(c) for f, c in TINY.items()}
    fusion = build_fusion("sequence", encoders, TINY, 64, 3, 0, True, 0)
    sam_grid = ConvAdapter.out_grid(encoders["sam"].grid, TINY["sam"].adapter_stages)
    expected = sum(e.num_tokens for f, e in encoders.items() if f != "sam")
    expected += sam_grid[0] * sam_grid[1]
    assert fusion.num_tokens == expected
    maps = {f: e(torch.randn(2, 3, 32, 32)) for f, e in encoders.items()}
    assert fusion(maps).shape == (2, expected, 64)
    # The SAM projector is sized by the adapter's output channels, not a literal.
    adapter = fusion.adapters["sam"]
    assert fusion.projectors["sam"][0].in_features == adapter.out_channels


def test_channel_fusion_gives_one_grid_with_concatenated_channels():
    encoders = {f: build_encoder(c) for f, c in TINY.items()}
    fusion = build_fusion("channel", encoders, TINY, 64, 2, 0, True, 2)
    assert fusion.num_tokens == 4
    assert fusion.projector[0].in_features == sum(e.embed_dim for e in encoders.values())
    maps = {f: e(torch.randn(1, 3, 32, 32)) for f, e in encoders.items()}
    assert fusion(maps).shape == (1, 4, 64)


def test_unknown_fusion_mode_names_the_known_ones():
    with pytest.raises(ValueError, match="unknown fusion mode 'mix'.*channel.*sequence"):
        build_fusion("mix", {}, {}, 8, 2, 0, False, 1)
