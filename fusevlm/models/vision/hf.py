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

    Early exit: ``hidden_states[0]`` is the input of the first encoder layer and ``hidden_states[i]`` the output of
    layer ``i``, so reading ``hidden_states[k]`` needs layers ``0..k-1`` only. A subclass that names where its
    layers live (``layers_path``) and any norm between the embeddings and the first layer (``pre_norm_path``)
    runs just those - as timm's ``get_intermediate_layers`` does - and skips the layers above ``feature_layer``
    and the post-norm/pooler. It must reproduce its HF model's forward up to that point exactly (the embeddings
    via ``embed``, the mask via ``layer_attention_mask``). A subclass that names no ``layers_path`` runs the whole
    HF model, as before. Parameters and state-dict keys are untouched either way: unused layers are not called.
    """

    model_class: ClassVar[type[PreTrainedModel]]
    config_class: ClassVar[type[PretrainedConfig]]
    checkpoint_model_types: ClassVar[tuple[str, ...]] = ()
    # Dotted path in ``self.model`` to the ModuleList of encoder layers (e.g. "encoder.layers"); None: no early
    # exit, the full HF forward runs.
    layers_path: ClassVar[str | None] = None
    # Dotted path to a norm the HF forward applies to the embeddings before the first layer (CLIP's
    # "pre_layrnorm"); None where there is none.
    pre_norm_path: ClassVar[str | None] = None

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

    # ---- forward ---------------------------------------------------------------------------------------------
    def model_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for the HF forward / embeddings: interpolate when run off the native resolution."""
        if self.run_image_size != self.native_image_size:
            return {"interpolate_pos_encoding": True}
        return {}

    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``hidden_states[0]`` before any pre-norm: the HF model's embeddings module, called as its forward does."""
        return self.model.embeddings(pixel_values, **self.model_kwargs())

    def layer_attention_mask(self, hidden_states: torch.Tensor) -> Any:
        """The mask the HF forward hands its layers (vision towers of CLIP/SigLIP pass none)."""
        return None

    def feature_index(self, num_layers: int) -> int:
        """``feature_layer`` as a non-negative index into the ``num_layers + 1`` hidden states."""
        if not -num_layers - 1 <= self.feature_layer <= num_layers:
            raise ValueError(
                f"{self.name}: feature_layer {self.feature_layer} is outside 0..{num_layers} / "
                f"-1..{-num_layers - 1} (the tower has {num_layers} layers)"
            )
        return self.feature_layer % (num_layers + 1)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self.layers_path is None:
            return self.forward_full(pixel_values)
        layers = self.model.get_submodule(self.layers_path)
        stop = self.feature_index(len(layers))
        hidden = self.embed(pixel_values)
        if self.pre_norm_path is not None:
            hidden = self.model.get_submodule(self.pre_norm_path)(hidden)
        mask = self.layer_attention_mask(hidden)
        for layer in layers[:stop]:
            # Called through the module (GradientCheckpointingLayer), so activation checkpointing and hooks apply;
            # positional arguments, as the HF encoders call them (checkpointing with use_reentrant needs that).
            out = layer(hidden, mask)
            hidden = out[0] if isinstance(out, tuple) else out
        return self.select_tokens(hidden)

    def forward_full(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The whole HF forward with every hidden state; the fallback for towers without ``layers_path``."""
        out = self.model(pixel_values=pixel_values, output_hidden_states=True, **self.model_kwargs())
        return self.select_tokens(out.hidden_states[self.feature_layer])


def _image_processor_or_none(path: str | Path, **hub_kwargs: Any):
    """The checkpoint's own image processor if it ships one (hub checkpoints do; bare test folders may not)."""
    try:
        checkpoint_config_dict(path, **hub_kwargs)  # fails fast on a missing folder with a clear message
        return AutoImageProcessor.from_pretrained(str(path), **hub_kwargs)
    except (OSError, ValueError):
        return None
