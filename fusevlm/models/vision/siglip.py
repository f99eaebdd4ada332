"""SigLIP vision tower (prismatic's ``siglip-vit-so400m``); no CLS token."""

from transformers import SiglipVisionConfig, SiglipVisionModel
from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

from .base import register_vision_encoder
from .hf import HFVisionEncoder


@register_vision_encoder("siglip")
class SiglipEncoder(HFVisionEncoder):
    model_class = SiglipVisionModel
    config_class = SiglipVisionConfig
    checkpoint_model_types = ("siglip", "siglip_vision_model")
    has_cls_token = False
    layers_path = "encoder.layers"
    default_checkpoint = "google/siglip-so400m-patch14-384"

    def default_image_processor(self):
        return SiglipImageProcessorPil(size={"height": self.image_size, "width": self.image_size})
