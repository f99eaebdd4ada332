"""DINOv2 tower (prismatic's DINO half of DINO+SigLIP). Its position embeddings always interpolate."""

from transformers import Dinov2Config, Dinov2Model
from transformers.masking_utils import create_bidirectional_mask
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from .base import register_vision_encoder
from .hf import HFVisionEncoder

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


@register_vision_encoder("dinov2")
class Dinov2Encoder(HFVisionEncoder):
    model_class = Dinov2Model
    config_class = Dinov2Config
    checkpoint_model_types = ("dinov2",)
    has_cls_token = True
    layers_path = "encoder.layer"
    default_checkpoint = "facebook/dinov2-large"

    def model_kwargs(self):
        # Dinov2Model has no interpolate flag: it always resizes its position grid to the input.
        return {}

    def layer_attention_mask(self, hidden_states):
        # As Dinov2Model.forward does with no attention_mask (None for eager/sdpa; flex builds a block mask).
        return create_bidirectional_mask(config=self.model.config, inputs_embeds=hidden_states, attention_mask=None)

    def default_image_processor(self):
        size = self.image_size
        return CLIPImageProcessorPil(
            size={"shortest_edge": size},
            crop_size={"height": size, "width": size},
            image_mean=IMAGENET_MEAN,
            image_std=IMAGENET_STD,
        )
