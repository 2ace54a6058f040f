"""SAM's image encoder: a feature map [B, 256, 64, 64] for sam-vit-base, read by a conv adapter.

Real checkpoints are read in the SamVisionModel layout (`SamVisionModel.save_pretrained`).
"""

from transformers import SamVisionConfig, SamVisionModel

from vsre_ros.core.encoders import IMAGENET_MEAN, IMAGENET_STD, EncoderSpec, register_encoder

SAM = register_encoder(
    EncoderSpec(
        family="sam",
        config_cls=SamVisionConfig,
        model_cls=SamVisionModel,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        prefix_tokens=-1,
        resize="fixed",
        adapter="conv",
        model_types=("sam", "sam_vision_model"),
    )
)
