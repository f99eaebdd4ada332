"""``FuseVLMForConditionalGeneration``: vision encoder -> projector -> image embeddings spliced into any causal LM.

Follows transformers' Llava conventions: it takes ``input_ids``, ``attention_mask``, ``pixel_values``, ``labels``;
image-token positions in ``input_ids`` receive the projected image embeddings; ``generate`` runs with the KV cache
(``pixel_values`` are consumed at prefill only). Parameters live under ``vision_tower.``, ``projector.`` and
``language_model.``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration import FuseVLMConfig
from .projectors import Projector, build_projector
from .vision import VisionEncoder, build_vision_encoder


class ImageTokenMismatchError(ValueError):
    """The image tokens in ``input_ids`` do not fit the images in ``pixel_values``; names the sample."""


class FuseVLMPreTrainedModel(PreTrainedModel):
    config: FuseVLMConfig
    config_class = FuseVLMConfig
    base_model_prefix = ""
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    def _init_weights(self, module: nn.Module) -> None:
        # Our own modules (projectors, the Qwen-VL trunk) initialise their special parameters themselves.
        if hasattr(module, "fusevlm_init"):
            module.fusevlm_init()
        super()._init_weights(module)


class FuseVLMForConditionalGeneration(FuseVLMPreTrainedModel, GenerationMixin):
    def __init__(self, config: FuseVLMConfig):
        super().__init__(config)
        self.vision_tower: VisionEncoder = build_vision_encoder(config.vision_config)
        self.projector: Projector = build_projector(
            config.projector_config,
            in_features=self.vision_tower.hidden_size,
            out_features=config.text_config.hidden_size,
            grid=self.vision_tower.grid,
            num_input_tokens=self.vision_tower.num_tokens,
        )
        if config.image_seq_length is None:
            config.image_seq_length = self.projector.num_output_tokens
        elif config.image_seq_length != self.projector.num_output_tokens:
            raise ValueError(
                f"config.image_seq_length={config.image_seq_length} but the projector emits "
                f"{self.projector.num_output_tokens} tokens per image"
            )
        self.language_model = AutoModelForCausalLM.from_config(config.text_config)
        self.post_init()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, *args: Any, **kwargs: Any) -> Any:
        """transformers' loader, after refusing a folder of another architecture with a message that says so."""
        config_file = Path(str(pretrained_model_name_or_path)) / "config.json"
        if kwargs.get("config") is None and config_file.is_file():
            found = json.loads(config_file.read_text()).get("model_type")
            if found != FuseVLMConfig.model_type:
                raise ValueError(
                    f"{pretrained_model_name_or_path}: config.json is a {found!r} model, not a fusevlm one; compose "
                    "one with `fusevlm init` / fusevlm.build_vlm, or convert a llava-hf folder with `fusevlm import`"
                )
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    # ---- embeddings delegate to the LM (resize_token_embeddings, tying and PEFT rely on these) -------------
    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module | None:
        return self.language_model.get_output_embeddings()

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_output_embeddings(value)

    # ---- images -----------------------------------------------------------------------------------------------
    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``(num_images, 3*, H, W)`` -> ``(num_images, M, hidden)`` in the LM's embedding space."""
        tower_dtype = next(self.vision_tower.parameters()).dtype
        features = self.vision_tower(pixel_values.to(tower_dtype))
        projector_dtype = next(self.projector.parameters(), features).dtype
        return self.projector(features.to(projector_dtype))

    def check_image_tokens(self, input_ids: torch.Tensor, num_images: int) -> None:
        """Every sample must hold whole images' worth of image tokens, and all of them must match the images."""
        per_image = self.config.image_seq_length
        counts = (input_ids == self.config.image_token_id).sum(dim=1).tolist()
        used = 0
        for index, count in enumerate(counts):
            if count % per_image:
                raise ImageTokenMismatchError(
                    f"sample {index}: {count} image tokens is not a whole number of images ({per_image} tokens each)"
                )
            used += count // per_image
            if used > num_images:
                raise ImageTokenMismatchError(
                    f"sample {index}: image tokens for {used} images so far, but pixel_values holds {num_images}"
                )
        if used != num_images:
            raise ImageTokenMismatchError(
                f"pixel_values holds {num_images} images but input_ids have image tokens for {used} "
                f"(image tokens per sample: {counts})"
            )

    def embed_inputs(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None) -> torch.Tensor:
        """Token embeddings with the projected image embeddings written at the image-token positions."""
        embeds = self.get_input_embeddings()(input_ids)
        if pixel_values is None:
            if (input_ids == self.config.image_token_id).any():
                raise ImageTokenMismatchError(
                    "input_ids contain image tokens but no pixel_values were given "
                    f"(samples: {(input_ids == self.config.image_token_id).any(dim=1).nonzero().flatten().tolist()})"
                )
            return embeds
        self.check_image_tokens(input_ids, pixel_values.shape[0])
        image_embeds = self.get_image_features(pixel_values).to(embeds.dtype)
        mask = (input_ids == self.config.image_token_id).unsqueeze(-1)
        return embeds.masked_scatter(mask, image_embeds)

    # ---- forward -----------------------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Any | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            decoding = cache is not None and cache.get_seq_length() > 0 and pixel_values is None
            if decoding:
                # Past the prompt the images are in the cache; a generated image token is just a token.
                inputs_embeds = self.get_input_embeddings()(input_ids)
            else:
                inputs_embeds = self.embed_inputs(input_ids, pixel_values)
        return self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            labels=labels,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )


def register_auto_classes() -> None:
    """Let ``AutoConfig`` / ``AutoModelForImageTextToText`` / ``AutoProcessor`` load fusevlm folders.

    Done on ``import fusevlm``.
    """
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    from ..processing import FuseVLMProcessor

    AutoConfig.register("fusevlm", FuseVLMConfig, exist_ok=True)
    AutoModelForImageTextToText.register(FuseVLMConfig, FuseVLMForConditionalGeneration, exist_ok=True)
    AutoProcessor.register(FuseVLMConfig, FuseVLMProcessor, exist_ok=True)


__all__ = ["FuseVLMForConditionalGeneration", "FuseVLMPreTrainedModel", "ImageTokenMismatchError"]
