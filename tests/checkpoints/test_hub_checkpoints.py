"""Real hub layouts (fp16, shards, processor and tokenizer files): each fix, pinned."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import yaml
from hub_fixture import LLAVA_PAD_VOCAB, SP_VOCAB
from transformers import AutoImageProcessor, LlavaForConditionalGeneration

from vsre_ros.core.answers import AnswerKind, Query, Status
from vsre_ros.core.config import EncoderConfig, EngineConfig, LMConfig, preset_config
from vsre_ros.core.encoders import build_encoder
from vsre_ros.core.encoders.preprocess import ImagePrep
from vsre_ros.core.engine import Engine
from vsre_ros.core.lm import build_lm
from vsre_ros.core.model import VSREModel

INPUTS = ("pixel_values", "input_ids", "attention_mask")


def _example(rng, h=480, w=640, answer="yes"):
    image = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    return {"images": [image], "question": "Is the cup left of the box?", "answer": answer}


def _logits(model, batch):
    with torch.no_grad():
        return model.eval()(**{k: batch[k] for k in INPUTS}).logits


def test_paper_preset_loads_fp16_shards_relative_to_the_paths_file(paper, hub):
    assert {e.dtype for e in paper.encoders.values()} == {torch.float16}
    assert paper.dtype == torch.float16  # frozen parts keep the checkpoint's dtype
    assert next(paper.fusion.parameters()).dtype == torch.float32
    assert paper.num_image_tokens == 576 + 729 + 256 + 256  # the paper's 1817
    assert paper.encoders["dinov2"].image_size == 224  # its processor's crop
    # The tokenizer.model-only Vicuna gains <image>: one explicit row, from 400.
    assert paper.lm.get_input_embeddings().num_embeddings == SP_VOCAB + 1 == len(paper.tokenizer)
    assert yaml.safe_load(hub["paper_paths"].read_text())["lm"].startswith("../")


def test_fp16_checkpoint_runs_forward_and_trains_on_cpu(hub, rng):
    torch.manual_seed(0)
    model = VSREModel.from_preset("vsre-paper", paths_file=str(hub["paper_paths"]))
    model.freeze(2)
    batch = model.build_batch([_example(rng)])
    out = model(**{k: batch[k] for k in (*INPUTS, "labels")})
    assert torch.isfinite(out.loss)
    out.loss.backward()
    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trained and all(p.dtype == torch.float32 for _, p in trained)  # master weights
    assert all(p.grad is not None for n, p in trained if "lora_B" in n)
    assert model.lm.get_base_model().model.layers[0].mlp.up_proj.weight.dtype == torch.float16


@pytest.mark.parametrize("preset", ["vsre-paper", "llava-start"])
def test_save_and_reload_give_identical_logits(hub, rng, tmp_path, preset):
    torch.manual_seed(0)
    if preset == "vsre-paper":
        model = VSREModel.from_preset(preset, paths_file=str(hub["paper_paths"]))
        model.freeze(2)  # with a LoRA adapter
    else:
        model = VSREModel.from_preset(preset, llava_path=str(hub["llava"]))
        assert model.lm.get_input_embeddings().num_embeddings == LLAVA_PAD_VOCAB  # no resize
    batch = model.build_batch([_example(rng)])
    before = _logits(model, batch)
    model.save_pretrained(tmp_path / "m")
    again = VSREModel.from_pretrained(tmp_path / "m")
    assert again.lm.get_input_embeddings().num_embeddings == len(before[0, 0])
    assert torch.equal(_logits(again, batch), before)
    assert again.dtype == model.dtype


def test_llava_start_equals_llava(hub, rng):
    model = VSREModel.from_preset("llava-start", llava_path=str(hub["llava"])).eval()
    llava = LlavaForConditionalGeneration.from_pretrained(str(hub["llava"])).eval()
    pixels = model.preprocess([rng.integers(0, 256, size=(336, 336, 3), dtype=np.uint8)])
    ids = torch.tensor([model.tokenizer.encode("Is the cup left of the box?")])
    with torch.no_grad():
        ours = model.encode_images(pixels)
        theirs = llava.get_image_features(pixel_values=pixels["clip"])
        theirs = theirs.pooler_output if hasattr(theirs, "pooler_output") else theirs
        theirs = torch.cat(list(theirs)) if isinstance(theirs, (list, tuple)) else theirs
        # LLaVA projects in fp16; ours in fp32 (a trained part): equal to fp16's precision.
        theirs = theirs.float().reshape(ours.shape)
        assert float((ours - theirs).abs().max()) < 2e-3 * float(theirs.abs().max())
        assert torch.equal(model.lm(input_ids=ids).logits, llava(input_ids=ids).logits)


@pytest.mark.parametrize("family", ["clip", "siglip", "sam", "dinov2"])
@pytest.mark.parametrize("shape", [(300, 300), (480, 640)])
def test_preprocessing_equals_the_checkpoints_processor(paper, hub, rng, family, shape):
    image = rng.integers(0, 256, size=(*shape, 3), dtype=np.uint8)
    processor = AutoImageProcessor.from_pretrained(str(hub[family]))
    expected = torch.as_tensor(processor(images=image, return_tensors="np")["pixel_values"])
    got = paper.encoders[family].prep.apply(image)
    assert got.shape == expected.shape[1:]
    assert float((got - expected[0]).abs().max()) < 1e-3


def test_verdict_is_read_at_the_first_differing_token(hub):
    # llava-hf's tokenizer.json (Llama-2 normaliser) starts each answer word with a lone "▁".
    llava = VSREModel.from_preset("llava-start", llava_path=str(hub["llava"]))
    lead, yes, no = llava.verdict_tokens(["yes", "true"], ["no", "false"])
    assert llava.tokenizer.convert_ids_to_tokens(lead) == ["▁"]
    assert llava.tokenizer.convert_ids_to_tokens(yes) == sorted(["▁yes", "▁true"], key=str)
    assert len(no) == 2 and not set(yes) & set(no)


def test_training_verdict_targets_skip_the_shared_lead(hub, tmp_path):
    from PIL import Image

    from training.data import Example
    from training.items import Item
    from training.model_api import collate, image_cache, verdict_loss

    llava = VSREModel.from_preset("llava-start", llava_path=str(hub["llava"]))
    Image.fromarray(np.full((40, 40, 3), 128, dtype=np.uint8)).save(tmp_path / "gray.png")
    item = Item(id="a", image="gray.png", question="Is it left?", answer="yes")
    item.root = str(tmp_path)
    example = Example(item, "Is it left?", "yes", AnswerKind.YES_NO)
    batch = collate(llava, [example], image_cache(llava))
    at = int(batch["verdict_at"][0])
    assert at == int(batch["answer_start"][0])  # one "▁" after the question, then the verdict
    assert int(batch["labels"][0, at + 1]) == int(batch["verdict_ids"][0, 0])
    logits = torch.zeros(1, batch["input_ids"].shape[1], len(llava.tokenizer))
    logits[0, at, batch["verdict_ids"][0, 0]] = 5.0  # confident and right at the verdict
    out = type("Out", (), {"logits": logits})()
    assert float(verdict_loss(llava, batch, out)) < 0.01
    logits[0, at] = 0.0
    logits[0, at - 1, batch["verdict_ids"][0, 0]] = 5.0  # right one token early: no credit
    assert float(verdict_loss(llava, batch, out)) == pytest.approx(np.log(2), abs=1e-4)


@pytest.fixture
def own_paper(hub):
    """A model of its own (an Engine casts the model it serves to its dtype)."""
    return VSREModel.from_preset("vsre-paper", paths_file=str(hub["paper_paths"]))


def test_prompt_longer_than_the_context_is_a_bad_question(own_paper, rng):
    engine = Engine(own_paper, EngineConfig(device="cpu", dtype="float32"))
    frame = rng.integers(0, 256, size=(240, 320, 3), dtype=np.uint8)
    two, three = (Query("Is the cup left of the box?", [frame] * n) for n in (2, 3))
    answers = engine.answer([two, three])
    assert answers[0].status == Status.OK
    assert answers[1].status == Status.BAD_QUESTION
    assert "3 images x 1817 image tokens" in answers[1].error and "4096" in answers[1].error


def test_wrong_family_is_a_value_error_naming_both(hub):
    with pytest.raises(ValueError, match="holds a 'dinov2'.*as the sam encoder.*'sam'"):
        build_encoder(EncoderConfig("sam", path=str(hub["dinov2"])))
    with pytest.raises(ValueError, match="holds a 'clip'.*the llama LM"):
        build_lm(LMConfig("llama", path=str(hub["clip"])))
    with pytest.raises(ValueError, match="holds a 'llama'.*LLaVA"):
        VSREModel.from_preset("llava-start", llava_path=str(hub["vicuna"]))


def test_pickled_weights_are_refused_with_the_conversion_command(hub, tmp_path):
    pickled = tmp_path / "clip-bin"
    shutil.copytree(hub["clip"], pickled)
    for f in pickled.glob("*.safetensors"):
        f.unlink()
    (pickled / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ValueError, match=r"only pickled weights") as err:
        build_encoder(EncoderConfig("clip", path=str(pickled)))
    command = str(err.value).splitlines()[-1].strip()
    assert command.startswith("python -c") and command.endswith(str(pickled))
    assert "use_safetensors=False).save_pretrained(sys.argv[1])" in command


def test_saved_config_keeps_the_preprocessing(paper, tmp_path):
    cfg = paper.resolved_config()
    prep = {e.family: e.preprocess for e in cfg.encoders}
    assert prep["sam"]["after"] == "pad" and prep["dinov2"]["after"] == "crop"
    assert prep["siglip"]["resize"] == "square" and prep["clip"]["resample"] == "bicubic"
    saved = json.loads(json.dumps(cfg.to_dict()))["encoders"][0]["preprocess"]
    assert ImagePrep.from_dict(saved) == paper.encoders["clip"].prep


def test_engine_answers_from_the_fp16_checkpoint(own_paper, rng):
    engine = Engine(own_paper, EngineConfig(device="cpu", dtype="auto"))
    frame = rng.integers(0, 256, size=(240, 320, 3), dtype=np.uint8)
    answers = engine.answer(
        [
            Query("Is the cup left of the box?", [frame]),
            Query("Which is closer?", [frame], AnswerKind.CHOICE, options=["cup", "box"]),
        ]
    )
    assert [a.status for a in answers] == [Status.OK, Status.OK]
    assert answers[0].verdict in (True, False) and answers[1].text in ("cup", "box")


def test_preset_rejects_a_paths_file_without_the_lm(hub, tmp_path):
    data = yaml.safe_load(hub["paper_paths"].read_text())
    data.pop("lm")
    bad = hub["paper_paths"].parent / "no-lm.yaml"
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(ValueError, match="missing keys \\['lm'\\]"):
        preset_config("vsre-paper", paths_file=str(bad))


def test_sentencepiece_only_tokenizer_names_the_missing_packages(hub, monkeypatch):
    from vsre_ros.core import model as model_module

    monkeypatch.setattr(model_module, "_importable", lambda name: name != "sentencepiece")
    with pytest.raises(ValueError, match="tokenizer.model only; reading it needs sentencepiece"):
        model_module._load_tokenizer(hub["vicuna"])
    monkeypatch.undo()
    assert len(model_module._load_tokenizer(hub["vicuna"])) == SP_VOCAB


def test_a_requested_dtype_loads_the_frozen_parts_in_it(hub, rng):
    model = VSREModel.from_preset(
        "vsre-paper", paths_file=str(hub["paper_paths"]), dtype="bfloat16"
    )
    assert {e.dtype for e in model.encoders.values()} == {torch.bfloat16}
    assert model.dtype == torch.bfloat16
    assert next(model.fusion.parameters()).dtype == torch.float32
    batch = model.build_batch([_example(rng)])
    assert torch.isfinite(_logits(model, batch).float()).all()
    with pytest.raises(ValueError, match="unknown dtype 'half'"):
        VSREModel.from_preset("vsre-paper", paths_file=str(hub["paper_paths"]), dtype="half")
