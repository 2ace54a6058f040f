"""VSREModel: vision encoders -> fusion -> causal LM, with save/load, freezing and batching.

Training batch format (what `forward` takes, what `build_batch` makes):
- `pixel_values`: dict encoder name -> float tensor [N, 3, S, S], normalised for that encoder
  (`preprocess`); N counts every image of the batch, row by row, in prompt order.
- `input_ids`: long [B, L]; each image appears as `num_image_tokens` copies of
  `image_token_id`, which `forward` replaces with that image's fused visual tokens.
- `attention_mask`: long [B, L], 1 for real tokens, 0 for right padding.
- `labels`: long [B, L], the token ids to predict (answer tokens and the end-of-answer token),
  -100 everywhere else; the LM shifts them, so the loss is on answer tokens only.

Directory layout of `save_pretrained` (all read back and validated by `from_pretrained`):
  vsre_config.json     {"format": "vsre-model/1", "config": ModelConfig with resolved parts}
  model.safetensors    every weight (tied weights stored once)
  tokenizer/           the tokenizer (tokenizer.json, tokenizer_config.json, ...)
  adapter/             optional LoRA adapter of the LM (peft's adapter_config.json + weights)
  grounding.safetensors  optional exported grounding head (`core.grounding`), in `heads`
"""

from __future__ import annotations

import copy
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from vsre_ros.core.checkpoints import checkpoint_dtype, dtype_of, read_checkpoint_config
from vsre_ros.core.config import FORMAT, ModelConfig, preset_config
from vsre_ros.core.encoders import VisionEncoder, build_encoder, encoder_spec
from vsre_ros.core.encoders import resolved_hf_config as encoder_hf_config
from vsre_ros.core.encoders.fused import build_fusion
from vsre_ros.core.encoders.objects import ObjectTokens
from vsre_ros.core.encoders.preprocess import read_prep
from vsre_ros.core.lm import build_lm, context_length, lm_spec
from vsre_ros.core.lm import resolved_hf_config as lm_hf_config
from vsre_ros.core.prompts import IMAGE, prompt_format
from vsre_ros.core.tokenizer import train_bpe

log = logging.getLogger(__name__)

CONFIG_FILE = "vsre_config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_DIR = "tokenizer"
ADAPTER_DIR = "adapter"
ADAPTER_META = "vsre_adapter.json"  # beside the peft files: the verdict bias they answer with


class ModelLoadError(ValueError):
    """A saved model directory is missing a file, is corrupt or does not match its config."""


@dataclass
class VSREOutput:
    """What the training forward returns."""

    loss: torch.Tensor | None  # mean cross-entropy on the labelled (answer) tokens
    # [B, L, vocab]; with `labelled_logits_only`, only positions that predict a label are
    # computed and the others are 0
    logits: torch.Tensor
    attentions: tuple[torch.Tensor, ...] | None  # per layer [B, heads, L, L] (eager attention)
    image_embeds: torch.Tensor | None  # [N images, num_image_tokens, hidden]


def check_image(image: Any, index: int = 0) -> None:
    """Raise ValueError saying what is wrong unless `image` is a non-empty HxWx3 uint8 array."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image {index}: expected a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"image {index}: expected dtype uint8 RGB, got {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image {index}: expected shape HxWx3 (RGB), got {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image {index}: has zero size {image.shape}")


class VSREModel(nn.Module):
    """Four (or fewer) fused vision encoders feeding a causal LM through projectors."""

    def __init__(self, config: ModelConfig, tokenizer: PreTrainedTokenizerBase | None = None):
        super().__init__()
        if not config.encoders:
            raise ValueError("ModelConfig.encoders is empty; give at least one encoder")
        families = [e.family for e in config.encoders]
        if len(set(families)) != len(families):
            raise ValueError(f"each encoder family may appear once, got {families}")
        self.config = copy.deepcopy(config)
        self._base_verdict_bias: float | None = None  # set while an adapter is loaded
        # Parts read from a checkpoint directory that a stage has since trained (so a
        # save without them would lose the training): state-dict prefixes.
        self._touched: set[str] = set()
        self.prompt = prompt_format(config.prompt)
        llava = _load_llava(config.source_llava, config.dtype) if config.source_llava else None

        self.tokenizer = tokenizer if tokenizer is not None else self._make_tokenizer(llava)
        if self.tokenizer.convert_tokens_to_ids(IMAGE) in (None, self.tokenizer.unk_token_id):
            # The LM's rows grow to fit it below (`_fit_vocab`), and are saved so.
            self.tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE]})
        self.image_token_id = int(self.tokenizer.convert_tokens_to_ids(IMAGE))
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

        encoder_cfgs = {e.family: e for e in config.encoders}
        encoders: dict[str, VisionEncoder] = {}
        for name, ecfg in encoder_cfgs.items():
            if llava is not None and name == "clip" and not ecfg.path and not ecfg.hf_config:
                encoders[name] = VisionEncoder(
                    encoder_spec("clip"),
                    llava.model.vision_tower,
                    int(llava.config.vision_feature_layer),
                    ecfg.image_size,
                    read_prep(config.source_llava, ecfg.image_size or _native(llava)),
                )
            else:
                encoders[name] = build_encoder(ecfg, config.dtype)
        self.encoders = nn.ModuleDict(encoders)
        if llava is not None:
            self.lm = _llava_lm(llava, config)
        else:
            self.lm = build_lm(config.lm, len(self.tokenizer), config.dtype)
        self._fit_vocab()
        hidden = int(self.lm.config.hidden_size)
        self.fusion = build_fusion(
            config.fusion,
            encoders,
            encoder_cfgs,
            hidden,
            config.projector_depth,
            config.projector_hidden,
            config.image_pos_embed,
            config.fusion_grid,
        )
        if llava is not None:
            _copy_llava_projector(llava, self.fusion)
        self.objects = _object_tokens(config, encoders, hidden)
        self.num_object_tokens = config.object_tokens
        self.num_image_tokens = int(self.fusion.num_tokens) + self.num_object_tokens
        self.hidden_size = hidden
        self.eos_token_id = int(self.tokenizer.eos_token_id)
        self.pad_token_id = int(self.tokenizer.pad_token_id)
        # Exported heads saved in their own files beside the weights (a plain dict, so they
        # stay out of the state dict and `model.safetensors` reads the same with or without).
        self.heads: dict[str, nn.Module] = {}

    # ----------------------------------------------------------------------------- building

    def _fit_vocab(self) -> None:
        """Grow the LM's embedding rows (and head) to hold every tokenizer id, <image> too.

        A checkpoint's vocabulary is its config's (real Vicuna: 32000 rows; llava-hf: 32064
        rows for 32002 tokens); only a tokenizer longer than the rows resizes, and the new
        rows are the mean of the old ones, so the same config and weights rebuild exactly.
        """
        table = self.lm.get_input_embeddings()
        rows, need = int(table.num_embeddings), len(self.tokenizer)
        if need <= rows:
            return
        if table.weight.is_meta:  # a saved model is being rebuilt; its rows were saved
            raise ModelLoadError(f"saved LM has {rows} embedding rows for {need} tokens")
        with torch.no_grad():
            self.lm.resize_token_embeddings(need, mean_resizing=False)
            for module in {self.lm.get_input_embeddings(), self.lm.get_output_embeddings()}:
                if module is not None:
                    module.weight[rows:] = module.weight[:rows].float().mean(0)
        log.info("LM vocabulary resized from %d to %d rows (tokenizer length)", rows, need)

    def _make_tokenizer(self, llava: nn.Module | None) -> PreTrainedTokenizerBase:
        if self.config.tokenizer == "bpe":
            extra: list[str] = []
            if self.config.tokenizer_corpus:
                corpus = Path(self.config.tokenizer_corpus)
                if not corpus.is_file():
                    raise FileNotFoundError(f"tokenizer_corpus {corpus} does not exist")
                extra = corpus.read_text(encoding="utf-8").splitlines()
            return train_bpe(self.config.tokenizer_vocab, extra, self.config.tokenizer_text)
        if self.config.tokenizer == "lm":
            path = self.config.source_llava or self.config.lm.path
            if not path:
                raise ValueError('tokenizer "lm" needs lm.path (or source_llava) to read from')
            return _load_tokenizer(Path(path))
        raise ValueError(f"unknown tokenizer {self.config.tokenizer!r}; known: ['bpe', 'lm']")

    @classmethod
    def from_config(cls, config: ModelConfig) -> VSREModel:
        return cls(config)

    @classmethod
    def from_preset(cls, preset_id: str, **overrides: Any) -> VSREModel:
        """Build a preset (random init for tiny presets, local checkpoints for the others)."""
        return cls(preset_config(preset_id, **overrides))

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.lm.parameters()).dtype

    @property
    def model_id(self) -> str:
        return self.config.name

    def resolved_config(self) -> ModelConfig:
        """The config with every part's full transformers config and no source paths."""
        cfg = copy.deepcopy(self.config)
        for ecfg in cfg.encoders:
            ecfg.hf_config = encoder_hf_config(self.encoders[ecfg.family])
            ecfg.path = ""
            ecfg.image_size = self.encoders[ecfg.family].image_size
            ecfg.feature_layer = self.encoders[ecfg.family].feature_layer
            prep = self.encoders[ecfg.family].prep
            ecfg.preprocess = prep.to_dict() if prep is not None else {}
        base = self.base_lm()
        cfg.lm.family = _lm_family(base)
        cfg.lm.hf_config = lm_hf_config(base)
        cfg.lm.path = ""
        cfg.tokenizer = "saved"
        cfg.tokenizer_corpus = ""
        cfg.source_llava = ""
        return cfg

    # ------------------------------------------------------------------------- save / load

    def source_parts(self) -> dict[str, str]:
        """Parts still exactly as read from a checkpoint directory: {state-dict prefix: dir}."""
        out = {}
        for ecfg in self.config.encoders:
            if ecfg.path:
                out[f"encoders.{ecfg.family}."] = ecfg.path
            elif self.config.source_llava and ecfg.family == "clip" and not ecfg.hf_config:
                out["encoders.clip."] = self.config.source_llava
        if self.config.lm.path or self.config.source_llava:
            out["lm."] = self.config.lm.path or self.config.source_llava
        return {k: v for k, v in out.items() if k not in self._touched}

    def save_pretrained(self, directory: str | Path, standalone: bool = True) -> Path:
        """Write config, weights, tokenizer and (if attached) the LoRA adapter to `directory`.

        `standalone=False` (what a training stage writes) leaves out the parts still exactly
        as read from their checkpoint directories (`source_parts`): the config keeps those
        directories as the frozen base, and the weights file holds only what was built or
        trained here (projectors, object tokens, trained encoders; the LoRA adapter beside).
        A model without such parts is saved whole either way.
        """
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        sources = {} if standalone else self.source_parts()
        if sources:
            config = copy.deepcopy(self.config)
            config.tokenizer_corpus = ""  # the saved tokenizer is read back, not retrained
            payload = {
                "format": FORMAT,
                "config": config.to_dict(),
                "base": sources,
                "touched": sorted(self._touched),
            }
        else:
            payload = {"format": FORMAT, "config": self.resolved_config().to_dict()}
        (out / CONFIG_FILE).write_text(json.dumps(payload, indent=2))
        self.save_weights(out / WEIGHTS_FILE, skip=tuple(sources))
        self.tokenizer.save_pretrained(str(out / TOKENIZER_DIR))
        if self.has_lora:
            # The resized embedding rows are base weights (saved above), not the adapter's.
            self.lm.save_pretrained(str(out / ADAPTER_DIR), save_embedding_layers=False)
            meta = {"format": FORMAT, "verdict_bias": float(self.config.verdict_bias)}
            (out / ADAPTER_DIR / ADAPTER_META).write_text(json.dumps(meta, indent=2))
        if "grounding" in self.heads:
            self.heads["grounding"].save(out)
        return out

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> VSREModel:
        """Load a directory written by save_pretrained; every file is checked."""
        root = Path(directory)
        if not root.is_dir():
            raise ModelLoadError(f"model directory {root} does not exist")
        config_path = root / CONFIG_FILE
        if not config_path.is_file():
            raise ModelLoadError(f"{config_path} is missing; not a VSRE model directory")
        try:
            payload = json.loads(config_path.read_text())
            if payload.get("format") != FORMAT:
                raise ModelLoadError(
                    f"{config_path}: format {payload.get('format')!r}, expected {FORMAT!r}"
                )
            config = ModelConfig.from_dict(payload["config"])
        except ModelLoadError:
            raise
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as err:
            raise ModelLoadError(f"{config_path} is corrupt: {err}") from None
        tok_dir = root / TOKENIZER_DIR
        if not tok_dir.is_dir():
            raise ModelLoadError(f"tokenizer directory {tok_dir} is missing")
        tokenizer = _load_tokenizer(tok_dir)
        if payload.get("base"):  # a stage's output: the frozen base from its directories
            model = cls(config, tokenizer=tokenizer)
            model._touched = set(payload.get("touched", []))
            model._assign_weights(root / WEIGHTS_FILE, skip=tuple(model.source_parts()))
            if (root / ADAPTER_DIR).is_dir():
                model.load_adapter(root / ADAPTER_DIR)
            return model._load_heads(root)
        from accelerate import init_empty_weights

        # Built without memory for its parameters (the meta device), then the file's tensors
        # become the parameters in their saved dtypes: the peak is about the file's size.
        with init_empty_weights(include_buffers=False):
            model = cls(config, tokenizer=tokenizer)
        model._assign_weights(root / WEIGHTS_FILE)
        if (root / ADAPTER_DIR).is_dir():
            model.load_adapter(root / ADAPTER_DIR)
        return model._load_heads(root)

    def _load_heads(self, root: Path) -> VSREModel:
        from vsre_ros.core.grounding import GroundingLoadError, load_grounding

        try:
            head = load_grounding(root, self.hidden_size, self.num_image_tokens)
        except GroundingLoadError as err:
            raise ModelLoadError(str(err)) from None
        if head is not None:
            self.heads["grounding"] = head
        return self

    def _assign_weights(self, path: Path, skip: tuple[str, ...] = ()) -> None:
        """Make the tensors of safetensors file `path` this model's weights, checked; names
        starting with a `skip` prefix are already loaded (from their checkpoints)."""
        if not path.is_file():
            raise ModelLoadError(f"weights file {path} is missing")
        self._retie()  # ties made while building on meta are lost (new meta parameters)
        expected = {
            k: v for k, v in self.state_dict().items() if not skip or not k.startswith(skip)
        }
        aliases = _tied_aliases(self)
        try:
            with safe_open(str(path), framework="pt") as handle:
                keys = set(handle.keys())
                missing = sorted(set(expected) - keys - aliases)
                unexpected = sorted(keys - set(expected))
                if missing or unexpected:
                    raise ModelLoadError(
                        f"{path} does not match the config: {len(missing)} missing tensors "
                        f"{missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]}"
                    )
                state = {}
                for key in [k for k in expected if k in keys]:
                    shape = tuple(handle.get_slice(key).get_shape())
                    if shape != tuple(expected[key].shape):
                        raise ModelLoadError(
                            f"{path}: tensor {key} has shape {shape}, the config expects "
                            f"{tuple(expected[key].shape)}"
                        )
                    state[key] = handle.get_tensor(key)
        except (SafetensorError, OSError) as err:
            raise ModelLoadError(f"{path} is corrupt or not a safetensors file: {err}") from None
        self.load_state_dict(state, strict=False, assign=True)
        self._retie()
        left = [n for n, p in self.named_parameters() if p.is_meta]
        left += [n for n, b in self.named_buffers() if b.is_meta]
        if left:
            raise ModelLoadError(f"{path}: tensors not loaded: {left[:3]}")

    def _retie(self) -> None:
        if getattr(self.base_lm().config, "tie_word_embeddings", False):
            self.base_lm().tie_weights()

    def save_weights(self, path: str | Path, skip: tuple[str, ...] = ()) -> None:
        """Write the base weights (tied tensors once) as the safetensors file `load_weights`
        reads; names starting with a `skip` prefix are left out."""
        state = _unique_tensors(self.base_state_dict())
        state = {k: v for k, v in state.items() if not k.startswith(skip) or not skip}
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(path))

    def load_weights(self, path: str | Path) -> None:
        """Load a safetensors file, checking names and shapes against this model."""
        path = Path(path)
        if not path.is_file():
            raise ModelLoadError(f"weights file {path} is missing")
        try:
            loaded = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as err:
            raise ModelLoadError(f"{path} is corrupt or not a safetensors file: {err}") from None
        expected = _unique_tensors(self.base_state_dict())
        missing = sorted(set(expected) - set(loaded))
        unexpected = sorted(set(loaded) - set(expected))
        if missing or unexpected:
            raise ModelLoadError(
                f"{path} does not match the config: {len(missing)} missing tensors "
                f"{missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]}"
            )
        for key, tensor in expected.items():
            if tuple(loaded[key].shape) != tuple(tensor.shape):
                raise ModelLoadError(
                    f"{path}: tensor {key} has shape {tuple(loaded[key].shape)}, the config "
                    f"expects {tuple(tensor.shape)}"
                )
        if self.has_lora:
            raise ValueError("drop the LoRA adapter (drop_adapter) before loading base weights")
        result = self.load_state_dict(loaded, strict=False)
        tied = set(self.state_dict()) - set(expected)
        if set(result.missing_keys) - tied:
            raise ModelLoadError(f"{path}: tensors not loaded: {result.missing_keys[:3]}")

    # -------------------------------------------------------------------------------- LoRA

    @property
    def has_lora(self) -> bool:
        from peft import PeftModel

        return isinstance(self.lm, PeftModel)

    def base_lm(self) -> nn.Module:
        return self.lm.get_base_model() if self.has_lora else self.lm

    def base_state_dict(self) -> dict[str, torch.Tensor]:
        """State dict without LoRA tensors, under the plain (un-wrapped) LM's names."""
        if not self.has_lora:
            return self.state_dict()
        out = {}
        for key, value in self.state_dict().items():
            if "lora_" in key:
                continue
            out[key.replace("lm.base_model.model.", "lm.").replace(".base_layer.", ".")] = value
        return out

    def attach_lora(self) -> None:
        """Wrap the LM with a fresh LoRA adapter (peft) from config.lora."""
        from peft import LoraConfig, get_peft_model

        if self.has_lora:
            return
        s = self.config.lora
        lora = LoraConfig(
            r=s.r,
            lora_alpha=s.alpha,
            lora_dropout=s.dropout,
            target_modules=list(s.target_modules),
            task_type="CAUSAL_LM",
        )
        self.lm = get_peft_model(self.lm, lora)

    def load_adapter(self, directory: str | Path) -> None:
        """Replace any LoRA adapter by the one saved in `directory` (peft layout).

        The verdict bias becomes the adapter's own (`ADAPTER_META`, written by
        `save_pretrained`): a bias fitted for the base weights does not hold once an adapter
        changes them. An adapter saved without that file answers uncalibrated (bias 0).
        `drop_adapter` gives the model back the bias it had before.
        """
        from peft import PeftModel

        path = Path(directory)
        if not (path / "adapter_config.json").is_file():
            raise ModelLoadError(f"{path / 'adapter_config.json'} is missing; not a LoRA adapter")
        bias = _adapter_bias(path)
        self.drop_adapter()
        try:
            self.lm = PeftModel.from_pretrained(self.lm, str(path))
        except Exception as err:  # peft raises several types for bad files
            raise ModelLoadError(f"LoRA adapter in {path} does not load: {err}") from None
        self.lm.to(self.device)
        self._base_verdict_bias = self.config.verdict_bias
        self.config.verdict_bias = bias

    def drop_adapter(self) -> None:
        if self.has_lora:
            self.lm = self.lm.unload()
        if self._base_verdict_bias is not None:
            self.config.verdict_bias = self._base_verdict_bias
            self._base_verdict_bias = None

    # ----------------------------------------------------------------------------- freezing

    def freeze(self, stage: int, lm: str | None = None, encoders: bool = False) -> dict:
        """Choose what trains and log it.

        stage 0: everything (training a tiny model from scratch);
        stage 1: adapters, projectors and image positions (the fusion);
        stage 2: the fusion plus the LM as `lm` says: "lora" (default, peft), "full", "frozen".
        `encoders=True` also trains the vision encoders. Returns {part: trainable count}.
        """
        if stage not in (0, 1, 2):
            raise ValueError(f"unknown stage {stage}; known: 0 (all), 1 (fusion), 2 (+LM)")
        lm_mode = lm or {0: "full", 1: "frozen", 2: "lora"}[stage]
        if lm_mode not in ("lora", "full", "frozen"):
            raise ValueError(f"unknown lm mode {lm_mode!r}; known: lora, full, frozen")
        if lm_mode == "lora":
            self.attach_lora()
        self.requires_grad_(False)
        self.fusion.requires_grad_(True)
        if self.objects is not None:  # the object tokens bridge the SAM map to the LM
            self.objects.requires_grad_(True)
        if stage == 0 or encoders:
            self.encoders.requires_grad_(True)
        if stage == 0 or encoders:
            self._touched |= {f"encoders.{name}." for name in self.encoders}
        if lm_mode == "full":
            self._touched.add("lm.")
            self.lm.requires_grad_(True)
        elif lm_mode == "lora":
            for name, param in self.lm.named_parameters():
                param.requires_grad_("lora_" in name)
        self.float_trainable()
        summary = {
            "encoders": _count(self.encoders),
            "fusion": _count(self.fusion),
            "objects": 0 if self.objects is None else _count(self.objects),
            "lm": _count(self.lm),
        }
        total = sum(p.numel() for p in self.parameters())
        log.info(
            "stage %d (lm=%s, encoders=%s): trainable %s of %d parameters",
            stage,
            lm_mode,
            stage == 0 or encoders,
            summary,
            total,
        )
        return summary

    def float_trainable(self) -> None:
        """The dtype policy's second half: every trainable parameter is float32 (master
        weights; frozen parts keep the checkpoint's or the requested dtype). The forward casts
        at each part's input, so the mix runs on CPU and CUDA alike."""
        with torch.no_grad():
            for param in self.parameters():
                if param.requires_grad and param.dtype != torch.float32:
                    param.data = param.data.float()

    # --------------------------------------------------------------------- preprocessing

    def preprocess(self, images: Sequence[np.ndarray]) -> dict[str, torch.Tensor]:
        """HxWx3 uint8 images -> per-encoder normalised pixel tensors [N, 3, S, S].

        Images are converted once; each encoder's resize and normalisation run batched on
        tensors (images of equal size are resized together). The resize runs once per encoder
        size, from the camera's size, in uint8 on the CPU (antialiased bilinear, rounded to
        the nearest level: a 640x480 frame takes a tenth of the float resize's time), so only
        the small result reaches the device; the same path on CPU and CUDA.
        """
        if len(images) == 0:
            raise ValueError("no images to preprocess")
        for i, image in enumerate(images):
            check_image(image, i)
        device = self.device
        groups: dict[tuple[int, int], list[int]] = {}
        for i, image in enumerate(images):
            groups.setdefault(image.shape[:2], []).append(i)
        batches = {  # uint8 [n, 3, H, W] views of the HWC pixels (channels-last strides)
            hw: torch.from_numpy(np.stack([images[i] for i in idx])).permute(0, 3, 1, 2)
            for hw, idx in groups.items()
        }
        resized: dict[int, torch.Tensor] = {}
        out = {}
        for name, enc in self.encoders.items():
            if enc.prep is not None:  # the checkpoint's processor steps (PIL, as transformers)
                pixels = torch.stack([enc.prep.apply(image) for image in images])
                out[name] = pixels.to(device, enc.dtype)
                continue
            size = enc.image_size
            if size not in resized:
                full = torch.empty(len(images), 3, size, size, dtype=torch.uint8)
                for hw, idx in groups.items():
                    batch = batches[hw]
                    if hw != (size, size):
                        batch = F.interpolate(
                            batch, size=(size, size), mode="bilinear", antialias=True
                        )
                    full[idx] = batch
                resized[size] = full.to(device).float().div_(255.0)
            out[name] = ((resized[size] - enc.mean) / enc.std).to(enc.dtype)
        return out

    # ---------------------------------------------------------------------------- forward

    def encode_images(self, pixel_values: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per-encoder pixels -> fused visual tokens [N, num_image_tokens, hidden]."""
        maps = {name: enc(pixel_values[name]) for name, enc in self.encoders.items()}
        fusion_dtype = next(self.fusion.parameters()).dtype
        tokens = self.fusion({k: v.to(fusion_dtype) for k, v in maps.items()})
        if self.objects is None:
            return tokens
        sam = maps["sam"].to(next(self.objects.parameters()).dtype)
        return torch.cat([tokens, self.objects(sam).to(tokens.dtype)], dim=1)

    def embed(self, input_ids: torch.Tensor, image_embeds: torch.Tensor | None) -> torch.Tensor:
        """Token embeddings with image placeholders replaced by visual tokens, in order."""
        mask = input_ids == self.image_token_id
        table = self.lm.get_input_embeddings()
        embeds = table(input_ids.masked_fill(mask, 0))
        n_slots = int(mask.sum())
        if n_slots == 0:
            return embeds
        if image_embeds is None or image_embeds.numel() // self.hidden_size != n_slots:
            got = 0 if image_embeds is None else image_embeds.numel() // self.hidden_size
            raise ValueError(
                f"input_ids hold {n_slots} image-token slots "
                f"({n_slots / self.num_image_tokens:g} images of {self.num_image_tokens}) "
                f"but {got} visual tokens were given"
            )
        return embeds.masked_scatter(mask.unsqueeze(-1), image_embeds.to(embeds.dtype))

    def forward(
        self,
        input_ids: torch.Tensor,
        pixel_values: dict[str, torch.Tensor] | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool = False,
        image_embeds: torch.Tensor | None = None,
        labelled_logits_only: bool = False,
    ) -> VSREOutput:
        """Training forward; see the module docstring for the batch format.

        `labelled_logits_only` (with `labels`) applies the LM head only at the positions that
        predict a labelled token (the answer), which a training loss reads: the same loss and
        logits there, without the vocabulary projection of every image and question token."""
        if image_embeds is None and pixel_values is not None:
            image_embeds = self.encode_images(pixel_values)
        embeds = self.embed(input_ids, image_embeds)
        if labels is not None and labelled_logits_only:
            base = self.base_lm()
            out = base.get_decoder()(
                inputs_embeds=embeds,
                attention_mask=attention_mask,
                output_attentions=output_attentions,
                use_cache=False,
            )
            loss, logits = self.labelled_logits(out.last_hidden_state, labels)
        else:
            out = self.lm(
                inputs_embeds=embeds,
                attention_mask=attention_mask,
                labels=labels,
                output_attentions=output_attentions,
                use_cache=False,
            )
            loss, logits = out.loss, out.logits
        return VSREOutput(
            loss=loss,
            logits=logits,
            attentions=out.attentions if output_attentions else None,
            image_embeds=image_embeds,
        )

    def labelled_logits(
        self, hidden: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, logits) from the LM's last hidden states [B, L, H]: the LM head applied only
        at the positions that predict a label; logits elsewhere are zero."""
        # Position t predicts token t + 1, so t is read when label t + 1 is set.
        next_labels = F.pad(labels[:, 1:], (0, 1), value=-100)
        at = (next_labels != -100).nonzero(as_tuple=True)  # the labelled positions
        picked = self.base_lm().get_output_embeddings()(hidden[at])
        loss = F.cross_entropy(picked.float(), next_labels[at])
        logits = picked.new_zeros(*labels.shape, picked.shape[-1]).index_put(at, picked)
        return loss, logits

    # ------------------------------------------------------------------------- tokenizing

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False)) if text else []

    def prefix_ids(self, n_images: int) -> list[int]:
        """Token ids of the image prefix (identical for every question on the same images)."""
        ids = [] if self.tokenizer.bos_token_id is None else [int(self.tokenizer.bos_token_id)]
        for part in self.prompt.prefix_parts(n_images):
            if part == IMAGE:
                ids += [self.image_token_id] * self.num_image_tokens
            else:
                ids += self._encode(part)
        return ids

    def suffix_ids(self, question: str) -> list[int]:
        return self._encode(self.prompt.suffix(question))

    def answer_ids(self, answer: str, eos: bool = True) -> list[int]:
        return self._encode(self.prompt.answer_text(answer)) + ([self.eos_token_id] * eos)

    def verdict_tokens(
        self, positive: Sequence[str], negative: Sequence[str]
    ) -> tuple[list[int], list[int], list[int]]:
        """Where a yes/no verdict is read: (lead, positive ids, negative ids).

        A sentencepiece tokenizer (Llama-2, llava-hf) starts every answer with the same lone
        "▁"; `lead` is such a run of tokens shared by every answer word, fed after the
        question, and the verdict is the next token, the first one that differs. The engine
        answers from it and the trainer's verdict targets sit on it (one rule for both).
        """
        words = list(positive) + list(negative)
        encoded = {w: self.answer_ids(w, eos=False) for w in words}
        lead: list[int] = []
        for column in zip(*encoded.values(), strict=False):
            if len(set(column)) > 1:
                break
            lead.append(column[0])
        if any(len(ids) <= len(lead) for ids in encoded.values()):
            raise ValueError(f"the answer words {words} do not differ in any token")
        pos = sorted({encoded[w][len(lead)] for w in positive})
        neg = sorted({encoded[w][len(lead)] for w in negative})
        overlap = set(pos) & set(neg)
        if overlap:
            shared = [self.tokenizer.decode([i]) for i in sorted(overlap)]
            raise ValueError(f"yes and no words share first tokens {shared}")
        return lead, pos, neg

    @property
    def max_positions(self) -> int | None:
        """The LM's context length in tokens (None when its config does not say)."""
        return context_length(self.base_lm())

    def build_batch(self, examples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Collate examples {"images": [HxWx3 uint8], "question": str, "answer": str}.

        Returns pixel_values, input_ids, attention_mask, labels (see the module docstring)
        and answer_start [B]: the index of each row's first answer token.
        """
        images = []
        for i, ex in enumerate(examples):
            if not ex.get("images"):
                raise ValueError(f"example {i} has no images")
            images.extend(ex["images"])
        tokens = self.tokenize_rows(
            [(len(ex["images"]), ex["question"], ex["answer"]) for ex in examples]
        )
        return {"pixel_values": self.preprocess(images), **tokens}

    def tokenize_rows(self, rows: Sequence[tuple[int, str, str]]) -> dict[str, torch.Tensor]:
        """Token tensors for (number of images, question, answer) rows, right-padded.

        Returns input_ids, attention_mask, labels (-100 outside the answer tokens) and
        answer_start [B], all on the model's device.
        """
        ids, labels, starts = [], [], []
        for n_images, question, answer in rows:
            prompt = self.prefix_ids(n_images) + self.suffix_ids(question)
            answer_ids = self.answer_ids(answer)
            ids.append(prompt + answer_ids)
            labels.append([-100] * len(prompt) + answer_ids)
            starts.append(len(prompt))
        width = max(len(r) for r in ids)
        input_ids = torch.full((len(ids), width), self.pad_token_id, dtype=torch.long)
        label_t = torch.full((len(ids), width), -100, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for i, (row, lab) in enumerate(zip(ids, labels, strict=True)):
            input_ids[i, : len(row)] = torch.tensor(row)
            label_t[i, : len(lab)] = torch.tensor(lab)
            mask[i, : len(row)] = 1
        device = self.device
        return {
            "input_ids": input_ids.to(device),
            "attention_mask": mask.to(device),
            "labels": label_t.to(device),
            "answer_start": torch.tensor(starts, device=device),
        }

    def parameter_counts(self) -> dict[str, int]:
        def total(module: nn.Module | None) -> int:
            return 0 if module is None else sum(p.numel() for p in module.parameters())

        return {
            "encoders": total(self.encoders),
            "fusion": total(self.fusion),
            "objects": total(self.objects),
            "lm": total(self.lm),
        }


# --------------------------------------------------------------------------------- helpers


def _object_tokens(
    config: ModelConfig, encoders: dict[str, VisionEncoder], hidden: int
) -> ObjectTokens | None:
    if config.object_tokens < 0:
        raise ValueError(f"object_tokens must be >= 0, got {config.object_tokens}")
    if config.object_tokens == 0:
        return None
    if "sam" not in encoders:
        raise ValueError(
            f"object_tokens={config.object_tokens} reads the SAM branch, but the encoders are "
            f"{sorted(encoders)}; add the sam family or set object_tokens to 0"
        )
    sam = encoders["sam"]
    return ObjectTokens(sam.embed_dim, hidden, config.object_tokens, sam.grid)


def _tied_aliases(module: nn.Module) -> set[str]:
    """Names of parameters that are another name's tensor (tied embeddings)."""
    seen: set[int] = set()
    aliases = set()
    for name, param in module.named_parameters(remove_duplicate=False):
        if id(param) in seen:
            aliases.add(name)
        seen.add(id(param))
    return aliases


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def _unique_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop later names of tensors that share storage (tied embeddings are stored once)."""
    seen: set[tuple[int, int, tuple[int, ...]]] = set()
    out = {}
    for key, value in state.items():
        ident = (value.untyped_storage().data_ptr(), value.storage_offset(), tuple(value.shape))
        if value.numel() and ident in seen:
            continue
        seen.add(ident)
        out[key] = value
    return out


def _adapter_bias(path: Path) -> float:
    """The verdict bias saved beside a LoRA adapter; 0 (with a warning) when none was."""
    meta = path / ADAPTER_META
    if not meta.is_file():
        log.warning("%s is missing: the adapter answers uncalibrated (verdict bias 0)", meta)
        return 0.0
    try:
        bias = float(json.loads(meta.read_text())["verdict_bias"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise ModelLoadError(
            f"{meta} is corrupt ({err}); save the adapter again or delete the file to answer "
            "uncalibrated"
        ) from None
    if not math.isfinite(bias):
        raise ModelLoadError(f"{meta}: verdict_bias {bias} is not a finite number")
    return bias


def _lm_family(lm: nn.Module) -> str:
    model_type = getattr(lm.config, "model_type", "")
    for family in ("llama", "qwen2"):
        if lm_spec(family).model_type == model_type:
            return family
    raise ValueError(f"LM model_type {model_type!r} has no registered family")


def _load_tokenizer(path: Path) -> PreTrainedTokenizerBase:
    if (path / "tokenizer.model").is_file() and not (path / "tokenizer.json").is_file():
        # Only a sentencepiece model (Vicuna's layout): converting it needs both packages,
        # and transformers' own message for their absence names another one (tiktoken).
        absent = [m for m in ("sentencepiece", "google.protobuf") if not _importable(m)]
        if absent:
            raise ModelLoadError(
                f"tokenizer in {path} is a sentencepiece tokenizer.model only; reading it "
                f"needs {' and '.join(absent)} (pip install sentencepiece protobuf, both in "
                "requirements.txt)"
            )
    try:
        return AutoTokenizer.from_pretrained(str(path))
    except Exception as err:  # transformers raises OSError/ValueError/KeyError variants
        raise ModelLoadError(f"tokenizer in {path} does not load: {err}") from None


def _importable(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def _load_llava(path: str, dtype: str = "auto") -> nn.Module:
    from transformers import LlavaForConditionalGeneration

    root = Path(path)
    data = read_checkpoint_config(root, "a LLaVA checkpoint (llava_path)", ("llava",))
    want = dtype_of(dtype) or checkpoint_dtype(data) or torch.float32
    return LlavaForConditionalGeneration.from_pretrained(
        str(root), dtype=want, use_safetensors=True
    )


def _native(llava: nn.Module) -> int:
    return int(llava.config.vision_config.image_size)


def _llava_lm(llava: nn.Module, config: ModelConfig) -> nn.Module:
    """A causal LM holding LLaVA's language model and head (the same tensors, its own class)."""
    from accelerate import init_empty_weights

    text_cfg = llava.config.text_config
    family = "llama" if text_cfg.model_type == "llama" else text_cfg.model_type
    spec = lm_spec(family)
    text_cfg._attn_implementation = config.lm.attn_implementation
    with init_empty_weights(include_buffers=False):
        lm = spec.model_cls(text_cfg)
    lm.model.load_state_dict(llava.model.language_model.state_dict(), assign=True)
    lm.lm_head.load_state_dict(llava.lm_head.state_dict(), assign=True)
    config.lm.family = family
    return lm


def _copy_llava_projector(llava: nn.Module, fusion: nn.Module) -> None:
    proj = llava.model.multi_modal_projector
    ours = fusion.projectors["clip"]
    linears = [m for m in ours if isinstance(m, nn.Linear)]
    if len(linears) != 2:
        raise ValueError("llava-start needs projector_depth=2 to reuse LLaVA's projector")
    linears[0].load_state_dict(proj.linear_1.state_dict())
    linears[1].load_state_dict(proj.linear_2.state_dict())
