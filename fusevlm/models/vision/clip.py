"""OpenAI CLIP vision tower (LLaVA-1.5's ``openai/clip-vit-large-patch14-336``)."""

from transformers import CLIPVisionConfig, CLIPVisionModel
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from .base import register_vision_encoder
from .hf import HFVisionEncoder


@register_vision_encoder("clip")
class CLIPEncoder(HFVisionEncoder):
    model_class = CLIPVisionModel
    config_class = CLIPVisionConfig
    checkpoint_model_types = ("clip", "clip_vision_model")
    has_cls_token = True
    layers_path = "encoder.layers"
    pre_norm_path = "pre_layrnorm"
    default_checkpoint = "openai/clip-vit-large-patch14-336"

    def default_image_processor(self):
        size = self.image_size
        return CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
