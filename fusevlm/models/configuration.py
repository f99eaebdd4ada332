"""``FuseVLMConfig``: the three choices (vision spec, projector spec, LLM config) plus the image-token contract."""

from __future__ import annotations

from typing import Any

from transformers import AutoConfig, PretrainedConfig
from transformers.configuration_utils import SubConfigSpec


class FuseVLMConfig(PretrainedConfig):
    r"""Configuration of a composed vision-language model.

    Args:
        vision_config (`dict`): the vision encoder spec, ``{"encoder": "clip", "config": {...}, "feature_layer": -2,
            "feature_select": "patch"}`` (see ``fusevlm.models.vision``); a fused encoder lists ``"encoders"``.
        projector_config (`dict`): ``{"type": "mlp2x_gelu", ...options}`` (see ``fusevlm.models.projectors``).
        text_config (`dict` or `PretrainedConfig`): the config of any ``AutoModelForCausalLM``.
        image_token (`str`): the placeholder users write in prompts.
        image_token_id (`int`): its id in the tokenizer; the processor writes ``image_seq_length`` of them per image.
        image_seq_length (`int`): M, the image tokens one image becomes (fixed by encoder + projector).
    """

    model_type = "fusevlm"
    sub_configs_defaults = {"text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama")}

    vision_config: dict | None = None
    projector_config: dict | None = None
    text_config: dict | PretrainedConfig | None = None
    image_token: str = "<image>"
    image_token_id: int | None = None
    image_seq_length: int | None = None

    def __post_init__(self, **kwargs: Any):
        super().__post_init__(**kwargs)
        if self.projector_config is None:
            self.projector_config = {"type": "mlp2x_gelu"}


__all__ = ["FuseVLMConfig"]
