"""Chinese-CLIP vision tower (OFA-Sys), for Chinese-first models."""

from transformers import ChineseCLIPVisionConfig, ChineseCLIPVisionModel
from transformers.models.chinese_clip.image_processing_pil_chinese_clip import ChineseCLIPImageProcessorPil

from .base import register_vision_encoder
from .hf import HFVisionEncoder


@register_vision_encoder("chinese_clip")
class ChineseCLIPEncoder(HFVisionEncoder):
    model_class = ChineseCLIPVisionModel
    config_class = ChineseCLIPVisionConfig
    checkpoint_model_types = ("chinese_clip", "chinese_clip_vision_model")
    has_cls_token = True
    layers_path = "encoder.layers"
    pre_norm_path = "pre_layrnorm"
    default_checkpoint = "OFA-Sys/chinese-clip-vit-large-patch14-336px"

    def default_image_processor(self):
        size = self.image_size
        return ChineseCLIPImageProcessorPil(size={"height": size, "width": size}, do_center_crop=False)
