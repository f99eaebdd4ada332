"""Compose a model from separately saved parts: a vision encoder, a projector choice, a causal LM."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from ..processing import FusedImageProcessor, FuseVLMProcessor, resize_image_processor
from .configuration import FuseVLMConfig
from .llm import add_image_token, load_llm
from .projectors import Projector, build_projector
from .vision import VisionEncoder, VisionSource, load_vision_encoder
from .vlm import FuseVLMForConditionalGeneration
from .weights import load_strict, read_weights

logger = logging.getLogger(__name__)


def build_vlm(
    vision: VisionSource,
    projector: str | dict[str, Any],
    llm: str | Path,
    *,
    dtype: torch.dtype | str | None = None,
    trust_remote_code: bool = False,
    image_token: str = "<image>",
    chat_template: str | None = None,
    llm_kwargs: dict[str, Any] | None = None,
    **hub_kwargs: Any,
) -> tuple[FuseVLMForConditionalGeneration, FuseVLMProcessor]:
    """Assemble a ready model and processor from pretrained parts.

    ``vision``: a registry name, hub name, local folder, spec dict or a list (fused); ``projector``: a name
    (``mlp2x_gelu``) or ``{"type": ..., **options}``; ``llm``: a hub name or folder of any causal LM.
    The projector is freshly initialised, unless the vision checkpoint carries one that fits (Qwen-VL's resampler).
    ``llm_kwargs`` go to the LLM's ``from_pretrained`` only (a ``quantization_config``, say).
    """
    encoder = load_vision_encoder(vision, **hub_kwargs)
    language_model, tokenizer = load_llm(
        llm, dtype=dtype, trust_remote_code=trust_remote_code, model_kwargs=llm_kwargs, **hub_kwargs
    )
    return assemble(encoder, projector, language_model, tokenizer, image_token=image_token, chat_template=chat_template)


def assemble(
    encoder: VisionEncoder,
    projector: str | dict[str, Any],
    language_model: PreTrainedModel,
    tokenizer: Any,
    *,
    image_token: str = "<image>",
    chat_template: str | None = None,
) -> tuple[FuseVLMForConditionalGeneration, FuseVLMProcessor]:
    """A model and processor from a loaded encoder and LLM: the image token is added, the projector built (from the
    encoder checkpoint's own resampler when it carries one that fits)."""
    image_token_id = add_image_token(tokenizer, language_model, image_token)

    projector_config = {"type": projector} if isinstance(projector, str) else dict(projector)
    pretrained = getattr(encoder, "pretrained_projector", None)
    if pretrained and projector_config["type"] == pretrained["type"]:
        for key in ("num_queries", "embed_dim", "num_heads"):
            projector_config.setdefault(key, pretrained[key])
    module = build_projector(
        projector_config,
        in_features=encoder.hidden_size,
        out_features=language_model.config.get_text_config().hidden_size,
        grid=encoder.grid,
        num_input_tokens=encoder.num_tokens,
    )
    if pretrained and projector_config["type"] == pretrained["type"]:
        load_matching_weights(module, pretrained["state_dict"], source=str(encoder.spec.get("source")))

    config = FuseVLMConfig(
        vision_config=encoder.spec,
        projector_config=projector_config,
        text_config=language_model.config,
        image_token=image_token,
        image_token_id=image_token_id,
        image_seq_length=module.num_output_tokens,
    )
    model = compose(config, encoder, module, language_model)
    processor = FuseVLMProcessor(
        image_processor_for(encoder),
        tokenizer,
        image_seq_length=module.num_output_tokens,
        image_token=image_token,
        chat_template=chat_template,
    )
    return model, processor


def compose(
    config: FuseVLMConfig, encoder: VisionEncoder, projector: Projector, language_model: PreTrainedModel
) -> FuseVLMForConditionalGeneration:
    """Wrap already-built parts without allocating (or initialising) a second copy of any of them."""
    with torch.device("meta"):
        model = FuseVLMForConditionalGeneration(config)
    model.vision_tower = encoder
    model.projector = projector.to(language_model.dtype)
    model.language_model = language_model
    leftover = [name for name, p in model.named_parameters() if p.is_meta]
    leftover += [name for name, b in model.named_buffers() if b.is_meta]
    if leftover:
        raise RuntimeError(f"parameters left on the meta device while composing: {leftover[:5]}")
    # A fresh generation config from the LM keeps its eos/pad/bos ids for generate().
    model.generation_config = language_model.generation_config
    return model


def image_processor_for(encoder: VisionEncoder) -> Any:
    """The checkpoint's own image processor when it ships one, else the encoder's default."""
    if encoder.name == "fused":
        members = [
            resize_image_processor(
                getattr(m, "pretrained_image_processor", None) or m.default_image_processor(),
                encoder.image_size,
            )
            for m in encoder.encoders
        ]
        return FusedImageProcessor(members)
    return getattr(encoder, "pretrained_image_processor", None) or encoder.default_image_processor()


def load_matching_weights(module: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Load the tensors whose names and shapes fit; say which were left freshly initialised."""
    own = module.state_dict()
    usable = {k: v for k, v in state_dict.items() if k in own and own[k].shape == v.shape}
    module.load_state_dict(usable, strict=False)
    skipped = sorted(set(own) - set(usable))
    if skipped:
        logger.warning(
            "%s: projector tensors not loaded (name or shape differs), left initialised: %s", source, skipped
        )


def projector_key(key: str) -> str:
    """A projector tensor's name without the prefix its code base saved it under.

    Any prefix ending in ``mm_projector.`` (LLaVA's ``model.``, the seed's ``transformer.`` for a Qwen LLM, or
    none), or fusevlm's own ``projector.``; then the resampler's ``attn_pool.`` (the seed's and Qwen-VL's name):
    ``cross_attn`` holds the resampler's tensors at its top level, beside ``ln_post`` and ``proj``.
    """
    if "mm_projector." in key:
        key = key.rsplit("mm_projector.", 1)[1]
    else:
        for prefix in ("model.projector.", "projector."):
            if key.startswith(prefix):
                key = key[len(prefix) :]
                break
    return key.removeprefix("attn_pool.")


def projector_state_from_checkpoint(
    state_dict: dict[str, torch.Tensor], projector: Projector, source: str = "projector weights"
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Rename a saved projector's keys to ours; also returns our name -> the file's name, for error messages."""
    renamed: dict[str, torch.Tensor] = {}
    file_names: dict[str, str] = {}
    for key, tensor in state_dict.items():
        name = projector_key(key)
        if name in renamed:
            raise ValueError(f"{source}: {file_names[name]!r} and {key!r} are the same projector tensor {name!r}")
        renamed[name], file_names[name] = tensor, key
    own = set(projector.state_dict())
    # LLaVA saves an MLP as a bare nn.Sequential ("0.weight") and a linear projector as "weight": take the reading
    # that names most of our tensors (so an incomplete file is reported by the keys it really lacks).
    inner = max(("", "mlp.", "linear."), key=lambda p: len(own & {p + k for k in renamed}))
    return ({inner + k: v for k, v in renamed.items()}, {inner + k: v for k, v in file_names.items()})


def load_projector_weights(
    projector: Projector, weights: str | Path | dict[str, torch.Tensor], source: str | None = None
) -> None:
    """Load projector weights strictly: every tensor there with the right shape, none left over (named if not).

    ``weights``: a file (safetensors, or a pickle read with ``weights_only=True``) or a state dict; key prefixes
    are read as :func:`projector_key` says. Tensors of another dtype (the seed's bf16) are cast to the projector's.
    """
    source = source or str(weights)
    state = read_weights(weights) if isinstance(weights, str | Path) else weights
    renamed, file_names = projector_state_from_checkpoint(state, projector, source)
    load_strict(projector, renamed, source, f"projector {projector.name!r}", file_names)


def parameter_table(model: FuseVLMForConditionalGeneration) -> list[dict[str, Any]]:
    """Parameters per part: total and trainable."""
    rows = []
    for part in ("vision_tower", "projector", "language_model"):
        params = list(getattr(model, part).parameters())
        rows.append(
            {
                "part": part,
                "total": sum(p.numel() for p in params),
                "trainable": sum(p.numel() for p in params if p.requires_grad),
            }
        )
    rows.append(
        {
            "part": "all",
            "total": sum(r["total"] for r in rows),
            "trainable": sum(r["trainable"] for r in rows),
        }
    )
    return rows


def format_parameter_table(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'part':<16}{'parameters':>16}{'trainable':>16}"]
    lines += [f"{r['part']:<16}{r['total']:>16,}{r['trainable']:>16,}" for r in rows]
    return "\n".join(lines)
