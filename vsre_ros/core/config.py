"""Typed configs for the VSRE model and its engine, and the registry of named presets.

A `ModelConfig` says which vision encoders to use (any subset of CLIP, SigLIP, SAM, DINOv2),
how their tokens are fused, which causal LM reads them and which tokenizer it uses. Every part
is either built from a (small) transformers config or read from a local Hugging Face directory.
Presets are functions registered by id; `preset_config(id, **overrides)` resolves one.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

FORMAT = "vsre-model/1"


def documented(default: Any, help: str) -> Any:
    """A dataclass field with its help text in its metadata (ROS parameter descriptions, the
    training CLI's flags, the docs); list and dict defaults are copied per instance."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class EncoderConfig:
    """One vision encoder: which family, and either a local checkpoint or a config to build."""

    family: str  # encoder registry id: clip | siglip | sam | dinov2
    path: str = ""  # local Hugging Face directory with real weights; "" builds from hf_config
    hf_config: dict[str, Any] = field(default_factory=dict)  # transformers config fields
    image_size: int = 0  # input side in pixels; 0 = the checkpoint's own image_size
    feature_layer: int = -1  # hidden state used: -1 last layer (VSRE), -2 penultimate (LLaVA)
    adapter_stages: int = 2  # stride-2 conv stages of a map adapter (SAM: 64->32->16 in VSRE)
    # The checkpoint's preprocessing (encoders/preprocess.ImagePrep as a dict), filled from its
    # preprocessor_config.json when loaded; {} squashes to a square (the tiny presets).
    preprocess: dict[str, Any] = field(default_factory=dict)


@dataclass
class LMConfig:
    """The causal language model: a local checkpoint or a config to build."""

    family: str = "llama"  # LM registry id: llama | qwen2
    path: str = ""  # local Hugging Face directory; "" builds from hf_config
    hf_config: dict[str, Any] = field(default_factory=dict)  # transformers config fields
    attn_implementation: str = "sdpa"  # "eager" can return attention maps for training targets


@dataclass
class LoraSettings:
    """LoRA on the LM for stage 2 (peft)."""

    r: int = 8  # rank of the update
    alpha: int = 16  # scaling numerator (scale = alpha / r)
    dropout: float = 0.05  # dropout on the LoRA input
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"]
    )  # linear layers that get adapters


@dataclass
class ModelConfig:
    """Everything needed to build a VSREModel; saved as vsre_config.json next to the weights."""

    name: str = "custom"  # model id reported in answers (preset id or user's name)
    encoders: list[EncoderConfig] = field(default_factory=list)  # at least one, unique families
    fusion: str = "sequence"  # fusion registry id: sequence (VSRE) | channel (Prismatic/Eagle)
    fusion_grid: int = 8  # channel fusion: side of the common token grid
    projector_depth: int = 3  # Linear layers per projector (VSRE 3, LLaVA 2), GELU between
    projector_hidden: int = 0  # width of the projector's hidden layers; 0 = LM hidden size
    image_pos_embed: bool = True  # learned row/col + fixed 2D sincos added to image tokens
    # Object tokens read from the SAM map by learned queries, after each image's grid tokens
    # (encoders/objects.py); 0: none. Needs the sam family.
    object_tokens: int = 0
    lm: LMConfig = field(default_factory=LMConfig)  # the language model
    tokenizer: str = "bpe"  # "bpe": local byte-level BPE; "lm": the LM directory's tokenizer
    tokenizer_vocab: int = 1024  # vocabulary size of the local BPE tokenizer
    tokenizer_corpus: str = ""  # optional text file (one text a line) added to the BPE corpus
    tokenizer_text: int = 2  # the BPE's training text (core.tokenizer.TEXT_VERSIONS)
    prompt: str = "vsre"  # prompt format registry id (see prompts.py)
    lora: LoraSettings = field(default_factory=LoraSettings)  # stage-2 LoRA settings
    source_llava: str = ""  # LLaVA checkpoint whose CLIP tower, projector and LM are reused
    verdict_bias: float = 0.0  # added to the yes/no log-odds when answering; fitted on val
    # Dtype of the parts loaded from checkpoints (frozen unless a stage trains them): "auto"
    # keeps each checkpoint's own dtype, else float32 | bfloat16 | float16. Parts built at
    # random and every trained part are float32 (master weights), on CPU and CUDA alike.
    dtype: str = "auto"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Inverse of to_dict; unknown fields are an error, so typos never pass silently."""
        data = copy.deepcopy(data)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown ModelConfig fields {unknown}; known: {sorted(known)}")
        data["encoders"] = [EncoderConfig(**e) for e in data.get("encoders", [])]
        data["lm"] = LMConfig(**data.get("lm", {}))
        data["lora"] = LoraSettings(**data.get("lora", {}))
        return cls(**data)


@dataclass
class EngineConfig:
    """How the inference engine runs: device, precision, threads, caches, decoding."""

    device: str = "auto"  # "auto" (CUDA if available, else CPU), "cpu", "cuda", "cuda:1"
    dtype: str = "auto"  # "auto" (bf16/fp16 on CUDA, fp32 on CPU), "float32", "bfloat16", ...
    threads: int = 0  # torch intra-op threads; 0 leaves torch's default
    feature_cache_size: int = 64  # images whose fused visual tokens are kept (LRU)
    prefix_cache_size: int = 8  # image sets whose prefix KV cache is kept (LRU)
    reuse_prefix: bool = True  # False recomputes the whole prompt per question (for checks)
    max_batch: int = 32  # sequences per forward pass
    # Record the static-shape parts (one frame's vision side, short LM passes; core.traced)
    # when the engine loads a model itself (a directory or preset id): one question about a
    # frame takes about 0.6x the time. A model object passed in (which a training loop may
    # still change) always runs eagerly.
    trace: bool = True
    max_new_tokens: int = 16  # greedy decoding limit for numbers and free text
    # Answers name their objects with the model's grounding head (a box each; with depth, a 3D
    # place and measured metric answers). False skips it: no head time on a new frame.
    grounding: bool = True
    # The head and the geometry of a batch's frames run on a second thread while the encoders
    # and the LM work (torch and numpy release the GIL): a grounded answer waits for the slower
    # of the two, not for both. False runs them after the LM, on the caller's thread.
    parallel_grounding: bool = True
    max_question_chars: int = 2000  # longer questions are refused as BAD_QUESTION
    max_images: int = 8  # more images in one query are refused as BAD_IMAGE
    # Arguments of a preset model id (vsre-paper: paths_file; llava-start: llava_path, extra);
    # ignored when the model is a saved directory.
    preset_args: dict[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Presets

PresetFn = Callable[..., ModelConfig]
PRESETS: dict[str, PresetFn] = {}


def register_preset(name: str) -> Callable[[PresetFn], PresetFn]:
    def wrap(fn: PresetFn) -> PresetFn:
        PRESETS[name] = fn
        return fn

    return wrap


def _vit(hidden: int, layers: int, heads: int, image: int, patch: int) -> dict[str, Any]:
    return {
        "hidden_size": hidden,
        "intermediate_size": 4 * hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "image_size": image,
        "patch_size": patch,
    }


# The four encoder families of the fused vision side, in token order.
ENCODER_FAMILIES = ("clip", "siglip", "sam", "dinov2")


def tiny_encoders(
    hidden: int = 128, layers: int = 4, heads: int = 4, image: int = 64, patch: int = 8
) -> list[EncoderConfig]:
    """Small random stand-ins for the four families, sized for a CPU."""
    vit = _vit(hidden, layers, heads, image, patch)
    sam = {
        "hidden_size": hidden,
        "mlp_dim": 4 * hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "image_size": image,
        "patch_size": patch,
        "output_channels": hidden,
        # Global attention in every other block; windows cover a quarter of the grid.
        "global_attn_indexes": list(range(1, layers, 2)),
        "window_size": max(2, image // patch // 2),
        "num_pos_feats": hidden // 2,
        # SamVisionConfig's default is 1e-10, fit only for loading weights: from scratch it
        # leaves the map at ~1e-21 and the branch dead until the optimiser has grown it.
        "initializer_range": 0.02,
    }
    return [
        EncoderConfig("clip", hf_config=dict(vit)),
        EncoderConfig("siglip", hf_config=dict(vit)),
        EncoderConfig("sam", hf_config=sam, adapter_stages=1),
        EncoderConfig("dinov2", hf_config={**vit, "mlp_ratio": 4}),
    ]


def tiny_lm(hidden: int = 256, layers: int = 4, heads: int = 4, ffn: int = 1024) -> LMConfig:
    """A small Llama; initializer_range 1/sqrt(hidden), since 0.02 does not learn at this width."""
    return LMConfig(
        family="llama",
        hf_config={
            "hidden_size": hidden,
            "intermediate_size": ffn,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "num_key_value_heads": heads,
            "max_position_embeddings": 2048,
            "tie_word_embeddings": True,
            "initializer_range": 1.0 / math.sqrt(hidden),
        },
    )


@register_preset("vsre-tiny")
def _tiny() -> ModelConfig:
    return ModelConfig(
        name="vsre-tiny",
        encoders=tiny_encoders(),
        fusion="sequence",
        projector_depth=2,
        lm=tiny_lm(),
    )


@register_preset("vsre-tiny-channel")
def _tiny_channel() -> ModelConfig:
    return ModelConfig(
        name="vsre-tiny-channel",
        encoders=tiny_encoders(),
        fusion="channel",
        fusion_grid=8,
        projector_depth=2,
        lm=tiny_lm(),
    )


@register_preset("vsre-micro")
def _micro() -> ModelConfig:
    """The 1.65M-parameter recipe that learned relations on 2 CPU cores (learnability notes):
    one CLIP-style ViT (patch 8, width 128, 4 layers), all 64 patch tokens, Linear-GELU-Linear,
    2D positions on image tokens, Llama 128 x 3 with 4 heads and FFN 512, eager attention."""
    lm = tiny_lm(hidden=128, layers=3, heads=4, ffn=512)
    lm.attn_implementation = "eager"
    return ModelConfig(
        name="vsre-micro",
        encoders=[tiny_encoders(hidden=128, layers=4, heads=4)[0]],
        fusion="sequence",
        projector_depth=2,
        lm=lm,
    )


# Keys of a paths file that name directories; the rest (lm_family) are plain values.
PATH_KEYS = ("clip", "siglip", "sam", "dinov2", "lm", "llava")


def _read_paths(paths_file: str | Path, needed: list[str]) -> dict[str, str]:
    """A paths YAML; a relative directory in it is relative to the file, not to the cwd."""
    path = Path(paths_file).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"preset paths file {path} does not exist; write a YAML with keys {needed} "
            "giving local checkpoint directories"
        )
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping with keys {needed}")
    missing = [k for k in needed if not data.get(k)]
    if missing:
        raise ValueError(f"{path}: missing keys {missing}; expected {needed}")
    out = {}
    for key, value in data.items():
        if key in PATH_KEYS and value:
            value = (path.parent / Path(str(value)).expanduser()).resolve()
        out[key] = str(value)
    return out


@register_preset("vsre-paper")
def _paper(paths_file: str | Path = "config/vsre-paper-paths.yaml") -> ModelConfig:
    """The paper's four frozen encoders and a LLaVA-1.5-sized LM, from local directories.

    The YAML names directories: clip (clip-vit-large-patch14-336), siglip
    (siglip-so400m-patch14-384), sam (sam-vit-base), dinov2 (dinov2-base) and lm (a causal
    LM with its tokenizer, e.g. LLaVA-1.5's Vicuna in Llama format; lm_family: qwen2 for
    Qwen2). Full checkpoints (CLIPModel, SiglipModel, SamModel) load their vision part.
    """
    paths = _read_paths(paths_file, ["clip", "siglip", "sam", "dinov2", "lm"])
    return ModelConfig(
        name="vsre-paper",
        encoders=[
            EncoderConfig("clip", path=paths["clip"]),
            EncoderConfig("siglip", path=paths["siglip"]),
            EncoderConfig("sam", path=paths["sam"], adapter_stages=2),
            # DINOv2's processor crops to 224 (16x16 patches + CLS = the paper's 257 tokens).
            EncoderConfig("dinov2", path=paths["dinov2"], image_size=224),
        ],
        fusion="sequence",
        projector_depth=3,
        image_pos_embed=False,
        lm=LMConfig(family=paths.get("lm_family", "llama"), path=paths["lm"]),
        tokenizer="lm",
    )


@register_preset("llava-start")
def _llava(llava_path: str | Path = "", extra: str | Path = "") -> ModelConfig:
    """Start from a transformers-format LLaVA checkpoint: its CLIP tower, projector and LM.

    `extra` may name a paths YAML with siglip/sam/dinov2 directories to fuse in beside CLIP.
    """
    if not llava_path:
        raise ValueError("preset 'llava-start' needs llava_path=<LLaVA checkpoint directory>")
    encoders = [EncoderConfig("clip", feature_layer=-2)]
    if extra:
        paths = _read_paths(extra, [])
        for family in ("siglip", "sam", "dinov2"):
            if paths.get(family):
                encoders.append(EncoderConfig(family, path=paths[family]))
    return ModelConfig(
        name="llava-start",
        encoders=encoders,
        fusion="sequence",
        projector_depth=2,
        image_pos_embed=False,
        tokenizer="lm",
        source_llava=str(llava_path),
    )


# Preset arguments that name files or directories: resolved relative to the file naming them.
PRESET_PATH_ARGS = ("paths_file", "llava_path", "extra")


def parse_preset_args(items: list[str]) -> dict[str, str]:
    """["KEY=VALUE", ...] (the command line's and ROS parameters' form) -> {KEY: VALUE}."""
    out = {}
    for item in items:
        key, sep, value = str(item).partition("=")
        if not sep or not key.strip():
            raise ValueError(f"preset argument {item!r} is not KEY=VALUE (e.g. paths_file=p.yaml)")
        out[key.strip()] = value.strip()
    return out


def resolve_preset_paths(args: dict[str, Any], base: str | Path) -> dict[str, Any]:
    """The arguments with relative file/directory values (PRESET_PATH_ARGS) made relative to
    `base`, the directory of the file that names them."""
    out = dict(args)
    for key in PRESET_PATH_ARGS:
        if out.get(key):
            value = Path(str(out[key])).expanduser()
            out[key] = str(value if value.is_absolute() else (Path(base) / value).resolve())
    return out


MODEL_FILE_SUFFIXES = (".yaml", ".yml")


def is_model_file(ref: str | Path) -> bool:
    """Whether a model reference is a model file (a preset id with its arguments)."""
    path = Path(str(ref))
    return path.suffix in MODEL_FILE_SUFFIXES and path.is_file()


def read_model_file(path: str | Path) -> tuple[str, dict[str, Any]]:
    """A model file -> (preset id, preset arguments), paths relative to the file.

    A model file lets every entry point that takes a model reference (`vsre ask --model`,
    the server's `model` parameter, a training config's `model`) name a preset with its
    arguments, e.g. `{preset: vsre-paper, paths_file: vsre-paper-paths.yaml}`.
    """
    path = Path(path)
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict) or not data.get("preset"):
        raise ValueError(
            f"{path}: a model file is a mapping with 'preset' (one of {sorted(PRESETS)}) and "
            "the preset's arguments, e.g. {preset: vsre-paper, paths_file: paths.yaml}"
        )
    preset = str(data.pop("preset"))
    if preset not in PRESETS:
        raise ValueError(f"{path}: unknown preset {preset!r}; known presets: {sorted(PRESETS)}")
    return preset, resolve_preset_paths(data, path.resolve().parent)


def preset_config(preset_id: str, **overrides: Any) -> ModelConfig:
    """Resolve a preset; keyword overrides replace ModelConfig fields or go to the preset."""
    if preset_id not in PRESETS:
        raise ValueError(f"unknown preset {preset_id!r}; known presets: {sorted(PRESETS)}")
    field_names = {f.name for f in dataclasses.fields(ModelConfig)}
    preset_kwargs = {k: v for k, v in overrides.items() if k not in field_names}
    try:
        config = PRESETS[preset_id](**preset_kwargs)
    except TypeError as err:
        raise ValueError(
            f"preset {preset_id!r} does not take {sorted(preset_kwargs)}: {err}; "
            f"ModelConfig fields: {sorted(field_names)}"
        ) from None
    for key, value in overrides.items():
        if key in field_names:
            setattr(config, key, value)
    return config
