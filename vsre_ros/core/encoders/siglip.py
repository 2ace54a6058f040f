"""SigLIP's vision tower; every output token is a patch (no CLS)."""

from transformers import SiglipVisionConfig, SiglipVisionModel

from vsre_ros.core.encoders import EncoderSpec, register_encoder

SIGLIP = register_encoder(
    EncoderSpec(
        family="siglip",
        config_cls=SiglipVisionConfig,
        model_cls=SiglipVisionModel,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        prefix_tokens=0,
        resize="flag",
        adapter="none",
        model_types=("siglip", "siglip_vision_model"),
    )
)
