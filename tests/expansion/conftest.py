"""Tiny random diffusion pipelines saved in the real diffusers layouts, and a source dataset.

Nothing is downloaded: the tokenizer is a byte-level CLIP vocabulary written here, the models
are built from configs with a few thousand weights and saved with `save_pretrained`, and the
code under test loads them with `from_pretrained` like a real SDXL / GLIGEN snapshot.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# The source scene: a red cup (mask id 1) left of and above a blue box (mask id 2).
SIZE = 48
CUP = (4, 6, 18, 20)  # x0, y0, x1, y1
BOX = (28, 26, 44, 42)


def _byte_vocab() -> dict[str, int]:
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    chars, extra = list(printable), 0
    for b in range(256):
        if b not in printable:
            chars.append(256 + extra)
            extra += 1
    vocab: dict[str, int] = {}
    for suffix in ("", "</w>"):
        for c in chars:
            vocab[chr(c) + suffix] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return vocab


def _tokenizer(folder: Path):
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(_byte_vocab()))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer.from_pretrained(str(folder), model_max_length=77)


def _text_config(tok, hidden):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=77,
        projection_dim=hidden,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )


def _vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(8, 16),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
    )


def _unet(**kwargs):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        block_out_channels=(16, 32),
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        cross_attention_dim=32,
        norm_num_groups=8,
        **kwargs,
    )


def build_tiny_sdxl(folder: Path) -> Path:
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(0)
    tok = _tokenizer(folder.parent / "tok-sdxl")
    pipe = StableDiffusionXLPipeline(
        vae=_vae(),
        text_encoder=CLIPTextModel(_text_config(tok, 16)),
        text_encoder_2=CLIPTextModelWithProjection(_text_config(tok, 16)),
        tokenizer=tok,
        tokenizer_2=tok,
        # SDXL conditions on both encoders' hidden states (16 + 16) and on the pooled text
        # plus six size/crop numbers (16 + 6 * 4).
        unet=_unet(
            addition_embed_type="text_time",
            addition_time_embed_dim=4,
            projection_class_embeddings_input_dim=16 + 6 * 4,
            transformer_layers_per_block=(1, 1),
            use_linear_projection=True,
        ),
        scheduler=EulerDiscreteScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            timestep_spacing="leading",
            steps_offset=1,
        ),
    )
    pipe.save_pretrained(folder)
    return folder


def build_tiny_gligen(folder: Path) -> Path:
    import torch
    from diffusers import DDIMScheduler, StableDiffusionGLIGENPipeline
    from transformers import CLIPTextModel

    torch.manual_seed(0)
    tok = _tokenizer(folder.parent / "tok-gligen")
    pipe = StableDiffusionGLIGENPipeline(
        vae=_vae(),
        text_encoder=CLIPTextModel(_text_config(tok, 32)),
        tokenizer=tok,
        unet=_unet(attention_type="gated"),
        scheduler=DDIMScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            clip_sample=False,
            set_alpha_to_one=False,
        ),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_sdxl(tmp_path_factory):
    return build_tiny_sdxl(tmp_path_factory.mktemp("pipes") / "sdxl")


@pytest.fixture(scope="session")
def tiny_gligen(tmp_path_factory):
    return build_tiny_gligen(tmp_path_factory.mktemp("pipes") / "gligen")


def _item(item_id, relation, label, subj="red cup", obj="blue box", **extra):
    caption = f"The {subj} is {relation} the {obj}."
    return {
        "id": item_id,
        "image": "images/s0.png",
        "images": ["images/s0.png"],
        "depth": ["depth/s0.npy"],
        "masks": ["masks/s0.png"],
        "caption": caption,
        "label": label,
        "relation": relation,
        "subj": subj,
        "obj": obj,
        "meta_category": "",
        "question": f"Is the {subj} {relation} the {obj}?",
        "answer": "yes" if label else "no",
        "answer_kind": "yes_no",
        "options": [],
        "value": None,
        "unit": "",
        "template_id": "t00",
        "task": "relation",
        "scene_id": "s0",
        "seed": 0,
        "source": "sim",
        **extra,
    }


def write_source(root: Path) -> Path:
    """A one-scene dataset in the vsre format with masks, depth and a scene file."""
    for sub in ("images", "masks", "depth", "scenes"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    image = rng.integers(90, 140, (SIZE, SIZE, 3), dtype=np.uint8)
    mask = np.zeros((SIZE, SIZE), np.uint8)
    depth = np.full((SIZE, SIZE), 2.0, np.float32)
    for k, ((x0, y0, x1, y1), colour, z) in enumerate(
        ((CUP, (220, 30, 30), 1.0), (BOX, (30, 40, 220), 1.5)), start=1
    ):
        image[y0:y1, x0:x1] = colour
        mask[y0:y1, x0:x1] = k
        depth[y0:y1, x0:x1] = z
    Image.fromarray(image).save(root / "images" / "s0.png")
    Image.fromarray(mask).save(root / "masks" / "s0.png")
    np.save(root / "depth" / "s0.npy", depth)
    scene = {"scene_id": "s0", "objects": [
        {"name": "red cup", "mask_id": 1}, {"name": "blue box", "mask_id": 2}]}  # fmt: skip
    (root / "scenes" / "s0.json").write_text(json.dumps(scene))
    items = [
        _item("left-true", "left of", 1),
        _item("right-false", "right of", 0),
        _item("front-true", "in front of", 1),
        _item("right-wrong", "right of", 1),  # the cup is left of the box: this label is wrong
        _item("facing", "facing", 1),  # no detector-free check exists for facing
    ]
    with open(root / "random_train.jsonl", "w") as handle:
        for item in items:
            handle.write(json.dumps(item) + "\n")
    meta = {
        "schema": "vsre-dataset/1",
        "source": "sim",
        "seed": 0,
        "config": {},
        "counts": {},
        "splits": {"random_train": len(items)},
        "created_by": "test",
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


@pytest.fixture
def source(tmp_path):
    return write_source(tmp_path / "source")


@pytest.fixture
def source_boxes():
    """Pixel boxes (x0, y0, x1, y1) of the source scene's objects, by name."""
    return {"red cup": CUP, "blue box": BOX}


def _decided_scenes(sim, relation: str):
    """Yield (scene, render, label) for seeds where `relation` between objects 0 and 1 is
    decided and both are well visible; the first True and the first False are used."""
    from vsre_ros.sim_data.relations import Facts, decide
    from vsre_ros.sim_data.scene import LayoutConfig, sample_scene

    for seed in range(200):
        layout = LayoutConfig(min_objects=2, max_objects=3)
        scene = sample_scene(np.random.default_rng(seed), f"{seed}-0", config=layout)
        sim.load(scene)
        view = sim.render(scene.views[0])
        if min(o["visible_fraction"] for o in view.objects[:2]) < 0.6:
            continue
        cams = np.array([o["center_cam"] for o in view.objects])
        label = decide(Facts(scene, sim.gaps(), cams), relation, 0, 1)
        if label is not None:
            yield scene, view, int(label)


def write_sim_source(root: Path) -> Path:
    """Simulated scenes in the vsre format, rendered here with sim_data at 64x64: one where
    "left of" holds, one where it does not, and one item whose relation the sim cannot decide."""
    from vsre_ros.sim_data.render import Simulator

    for sub in ("images", "masks", "depth", "scenes"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    items = []
    with Simulator(64, 64) as sim:
        chosen = {}
        for scene, view, label in _decided_scenes(sim, "left of"):
            chosen.setdefault(label, (scene, view))
            if len(chosen) == 2:
                break
        for label, (scene, view) in sorted(chosen.items()):
            name = f"s{label}"
            Image.fromarray(view.rgb).save(root / "images" / f"{name}.png")
            Image.fromarray(view.seg.astype(np.uint8)).save(root / "masks" / f"{name}.png")
            np.save(root / "depth" / f"{name}.npy", view.depth)
            (root / "scenes" / f"{scene.scene_id}.json").write_text(json.dumps(scene.to_dict()))
            subj, obj = scene.objects[0].name, scene.objects[1].name
            asks = [("left of", label)] + ([("with", 1)] if label == 0 else [])
            for relation, truth in asks:
                item = _item(f"{name}-{relation}", relation, truth, subj=subj, obj=obj)
                item.update(
                    image=f"images/{name}.png",
                    images=[f"images/{name}.png"],
                    depth=[f"depth/{name}.npy"],
                    masks=[f"masks/{name}.png"],
                    scene_id=scene.scene_id,
                )
                items.append(item)
    with open(root / "random_train.jsonl", "w") as handle:
        for item in items:
            handle.write(json.dumps(item) + "\n")
    meta = {"schema": "vsre-dataset/1", "source": "sim", "seed": 0, "splits": {}}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


@pytest.fixture(scope="session")
def sim_source(tmp_path_factory):
    return write_sim_source(tmp_path_factory.mktemp("sim") / "source")
