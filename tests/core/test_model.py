"""VSREModel: tokenizer, prompts, preprocessing, training forward, freezing, save/load."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from core_helpers import random_image, small_config
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlamaForCausalLM,
    LlavaConfig,
    LlavaForConditionalGeneration,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from vsre_ros.core.config import EncoderConfig, LMConfig, preset_config
from vsre_ros.core.encoders import build_encoder
from vsre_ros.core.model import ModelLoadError, VSREModel
from vsre_ros.core.tokenizer import ANSWER_WORDS, train_bpe


def _example(rng, n_images=1, answer="yes"):
    return {
        "images": [random_image(rng) for _ in range(n_images)],
        "question": "Is the red cup left of the box?",
        "answer": answer,
    }


def _logits(model, batch):
    with torch.no_grad():
        return model(batch["input_ids"], batch["pixel_values"], batch["attention_mask"]).logits


# ----------------------------------------------------------------------------- tokenizer


def test_answer_words_are_single_tokens_and_digits_are_split():
    tok = train_bpe(1024)
    for word in ANSWER_WORDS:
        assert len(tok.encode(" " + word, add_special_tokens=False)) == 1, word
    digits = tok.encode("1234", add_special_tokens=False)
    assert len(digits) == 4


def test_tokenizer_text_versions_and_an_unknown_one():
    v1, v2 = train_bpe(text_version=1), train_bpe(text_version=2)
    assert len(v1) < len(v2)  # version 2 adds the question grammar's words
    for word in ("yes", "no", "true", "false"):
        assert len(v1.encode(" " + word, add_special_tokens=False)) == 1
    assert len(v2.encode(" incorrect", add_special_tokens=False)) == 1
    with pytest.raises(ValueError, match="unknown tokenizer text version 3; known: 1 "):
        train_bpe(text_version=3)


def test_tokenizer_corpus_file_joins_the_training_text(tmp_path):
    corpus = tmp_path / "questions.txt"
    corpus.write_text("Is the xylophonequux left of the box?\n" * 200)
    model = VSREModel(small_config(tokenizer_corpus=str(corpus)))
    plain = train_bpe(1024)
    word = " xylophonequux"
    assert len(model.tokenizer.encode(word, add_special_tokens=False)) < len(plain.encode(word))
    with pytest.raises(FileNotFoundError, match="tokenizer_corpus .*absent"):
        VSREModel(small_config(tokenizer_corpus=str(tmp_path / "absent")))


def test_tokenizer_never_produces_unknown_tokens():
    tok = train_bpe(1024)
    text = "Zwölf Boxen 📦 sind größer als ÿ\t\x00 ∑"
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.unk_token_id is None or tok.unk_token_id not in ids
    assert tok.decode(ids) == text


# ---------------------------------------------------------------------- preprocessing


def test_preprocess_uses_each_encoders_size_and_normalisation(tiny_model):
    gray = np.full((10, 20, 3), 128, dtype=np.uint8)
    out = tiny_model.preprocess([gray, np.zeros((40, 30, 3), np.uint8)])
    for name, enc in tiny_model.encoders.items():
        assert out[name].shape == (2, 3, enc.image_size, enc.image_size)
        expected = (128 / 255 - enc.mean.view(3)) / enc.std.view(3)
        assert torch.allclose(out[name][0, :, 5, 5], expected, atol=1e-5)
    assert not torch.allclose(out["clip"][0], out["siglip"][0])


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((8, 8, 3), np.float32), "uint8"),
        (np.zeros((8, 8), np.uint8), "HxWx3"),
        (np.zeros((0, 8, 3), np.uint8), "zero size"),
        ("image.png", "numpy array"),
    ],
)
def test_preprocess_rejects_bad_images(tiny_model, bad, message):
    with pytest.raises(ValueError, match=message):
        tiny_model.preprocess([bad])


# ------------------------------------------------------------------------------ forward


def test_training_batch_labels_only_the_answer(tiny_model, rng):
    batch = tiny_model.build_batch([_example(rng), _example(rng, 2, "no")])
    labels, ids = batch["labels"], batch["input_ids"]
    for row in range(2):
        start = int(batch["answer_start"][row])
        real = int(batch["attention_mask"][row].sum())
        assert (labels[row, :start] == -100).all()
        assert torch.equal(labels[row, start:real], ids[row, start:real])
        assert labels[row, real - 1] == tiny_model.eos_token_id
    slots = (ids == tiny_model.image_token_id).sum(1).tolist()
    assert slots == [tiny_model.num_image_tokens, 2 * tiny_model.num_image_tokens]
    assert batch["pixel_values"]["clip"].shape[0] == 3


def test_training_forward_returns_answer_loss_and_gradients(tiny_model, rng):
    model = VSREModel(small_config())
    batch = model.build_batch([_example(rng), _example(rng, 2, "no")])
    batch.pop("answer_start")
    out = model(**batch)
    assert out.loss is not None and torch.isfinite(out.loss)
    out.loss.backward()
    assert model.fusion.projectors["clip"][0].weight.grad.abs().sum() > 0
    # The loss reads only labelled positions: changing an unlabelled token's label is inert.
    labels = batch["labels"].clone()
    labels[:, 0] = -100
    assert torch.allclose(model(**{**batch, "labels": labels}).loss, out.loss)


@pytest.mark.parametrize("lora", [False, True])
def test_labelled_logits_only_gives_the_same_loss_logits_and_gradients(rng, lora):
    model = VSREModel(small_config())
    if lora:
        model.attach_lora()
    model.eval()  # no dropout: both forwards see the same network
    batch = model.build_batch([_example(rng), _example(rng, 2, "no")])
    batch.pop("answer_start")
    full = model(**batch)
    full.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    sparse = model(**batch, labelled_logits_only=True)
    sparse.loss.backward()
    torch.testing.assert_close(sparse.loss, full.loss)
    # every position that predicts a label carries the full logits; the others are 0
    reads = torch.nn.functional.pad(batch["labels"][:, 1:], (0, 1), value=-100) != -100
    assert int(reads.sum()) >= 4
    torch.testing.assert_close(sparse.logits[reads], full.logits[reads])
    assert not sparse.logits[~reads].any()
    for name, p in model.named_parameters():
        if name in grads:
            torch.testing.assert_close(p.grad, grads[name], atol=1e-6, rtol=1e-4)


def test_eager_attention_returns_maps_for_attention_targets(rng):
    cfg = small_config()
    cfg.lm.attn_implementation = "eager"
    model = VSREModel(cfg)
    batch = model.build_batch([_example(rng)])
    out = model(batch["input_ids"], batch["pixel_values"], output_attentions=True)
    length = batch["input_ids"].shape[1]
    assert len(out.attentions) == model.lm.config.num_hidden_layers
    assert out.attentions[0].shape == (1, model.lm.config.num_attention_heads, length, length)
    assert torch.allclose(out.attentions[0].sum(-1), torch.ones(1), atol=1e-4)


def test_multi_image_prompt_depends_on_image_order(tiny_model, rng):
    a, b = random_image(rng), random_image(rng)
    first = tiny_model.build_batch([{"images": [a, b], "question": "Same?", "answer": "no"}])
    second = tiny_model.build_batch([{"images": [b, a], "question": "Same?", "answer": "no"}])
    assert not torch.allclose(_logits(tiny_model, first), _logits(tiny_model, second))


def test_image_token_count_mismatch_is_a_clear_error(tiny_model, rng):
    batch = tiny_model.build_batch([_example(rng, 2)])
    one = {k: v[:1] for k, v in batch["pixel_values"].items()}
    with pytest.raises(ValueError, match="image-token slots"):
        tiny_model(batch["input_ids"], one)


# ------------------------------------------------------------------------------ freezing


def _trainable(model):
    return {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}


def test_freeze_stages_choose_what_trains():
    model = VSREModel(small_config())
    summary = model.freeze(1)
    assert _trainable(model) == {"fusion"}
    assert summary["lm"] == 0 and summary["encoders"] == 0 and summary["fusion"] > 0
    summary = model.freeze(2)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert model.has_lora
    assert all("lora_" in n for n in names if n.startswith("lm."))
    assert summary["lm"] > 0 and summary["encoders"] == 0
    model.freeze(2, encoders=True)
    assert _trainable(model) == {"fusion", "lm", "encoders"}
    model.freeze(0)
    assert all(p.requires_grad for p in model.parameters() if p.dtype.is_floating_point)
    with pytest.raises(ValueError, match="unknown stage 3"):
        model.freeze(3)


# ---------------------------------------------------------------------------- save/load


def test_save_load_round_trip_is_exact(tiny_model, rng, tmp_path):
    batch = tiny_model.build_batch([_example(rng)])
    tiny_model.save_pretrained(tmp_path / "m")
    loaded = VSREModel.from_pretrained(tmp_path / "m").eval()
    assert torch.equal(_logits(tiny_model, batch), _logits(loaded, batch))
    assert loaded.tokenizer.get_vocab() == tiny_model.tokenizer.get_vocab()
    assert loaded.model_id == "test-tiny"


def test_the_calibrated_verdict_bias_is_saved_with_the_model(rng, tmp_path):
    model = VSREModel(small_config())
    model.config.verdict_bias = -0.75
    model.save_pretrained(tmp_path / "m")
    assert VSREModel.from_pretrained(tmp_path / "m").config.verdict_bias == -0.75


def test_save_load_with_lora_adapter_is_exact(rng, tmp_path):
    model = VSREModel(small_config())
    model.freeze(2)
    with torch.no_grad():  # LoRA B starts at zero; make the adapter matter
        for name, p in model.lm.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)
    model.eval()
    batch = model.build_batch([_example(rng)])
    model.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "adapter" / "adapter_config.json").is_file()
    loaded = VSREModel.from_pretrained(tmp_path / "m").eval()
    assert loaded.has_lora
    assert torch.allclose(_logits(model, batch), _logits(loaded, batch), atol=1e-6)
    loaded.drop_adapter()
    assert not torch.allclose(_logits(model, batch), _logits(loaded, batch), atol=1e-3)


def test_a_loaded_adapter_answers_with_its_own_verdict_bias(rng, tmp_path, caplog):
    from vsre_ros.core.model import ADAPTER_META, ModelLoadError

    tuned = VSREModel(small_config())
    tuned.freeze(2)
    tuned.config.verdict_bias = 0.25  # fitted after stage 2, for base + adapter
    tuned.save_pretrained(tmp_path / "tuned")
    adapter = tmp_path / "tuned" / "adapter"
    base = VSREModel(small_config())
    base.config.verdict_bias = -0.75  # fitted for the base weights alone
    base.load_adapter(adapter)
    assert base.config.verdict_bias == 0.25
    base.drop_adapter()
    assert base.config.verdict_bias == -0.75
    # Without the record (an adapter saved by peft alone) the answers are uncalibrated.
    (adapter / ADAPTER_META).unlink()
    base.load_adapter(adapter)
    assert base.config.verdict_bias == 0.0
    assert ADAPTER_META in caplog.text
    base.drop_adapter()
    (adapter / ADAPTER_META).write_text("{not json")
    with pytest.raises(ModelLoadError, match="vsre_adapter.json is corrupt.*save the adapter"):
        base.load_adapter(adapter)
    assert not base.has_lora and base.config.verdict_bias == -0.75, "nothing changed"


@pytest.fixture
def saved(tiny_model, tmp_path):
    return tiny_model.save_pretrained(tmp_path / "m")


def test_missing_directory_or_config_is_named(saved, tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        VSREModel.from_pretrained(tmp_path / "nope")
    (saved / "vsre_config.json").unlink()
    with pytest.raises(ModelLoadError, match="vsre_config.json is missing"):
        VSREModel.from_pretrained(saved)


def test_corrupt_config_is_named(saved):
    (saved / "vsre_config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="vsre_config.json is corrupt"):
        VSREModel.from_pretrained(saved)


def test_corrupt_or_missing_weights_are_named(saved):
    (saved / "model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(ModelLoadError, match="model.safetensors is corrupt"):
        VSREModel.from_pretrained(saved)
    (saved / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="model.safetensors is missing"):
        VSREModel.from_pretrained(saved)


def test_missing_tokenizer_is_named(saved):
    import shutil

    shutil.rmtree(saved / "tokenizer")
    with pytest.raises(ModelLoadError, match="tokenizer directory .* is missing"):
        VSREModel.from_pretrained(saved)


def test_shape_mismatch_names_the_tensor(saved):
    payload = json.loads((saved / "vsre_config.json").read_text())
    payload["config"]["projector_hidden"] = 48
    (saved / "vsre_config.json").write_text(json.dumps(payload))
    with pytest.raises(ModelLoadError, match=r"tensor fusion\.projectors\.\w+\.0\.weight.*48"):
        VSREModel.from_pretrained(saved)


def test_unknown_preset_and_fields_are_named():
    with pytest.raises(ValueError, match="unknown preset 'vsre-huge'.*vsre-tiny"):
        VSREModel.from_preset("vsre-huge")
    with pytest.raises(ValueError, match="does not take"):
        preset_config("vsre-tiny", colour="red")


def test_tiny_preset_is_five_to_ten_million_parameters():
    cfg = preset_config("vsre-tiny")
    assert {e.family for e in cfg.encoders} == {"clip", "siglip", "sam", "dinov2"}
    model = VSREModel(cfg)
    total = sum(model.parameter_counts().values())
    assert 5e6 <= total <= 10e6
    channel = VSREModel.from_preset("vsre-tiny-channel")
    assert channel.num_image_tokens < model.num_image_tokens


def test_micro_preset_is_the_learnability_recipe():
    model = VSREModel.from_preset("vsre-micro")
    assert list(model.encoders) == ["clip"] and model.num_image_tokens == 64
    assert model.lm.config.hidden_size == 128 and model.lm.config.num_hidden_layers == 3
    assert model.lm.config._attn_implementation == "eager"
    assert 1e6 <= sum(model.parameter_counts().values()) <= 2.5e6


# ------------------------------------------------------------------ real-layout presets


def _save_lm(path, cls, cfg_cls, tok):
    cfg = cfg_cls(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    cls(cfg).save_pretrained(path)
    tok.save_pretrained(path)


def test_paper_preset_reads_local_checkpoints(tmp_path, rng):
    tiny = {e.family: e for e in small_config().encoders}
    paths = {}
    for family, ecfg in tiny.items():
        build_encoder(ecfg).model.save_pretrained(tmp_path / family)
        paths[family] = str(tmp_path / family)
    tok = train_bpe(1024)
    _save_lm(tmp_path / "lm", LlamaForCausalLM, LlamaConfig, tok)
    paths["lm"] = str(tmp_path / "lm")
    (tmp_path / "paths.yaml").write_text(yaml.safe_dump(paths))
    # The paper's DINOv2 crop (224) applies to the real checkpoint; the stand-in is 32 px.
    model = VSREModel.from_preset("vsre-paper", paths_file=tmp_path / "paths.yaml")
    assert model.encoders["dinov2"].image_size == 224
    batch = model.build_batch([_example(rng)])
    assert torch.isfinite(_logits(model, batch)).all()
    (tmp_path / "paths.yaml").write_text(yaml.safe_dump({"clip": paths["clip"]}))
    with pytest.raises(ValueError, match="missing keys.*siglip"):
        VSREModel.from_preset("vsre-paper", paths_file=tmp_path / "paths.yaml")


@pytest.mark.parametrize("family, cls, cfg_cls", [("qwen2", Qwen2ForCausalLM, Qwen2Config)])
def test_qwen2_lm_loads_from_directory_and_family_is_checked(tmp_path, family, cls, cfg_cls):
    tok = train_bpe(1024)
    _save_lm(tmp_path / "lm", cls, cfg_cls, tok)
    cfg = small_config(lm=LMConfig(family=family, path=str(tmp_path / "lm")), tokenizer="lm")
    model = VSREModel(cfg)
    assert isinstance(model.lm, cls)
    wrong = small_config(lm=LMConfig(family="llama", path=str(tmp_path / "lm")), tokenizer="lm")
    with pytest.raises(ValueError, match="holds a 'qwen2' checkpoint.*llama LM.*'llama'"):
        VSREModel(wrong)


def test_llava_start_reuses_tower_projector_and_lm(tmp_path):
    tok = train_bpe(1024)
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
    )
    text = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    llava_cfg = LlavaConfig(
        vision_config=vision.to_dict(),
        text_config=text.to_dict(),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
    )
    torch.manual_seed(0)
    llava = LlavaForConditionalGeneration(llava_cfg).eval()
    llava.save_pretrained(tmp_path / "llava")
    tok.save_pretrained(tmp_path / "llava")
    model = VSREModel.from_preset("llava-start", llava_path=tmp_path / "llava").eval()
    assert model.encoders["clip"].feature_layer == -2
    ours = model.fusion.projectors["clip"]
    assert torch.equal(ours[0].weight, llava.model.multi_modal_projector.linear_1.weight)
    ids = torch.tensor([tok.encode("Is the cup left of the box?")])
    with torch.no_grad():
        assert torch.allclose(model.lm(input_ids=ids).logits, llava(input_ids=ids).logits)
        pix = torch.randn(1, 3, 32, 32)
        theirs = llava.model.vision_tower(pixel_values=pix, output_hidden_states=True)
        expected = theirs.hidden_states[-2][:, 1:]
        got = model.encoders["clip"](pix).flatten(2).transpose(1, 2)
        assert torch.allclose(got, expected)
    with pytest.raises(ValueError, match="needs llava_path"):
        preset_config("llava-start")


def test_duplicate_or_empty_encoders_are_rejected():
    with pytest.raises(ValueError, match="at least one encoder"):
        VSREModel(small_config(encoders=[]))
    twice = [EncoderConfig("clip", hf_config=small_config().encoders[0].hf_config)] * 2
    with pytest.raises(ValueError, match="once"):
        VSREModel(small_config(encoders=twice))
