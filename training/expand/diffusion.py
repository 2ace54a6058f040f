"""Diffusion backends of the expansion: which diffusers pipeline each mode uses, and one call.

Every mode is an entry of `PIPELINES` (mode id -> pipeline class name and how to call it), so
a new backend is one entry, not a branch. Pipelines load from a local directory in the
diffusers layout (`model_index.json` plus one folder per component), with safetensors only;
nothing is downloaded.

- txt2img, img2img, inpaint: SDXL (`StableDiffusionXLPipeline`, `...Img2ImgPipeline`,
  `...InpaintPipeline`). One SDXL base directory serves all three.
- layout: box-conditioned generation. In diffusers 0.42 the only pipeline that takes boxes is
  GLIGEN (`StableDiffusionGLIGENPipeline`), and it exists for Stable Diffusion 1.x only (it
  lives under `pipelines/deprecated`); there is no SDXL GLIGEN. So layout mode needs a GLIGEN
  SD1.x directory (e.g. a `gligen-1-4-generation-text-box` snapshot), not the SDXL one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Request:
    """One generation: what to draw, from what, with which seed."""

    prompt: str  # text prompt
    seed: int  # seed of this output's generator (independent of batching)
    image: np.ndarray | None = None  # source RGB image (img2img, inpaint)
    mask: np.ndarray | None = None  # HxW bool, True where inpainting repaints
    phrases: tuple[str, ...] = ()  # layout: the phrase drawn in each box
    boxes: tuple[tuple[float, float, float, float], ...] = ()  # layout: normalized x0 y0 x1 y1


@dataclass(frozen=True)
class GenerationConfig:
    """Sampling settings shared by the diffusion modes."""

    size: int = 0  # generated square size, pixels; 0 = the pipeline's native size
    steps: int = 30  # denoising steps
    guidance: float = 5.0  # classifier-free guidance scale (1 disables it)
    strength: float = 0.45  # img2img: how far from the source (low keeps the layout)
    inpaint_strength: float = 0.99  # inpaint: how much of the masked region is re-drawn
    negative_prompt: str = "blurry, deformed, text, watermark"  # what to steer away from
    gligen_beta: float = 0.3  # layout: share of steps that use the boxes (GLIGEN's default)
    dtype: str = "float32"  # weights dtype: float32 (CPU), float16/bfloat16 (GPU)


def _resize(image: np.ndarray, size: int) -> Image.Image:
    return Image.fromarray(image).convert("RGB").resize((size, size), Image.BICUBIC)


def _resize_mask(mask: np.ndarray, size: int) -> Image.Image:
    return Image.fromarray(mask.astype(np.uint8) * 255).resize((size, size), Image.NEAREST)


def _generators(requests: list[Request], device):
    import torch

    return [torch.Generator(device="cpu").manual_seed(r.seed) for r in requests]


def _common(requests, cfg: GenerationConfig, device) -> dict:
    kwargs = {
        "prompt": [r.prompt for r in requests],
        "num_inference_steps": cfg.steps,
        "guidance_scale": cfg.guidance,
        "generator": _generators(requests, device),
        "output_type": "np",
    }
    if cfg.guidance > 1:
        kwargs["negative_prompt"] = [cfg.negative_prompt] * len(requests)
    return kwargs


def _txt2img(pipe, requests, cfg, device):
    return pipe(**_common(requests, cfg, device), height=cfg.size, width=cfg.size).images


def _img2img(pipe, requests, cfg, device):
    images = [_resize(r.image, cfg.size) for r in requests]
    kwargs = _common(requests, cfg, device)
    # img2img runs steps x strength denoising steps; never let that round down to none.
    kwargs["num_inference_steps"] = max(cfg.steps, math.ceil(1 / cfg.strength))
    return pipe(**kwargs, image=images, strength=cfg.strength).images


def _inpaint(pipe, requests, cfg, device):
    return pipe(
        **{
            **_common(requests, cfg, device),
            "num_inference_steps": max(cfg.steps, math.ceil(1 / cfg.inpaint_strength)),
        },
        image=[_resize(r.image, cfg.size) for r in requests],
        mask_image=[_resize_mask(r.mask, cfg.size) for r in requests],
        strength=cfg.inpaint_strength,
        height=cfg.size,
        width=cfg.size,
    ).images


def _layout(pipe, requests, cfg, device):
    # GLIGEN takes one phrase/box list per prompt; batches are assembled request by request
    # because its phrase tensors are padded per prompt anyway.
    outputs = []
    for request, generator in zip(requests, _generators(requests, device), strict=True):
        kwargs = _common([request], cfg, device)
        kwargs["generator"] = generator
        outputs.extend(
            pipe(
                **kwargs,
                gligen_phrases=list(request.phrases),
                gligen_boxes=[list(b) for b in request.boxes],
                gligen_scheduled_sampling_beta=cfg.gligen_beta,
                height=cfg.size,
                width=cfg.size,
            ).images
        )
    return outputs


@dataclass(frozen=True)
class PipelineSpec:
    """How one mode generates: the diffusers class and the call that feeds it."""

    class_name: str  # diffusers pipeline class, loaded with from_pretrained(local dir)
    call: Callable  # (pipe, requests, GenerationConfig, device) -> list of HxWx3 float images
    native_size: int  # the size the family was trained at (SDXL 1024, SD1.x GLIGEN 512)
    extra_kwargs: tuple[tuple[str, object], ...] = ()  # from_pretrained keyword arguments


PIPELINES: dict[str, PipelineSpec] = {
    "txt2img": PipelineSpec("StableDiffusionXLPipeline", _txt2img, 1024),
    "img2img": PipelineSpec(
        "StableDiffusionXLImg2ImgPipeline", _img2img, 1024, (("requires_aesthetics_score", False),)
    ),
    "inpaint": PipelineSpec(
        "StableDiffusionXLInpaintPipeline", _inpaint, 1024, (("requires_aesthetics_score", False),)
    ),
    "layout": PipelineSpec(
        "StableDiffusionGLIGENPipeline",
        _layout,
        512,
        (("safety_checker", None), ("requires_safety_checker", False)),
    ),
}


def pipeline_spec(mode: str) -> PipelineSpec:
    try:
        return PIPELINES[mode]
    except KeyError:
        known = ", ".join(PIPELINES)
        raise ValueError(f"unknown diffusion mode {mode!r}; known: {known}") from None


class DiffusionBackend:
    """A loaded pipeline for one mode; `generate` turns requests into uint8 RGB images."""

    def __init__(self, mode: str, model_dir: Path | str, cfg: GenerationConfig, device="cpu"):
        import diffusers
        import torch

        self.spec = pipeline_spec(mode)
        self.cfg = cfg if cfg.size else replace(cfg, size=self.spec.native_size)
        self.device = device
        model_dir = Path(model_dir)
        if not (model_dir / "model_index.json").is_file():
            raise FileNotFoundError(
                f"{model_dir} is not a diffusers pipeline directory (no model_index.json); "
                f"mode {mode!r} needs a local {self.spec.class_name} directory"
            )
        dtypes = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
        if cfg.dtype not in dtypes:
            raise ValueError(f"unknown dtype {cfg.dtype!r}; known: {', '.join(dtypes)}")
        cls = getattr(diffusers, self.spec.class_name)
        self.pipe = cls.from_pretrained(
            model_dir,
            dtype=dtypes[cfg.dtype],
            use_safetensors=True,
            local_files_only=True,
            **dict(self.spec.extra_kwargs),
        ).to(device)
        self.pipe.set_progress_bar_config(disable=True)

    def generate(self, requests: list[Request]) -> list[np.ndarray]:
        images = self.spec.call(self.pipe, requests, self.cfg, self.device)
        return [(np.clip(np.asarray(im), 0, 1) * 255).round().astype(np.uint8) for im in images]
