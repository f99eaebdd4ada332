"""Export to, and import from, transformers' ``LlavaForConditionalGeneration`` folder format (llava-hf).

Llava is one HF vision tower, a 2-layer GELU MLP and a causal LM, so a fusevlm model maps onto it exactly when it
has one HF CLIP or SigLIP tower (run at its native resolution, one feature layer) and an ``mlp2x_gelu`` projector.
Everything else gets an :class:`ExportError` saying which part has no Llava equivalent.

Key layout (transformers 5, in memory)::

    fusevlm                                   llava
    vision_tower.model.*                  <-> model.vision_tower.*
    projector.mlp.0.* / projector.mlp.2.* <-> model.multi_modal_projector.linear_1.* / linear_2.*
    language_model.<base_model_prefix>.*  <-> model.language_model.*
    language_model.lm_head.*              <-> lm_head.*

Chat templates: ours render string contents (``<image>`` placeholders in the text), Llava processors render
HF part lists. Each direction wraps the template in a small marked Jinja shim converting the content, and strips
the other direction's shim when it finds one, so export -> import gives back the original template exactly.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoImageProcessor,
    AutoProcessor,
    AutoTokenizer,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
)
from transformers.initialization import no_init_weights

from .models.configuration import FuseVLMConfig
from .models.projectors import resolve_projector
from .models.vlm import FuseVLMForConditionalGeneration
from .processing import FuseVLMProcessor

# fusevlm encoder name -> (Llava vision model_type, whether the tower has a CLS token)
TOWERS = {"clip": ("clip_vision_model", True), "siglip": ("siglip_vision_model", False)}
LLAVA_TOWERS = {model_type: name for name, (model_type, _) in TOWERS.items()}

_TO_STRING_BEGIN = "{#- fusevlm:parts-to-string -#}"
_TO_PARTS_BEGIN = "{#- fusevlm:string-to-parts -#}"
_SHIM_END = "{#- fusevlm:end-shim -#}"

# HF part lists -> one string, joined exactly as ``fusevlm.processing.flatten_content`` does.
_PARTS_TO_STRING = (
    _TO_STRING_BEGIN
    + "{%- set _ns = namespace(messages=[]) -%}"
    "{%- for _m in messages -%}"
    "{%- if _m['content'] is string -%}{%- set _ns.messages = _ns.messages + [_m] -%}"
    "{%- else -%}{%- set _p = namespace(texts=[]) -%}"
    "{%- for _part in _m['content'] -%}"
    "{%- if _part['type'] in ('image', 'image_url') -%}{%- set _p.texts = _p.texts + [IMAGE_TOKEN] -%}"
    "{%- else -%}{%- set _p.texts = _p.texts + [_part['text']] -%}{%- endif -%}"
    "{%- endfor -%}"
    "{%- set _ns.messages = _ns.messages + [{'role': _m['role'], 'content': _p.texts | join('\\n')}] -%}"
    "{%- endif -%}{%- endfor -%}"
    "{%- set messages = _ns.messages -%}" + _SHIM_END
)

# One string with placeholders -> HF part lists (for llava-hf templates, which iterate over parts).
_STRING_TO_PARTS = (
    _TO_PARTS_BEGIN
    + "{%- set _ns = namespace(messages=[]) -%}"
    "{%- for _m in messages -%}"
    "{%- if _m['content'] is string -%}{%- set _p = namespace(parts=[]) -%}"
    "{%- for _piece in _m['content'].split(IMAGE_TOKEN) -%}"
    "{%- if not loop.first -%}{%- set _p.parts = _p.parts + [{'type': 'image'}] -%}{%- endif -%}"
    "{%- if _piece.strip('\\n') -%}{%- set _p.parts = _p.parts + [{'type': 'text', 'text': _piece.strip('\\n')}] -%}"
    "{%- endif -%}{%- endfor -%}"
    "{%- set _ns.messages = _ns.messages + [{'role': _m['role'], 'content': _p.parts}] -%}"
    "{%- else -%}{%- set _ns.messages = _ns.messages + [_m] -%}{%- endif -%}{%- endfor -%}"
    "{%- set messages = _ns.messages -%}" + _SHIM_END
)


class ExportError(ValueError):
    """The model (or checkpoint) has a part the other format cannot represent; the message says which."""


# ---- chat templates ------------------------------------------------------------------------------------------
def _jinja_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _strip_shim(template: str, begin: str) -> str | None:
    if template.startswith(begin) and _SHIM_END in template:
        return template.split(_SHIM_END, 1)[1]
    return None


def _wrap(template: str, shim: str, image_token: str) -> str:
    return shim.replace("IMAGE_TOKEN", _jinja_string(image_token)) + template


def template_for_llava(template: str, image_token: str) -> str:
    """Our string-content template, made to accept HF part lists (or a Llava template we imported, restored)."""
    original = _strip_shim(template, _TO_PARTS_BEGIN)
    return original if original is not None else _wrap(template, _PARTS_TO_STRING, image_token)


def template_for_fusevlm(template: str, image_token: str) -> str:
    """A Llava part-list template, made to accept string contents (or our own template, restored)."""
    original = _strip_shim(template, _TO_STRING_BEGIN)
    return original if original is not None else _wrap(template, _STRING_TO_PARTS, image_token)


# ---- export --------------------------------------------------------------------------------------------------
def check_exportable(config: FuseVLMConfig, model: FuseVLMForConditionalGeneration | None = None) -> None:
    """Raise :class:`ExportError` naming every reason the model has no exact Llava equivalent."""
    reasons = []
    spec = config.vision_config or {}
    encoder = spec.get("encoder")
    if encoder not in TOWERS:
        reasons.append(
            f"vision encoder {encoder!r}: Llava holds exactly one transformers vision tower and fusevlm exports "
            f"only {sorted(TOWERS)} (fused, Qwen-VL, DINOv2 and Chinese-CLIP towers select tokens differently)"
        )
    if not isinstance(spec.get("feature_layer", -2), int):
        reasons.append("several feature layers: export supports one")
    if spec.get("image_size") and spec["image_size"] != spec.get("config", {}).get("image_size"):
        reasons.append(
            f"the tower runs at {spec['image_size']} px, not its native {spec['config'].get('image_size')} px; "
            "Llava does not interpolate position embeddings"
        )
    projector = dict(config.projector_config or {})
    name = projector.pop("type", None)
    try:
        _, implied = resolve_projector(name or "")
    except ValueError:
        implied = {}
    if not (name and name.startswith("mlp") and implied.get("depth") == 2 and not projector):
        reasons.append(
            f"projector {config.projector_config}: Llava's multi_modal_projector is exactly Linear-GELU-Linear "
            "('mlp2x_gelu'); other projectors have no Llava equivalent"
        )
    if model is not None:
        extra = _lm_head_keys(model) - {"language_model.lm_head.weight"}
        if extra:
            reasons.append(f"the LM's output head has parameters Llava's bias-free lm_head lacks: {sorted(extra)}")
    if reasons:
        raise ExportError("cannot export to hf-llava:\n- " + "\n- ".join(reasons))


def _lm_head_keys(model: FuseVLMForConditionalGeneration) -> set[str]:
    prefix = f"language_model.{model.language_model.base_model_prefix}."
    return {k for k in model.state_dict() if k.startswith("language_model.") and not k.startswith(prefix)}


def llava_config_from(model: FuseVLMForConditionalGeneration) -> LlavaConfig:
    config = model.config
    _, has_cls = TOWERS[config.vision_config["encoder"]]
    # "default" drops hidden_states' first token: right for a CLS tower giving patches only, wrong otherwise.
    strategy = "default" if has_cls and config.vision_config["feature_select"] == "patch" else "full"
    text_config = config.text_config
    return LlavaConfig(
        vision_config=model.vision_tower.model.config.to_dict(),
        text_config=text_config.to_dict(),
        image_token_index=config.image_token_id,
        image_seq_length=config.image_seq_length,
        projector_hidden_act="gelu",
        vision_feature_select_strategy=strategy,
        vision_feature_layer=config.vision_config["feature_layer"],
        multimodal_projector_bias=True,
        tie_word_embeddings=bool(getattr(text_config, "tie_word_embeddings", False)),
        dtype=str(model.dtype).removeprefix("torch."),
    )


def _rename(state: dict[str, torch.Tensor], table: list[tuple[str, str]]) -> dict[str, torch.Tensor]:
    """Rename keys by the first matching prefix; a key no prefix matches is an error, never dropped."""
    renamed = {}
    for key, value in state.items():
        for old, new in table:
            if key.startswith(old):
                renamed[new + key[len(old) :]] = value
                break
        else:
            raise ExportError(f"no mapping for parameter {key!r}")
    return renamed


def _key_table(lm_prefix: str) -> list[tuple[str, str]]:
    """fusevlm prefix -> Llava prefix."""
    return [
        ("vision_tower.model.", "model.vision_tower."),
        ("projector.mlp.0.", "model.multi_modal_projector.linear_1."),
        ("projector.mlp.2.", "model.multi_modal_projector.linear_2."),
        (f"language_model.{lm_prefix}.", "model.language_model."),
        ("language_model.lm_head.", "lm_head."),
    ]


def _load_strict(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ExportError(
            f"weights do not fit {type(model).__name__}: missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )


def llava_processor_from(processor: FuseVLMProcessor, model: FuseVLMForConditionalGeneration) -> LlavaProcessor:
    _, has_cls = TOWERS[model.config.vision_config["encoder"]]
    strategy = llava_config_from(model).vision_feature_select_strategy
    llava = LlavaProcessor(
        image_processor=processor.image_processor,
        tokenizer=processor.tokenizer,
        patch_size=model.vision_tower.patch_size,
        vision_feature_select_strategy=strategy,
        chat_template=template_for_llava(processor.chat_template, processor.image_token),
        image_token=processor.image_token,
        num_additional_image_tokens=1 if has_cls else 0,
    )
    return llava


def to_llava(model: FuseVLMForConditionalGeneration) -> LlavaForConditionalGeneration:
    """transformers' ``LlavaForConditionalGeneration`` holding ``model``'s weights (in memory), same logits."""
    check_exportable(model.config, model)
    with no_init_weights():
        llava = LlavaForConditionalGeneration._from_config(llava_config_from(model), dtype=model.dtype)
    _load_strict(llava, _rename(model.state_dict(), _key_table(model.language_model.base_model_prefix)))
    llava.generation_config = model.generation_config
    return llava


def export_hf_llava(model_dir: str | Path, out_dir: str | Path) -> Path:
    """Write ``out_dir``: a folder ``LlavaForConditionalGeneration`` and ``AutoProcessor`` load, same logits."""
    model = FuseVLMForConditionalGeneration.from_pretrained(str(model_dir))
    processor = FuseVLMProcessor.from_pretrained(model_dir)
    llava = to_llava(model)
    out_dir = Path(out_dir)
    llava.save_pretrained(out_dir)
    llava_processor_from(processor, model).save_pretrained(out_dir)
    return out_dir


# ---- import --------------------------------------------------------------------------------------------------
def fusevlm_config_from(config: LlavaConfig, image_token: str) -> FuseVLMConfig:
    """The FuseVLMConfig of a Llava config; refuses what fusevlm cannot run identically."""
    vision = config.vision_config
    encoder = LLAVA_TOWERS.get(vision.model_type)
    reasons = []
    if encoder is None:
        reasons.append(f"vision tower {vision.model_type!r}: fusevlm imports only {sorted(LLAVA_TOWERS)}")
    if not isinstance(config.vision_feature_layer, int):
        reasons.append(f"vision_feature_layer={config.vision_feature_layer}: fusevlm takes one feature layer")
    if config.projector_hidden_act != "gelu" or not config.multimodal_projector_bias:
        reasons.append("the projector is not Linear(bias)-GELU-Linear(bias)")
    has_cls = encoder is not None and TOWERS[encoder][1]
    if config.vision_feature_select_strategy == "default" and not has_cls:
        reasons.append("strategy 'default' drops the first patch of a tower without a CLS token")
    if reasons:
        raise ExportError("cannot import this hf-llava checkpoint:\n- " + "\n- ".join(reasons))
    feature_select = "patch" if config.vision_feature_select_strategy == "default" or not has_cls else "cls_patch"
    return FuseVLMConfig(
        vision_config={
            "encoder": encoder,
            "config": vision.to_dict(),
            "feature_layer": config.vision_feature_layer,
            "feature_select": feature_select,
        },
        projector_config={"type": "mlp2x_gelu"},
        text_config=config.text_config.to_dict(),
        image_token=image_token,
        image_token_id=config.image_token_id,
        image_seq_length=config.image_seq_length,
    )


def _image_processor_of(llava_dir: str | Path, llava_processor: Any) -> Any:
    image_processor = getattr(llava_processor, "image_processor", None)
    return image_processor if image_processor is not None else AutoImageProcessor.from_pretrained(str(llava_dir))


def import_hf_llava(llava_dir: str | Path, out_dir: str | Path) -> Path:
    """Write ``out_dir``: a fusevlm model folder (model + processor) with the Llava checkpoint's weights."""
    llava = LlavaForConditionalGeneration.from_pretrained(str(llava_dir))
    try:
        llava_processor = AutoProcessor.from_pretrained(str(llava_dir))
        tokenizer = llava_processor.tokenizer
    except (OSError, ValueError):  # a checkpoint without processor files: tokenizer + image processor
        llava_processor, tokenizer = None, AutoTokenizer.from_pretrained(str(llava_dir))
    image_token = getattr(llava_processor, "image_token", None) or "<image>"
    config = fusevlm_config_from(llava.config, image_token)
    with no_init_weights():
        model = FuseVLMForConditionalGeneration._from_config(config, dtype=llava.dtype)
    table = [(new, old) for old, new in _key_table(model.language_model.base_model_prefix)]
    _load_strict(model, _rename(llava.state_dict(), table))
    model.generation_config = llava.generation_config
    template = getattr(llava_processor, "chat_template", None) or tokenizer.chat_template
    processor = FuseVLMProcessor(
        _image_processor_of(llava_dir, llava_processor),
        tokenizer,
        image_seq_length=config.image_seq_length,
        image_token=image_token,
        chat_template=template_for_fusevlm(template, image_token) if template else None,
    )
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


# ---- command line ------------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``fusevlm export`` / ``fusevlm import``: ``--model DIR --out DIR [--format hf-llava | qwen-vl]``."""
    parser.add_argument("--model", required=True, type=Path, help="the folder to convert")
    parser.add_argument("--out", required=True, type=Path, help="the folder to write")
    parser.add_argument("--format", default="hf-llava", choices=["hf-llava", "qwen-vl"],
                        help="the other format: transformers' Llava, or Qwen-VL(-Chat)'s folder")


def run_export(args: argparse.Namespace) -> int:
    from .export_qwen_vl import QwenVLExportError, export_qwen_vl

    try:
        if args.format == "qwen-vl":
            out = export_qwen_vl(args.model, args.out)
            print(f"wrote {out} (a Qwen-VL folder: add Qwen-VL-Chat's *.py files to load it with trust_remote_code)")
            return 0
        out = export_hf_llava(args.model, args.out)
    except (ExportError, QwenVLExportError) as err:
        print(err)
        return 2
    print(f"wrote {out} (load with LlavaForConditionalGeneration / AutoProcessor)")
    return 0


def run_import(args: argparse.Namespace) -> int:
    from .export_qwen_vl import QwenVLExportError, import_qwen_vl

    try:
        out = (import_qwen_vl if args.format == "qwen-vl" else import_hf_llava)(args.model, args.out)
    except (ExportError, QwenVLExportError) as err:
        print(err)
        return 2
    print(f"wrote {out} (a fusevlm model folder)")
    return 0


run = run_export

__all__ = ["ExportError", "check_exportable", "export_hf_llava", "import_hf_llava", "to_llava"]
