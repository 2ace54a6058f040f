"""Tiny random checkpoints saved exactly in the Hugging Face hub layouts a real user downloads.

Everything is small (a few hundred thousand parameters) but keeps what differs from the
project's own tiny presets: the real input sizes and patch sizes (CLIP 336/14, SigLIP 384/14,
SAM 1024/16, DINOv2 518/14), full `CLIPModel`/`SiglipModel`/`SamModel` checkpoints with their
`preprocessor_config.json`, fp16 weights, sharded LMs with `model.safetensors.index.json`, an
LM vocabulary that differs from the tokenizer's length (llava-hf pads to 32064 for 32002
tokens), and both tokenizer layouts: a sentencepiece `tokenizer.model` alone (Vicuna) and a
`tokenizer.json` with Llama-2's normaliser (a lone leading "▁" before every answer word).

`build_hub(root)` writes them and returns {name: directory} plus the paths files naming them.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image
from tokenizers import normalizers
from transformers import (
    AutoTokenizer,
    BitImageProcessor,
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    Dinov2Config,
    Dinov2Model,
    LlamaConfig,
    LlamaForCausalLM,
    LlavaConfig,
    LlavaForConditionalGeneration,
    SamConfig,
    SamImageProcessor,
    SamModel,
    SiglipConfig,
    SiglipImageProcessor,
    SiglipModel,
)

from vsre_ros.core import templates
from vsre_ros.core.tokenizer import ANSWER_WORDS, EXTRA_TEXT

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
SP_VOCAB = 400  # sentencepiece pieces (the real Llama-2 has 32000)
LLAVA_PAD_VOCAB = 448  # llava-hf's embedding rows exceed its tokenizer (32064 vs 32002)
MAX_POSITIONS = 4096  # Llama-2 / Vicuna-1.5 context


def _vit(hidden: int = 16, image: int = 224, patch: int = 14) -> dict:
    return {
        "hidden_size": hidden,
        "intermediate_size": 2 * hidden,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": image,
        "patch_size": patch,
    }


def _text(vocab: int = 64) -> dict:
    return {
        "vocab_size": vocab,
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "max_position_embeddings": 64,
    }


def _llama(vocab: int) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=MAX_POSITIONS,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )


def _save(model: torch.nn.Module, path: Path, shards: int = 1) -> None:
    """fp16 safetensors, in `shards` files with an index when more than one."""
    model = model.half()
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    max_shard = int(size / shards * 1.1) if shards > 1 else "10GB"
    model.save_pretrained(str(path), max_shard_size=max_shard)


def sentencepiece_model(vocab: int = SP_VOCAB) -> bytes:
    """A Llama-style sentencepiece BPE (byte fallback, digits split) trained on the templates."""
    import sentencepiece as spm

    text = list(templates.corpus())[:3000] + EXTRA_TEXT + [" ".join(ANSWER_WORDS)] * 20
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(text),
        model_writer=buf,
        vocab_size=vocab,
        model_type="bpe",
        byte_fallback=True,
        split_digits=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        character_coverage=1.0,
        minloglevel=2,
    )
    return buf.getvalue()


def write_vicuna_tokenizer(path: Path) -> None:
    """tokenizer.model and tokenizer_config.json only, as lmsys/vicuna-7b-v1.5 ships."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "tokenizer.model").write_bytes(sentencepiece_model())
    config = {
        "tokenizer_class": "LlamaTokenizer",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": None,
        "add_bos_token": True,
        "add_eos_token": False,
        "legacy": False,
        "model_max_length": MAX_POSITIONS,
    }
    (path / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


def write_llava_tokenizer(path: Path, sp_dir: Path) -> int:
    """tokenizer.json (Llama-2's normaliser: prepend "▁", spaces to "▁") with <image> and
    <pad> added, as llava-hf ships; returns the id of <image>."""
    tok = AutoTokenizer.from_pretrained(str(sp_dir))
    backend = tok.backend_tokenizer
    backend.normalizer = normalizers.Sequence(
        [normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")]
    )
    backend.pre_tokenizer = None
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    tok.add_special_tokens({"pad_token": "<pad>"})
    tok.save_pretrained(str(path))
    (path / "tokenizer.model").write_bytes((sp_dir / "tokenizer.model").read_bytes())
    return int(tok.convert_tokens_to_ids("<image>"))


def build_hub(root: str | Path) -> dict[str, Path]:
    """Write every checkpoint under `root`; returns {name: path}."""
    root = Path(root)
    torch.manual_seed(0)
    out = {}

    clip = CLIPConfig(
        vision_config=_vit(image=336, patch=14), text_config=_text(), projection_dim=8
    )
    out["clip"] = root / "clip-vit-large-patch14-336"
    _save(CLIPModel(clip), out["clip"])
    CLIPImageProcessor(
        size={"shortest_edge": 336},
        crop_size={"height": 336, "width": 336},
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
    ).save_pretrained(str(out["clip"]))

    siglip = SiglipConfig(vision_config=_vit(image=384, patch=14), text_config=_text())
    out["siglip"] = root / "siglip-so400m-patch14-384"
    _save(SiglipModel(siglip), out["siglip"])
    SiglipImageProcessor(size={"height": 384, "width": 384}).save_pretrained(str(out["siglip"]))

    sam_vision = {
        **_vit(image=1024, patch=16),
        "mlp_dim": 32,
        "output_channels": 16,
        "global_attn_indexes": [1],
        "window_size": 16,
        "num_pos_feats": 8,
    }
    sam_vision.pop("intermediate_size")
    sam = SamConfig(
        vision_config=sam_vision,
        prompt_encoder_config={"hidden_size": 16, "image_size": 1024, "patch_size": 16},
        mask_decoder_config={
            "hidden_size": 16,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "mlp_dim": 32,
            "iou_head_hidden_dim": 16,
        },
    )
    out["sam"] = root / "sam-vit-base"
    _save(SamModel(sam), out["sam"])
    SamImageProcessor().save_pretrained(str(out["sam"]))

    dino = Dinov2Config(**{**_vit(image=518, patch=14), "mlp_ratio": 2})
    out["dinov2"] = root / "dinov2-base"
    _save(Dinov2Model(dino), out["dinov2"])
    BitImageProcessor(
        size={"shortest_edge": 256},
        crop_size={"height": 224, "width": 224},
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
    ).save_pretrained(str(out["dinov2"]))

    out["vicuna"] = root / "vicuna-7b-v1.5"
    write_vicuna_tokenizer(out["vicuna"])
    _save(LlamaForCausalLM(_llama(SP_VOCAB)), out["vicuna"], shards=2)

    out["llava"] = root / "llava-1.5-7b-hf"
    image_token = write_llava_tokenizer(out["llava"], out["vicuna"])
    llava = LlavaConfig(
        vision_config=_vit(image=336, patch=14),
        text_config=_llama(LLAVA_PAD_VOCAB).to_dict(),
        image_token_index=image_token,
        vision_feature_layer=-2,
        projector_hidden_act="gelu",
    )
    _save(LlavaForConditionalGeneration(llava), out["llava"], shards=4)
    CLIPImageProcessor(
        size={"shortest_edge": 336},
        crop_size={"height": 336, "width": 336},
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
    ).save_pretrained(str(out["llava"]))

    # Paths files name directories relative to themselves (the documented form).
    paper = {k: f"../{out[k].name}" for k in ("clip", "siglip", "sam", "dinov2")}
    out["paper_paths"] = root / "configs" / "vsre-paper-paths.yaml"
    out["paper_paths"].parent.mkdir(parents=True, exist_ok=True)
    out["paper_paths"].write_text(yaml.safe_dump({**paper, "lm": f"../{out['vicuna'].name}"}))
    out["extra_paths"] = root / "configs" / "llava-extra.yaml"
    out["extra_paths"].write_text(yaml.safe_dump({k: paper[k] for k in ("siglip", "dinov2")}))
    return out


def write_dataset(root: Path, n: int = 8) -> Path:
    """A vsre-dataset/1 dataset of n yes/no questions on random frames (a training smoke set)."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    rows = []
    for k in range(n):
        name = f"images/{k}.png"
        pixels = rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / name)
        label = k % 2
        rows.append(
            {
                "id": f"t{k}",
                "image": name,
                "images": [name],
                "label": label,
                "relation": "left of",
                "subj": "cup",
                "obj": "box",
                "question": "Is the cup left of the box?",
                "answer": "yes" if label else "no",
                "answer_kind": "yes_no",
                "task": "relation",
                "source": "sim",
            }
        )
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    meta = {"schema": "vsre-dataset/1", "counts": {"train": n}, "splits": {"train": "train.jsonl"}}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root
