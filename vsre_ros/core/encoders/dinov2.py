"""DINOv2 (no registers); drops the CLS token."""

from transformers import Dinov2Config, Dinov2Model

from vsre_ros.core.encoders import IMAGENET_MEAN, IMAGENET_STD, EncoderSpec, register_encoder

DINOV2 = register_encoder(
    EncoderSpec(
        family="dinov2",
        config_cls=Dinov2Config,
        model_cls=Dinov2Model,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        prefix_tokens=1,
        resize="always",
        adapter="none",
        model_types=("dinov2",),
    )
)
