"""Qwen (v1: Qwen-7B, Qwen-14B, the LLM inside Qwen-VL) <-> transformers' native Qwen2, exactly.

Qwen v1 is remote code (``model_type: qwen``, ``QWenLMHeadModel``) written for transformers 4.3x; it does not
load on transformers 5. Its architecture is Qwen2's with other names: a fused ``c_attn`` (q, k, v stacked, with a
bias) where Qwen2 has three biased projections, a SwiGLU whose ``w1`` is Qwen2's ``up_proj`` and whose ``w2`` is
the gated one (``c_proj(w1(x) * silu(w2(x)))``), RMSNorm and the same half-rotation rotary embedding. So the
weights convert by renaming and splitting, and the converted model computes the same function.

Key layout::

    Qwen v1                                    Qwen2
    transformer.wte.weight                 <-> model.embed_tokens.weight
    transformer.h.N.ln_1.weight            <-> model.layers.N.input_layernorm.weight
    transformer.h.N.attn.c_attn.{weight,bias} <-> model.layers.N.self_attn.{q,k,v}_proj.{weight,bias} (stacked)
    transformer.h.N.attn.c_proj.weight     <-> model.layers.N.self_attn.o_proj.weight
    transformer.h.N.ln_2.weight            <-> model.layers.N.post_attention_layernorm.weight
    transformer.h.N.mlp.w1.weight          <-> model.layers.N.mlp.up_proj.weight
    transformer.h.N.mlp.w2.weight          <-> model.layers.N.mlp.gate_proj.weight
    transformer.h.N.mlp.c_proj.weight      <-> model.layers.N.mlp.down_proj.weight
    transformer.ln_f.weight                <-> model.norm.weight
    lm_head.weight                         <-> lm_head.weight

What differs: Qwen v1 applies two inference-only long-context tricks, dynamic NTK rotary scaling
(``use_dynamic_ntk``: a larger rotary base when a prompt is longer than ``seq_length``) and logn attention
(``use_logn_attn``: queries past position ``seq_length`` scaled by log_seq_length(position)). Neither exists in
Qwen2, and both are the identity up to ``seq_length`` tokens (2048 for Qwen-14B), and in training at any length.
The converted model therefore equals the original on sequences of up to ``seq_length`` tokens, its
``max_position_embeddings``; :func:`convert_qwen_v1` warns when the original had them on. The flags are kept in
the converted config as ``qwen_v1_long_context`` (Qwen2 does not read it) so that
:func:`qwen2_config_to_qwen_v1` restores them.

The tokenizer (``qwen.tiktoken``: one ``base64(token) rank`` line per byte-level BPE token, ranks 0..n-1, then
Qwen's special tokens with the next ids) becomes a ``PreTrainedTokenizerFast`` with the same ids, through
transformers' own tiktoken converter.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tokenizers import normalizers
from tqdm.auto import tqdm
from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM
from transformers.convert_slow_tokenizer import TikTokenConverter

logger = logging.getLogger(__name__)

# Qwen v1's pre-tokenizer split: cl100k's, except that digits split one by one (\p{N}, not \p{N}{1,3}).
QWEN_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
# The LLMs' special tokens, in id order after the last BPE rank (151643 for Qwen-7B/14B).
QWEN_SPECIAL_TOKENS: tuple[str, ...] = (ENDOFTEXT, IM_START, IM_END, *(f"<|extra_{i}|>" for i in range(205)))
# Qwen-VL appends these after QWEN_SPECIAL_TOKENS.
QWEN_VL_IMAGE_TOKENS: tuple[str, ...] = (
    "<ref>", "</ref>", "<box>", "</box>", "<quad>", "</quad>", "<img>", "</img>", "<imgpad>",
)

LONG_CONTEXT_KEY = "qwen_v1_long_context"
# v1 keys with no Qwen2 equivalent (see the module docstring), and QWenConfig's defaults for them.
_LONG_CONTEXT_DEFAULTS = {"use_dynamic_ntk": True, "use_logn_attn": True, "max_position_embeddings": 8192}

# v1 key -> Qwen2 key, value unchanged.
_RENAMED = {
    "hidden_size": "hidden_size",
    "num_hidden_layers": "num_hidden_layers",
    "num_attention_heads": "num_attention_heads",
    "vocab_size": "vocab_size",
    "layer_norm_epsilon": "rms_norm_eps",
    "seq_length": "max_position_embeddings",
    "initializer_range": "initializer_range",
    "tie_word_embeddings": "tie_word_embeddings",
    "attn_dropout_prob": "attention_dropout",
    "use_cache": "use_cache",
    "bos_token_id": "bos_token_id",
    "eos_token_id": "eos_token_id",
    "pad_token_id": "pad_token_id",
}
_REQUIRED = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size", "seq_length")
# Settings of v1 that Qwen2 has fixed: any other value computes something Qwen2 cannot (QWenConfig's defaults).
_FIXED = {"rotary_pct": 1.0, "no_bias": True, "scale_attn_weights": True, "emb_dropout_prob": 0.0}
# Keys that describe the original's runtime (kernels, precision at load, remote-code wiring, provenance, tokenizer
# class), not the function the weights compute.
_RUNTIME_ONLY = frozenset({
    "model_type", "architectures", "auto_map", "transformers_version", "_name_or_path", "tokenizer_class",
    "tokenizer_type", "use_flash_attn", "bf16", "fp16", "fp32", "onnx_safe", "softmax_in_fp32",
    "use_cache_kernel", "use_cache_quantization",
})
# Read apart from the mapping: the stored dtype, and token names some fine-tuned copies write (for the tokenizer).
_READ_APART = frozenset({"torch_dtype", "dtype", "eos_token", "pad_token"})


class QwenV1ConversionError(ValueError):
    """A Qwen v1 checkpoint (or a Qwen2 one, going back) that cannot be converted exactly; the message names
    the file, key or setting."""


# ---- config ------------------------------------------------------------------------------------------------
def qwen_v1_config_to_qwen2(config: Mapping[str, Any]) -> Qwen2Config:
    """A Qwen v1 ``config.json`` (as a dict) as the Qwen2 config of the same model.

    v1's ``intermediate_size`` is the sum of ``w1`` and ``w2``'s widths, so Qwen2's is half of it;
    ``seq_length`` (the trained context) becomes ``max_position_embeddings``. Settings Qwen2 cannot express
    (``rotary_pct`` < 1, ``no_bias`` false, ``kv_channels * heads != hidden_size``, ...) and unknown keys are
    refused by name; Qwen-VL's ``visual`` section must be removed by the caller. The long-context flags go to
    ``qwen_v1_long_context`` (kept, not applied).
    """
    raw = dict(config)
    if "visual" in raw:
        raise QwenV1ConversionError(
            "config has a 'visual' section (a Qwen-VL config): pass the LLM part only; the vision tower is "
            "read by the qwen_vl vision encoder"
        )
    model_type = raw.get("model_type", "qwen")
    if model_type != "qwen":
        raise QwenV1ConversionError(f"config model_type is {model_type!r}, not 'qwen' (Qwen v1)")
    missing = [key for key in _REQUIRED if key not in raw]
    if missing:
        raise QwenV1ConversionError(f"Qwen v1 config lacks {', '.join(missing)}")
    known = set(_RENAMED) | set(_REQUIRED) | set(_FIXED) | set(_LONG_CONTEXT_DEFAULTS) | _RUNTIME_ONLY | _READ_APART
    known |= {"kv_channels", "rotary_emb_base"}
    unknown = sorted(key for key in raw if key not in known)
    if unknown:
        raise QwenV1ConversionError(
            f"Qwen v1 config has keys this converter does not know, so it cannot tell whether the conversion is "
            f"exact: {', '.join(unknown)}"
        )
    for key, value in _FIXED.items():
        if key in raw and raw[key] != value:
            raise QwenV1ConversionError(
                f"Qwen v1 config {key}={raw[key]!r}: Qwen2 has no equivalent (only {key}={value!r} converts)"
            )
    hidden, heads = raw["hidden_size"], raw["num_attention_heads"]
    kv_channels = raw.get("kv_channels", 128)  # QWenConfig's default
    if kv_channels * heads != hidden:
        raise QwenV1ConversionError(
            f"Qwen v1 config kv_channels={kv_channels} x num_attention_heads={heads} != hidden_size={hidden}: "
            "v1 splits c_attn by hidden_size, so such a model has no Qwen2 equivalent"
        )
    if raw["intermediate_size"] % 2:
        raise QwenV1ConversionError(
            f"Qwen v1 config intermediate_size={raw['intermediate_size']} is odd; it must be w1's plus w2's width"
        )
    mapped = {new: raw[old] for old, new in _RENAMED.items() if old in raw}
    dtype = raw.get("dtype", raw.get("torch_dtype"))
    return Qwen2Config(
        **mapped,
        intermediate_size=raw["intermediate_size"] // 2,
        num_key_value_heads=heads,
        hidden_act="silu",
        rope_parameters={"rope_type": "default", "rope_theta": float(raw.get("rotary_emb_base", 10000))},
        use_sliding_window=False,
        sliding_window=None,
        architectures=["Qwen2ForCausalLM"],
        **({"dtype": dtype} if dtype is not None else {}),
        **{LONG_CONTEXT_KEY: {key: raw.get(key, default) for key, default in _LONG_CONTEXT_DEFAULTS.items()}},
    )


def qwen2_config_to_qwen_v1(config: Qwen2Config | Mapping[str, Any]) -> dict[str, Any]:
    """A Qwen2 config as the Qwen v1 ``config.json`` dict of the same model: the inverse of
    :func:`qwen_v1_config_to_qwen2` on every key that function reads (runtime-only keys are not restored).

    A config without ``qwen_v1_long_context`` (a native Qwen2 model) gets the v1 settings that compute what Qwen2
    computes: no dynamic NTK, no logn attention. Grouped-query attention, sliding windows, rotary scaling and
    other activations have no v1 equivalent and are refused.
    """
    if isinstance(config, Mapping):
        config = Qwen2Config(**{k: v for k, v in config.items() if k != "model_type"})
    hidden, heads = config.hidden_size, config.num_attention_heads
    problems = []
    if config.num_key_value_heads != heads:
        problems.append(f"num_key_value_heads={config.num_key_value_heads} (grouped-query attention)")
    head_dim = getattr(config, "head_dim", None)
    if head_dim is not None and head_dim * heads != hidden:
        problems.append(f"head_dim={head_dim} x {heads} heads != hidden_size={hidden}")
    if config.hidden_act != "silu":
        problems.append(f"hidden_act={config.hidden_act!r}")
    if config.use_sliding_window or any(t != "full_attention" for t in (config.layer_types or ())):
        problems.append("sliding-window attention")
    rope = dict(config.rope_parameters or {})
    if rope.get("rope_type", "default") != "default":
        problems.append(f"rope_parameters.rope_type={rope.get('rope_type')!r}")
    if problems:
        raise QwenV1ConversionError(f"Qwen2 config has no Qwen v1 equivalent: {'; '.join(problems)}")
    long_context = getattr(config, LONG_CONTEXT_KEY, None) or {
        "use_dynamic_ntk": False,
        "use_logn_attn": False,
        "max_position_embeddings": config.max_position_embeddings,
    }
    v1 = {
        "architectures": ["QWenLMHeadModel"],
        "model_type": "qwen",
        "hidden_size": hidden,
        "intermediate_size": 2 * config.intermediate_size,
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": heads,
        "kv_channels": hidden // heads,
        "vocab_size": config.vocab_size,
        "layer_norm_epsilon": config.rms_norm_eps,
        "rotary_emb_base": rope.get("rope_theta", 10000.0),
        "seq_length": config.max_position_embeddings,
        "initializer_range": config.initializer_range,
        "tie_word_embeddings": config.tie_word_embeddings,
        "attn_dropout_prob": config.attention_dropout,
        "use_cache": config.use_cache,
        **_FIXED,
        **{key: long_context[key] for key in _LONG_CONTEXT_DEFAULTS},
    }
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if getattr(config, key, None) is not None:
            v1[key] = getattr(config, key)
    return v1


# ---- state dict --------------------------------------------------------------------------------------------
_V1_GLOBAL = {
    "transformer.wte.weight": "model.embed_tokens.weight",
    "transformer.ln_f.weight": "model.norm.weight",
    "lm_head.weight": "lm_head.weight",
}
# Per layer, v1 name -> Qwen2 name(s); a tuple means the v1 tensor stacks the three along dim 0 (c_attn).
_V1_LAYER: dict[str, str | tuple[str, str, str]] = {
    "ln_1.weight": "input_layernorm.weight",
    "attn.c_attn.weight": ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"),
    "attn.c_attn.bias": ("self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias"),
    "attn.c_proj.weight": "self_attn.o_proj.weight",
    "ln_2.weight": "post_attention_layernorm.weight",
    "mlp.w1.weight": "mlp.up_proj.weight",
    "mlp.w2.weight": "mlp.gate_proj.weight",
    "mlp.c_proj.weight": "mlp.down_proj.weight",
}
_V1_LAYER_KEY = re.compile(r"transformer\.h\.(\d+)\.(.+)")
_QWEN2_LAYER_KEY = re.compile(r"model\.layers\.(\d+)\.(.+)")
_QWEN2_LAYER: dict[str, str] = {}
for _old, _new in _V1_LAYER.items():
    for _name in (_new,) if isinstance(_new, str) else _new:
        _QWEN2_LAYER[_name] = _old
_QWEN2_GLOBAL = {new: old for old, new in _V1_GLOBAL.items()}


def qwen_v1_layer_keys(layer: int) -> list[str]:
    """The Qwen v1 keys of decoder layer ``layer``."""
    return [f"transformer.h.{layer}.{name}" for name in _V1_LAYER]


def expected_qwen_v1_keys(num_layers: int, tie_word_embeddings: bool = False) -> list[str]:
    """Every key of a complete Qwen v1 LLM state dict (``lm_head`` absent when tied to the embedding)."""
    keys = ["transformer.wte.weight", *(k for i in range(num_layers) for k in qwen_v1_layer_keys(i))]
    return keys + ["transformer.ln_f.weight"] + ([] if tie_word_embeddings else ["lm_head.weight"])


def _name_keys(keys: Sequence[str], limit: int = 8) -> str:
    return ", ".join(keys[:limit]) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def _refuse_unknown(unknown: list[str], layout: str, hint: str = "") -> None:
    if unknown:
        raise QwenV1ConversionError(f"not {layout} keys: {_name_keys(unknown)}{hint}")


def _group_layers(
    state_dict: Mapping[str, torch.Tensor], pattern: re.Pattern, names: Iterable[str]
) -> tuple[dict[int, dict[str, torch.Tensor]], list[str]]:
    """Split per-layer keys by layer index; also returns the keys that match no known layer name."""
    layers: dict[int, dict[str, torch.Tensor]] = {}
    unknown = []
    names = set(names)
    for key, tensor in state_dict.items():
        match = pattern.fullmatch(key)
        if match and match.group(2) in names:
            layers.setdefault(int(match.group(1)), {})[match.group(2)] = tensor
        elif match:
            unknown.append(key)
    return layers, unknown


def _require_complete(layers: dict[int, dict[str, Any]], names: Iterable[str], prefix: str) -> None:
    missing = [f"{prefix}.{i}.{name}" for i, found in sorted(layers.items()) for name in names if name not in found]
    if missing:
        raise QwenV1ConversionError(f"missing keys: {', '.join(missing)}")


def qwen_v1_state_dict_to_qwen2(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Qwen v1 LLM weights under Qwen2's names; ``c_attn`` split into q/k/v (copies, so each tensor owns its
    storage); every other tensor is passed as it is (same dtype, same object).

    Every key must be a v1 LLM key and every layer present must be complete, or a ``QwenV1ConversionError``
    names the keys. A part of a model (one layer, the embeddings) converts on its own, so large checkpoints
    convert piece by piece; :func:`expected_qwen_v1_keys` is the full set. Qwen-VL's ``transformer.visual.*`` keys
    are the caller's to remove.
    """
    layers, unknown = _group_layers(state_dict, _V1_LAYER_KEY, _V1_LAYER)
    unknown += [k for k in state_dict if k not in _V1_GLOBAL and not _V1_LAYER_KEY.fullmatch(k)]
    visual = any(k.startswith("transformer.visual.") for k in unknown)
    _refuse_unknown(
        sorted(unknown), "Qwen v1 LLM", " (remove Qwen-VL's transformer.visual.* keys first)" if visual else ""
    )
    _require_complete(layers, _V1_LAYER, "transformer.h")
    out = {_V1_GLOBAL[k]: v for k, v in state_dict.items() if k in _V1_GLOBAL}
    for index, found in sorted(layers.items()):
        prefix = f"model.layers.{index}"
        for old, new in _V1_LAYER.items():
            tensor = found[old]
            if isinstance(new, str):
                out[f"{prefix}.{new}"] = tensor
                continue
            if tensor.shape[0] % 3 or (tensor.dim() == 2 and tensor.shape[0] != 3 * tensor.shape[1]):
                raise QwenV1ConversionError(
                    f"transformer.h.{index}.{old} has shape {tuple(tensor.shape)}: not q, k, v of the hidden size"
                )
            for name, part in zip(new, tensor.chunk(3, dim=0), strict=True):
                out[f"{prefix}.{name}"] = part.clone()
    return out


def qwen2_state_dict_to_qwen_v1(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of :func:`qwen_v1_state_dict_to_qwen2`: q/k/v stacked back into ``c_attn``, the rest renamed.
    A round trip gives back bit-identical tensors. Unknown keys (and Qwen2 keys v1 has no place for, e.g. an
    ``o_proj`` bias) are refused by name."""
    layers, unknown = _group_layers(state_dict, _QWEN2_LAYER_KEY, _QWEN2_LAYER)
    unknown += [k for k in state_dict if k not in _QWEN2_GLOBAL and not _QWEN2_LAYER_KEY.fullmatch(k)]
    _refuse_unknown(sorted(unknown), "Qwen2 (v1-convertible)")
    _require_complete(layers, _QWEN2_LAYER, "model.layers")
    out = {_QWEN2_GLOBAL[k]: v for k, v in state_dict.items() if k in _QWEN2_GLOBAL}
    for index, found in sorted(layers.items()):
        for old, new in _V1_LAYER.items():
            key = f"transformer.h.{index}.{old}"
            if isinstance(new, str):
                out[key] = found[new]
                continue
            parts = [found[name] for name in new]
            if len({p.shape for p in parts}) != 1:
                raise QwenV1ConversionError(
                    f"model.layers.{index}: q/k/v shapes differ ({', '.join(str(tuple(p.shape)) for p in parts)}); "
                    "v1 has no grouped-query attention"
                )
            out[key] = torch.cat(parts, dim=0)
    return out


# ---- tokenizer ---------------------------------------------------------------------------------------------
def read_tiktoken_ranks(path: str | Path) -> dict[bytes, int]:
    """A ``.tiktoken`` file: one ``base64(token) rank`` line per token. Ranks must be 0..n-1 (Qwen's special
    tokens take the ids after them); a bad line is named."""
    path = Path(path)
    ranks: dict[bytes, int] = {}
    for number, line in enumerate(path.read_bytes().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except (ValueError, binascii.Error) as err:
            raise QwenV1ConversionError(f"{path}:{number}: not a 'base64 rank' line ({err})") from None
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise QwenV1ConversionError(f"{path}: ranks are not 0..{len(ranks) - 1} with each used once")
    return ranks


class _TiktokenFileConverter(TikTokenConverter):
    """transformers' tiktoken converter, reading the file itself (the ``tiktoken`` package is not needed)."""

    @staticmethod
    def load_tiktoken_bpe(tiktoken_url: str) -> dict[bytes, int]:
        return read_tiktoken_ranks(tiktoken_url)


def qwen_tiktoken_tokenizer(
    vocab_file: str | Path,
    special_tokens: Sequence[str] = QWEN_SPECIAL_TOKENS,
    *,
    eos_token: str = ENDOFTEXT,
    pad_token: str | None = None,
    model_max_length: int | None = None,
) -> PreTrainedTokenizerFast:
    """Qwen's tiktoken vocabulary as a fast tokenizer with the same ids: byte-level BPE with merges derived from
    the ranks, Qwen's split pattern, special tokens numbered after the last rank (and matched in text, as Qwen's
    tokenizer does by default), and NFC normalisation first, as ``QWenTokenizer.tokenize`` does.
    ``pad_token`` defaults to ``eos_token`` (Qwen's generation config pads with ``<|endoftext|>``)."""
    ranks = read_tiktoken_ranks(vocab_file)
    backend = _TiktokenFileConverter(
        vocab_file=str(vocab_file), pattern=QWEN_PATTERN, extra_special_tokens=list(special_tokens)
    ).converted()
    backend.normalizer = normalizers.NFC()
    for offset, token in enumerate(special_tokens):
        if backend.token_to_id(token) != len(ranks) + offset:
            raise QwenV1ConversionError(
                f"{vocab_file}: special token {token!r} got id {backend.token_to_id(token)}, not "
                f"{len(ranks) + offset} (is it also a BPE token?)"
            )
    for token in (eos_token, pad_token):
        if token is not None and token not in special_tokens:
            raise QwenV1ConversionError(f"{token!r} is none of the special tokens")
    kwargs = {} if model_max_length is None else {"model_max_length": model_max_length}
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=eos_token,
        pad_token=pad_token or eos_token,
        clean_up_tokenization_spaces=False,
        **kwargs,
    )


# ---- generation config -------------------------------------------------------------------------------------
_CHAT_STOP_TOKENS = {"raw": (), "chatml": (IM_END, IM_START)}  # what Qwen's own generate() stops on, by format
_CHAT_HELPER_ONLY = {"max_window_size"}  # read only by Qwen's chat() helper (history truncation), not by generate


def qwen_v1_generation_config(raw: Mapping[str, Any], tokenizer: PreTrainedTokenizerFast) -> GenerationConfig:
    """Qwen v1's ``generation_config.json`` as a transformers one: single-token ``stop_words_ids`` and the chat
    format's stop tokens become ``eos_token_id`` entries; the standard keys carry over. ``max_window_size`` (how
    much history Qwen's ``chat()`` helper keeps) has no transformers equivalent and is dropped (logged); other
    keys transformers does not know are refused."""
    raw = dict(raw)
    raw.pop("transformers_version", None)
    chat_format = raw.pop("chat_format", "raw")
    if chat_format not in _CHAT_STOP_TOKENS:
        raise QwenV1ConversionError(f"generation_config chat_format={chat_format!r}: known are raw, chatml")
    stop_words = raw.pop("stop_words_ids", None) or []
    long_stops = [ids for ids in stop_words if len(ids) != 1]
    if long_stops:
        raise QwenV1ConversionError(
            f"generation_config stop_words_ids {long_stops} are several tokens long; transformers stops on single "
            "tokens (eos_token_id) only"
        )
    for key in _CHAT_HELPER_ONLY & set(raw):
        logger.info("generation_config %s=%r is read by Qwen's chat() helper only; not carried over", key, raw[key])
        raw.pop(key)
    known = set(GenerationConfig().to_dict())
    unknown = sorted(set(raw) - known)
    if unknown:
        raise QwenV1ConversionError(f"generation_config has keys transformers does not know: {', '.join(unknown)}")
    eos = raw.pop("eos_token_id", tokenizer.eos_token_id)
    eos_ids = [*(eos if isinstance(eos, list) else [eos]), *(ids[0] for ids in stop_words)]
    eos_ids += [tokenizer.convert_tokens_to_ids(t) for t in _CHAT_STOP_TOKENS[chat_format]]
    eos_ids = list(dict.fromkeys(eos_ids))
    raw.setdefault("pad_token_id", tokenizer.pad_token_id)
    return GenerationConfig(**raw, eos_token_id=eos_ids[0] if len(eos_ids) == 1 else eos_ids)


# ---- folders -----------------------------------------------------------------------------------------------
class _Weights:
    """Tensors of a checkpoint folder by key, read one at a time (safetensors or .bin, sharded or not)."""

    def __init__(self, folder: Path, stack: ExitStack):
        self.folder = folder
        for index_name, single_name in (
            ("model.safetensors.index.json", "model.safetensors"),
            ("pytorch_model.bin.index.json", "pytorch_model.bin"),
        ):
            index, single = folder / index_name, folder / single_name
            if index.is_file():
                weight_map = json.loads(index.read_text())["weight_map"]
                break
            if single.is_file():
                weight_map = None
                break
        else:
            raise FileNotFoundError(
                f"{folder}: no model.safetensors(.index.json) or pytorch_model.bin(.index.json) found"
            )
        files = sorted(set(weight_map.values())) if weight_map else [single.name]
        self.handles: dict[str, Any] = {}
        for name in files:
            path = folder / name
            if not path.is_file():
                raise FileNotFoundError(f"{path}: listed in {index.name} but missing")
            if name.endswith(".safetensors"):
                self.handles[name] = stack.enter_context(safe_open(str(path), framework="pt"))
            else:  # memory-mapped: tensors are read when used
                self.handles[name] = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        self.where = weight_map or {key: single.name for key in self._keys(single.name)}
        for name in files:
            stored = set(self._keys(name))
            listed = {k for k, f in self.where.items() if f == name}
            if listed - stored:
                raise QwenV1ConversionError(f"{folder / name}: lacks {', '.join(sorted(listed - stored)[:8])}")

    def _keys(self, name: str) -> list[str]:
        handle = self.handles[name]
        return list(handle.keys())

    def __getitem__(self, key: str) -> torch.Tensor:
        handle = self.handles[self.where[key]]
        return handle.get_tensor(key) if hasattr(handle, "get_tensor") else handle[key]


def _long_context_warning(config: Qwen2Config, source: Path) -> None:
    flags = getattr(config, LONG_CONTEXT_KEY)
    used = [key for key in ("use_dynamic_ntk", "use_logn_attn") if flags[key]]
    if used:
        logger.warning(
            "%s: %s %s inference-only long-context behaviour of Qwen v1 that Qwen2 does not have: the converted "
            "model equals the original on sequences of up to seq_length=%d tokens (and in training at any length), "
            "not beyond",
            source, " and ".join(used), "is" if len(used) == 1 else "are", config.max_position_embeddings,
        )


def convert_qwen_v1(
    in_dir: str | Path, out_dir: str | Path, *, max_shard_bytes: int = 5 * 10**9, progress: bool = True
) -> Path:
    """Convert a Qwen v1 LLM folder (config.json, weights in safetensors or .bin, sharded or not, qwen.tiktoken,
    optionally generation_config.json) into a Qwen2 folder that ``AutoModelForCausalLM`` and ``AutoTokenizer``
    load without remote code. Weights keep their dtype and are written as safetensors, one layer in memory at a
    time. ``out_dir`` must be new or empty. Returns ``out_dir``."""
    source, target = Path(in_dir), Path(out_dir)
    config_file = source / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file}: not found (IN must be a Qwen v1 model folder)")
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ValueError(f"{target}: exists and is not an empty folder; choose a new one")
    if target.resolve() == source.resolve():
        raise ValueError("OUT must differ from IN")
    raw = json.loads(config_file.read_text())
    try:
        config = qwen_v1_config_to_qwen2(raw)
    except QwenV1ConversionError as err:
        raise QwenV1ConversionError(f"{config_file}: {err}") from None
    vocab_file = source / "qwen.tiktoken"
    if not vocab_file.is_file():
        raise FileNotFoundError(f"{vocab_file}: not found (Qwen v1's tokenizer vocabulary)")
    # Fine-tuned copies sometimes name their tokens in config.json (e.g. pad_token "<|extra_1|>").
    tokenizer = qwen_tiktoken_tokenizer(
        vocab_file,
        eos_token=raw.get("eos_token", ENDOFTEXT),
        pad_token=raw.get("pad_token"),
        model_max_length=config.max_position_embeddings,
    )
    if len(tokenizer) > config.vocab_size:
        raise QwenV1ConversionError(
            f"{vocab_file}: {len(tokenizer)} tokens with the special ones, more than vocab_size={config.vocab_size}"
        )
    # Without a generation config, generate() would not know <|endoftext|> ends a text: always write one.
    generation_file = source / "generation_config.json"
    raw_generation = json.loads(generation_file.read_text()) if generation_file.is_file() else {}
    try:
        generation = qwen_v1_generation_config(raw_generation, tokenizer)
    except QwenV1ConversionError as err:
        raise QwenV1ConversionError(f"{generation_file}: {err}") from None
    if raw_generation.get("chat_format") == "chatml":  # a chat model (Qwen-*-Chat)
        from ..templates import CHATML

        tokenizer.chat_template = CHATML

    with ExitStack() as stack:
        weights = _Weights(source, stack)
        expected = expected_qwen_v1_keys(config.num_hidden_layers, config.tie_word_embeddings)
        missing = [key for key in expected if key not in weights.where]
        extra = sorted(set(weights.where) - set(expected))
        if missing:
            raise QwenV1ConversionError(f"{source}: weights lack {_name_keys(missing)}")
        if extra:
            raise QwenV1ConversionError(
                f"{source}: weights that are no part of a {config.num_hidden_layers}-layer Qwen v1 LLM: "
                f"{_name_keys(extra)}"
            )
        _long_context_warning(config, source)
        with torch.device("meta"):
            shapes = {k: v.shape for k, v in Qwen2ForCausalLM(config).state_dict().items()}
        units = [["transformer.wte.weight"], *(qwen_v1_layer_keys(i) for i in range(config.num_hidden_layers)),
                 [k for k in ("transformer.ln_f.weight", "lm_head.weight") if k in weights.where]]
        target.mkdir(parents=True, exist_ok=True)
        writer = _ShardWriter(target, max_shard_bytes)
        for unit in tqdm(units, desc=f"converting {source.name}", unit="layer", disable=not progress):
            converted = qwen_v1_state_dict_to_qwen2({key: weights[key] for key in unit})
            for key, tensor in converted.items():
                if tensor.shape != shapes[key]:
                    raise QwenV1ConversionError(
                        f"{source}: {key} has shape {tuple(tensor.shape)}, config.json implies {tuple(shapes[key])}"
                    )
            if unit[0] == "transformer.wte.weight":
                config.dtype = converted["model.embed_tokens.weight"].dtype
            writer.add(converted)
        writer.close()
    config.save_pretrained(target)
    generation.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


class _ShardWriter:
    """safetensors shards of at most ``max_bytes`` each (a tensor is never split), named as transformers does."""

    def __init__(self, folder: Path, max_bytes: int):
        self.folder, self.max_bytes = folder, max_bytes
        self.pending: dict[str, torch.Tensor] = {}
        self.written: list[tuple[Path, list[str]]] = []
        self.total = 0

    def add(self, tensors: Mapping[str, torch.Tensor]) -> None:
        for key, tensor in tensors.items():
            size = tensor.numel() * tensor.element_size()
            if self.pending and self._pending_bytes() + size > self.max_bytes:
                self._flush()
            self.pending[key] = tensor
            self.total += size

    def _pending_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.pending.values())

    def _flush(self) -> None:
        path = self.folder / f"shard-{len(self.written):05d}.tmp"
        save_file({k: v.contiguous() for k, v in self.pending.items()}, str(path), metadata={"format": "pt"})
        self.written.append((path, list(self.pending)))
        self.pending = {}

    def close(self) -> None:
        if self.pending:
            self._flush()
        if len(self.written) == 1:
            self.written[0][0].rename(self.folder / "model.safetensors")
            return
        count, weight_map = len(self.written), {}
        for number, (path, keys) in enumerate(self.written, start=1):
            name = f"model-{number:05d}-of-{count:05d}.safetensors"
            path.rename(self.folder / name)
            weight_map.update(dict.fromkeys(keys, name))
        index = {"metadata": {"total_size": self.total}, "weight_map": weight_map}
        (self.folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


__all__ = [
    "ENDOFTEXT",
    "IM_END",
    "IM_START",
    "QWEN_PATTERN",
    "QWEN_SPECIAL_TOKENS",
    "QWEN_VL_IMAGE_TOKENS",
    "QwenV1ConversionError",
    "convert_qwen_v1",
    "expected_qwen_v1_keys",
    "qwen2_config_to_qwen_v1",
    "qwen2_state_dict_to_qwen_v1",
    "qwen_tiktoken_tokenizer",
    "qwen_v1_config_to_qwen2",
    "qwen_v1_generation_config",
    "qwen_v1_layer_keys",
    "qwen_v1_state_dict_to_qwen2",
    "read_tiktoken_ranks",
]
