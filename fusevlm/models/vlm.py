"""``FuseVLMForConditionalGeneration``: vision encoder -> projector -> image embeddings spliced into any causal LM.

Follows transformers' Llava conventions: it takes ``input_ids``, ``attention_mask``, ``pixel_values``, ``labels``;
image-token positions in ``input_ids`` receive the projected image embeddings; ``generate`` runs with the KV cache
(``pixel_values`` are consumed at prefill only). Parameters live under ``vision_tower.``, ``projector.`` and
``language_model.``.

Training (``model.train()`` with ``labels``) runs the LM's decoder and applies its output head only where the next
label is trained (as Liger's ``skip_logits`` does): the loss is transformers' causal-LM loss, ``logits`` is None, and
``token_losses`` holds each position's loss for the multi-task loss. Eval mode, or no labels, keeps full logits.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from .configuration import FuseVLMConfig
from .projectors import Projector, build_projector
from .vision import VisionEncoder, build_vision_encoder

IGNORE_INDEX = -100

# Causal LMs whose logits are exactly ``lm_head(decoder(...).last_hidden_state)``, plus a final transform for a few
# (read from each class's forward in transformers 5.24). Only these take the training path that applies the head at
# trained positions only; any other LM (remote code, MoE with router losses, unknown transforms) gets the full path.
_PLAIN_HEAD = "plain"
_LOGIT_HEADS: dict[str, str] = {
    **dict.fromkeys(
        (
            "llama", "mistral", "ministral", "qwen2", "qwen3", "gemma", "phi", "phi3", "gpt2", "starcoder2",
            "olmo", "olmo2", "smollm3", "gpt_neox", "stablelm", "glm", "glm4", "helium",
        ),
        _PLAIN_HEAD,
    ),
    "gemma2": "softcap",  # logits = cap * tanh(logits / cap) when config.final_logit_softcapping is set
    "gemma3_text": "softcap",
    "cohere": "scale",  # logits * config.logit_scale
    "granite": "divide",  # logits / config.logits_scaling
}


@dataclass
class FuseVLMCausalLMOutput(CausalLMOutputWithPast):
    """``CausalLMOutputWithPast`` plus ``token_losses``: the next-token loss of every position.

    ``token_losses`` is ``(B, T-1)`` float32 (``(B, T)`` when ``shift_labels`` were given), position ``t`` holding
    the loss of predicting token ``t+1``, zero where that label is ignored. Given whenever ``labels`` are. In
    training mode (with labels) ``logits`` is None: only the trained positions' logits were ever computed.
    """

    token_losses: torch.Tensor | None = None


class WeightsMismatchError(ValueError):
    """A model folder whose weights do not cover, or do not fit, the model its config describes."""


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
        if kwargs.get("quantization_config") is not None:  # quantised parameters are replaced on load by design
            return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        # Strict: transformers alone would initialise what the weights lack (a folder whose config.json was
        # edited to another projector) and only print a report - a partly random model that answers nonsense.
        wants_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(pretrained_model_name_or_path, *args, output_loading_info=True, **kwargs)
        problems = []
        for label, key in (("missing", "missing_keys"), ("unexpected", "unexpected_keys"),
                           ("wrong shape", "mismatched_keys")):
            names = sorted(str(item[0] if isinstance(item, tuple) else item) for item in info.get(key) or ())
            if names:
                more = f" and {len(names) - 6} more" if len(names) > 6 else ""
                problems.append(f"{label}: {', '.join(names[:6])}{more}")
        if problems:
            raise WeightsMismatchError(
                f"{pretrained_model_name_or_path}: the weights do not fit the model its config.json describes "
                f"({'; '.join(problems)}); was config.json edited, or were another model's weights copied in?"
            )
        return (model, info) if wants_info else model

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
    ) -> CausalLMOutputWithPast | FuseVLMCausalLMOutput:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            decoding = cache is not None and cache.get_seq_length() > 0 and pixel_values is None
            if decoding:
                # Past the prompt the images are in the cache; a generated image token is just a token.
                inputs_embeds = self.get_input_embeddings()(input_ids)
            else:
                inputs_embeds = self.embed_inputs(input_ids, pixel_values)
        if labels is not None and self.training and cache is None and self.trains_at_labelled_positions():
            return self._training_forward(inputs_embeds, attention_mask, position_ids, labels, kwargs)
        if labels is not None and cache is None and use_cache is None:
            # A loss needs no cache, and a cache made here would hide packed rows (position_ids restarting per
            # sample, attention_mask None) from transformers' mask builder: samples would attend to each other.
            use_cache = False
        outputs = self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            labels=labels,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )
        if labels is None:
            return outputs
        token_losses = None
        if outputs.logits is not None and outputs.logits.shape[1] == labels.shape[1]:
            token_losses = _token_losses_from_logits(outputs.logits, labels, kwargs)
        if type(outputs) is CausalLMOutputWithPast:
            return FuseVLMCausalLMOutput(**outputs, token_losses=token_losses)
        outputs["token_losses"] = token_losses  # another output class (an MoE's aux_loss, say): keep its fields
        return outputs

    # ---- the training loss at trained positions only -----------------------------------------------------------
    def trains_at_labelled_positions(self) -> bool:
        """Whether training applies the LM head at trained positions only (else it computes full logits)."""
        lm = self.language_model
        model_type = getattr(lm.config, "model_type", None)
        return (
            model_type in _LOGIT_HEADS
            and type(lm).__module__.startswith("transformers.models.")
            and type(lm).__name__ == MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type)
            and not getattr(lm.config, "output_router_logits", False)
            and lm.get_output_embeddings() is not None
        )

    def output_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """The LM's logits for some hidden states: its head plus the final transform its forward applies."""
        lm = self.language_model
        logits = lm.get_output_embeddings()(hidden_states)
        head = _LOGIT_HEADS[lm.config.model_type]
        if head == "softcap" and lm.config.final_logit_softcapping is not None:
            cap = lm.config.final_logit_softcapping
            logits = torch.tanh(logits / cap) * cap
        elif head == "scale":
            logits = logits * lm.config.logit_scale
        elif head == "divide":
            logits = logits / lm.config.logits_scaling
        return logits

    def _training_forward(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None,
        position_ids: torch.LongTensor | None,
        labels: torch.LongTensor,
        kwargs: dict[str, Any],
    ) -> FuseVLMCausalLMOutput:
        """The LM's decoder, then its head and a float32 cross-entropy at the positions whose next label is trained.

        The loss equals transformers' ``ForCausalLMLoss`` on the full logits: the sum over trained tokens divided by
        their count, or by ``num_items_in_batch`` when the Trainer passes it (gradient accumulation). No cache is
        made (``use_cache=False``): packed rows (``position_ids`` restarting per sample, ``attention_mask=None``) are
        recognised from ``position_ids`` only when no cache is given.
        """
        num_items_in_batch = kwargs.pop("num_items_in_batch", None)
        shift_labels = kwargs.pop("shift_labels", None)
        ignore_index = kwargs.pop("ignore_index", IGNORE_INDEX)
        kwargs.pop("return_dict", None)
        outputs = self.language_model.get_decoder()(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=False,
            **kwargs,
        )
        hidden = outputs.last_hidden_state
        if shift_labels is None:
            # Position t predicts label t+1: views, no copy of the sequence.
            hidden, targets = hidden[:, :-1], labels[:, 1:]
        else:
            targets = shift_labels
        trained = targets != ignore_index
        logits = self.output_logits(hidden[trained])  # (N, vocab): the only logits computed
        losses = F.cross_entropy(logits.float(), targets[trained], reduction="none")
        if num_items_in_batch is None:
            loss = losses.sum() / trained.sum()
        else:
            if torch.is_tensor(num_items_in_batch):
                num_items_in_batch = num_items_in_batch.to(losses.device)
            loss = losses.sum() / num_items_in_batch
        token_losses = losses.new_zeros(targets.shape).masked_scatter(trained, losses)
        return FuseVLMCausalLMOutput(
            loss=loss,
            logits=None,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            token_losses=token_losses,
        )


def _token_losses_from_logits(logits: torch.Tensor, labels: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
    """Per-position float32 losses from full logits, computed at trained positions only (zeros elsewhere)."""
    shift_labels = kwargs.get("shift_labels")
    ignore_index = kwargs.get("ignore_index", IGNORE_INDEX)
    if shift_labels is None:
        logits, targets = logits[:, :-1], labels[:, 1:]
    else:
        targets = shift_labels
    trained = targets != ignore_index
    losses = F.cross_entropy(logits[trained].float(), targets[trained], reduction="none")
    return losses.new_zeros(targets.shape).masked_scatter(trained, losses)


def register_auto_classes() -> None:
    """Let ``AutoConfig`` / ``AutoModelForImageTextToText`` / ``AutoProcessor`` load fusevlm folders.

    Done on ``import fusevlm``.
    """
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    from ..processing import FuseVLMProcessor

    AutoConfig.register("fusevlm", FuseVLMConfig, exist_ok=True)
    AutoModelForImageTextToText.register(FuseVLMConfig, FuseVLMForConditionalGeneration, exist_ok=True)
    AutoProcessor.register(FuseVLMConfig, FuseVLMProcessor, exist_ok=True)


__all__ = [
    "FuseVLMCausalLMOutput",
    "FuseVLMForConditionalGeneration",
    "FuseVLMPreTrainedModel",
    "ImageTokenMismatchError",
    "WeightsMismatchError",
]
