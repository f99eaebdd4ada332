"""Export to, and import from, Qwen-VL's folder format (the layout of Qwen/Qwen-VL-Chat).

A fusevlm model is a Qwen-VL model when its vision tower is Qwen-VL's trunk (``qwen_vl``: its last layer, its 256
position rows), its projector a ``cross_attn`` resampler as wide as the LLM (heads of 128), and its LLM a Qwen
(v1-convertible Qwen2 weights, Qwen's tiktoken vocabulary with Qwen-VL's image tags): CodeFuse-VLM-14B is one. The
export is what the seed's ``merge_pretrain_cross_attn_to_qwenvl.py`` made, so tools that serve Qwen-VL serve it;
the import reads such a folder (Qwen-VL-Chat's own included) back. Export then import gives the same tensors,
tokenizer, chat template and outputs.

Key layout::

    fusevlm                                               Qwen-VL
    vision_tower.{conv1,positional_embedding,ln_pre}.*  <-> transformer.visual.{...}.*
    vision_tower.transformer.resblocks.N.*               <-> transformer.visual.transformer.resblocks.N.*
    projector.{query,pos_embed,kv_proj,attn,ln_q,ln_kv}  <-> transformer.visual.attn_pool.{...}
    projector.{ln_post.*,proj}                           <-> transformer.visual.{ln_post.*,proj}
    language_model.* (Qwen2)                             <-> transformer.{wte,h.N,ln_f}.*, lm_head.* (Qwen v1)

``config.json`` is Qwen v1's (``fusevlm.models.qwen_v1``) plus Qwen-VL's ``visual`` section; its ``output_dim`` is
the LLM's width, which sizes Qwen-VL's resampler exactly as the seed sized its own. The tokenizer is written as
``qwen.tiktoken``; the chat template goes into ``tokenizer_config.json``. Qwen-VL's Python files
(``configuration_qwen.py``, ``modeling_qwen.py``, ``visual.py``, ``tokenization_qwen.py``,
``qwen_generation_utils.py``) are Qwen's code and not written here: copy them from a Qwen/Qwen-VL-Chat download
into the folder, then load it with remote code allowed (the ``trust_remote_code`` flag), as Qwen-VL itself loads.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from .models.qwen_v1 import (
    ENDOFTEXT,
    IM_END,
    IM_START,
    QWEN_SPECIAL_TOKENS,
    QWEN_VL_IMAGE_TOKENS,
    QwenV1ConversionError,
    qwen2_config_to_qwen_v1,
    qwen2_state_dict_to_qwen_v1,
    qwen_tiktoken_tokenizer,
)
from .models.vlm import FuseVLMForConditionalGeneration
from .processing import FuseVLMProcessor

VISUAL = "transformer.visual."
# The trunk's position table in Qwen-VL's VisionTransformer has 256 rows, whatever the image size.
QWEN_VL_POSITIONS = 256
QWEN_VL_QUERIES = 256  # Qwen-VL's resampler default; written as n_queries only when it differs
RESAMPLER_TOP_LEVEL = ("ln_post.", "proj")  # the cross_attn tensors Qwen-VL keeps beside attn_pool
AUTO_MAP = {"AutoConfig": "configuration_qwen.QWenConfig", "AutoModelForCausalLM": "modeling_qwen.QWenLMHeadModel"}
TOKENIZER_CONFIG = {"tokenizer_class": "QWenTokenizer",
                    "auto_map": {"AutoTokenizer": ["tokenization_qwen.QWenTokenizer", None]}}
MAX_SHARD_SIZE = "5GB"


class QwenVLExportError(ValueError):
    """The model, or the folder, is not a Qwen-VL one; the message says which part and why."""


# ---- export --------------------------------------------------------------------------------------------------
def qwen_vl_reasons(model: FuseVLMForConditionalGeneration) -> list[str]:
    """Why ``model`` has no exact Qwen-VL equivalent (empty when it has one)."""
    reasons = []
    spec = model.config.vision_config or {}
    if spec.get("encoder") != "qwen_vl":
        reasons.append(f"vision encoder {spec.get('encoder')!r}: Qwen-VL's is its own ViT trunk (qwen_vl)")
    else:
        layers = spec["config"]["layers"]
        if spec.get("feature_layer") not in (-1, layers) or spec.get("feature_select") != "patch":
            reasons.append(f"the vision tower is read at layer {spec.get('feature_layer')}: Qwen-VL reads its last")
        if spec["config"].get("num_positions") != QWEN_VL_POSITIONS:
            reasons.append(f"the trunk has {spec['config'].get('num_positions')} position rows; Qwen-VL's has 256")
    projector = model.projector
    hidden = model.config.text_config.hidden_size
    if projector.name != "cross_attn":
        reasons.append(f"projector {projector.name!r}: Qwen-VL's is the cross_attn resampler")
    elif projector.embed_dim != hidden or projector.attn.num_heads != hidden // 128:
        reasons.append(
            f"the resampler is {projector.embed_dim} wide with {projector.attn.num_heads} heads; Qwen-VL's is as wide "
            f"as its LLM ({hidden}) with heads of 128 ({hidden // 128})"
        )
    if model.config.text_config.model_type != "qwen2":
        reasons.append(f"LLM {model.config.text_config.model_type!r}: Qwen-VL's is a Qwen (v1) model")
    else:
        try:
            qwen2_config_to_qwen_v1(model.config.text_config)
        except QwenV1ConversionError as err:
            reasons.append(str(err))
    return reasons


def qwen_vl_state_dict(model: FuseVLMForConditionalGeneration) -> dict[str, torch.Tensor]:
    """``model``'s tensors under Qwen-VL's names (see the module docstring)."""
    state = {VISUAL + k: v for k, v in model.vision_tower.state_dict().items()}
    for key, value in model.projector.state_dict().items():
        inner = "" if key.startswith(RESAMPLER_TOP_LEVEL) else "attn_pool."
        state[VISUAL + inner + key] = value
    llm = qwen2_state_dict_to_qwen_v1(model.language_model.state_dict())
    if model.config.text_config.tie_word_embeddings:
        llm.pop("lm_head.weight", None)  # Qwen v1 ties by config, not by a second tensor
    return {**state, **llm}


def tiktoken_lines(processor: FuseVLMProcessor) -> str:
    """The tokenizer's BPE vocabulary as ``qwen.tiktoken`` text.

    Qwen-VL's tokenizer numbers Qwen's special tokens right after the BPE ranks, then its image tags; fusevlm's
    image placeholder may follow. Anything else has no place in that file and is refused.
    """
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    tokenizer = processor.tokenizer
    num_ranks = tokenizer.convert_tokens_to_ids(ENDOFTEXT)
    specials = (*QWEN_SPECIAL_TOKENS, *QWEN_VL_IMAGE_TOKENS)
    found = tokenizer.convert_ids_to_tokens(list(range(num_ranks, num_ranks + len(specials))))
    if not isinstance(num_ranks, int) or tuple(found) != specials:
        raise QwenVLExportError(
            "the tokenizer is not Qwen-VL's: Qwen's special tokens and then Qwen-VL's image tags must follow the BPE "
            f"vocabulary in order (found {found[:4]}... after id {num_ranks})"
        )
    after = [t for t in tokenizer.convert_ids_to_tokens(list(range(num_ranks + len(specials), len(tokenizer))))
             if t != processor.image_token]
    if after:
        raise QwenVLExportError(f"the tokenizer has tokens Qwen-VL's has no place for: {after[:6]}")
    to_byte = {char: byte for byte, char in bytes_to_unicode().items()}
    lines = []
    for rank, token in enumerate(tokenizer.convert_ids_to_tokens(list(range(num_ranks)))):
        if any(char not in to_byte for char in token):
            raise QwenVLExportError(f"token {rank} ({token!r}) is not byte-level BPE: no qwen.tiktoken line for it")
        lines.append(f"{base64.b64encode(bytes(to_byte[c] for c in token)).decode()} {rank}\n")
    return "".join(lines)


def same_tokenizer(a: Any, b: Any) -> bool:
    """The same BPE model, split rules and normalisation (the ids alone would not say the merges agree)."""
    parts = ("model", "pre_tokenizer", "normalizer")
    first, second = (json.loads(t.backend_tokenizer.to_str()) for t in (a, b))
    return all(first.get(p) == second.get(p) for p in parts)


def generation_config_for_qwen(generation: Any, tokenizer: Any) -> dict[str, Any]:
    """The generation config, plus Qwen's ``chat_format`` when it stops on ChatML's markers as Qwen-Chat does."""
    config = generation.to_diff_dict()
    config.pop("transformers_version", None)
    eos = config.get("eos_token_id")
    eos = eos if isinstance(eos, list) else [eos]
    if set(tokenizer.convert_tokens_to_ids([IM_END, IM_START])) <= set(eos):
        config["chat_format"] = "chatml"
    return config


def export_qwen_vl(model_dir: str | Path, out_dir: str | Path) -> Path:
    """Write ``out_dir``: ``model_dir`` as a Qwen-VL(-Chat) folder (weights, config.json, qwen.tiktoken)."""
    model = FuseVLMForConditionalGeneration.from_pretrained(str(model_dir))
    processor = FuseVLMProcessor.from_pretrained(model_dir)
    reasons = qwen_vl_reasons(model)
    if reasons:
        raise QwenVLExportError("cannot export to qwen-vl:\n- " + "\n- ".join(reasons))
    vocabulary = tiktoken_lines(processor)
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out}: exists and is not an empty folder; choose a new one")
    out.mkdir(parents=True, exist_ok=True)
    (out / "qwen.tiktoken").write_text(vocabulary)
    rebuilt = qwen_tiktoken_tokenizer(out / "qwen.tiktoken", (*QWEN_SPECIAL_TOKENS, *QWEN_VL_IMAGE_TOKENS))
    if not same_tokenizer(rebuilt, processor.tokenizer):
        raise QwenVLExportError(f"{model_dir}: the tokenizer is not one qwen.tiktoken describes (merges or splits differ)")

    spec, text = model.config.vision_config["config"], model.config.text_config
    config = qwen2_config_to_qwen_v1(text)
    visual = {
        "heads": spec["heads"], "image_size": model.vision_tower.image_size,
        "image_start_id": processor.tokenizer.convert_tokens_to_ids("<img>"), "layers": spec["layers"],
        "mlp_ratio": spec["mlp_ratio"], "output_dim": text.hidden_size, "patch_size": spec["patch_size"],
        "width": spec["width"],
    }
    if model.projector.num_queries != QWEN_VL_QUERIES:
        visual["n_queries"] = model.projector.num_queries
    config.update(architectures=["QWenLMHeadModel"], auto_map=AUTO_MAP, visual=visual,
                  torch_dtype=str(model.dtype).removeprefix("torch."))
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "generation_config.json").write_text(
        json.dumps(generation_config_for_qwen(model.generation_config, processor.tokenizer), indent=2) + "\n")
    (out / "tokenizer_config.json").write_text(json.dumps(
        {**TOKENIZER_CONFIG, "model_max_length": text.max_position_embeddings,
         "chat_template": processor.chat_template}, indent=2) + "\n")
    write_safetensors(qwen_vl_state_dict(model), out)
    return out


def write_safetensors(state: dict[str, torch.Tensor], out: Path) -> None:
    """Sharded safetensors with transformers' index, as ``save_pretrained`` writes them."""
    from huggingface_hub import split_torch_state_dict_into_shards

    split = split_torch_state_dict_into_shards(state, max_shard_size=MAX_SHARD_SIZE)
    for name, keys in tqdm(split.filename_to_tensors.items(), desc="writing qwen-vl shards", unit="shard"):
        save_file({k: state[k].contiguous() for k in keys}, str(out / name), metadata={"format": "pt"})
    if split.is_sharded:
        index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


# ---- import --------------------------------------------------------------------------------------------------
def import_qwen_vl(qwen_vl_dir: str | Path, out_dir: str | Path) -> Path:
    """Write ``out_dir``: a fusevlm model folder with a Qwen-VL folder's weights (trunk, resampler, LLM).

    The chat template is the one ``tokenizer_config.json`` carries (an export's), else ``codefuse_qwen``: ChatML
    with the images as ``Picture N:<img>...</img>``, as the seed prompted it.
    """
    from .models.builder import assemble
    from .models.seed import add_qwen_vl_tags, load_qwen_v1_llm
    from .models.vision.qwen_vl import QwenVLEncoder
    from .models.weights import load_strict
    from .templates import CODEFUSE_QWEN

    folder = Path(qwen_vl_dir)
    raw = json.loads((folder / "config.json").read_text())
    if not isinstance(raw.get("visual"), dict):
        raise QwenVLExportError(f"{folder / 'config.json'}: no 'visual' section; not a Qwen-VL folder")
    encoder = QwenVLEncoder.from_pretrained(folder)
    language_model, tokenizer, _ = load_qwen_v1_llm(folder)
    add_qwen_vl_tags(tokenizer, raw["visual"].get("image_start_id"))
    tokenizer_config = folder / "tokenizer_config.json"
    template = json.loads(tokenizer_config.read_text()).get("chat_template") if tokenizer_config.is_file() else None
    model, processor = assemble(encoder, "cross_attn", language_model, tokenizer,
                                chat_template=template or CODEFUSE_QWEN)
    # assemble keeps what fits of a checkpoint's resampler; an import must keep all of it, exactly.
    load_strict(model.projector, encoder.pretrained_projector["state_dict"], f"{folder} ({VISUAL}*)",
                "the cross_attn resampler its config.json describes")
    out = Path(out_dir)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


__all__ = ["QwenVLExportError", "export_qwen_vl", "import_qwen_vl", "qwen_vl_reasons", "qwen_vl_state_dict"]
