"""Shared code for vision towers that transformers already implements (CLIP, SigLIP, DINOv2, Chinese-CLIP)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
from transformers import AutoImageProcessor, PretrainedConfig, PreTrainedModel

from .base import VisionEncoder, checkpoint_config_dict


class HFVisionEncoder(VisionEncoder):
    """Wraps a transformers vision model; reads ``hidden_states[feature_layer]``, as LLaVA does.

    Subclasses name the model/config classes and the ``model_type`` values their checkpoints carry (a full
    CLIP checkpoint says ``clip``, a vision-only one ``clip_vision_model``; both load).
    """

    model_class: ClassVar[type[PreTrainedModel]]
    config_class: ClassVar[type[PretrainedConfig]]
    checkpoint_model_types: ClassVar[tuple[str, ...]] = ()

    def __init__(self, spec: dict[str, Any], model: PreTrainedModel | None = None):
        super().__init__(spec)
        config = self.config_class.from_dict(self.spec["config"])
        self.model = model if model is not None else self.model_class(config)
        # A tower run at another resolution than it was trained at (e.g. inside a fused encoder) interpolates
        # its position embeddings; recorded in the spec so a reload behaves the same.
        self.run_image_size: int = self.spec.get("image_size") or int(config.image_size)

    @classmethod
    def accepts_checkpoint(cls, config_dict: dict[str, Any]) -> bool:
        return config_dict.get("model_type") in cls.checkpoint_model_types

    @classmethod
    def from_pretrained(
        cls, path: str | Path, spec: dict[str, Any] | None = None, **hub_kwargs: Any
    ) -> HFVisionEncoder:
        model = cls.model_class.from_pretrained(str(path), **hub_kwargs)
        spec = dict(spec or {})
        spec["config"] = model.config.to_dict()
        spec.setdefault("source", str(path))
        encoder = cls(spec, model=model)
        encoder.pretrained_image_processor = _image_processor_or_none(path, **hub_kwargs)
        return encoder

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def image_size(self) -> int:
        return self.run_image_size

    @property
    def patch_size(self) -> int:
        return int(self.model.config.patch_size)

    @property
    def native_image_size(self) -> int:
        return int(self.model.config.image_size)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        kwargs = {}
        if self.run_image_size != self.native_image_size:
            kwargs["interpolate_pos_encoding"] = True
        out = self.model(pixel_values=pixel_values, output_hidden_states=True, **kwargs)
        return self.select_tokens(out.hidden_states[self.feature_layer])


def _image_processor_or_none(path: str | Path, **hub_kwargs: Any):
    """The checkpoint's own image processor if it ships one (hub checkpoints do; bare test folders may not)."""
    try:
        checkpoint_config_dict(path, **hub_kwargs)  # fails fast on a missing folder with a clear message
        return AutoImageProcessor.from_pretrained(str(path), **hub_kwargs)
    except (OSError, ValueError):
        return None
