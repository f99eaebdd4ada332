"""Models: vision encoders, projectors, language models, and the composed VLM."""

from .builder import build_vlm, load_projector_weights, parameter_table
from .configuration import FuseVLMConfig
from .projectors import PROJECTORS, build_projector, register_projector
from .seed import load_mixed_pretrained_model
from .vision import VISION_ENCODERS, build_vision_encoder, load_vision_encoder, register_vision_encoder
from .vlm import FuseVLMForConditionalGeneration, ImageTokenMismatchError, register_auto_classes

register_auto_classes()

__all__ = [
    "PROJECTORS",
    "VISION_ENCODERS",
    "FuseVLMConfig",
    "FuseVLMForConditionalGeneration",
    "ImageTokenMismatchError",
    "build_projector",
    "build_vision_encoder",
    "build_vlm",
    "load_mixed_pretrained_model",
    "load_projector_weights",
    "load_vision_encoder",
    "parameter_table",
    "register_projector",
    "register_vision_encoder",
]
