"""Vision encoders behind one interface, looked up by family id.

Every encoder maps normalised pixels [B, 3, S, S] to a feature map [B, C, H, W] and exposes
`embed_dim` (C), `grid` ((H, W)), `num_tokens`, `image_size` and its own `mean`/`std`, so the
fusion and projectors are sized from the parts. Families register an `EncoderSpec` in
`ENCODERS`; the per-family modules say how to read their transformers model's output.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vsre_ros.core.checkpoints import checkpoint_dtype, dtype_of, read_checkpoint_config
from vsre_ros.core.config import EncoderConfig
from vsre_ros.core.encoders.preprocess import ImagePrep, read_prep

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class EncoderSpec:
    """How one family is built, loaded and read."""

    family: str  # registry id
    config_cls: type  # transformers config class
    model_cls: type  # transformers model class (the vision tower alone)
    mean: tuple[float, float, float]  # normalisation mean of its preprocessing
    std: tuple[float, float, float]  # normalisation std of its preprocessing
    prefix_tokens: int  # leading non-patch tokens to drop (CLS); -1: output is a feature map
    adapter: str  # "none" or "conv" (a strided conv adapter for a large feature map)
    resize: str  # how another input size is accepted: "flag" (interpolate_pos_encoding),
    # "always" (the model interpolates by itself) or "fixed" (only its native size)
    model_types: tuple[str, ...] = ()  # config.json model_type of its checkpoints (full, tower)


ENCODERS: dict[str, EncoderSpec] = {}


def register_encoder(spec: EncoderSpec) -> EncoderSpec:
    ENCODERS[spec.family] = spec
    return spec


def encoder_spec(family: str) -> EncoderSpec:
    _load_families()
    if family not in ENCODERS:
        raise ValueError(f"unknown encoder family {family!r}; known: {sorted(ENCODERS)}")
    return ENCODERS[family]


def _load_families() -> None:
    # Imported lazily so the registry fills on first use without import cycles.
    from vsre_ros.core.encoders import clip, dinov2, sam, siglip  # noqa: F401


class VisionEncoder(nn.Module):
    """A transformers vision tower with the shared interface."""

    def __init__(
        self,
        spec: EncoderSpec,
        model: nn.Module,
        feature_layer: int = -1,
        image_size: int = 0,
        prep: ImagePrep | None = None,
    ):
        super().__init__()
        self.prep = prep  # the checkpoint's own preprocessing; None: squash (tiny presets)
        self.spec = spec
        self.family = spec.family
        self.model = model
        self.feature_layer = feature_layer
        cfg = model.config
        native = int(cfg.image_size)
        self.image_size = int(image_size or native)
        self._kwargs: dict[str, Any] = {}
        if self.image_size != native:
            if spec.resize == "fixed":
                raise ValueError(
                    f"{spec.family} encoder takes only its native image size {native}, "
                    f"not {self.image_size}; set image_size to 0 or {native}"
                )
            if spec.resize == "flag":
                self._kwargs["interpolate_pos_encoding"] = True
        self.patch_size = int(cfg.patch_size)
        side = self.image_size // self.patch_size
        self.grid = (side, side)
        self.embed_dim = int(cfg.output_channels if spec.prefix_tokens < 0 else cfg.hidden_size)
        mean, std = (prep.mean, prep.std) if prep is not None else (spec.mean, spec.std)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    @property
    def num_tokens(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Normalised pixels [B, 3, S, S] (any float dtype) -> feature map [B, embed_dim, H, W]
        in the encoder's dtype."""
        pixel_values = pixel_values.to(self.dtype)
        if self.spec.prefix_tokens < 0:
            return self.model(pixel_values=pixel_values).last_hidden_state
        if self.feature_layer == -1:
            hidden = self.model(pixel_values=pixel_values, **self._kwargs).last_hidden_state
        else:
            out = self.model(pixel_values=pixel_values, output_hidden_states=True, **self._kwargs)
            hidden = out.hidden_states[self.feature_layer]
        tokens = hidden[:, self.spec.prefix_tokens :]
        b, n, c = tokens.shape
        h, w = self.grid
        if n != h * w:
            raise ValueError(
                f"{self.family}: got {n} patch tokens, expected {h}x{w} for image size "
                f"{self.image_size} and patch {self.patch_size}"
            )
        return tokens.transpose(1, 2).reshape(b, c, h, w)


def build_encoder(cfg: EncoderConfig, dtype: str = "auto") -> VisionEncoder:
    """Build from `cfg.hf_config` (random init, fp32), or load real weights from `cfg.path`
    in `dtype` ("auto": the checkpoint's own). The preprocessing is `cfg.preprocess` when
    given, else the checkpoint's preprocessor_config.json, else the squash path."""
    spec = encoder_spec(cfg.family)
    if cfg.path:
        path = Path(cfg.path)
        data = read_checkpoint_config(path, f"the {cfg.family} encoder", spec.model_types)
        want = dtype_of(dtype) or checkpoint_dtype(data) or torch.float32
        try:
            model, info = spec.model_cls.from_pretrained(
                str(path), output_loading_info=True, dtype=want, use_safetensors=True
            )
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{cfg.family} checkpoint {path} does not load: {err}") from None
        # Weights absent from the checkpoint would silently stay random.
        if info.get("missing_keys"):
            missing = sorted(info["missing_keys"])
            raise ValueError(
                f"{cfg.family} checkpoint {path} lacks {len(missing)} weights of "
                f"{spec.model_cls.__name__} (e.g. {missing[:2]}); is it a {cfg.family} checkpoint?"
            )
    else:
        model = spec.model_cls(spec.config_cls(**cfg.hf_config))
    size = cfg.image_size
    if cfg.preprocess:
        prep = ImagePrep.from_dict(cfg.preprocess)
    elif cfg.path:
        # Without an explicit size, a resizable encoder takes what its processor prepares
        # (DINOv2: 518 native, 224 from its processor's crop).
        flexible = not size and spec.resize != "fixed"
        prep = read_prep(cfg.path, 0 if flexible else size or int(model.config.image_size))
        size = prep.size if prep is not None and flexible else size
    else:
        prep = None
    return VisionEncoder(spec, model, cfg.feature_layer, size, prep)


def resolved_hf_config(encoder: VisionEncoder) -> dict[str, Any]:
    """The full transformers config of a built encoder, to rebuild it without its directory."""
    data = encoder.model.config.to_dict()
    for key in ("transformers_version", "architectures", "_name_or_path", "model_type"):
        data.pop(key, None)
    return data
