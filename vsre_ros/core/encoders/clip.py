"""CLIP's vision tower (OpenAI CLIP / LLaVA's encoder); drops the CLS token."""

from transformers import CLIPVisionConfig, CLIPVisionModel

from vsre_ros.core.encoders import EncoderSpec, register_encoder

CLIP = register_encoder(
    EncoderSpec(
        family="clip",
        config_cls=CLIPVisionConfig,
        model_cls=CLIPVisionModel,
        mean=(0.48145466, 0.4578275, 0.40821073),
        std=(0.26862954, 0.26130258, 0.27577711),
        prefix_tokens=1,
        resize="flag",
        adapter="none",
        model_types=("clip", "clip_vision_model"),
    )
)
