"""fusevlm: compose, train, evaluate and serve LLaVA-style vision-language models."""

from .models import (
    FuseVLMConfig,
    FuseVLMForConditionalGeneration,
    build_vlm,
    load_mixed_pretrained_model,
)
from .processing import FuseVLMProcessor

__version__ = "0.1.0"

__all__ = [
    "FuseVLMConfig",
    "FuseVLMForConditionalGeneration",
    "FuseVLMProcessor",
    "build_vlm",
    "load_mixed_pretrained_model",
]
