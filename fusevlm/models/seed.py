"""The seed's (CodeFuse-MFT-VLM's) checkpoints: its loader, its release layout and its LoRA output folders.

``load_mixed_pretrained_model`` takes the seed's arguments and returns the seed's tuple, so the seed README's
snippet runs as written::

    tokenizer, model, image_processor, context_len = load_mixed_pretrained_model(
        model_path, None, "qwen-vl-14b", os.path.join(model_path, "Qwen-VL-visual"), "cross_attn",
        os.path.join(model_path, "mm_projector/mm_projector.bin"))

What it reads:

* ``model_path``: the LLM folder - any transformers causal LM, or a Qwen v1 one (Qwen-7B/14B, remote code written
  for transformers 4.3x), which is converted to Qwen2 in memory (``fusevlm convert-llm qwen-v1`` writes it out);
* or, with ``model_base``, a LoRA output folder of the seed (``adapter_config.json``, ``adapter_model.*``,
  ``non_lora_trainables.bin``): the adapter is merged into ``model_base``'s LLM and the non-LoRA tensors loaded;
* ``vision_tower_path``: any vision source fusevlm reads, the seed's ``Qwen-VL-visual/`` folder included;
* ``mm_projector_path``: the projector's weights, under any prefix ending in ``mm_projector.`` (or none).

A model whose vision tower comes from the seed's ``Qwen-VL-visual/`` folder gets the seed's prompt format
(``codefuse_qwen``) unless ``chat_template`` says otherwise; it is saved with the tokenizer, so ``fusevlm chat``,
``eval`` and ``serve`` use it for the folder ``fusevlm init`` writes.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn
from transformers import AddedToken, PreTrainedModel, PreTrainedTokenizerBase

from ..templates import CODEFUSE_QWEN, get_template
from .builder import assemble, load_projector_weights
from .llm import load_llm
from .vision import VisionSource, load_vision_encoder
from .vlm import FuseVLMForConditionalGeneration
from .weights import read_weights

logger = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
NON_LORA_TRAINABLES = "non_lora_trainables.bin"
PEFT_PREFIX = "base_model.model."  # what PEFT puts before every tensor name of the model it wraps
# Qwen-VL's tokens after Qwen v1's <|extra_204|>, in id order; <img> is the seed's visual_config image_start_id.
QWEN_VL_TAGS = ("<ref>", "</ref>", "<box>", "</box>", "<quad>", "</quad>", "<img>", "</img>", "<imgpad>")
QWEN_V1_MODEL_TYPES = ("qwen", "llava_qwen")  # Qwen v1's own, and the seed's LlavaQWen config saved over it
# LLaVA's config keys besides the mm_* ones: they describe the vision side, which the loader's arguments give.
LLAVA_CONFIG_KEYS = frozenset({
    "use_mm_proj", "image_aspect_ratio", "image_grid_pinpoints", "tune_mm_mlp_adapter", "freeze_mm_mlp_adapter",
    "use_im_start_end",
})
DEFAULT_CONTEXT_LENGTH = 2048  # the seed's answer when a config names none


def load_mixed_pretrained_model(
    model_path: str | Path,
    model_base: str | Path | None,
    model_name: str | None,
    vision_tower_path: VisionSource,
    mm_projector_type: str | dict[str, Any],
    mm_projector_path: str | Path | None,
    load_8bit: bool = False,
    load_4bit: bool = False,
    device_map: str | dict[str, Any] | None = "auto",
    *,
    dtype: torch.dtype | str | None = None,
    trust_remote_code: bool = False,
    chat_template: str | None = None,
) -> tuple[PreTrainedTokenizerBase, FuseVLMForConditionalGeneration, Any, int]:
    """The seed's loader: ``(tokenizer, model, image_processor, context_len)`` from an LLM, a vision tower and a
    projector saved apart.

    Arguments as in the seed (``llava/model/builder.py``):

    * ``model_path``: the LLM folder; or the seed's LoRA output folder, then ``model_base`` is the LLM it adapts.
    * ``model_name``: the seed chose code paths by words in it; fusevlm reads the files instead and only refuses a
      name that contradicts them (``lora`` in the name without a LoRA folder, or a LoRA folder without it).
    * ``vision_tower_path``: a vision folder or spec (the seed's ``Qwen-VL-visual/`` included).
    * ``mm_projector_type``: ``linear``, ``mlp{N}x_gelu``, ``cross_attn``, ``identity`` (or a fusevlm projector
      config dict); ``mm_projector_path``: its weights file, or None: then the LoRA folder's
      ``non_lora_trainables.bin``, or the projector tensors saved in the LLM folder (when its config names the same
      type), or else a freshly initialised projector (with a warning).
    * ``load_8bit`` / ``load_4bit``: the LLM quantised with bitsandbytes (8-bit, or NF4 with double quantisation and
      float16 compute, as the seed); needs bitsandbytes and a CUDA GPU.
    * ``device_map``: where the LLM's layers go (transformers' ``device_map``; None: load on the CPU); the vision
      tower and the projector go where the LLM's input embeddings are.

    fusevlm's own keywords: ``dtype`` of the LLM (default: its checkpoint's), ``trust_remote_code`` (off), and
    ``chat_template`` (a built-in name such as ``codefuse_qwen``, or Jinja text; default: ``codefuse_qwen`` when
    the vision tower is the seed's ``Qwen-VL-visual/`` folder, else the tokenizer's own).

    ``image_processor`` is the vision tower's transformers image processor; ``context_len`` the LLM config's
    ``max_sequence_length`` or ``max_position_embeddings`` (else 2048). ``fusevlm.FuseVLMProcessor(image_processor,
    tokenizer, model.config.image_seq_length, model.config.image_token)`` turns prompts with ``<image>`` into model
    inputs; ``model.save_pretrained`` + that processor's ``save_pretrained`` write one fusevlm model folder.
    """
    adapter = is_lora_folder(model_path, model_base, model_name)
    quantization = quantization_config(load_8bit, load_4bit)
    if adapter and quantization is not None:
        raise ValueError("a LoRA folder is merged into full-precision weights: load it without load_8bit/load_4bit")
    llm_kwargs: dict[str, Any] = {}
    if quantization is not None:
        llm_kwargs["quantization_config"] = quantization
    if device_map is not None:
        llm_kwargs["device_map"] = device_map

    llm_path = model_base if adapter else model_path
    language_model, tokenizer, beside_llm = load_any_llm(
        llm_path, dtype=dtype, trust_remote_code=trust_remote_code, **llm_kwargs
    )
    # Projector weights, first found: mm_projector_path; the LoRA run's non_lora_trainables.bin (both at once is
    # ambiguous); the LLM folder's own mm_projector tensors when its config names the same projector type (the
    # seed's loader keeps those when it is given no file).
    projector_name = mm_projector_type if isinstance(mm_projector_type, str) else mm_projector_type.get("type")
    sources: list[tuple[str, str | Path | dict[str, torch.Tensor]]] = []
    if mm_projector_path is not None:
        sources.append((str(mm_projector_path), mm_projector_path))
    if adapter:
        merge_lora(language_model, Path(model_path))
        extra = Path(model_path) / NON_LORA_TRAINABLES
        run_projector = load_non_lora_trainables(language_model, extra) if extra.is_file() else {}
        if run_projector and sources:
            raise ValueError(
                f"both {extra} and {mm_projector_path} hold projector weights; "
                "pass mm_projector_path=None to use the LoRA run's, or remove them from one"
            )
        if run_projector:
            sources.append((str(extra), run_projector))
    saved_projector = {k: v for k, v in beside_llm.tensors.items() if "mm_projector." in k}
    if saved_projector and beside_llm.config.get("mm_projector_type") == projector_name:
        sources.append((f"{llm_path} (its mm_projector tensors)", saved_projector))
    unused = len(beside_llm.tensors) - (len(saved_projector) if sources and sources[0][1] is saved_projector else 0)
    if unused:
        logger.info("%s: %d vision tower / projector tensors beside the LLM not used (the arguments give them)",
                    llm_path, unused)

    encoder = load_vision_encoder(vision_tower_path)
    chat_template = seed_chat_template(chat_template, encoder, tokenizer)
    model, processor = assemble(encoder, mm_projector_type, language_model, tokenizer, chat_template=chat_template)
    if sources:
        load_projector_weights(model.projector, sources[0][1], sources[0][0])
    elif projector_name != "identity":
        logger.warning("no projector weights given: the %s projector starts freshly initialised", model.projector.name)
    device = language_model.get_input_embeddings().weight.device
    model.vision_tower.to(device)
    model.projector.to(device)
    return processor.tokenizer, model, processor.image_processor, context_length(model.config.text_config)


def is_lora_folder(model_path: str | Path, model_base: str | Path | None, model_name: str | None) -> bool:
    """Whether ``model_path`` is a LoRA output folder, refusing arguments that say otherwise."""
    adapter = (Path(model_path) / ADAPTER_CONFIG).is_file()
    if model_name is not None and ("lora" in model_name.lower()) != adapter:
        raise ValueError(
            f"model_name {model_name!r} {'says' if not adapter else 'does not say'} 'lora', but {model_path} "
            f"{'has no' if not adapter else 'has an'} {ADAPTER_CONFIG}"
        )
    if adapter and model_base is None:
        raise ValueError(f"{model_path} is a LoRA output folder: pass the LLM it adapts as model_base")
    if model_base is not None and not adapter:
        raise ValueError(
            f"model_base is the LLM a LoRA folder adapts, but {model_path} has no {ADAPTER_CONFIG}; "
            "pass the LLM folder as model_path and model_base=None"
        )
    return adapter


def seed_chat_template(chat_template: str | None, encoder: Any, tokenizer: PreTrainedTokenizerBase) -> str | None:
    """The template asked for (a built-in name or Jinja text), else ``codefuse_qwen`` for the seed's vision folder;
    ``codefuse_qwen`` also makes Qwen-VL's image tags tokens (at the folder's ``image_start_id`` when it names one)."""
    seed_visual = getattr(encoder, "seed_visual_config", None)
    if chat_template is None and seed_visual is not None:
        chat_template = CODEFUSE_QWEN
    elif chat_template is not None and "{" not in chat_template:  # a name, not Jinja text
        chat_template = get_template(chat_template)
    if chat_template == CODEFUSE_QWEN:
        add_qwen_vl_tags(tokenizer, (seed_visual or {}).get("image_start_id"))
    return chat_template


def quantization_config(load_8bit: bool, load_4bit: bool) -> Any:
    """The seed's bitsandbytes settings: 8-bit, or NF4 with double quantisation and float16 compute."""
    if load_8bit and load_4bit:
        raise ValueError("load_8bit and load_4bit both set: choose one")
    if not (load_8bit or load_4bit):
        return None
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as err:
        raise ValueError("load_8bit / load_4bit need bitsandbytes (pip install bitsandbytes) and a CUDA GPU") from err
    from transformers import BitsAndBytesConfig

    if load_8bit:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_compute_dtype=torch.float16,
        bnb_4bit_use_double_quant=True,
        bnb_4bit_quant_type="nf4",
    )


def context_length(text_config: Any) -> int:
    for name in ("max_sequence_length", "max_position_embeddings"):
        value = getattr(text_config, name, None)
        if value:
            return int(value)
    return DEFAULT_CONTEXT_LENGTH


# ---- the LLM -------------------------------------------------------------------------------------------------
def is_qwen_v1(path: str | Path) -> bool:
    config_file = Path(path) / "config.json"
    return config_file.is_file() and json.loads(config_file.read_text()).get("model_type") in QWEN_V1_MODEL_TYPES


class BesideLLM(NamedTuple):
    """What the seed's LlavaQWen saved with its LLM: LLaVA's config keys and the vision tower / projector tensors."""

    config: dict[str, Any]
    tensors: dict[str, torch.Tensor]


def load_any_llm(
    path: str | Path,
    *,
    dtype: torch.dtype | str | None = None,
    trust_remote_code: bool = False,
    **model_kwargs: Any,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, BesideLLM]:
    """A causal LM, its tokenizer, and what its folder holds besides. A Qwen v1 folder is converted to Qwen2 in
    memory: no remote code runs."""
    if is_qwen_v1(path):
        return load_qwen_v1_llm(path, dtype=dtype, **model_kwargs)
    model, tokenizer = load_llm(path, dtype=dtype, trust_remote_code=trust_remote_code, model_kwargs=model_kwargs)
    return model, tokenizer, BesideLLM({}, {})


def load_qwen_v1_llm(
    path: str | Path, *, dtype: torch.dtype | str | None = None, **model_kwargs: Any
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, BesideLLM]:
    """A Qwen v1 folder (Qwen-7B/14B, the seed's LlavaQWen save of one, or Qwen-VL) as a transformers Qwen2 model,
    in memory.

    The mapping is ``fusevlm.models.qwen_v1``'s (what ``fusevlm convert-llm qwen-v1`` writes out). What is not the
    LLM's is set apart first and returned: LLaVA's ``mm_*`` config keys and Qwen-VL's ``visual`` section, and the
    ``mm_projector`` / ``vision_tower`` / ``transformer.visual`` tensors. The whole state dict is read before the model is built, so the peak memory
    is about twice the LLM's; convert once with ``fusevlm convert-llm`` to load large models repeatedly.
    """
    from transformers import Qwen2ForCausalLM

    from .qwen_v1 import (
        ENDOFTEXT,
        QwenV1ConversionError,
        expected_qwen_v1_keys,
        qwen_tiktoken_tokenizer,
        qwen_v1_config_to_qwen2,
        qwen_v1_generation_config,
        qwen_v1_state_dict_to_qwen2,
    )
    from .vision.qwen_vl import read_prefixed_tensors

    folder = Path(path)
    raw = json.loads((folder / "config.json").read_text())
    llava = {k: v for k, v in raw.items() if k.startswith("mm_") or k in LLAVA_CONFIG_KEYS or k == "visual"}
    raw = {k: v for k, v in raw.items() if k not in llava}
    raw["model_type"] = "qwen"
    try:
        config = qwen_v1_config_to_qwen2(raw)
    except QwenV1ConversionError as err:
        raise QwenV1ConversionError(f"{folder / 'config.json'}: {err}") from None
    tokenizer = qwen_tiktoken_tokenizer(
        folder / "qwen.tiktoken", eos_token=raw.get("eos_token", ENDOFTEXT), pad_token=raw.get("pad_token"),
        model_max_length=config.max_position_embeddings,
    )
    generation_file = folder / "generation_config.json"
    generation = qwen_v1_generation_config(
        json.loads(generation_file.read_text()) if generation_file.is_file() else {}, tokenizer
    )
    state = read_prefixed_tensors(folder, "")
    multimodal = {k: state.pop(k) for k in list(state)
                  if "mm_projector." in k or "vision_tower." in k or k.startswith("transformer.visual.")}
    expected = expected_qwen_v1_keys(config.num_hidden_layers, config.tie_word_embeddings)
    missing = [k for k in expected if k not in state]
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise QwenV1ConversionError(
            f"{folder}: the weights are not a {config.num_hidden_layers}-layer Qwen v1 LLM's: "
            f"missing {missing[:6]}, unexpected {extra[:6]}"
        )
    converted = qwen_v1_state_dict_to_qwen2(state)
    del state
    model = Qwen2ForCausalLM.from_pretrained(
        None, config=config, state_dict=converted, dtype=dtype or converted["model.embed_tokens.weight"].dtype,
        **model_kwargs,
    )
    model.generation_config = generation
    return model, tokenizer, BesideLLM(llava, multimodal)


def llm_state_in_naming(
    language_model: PreTrainedModel, names: set[str], source: str
) -> tuple[dict[str, torch.Tensor], Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None]:
    """The LLM's tensors under the naming ``names`` use - its own, or Qwen v1's (the seed's Qwen LLMs) - and the map
    from that naming back to its own (None: it is its own)."""
    own = language_model.state_dict()
    if names <= set(own):
        return own, None
    if language_model.config.model_type == "qwen2":
        from .qwen_v1 import qwen2_state_dict_to_qwen_v1, qwen_v1_state_dict_to_qwen2

        v1 = qwen2_state_dict_to_qwen_v1(own)
        if names <= set(v1):
            return v1, qwen_v1_state_dict_to_qwen2
    unknown = sorted(names - set(own))
    raise ValueError(f"{source}: the LLM has no tensors {', '.join(unknown[:6])} (neither by its names nor Qwen v1's)")


def update_llm(language_model: PreTrainedModel, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Overwrite some of the LLM's tensors, named by its own names or Qwen v1's; shapes must fit."""
    state, to_own = llm_state_in_naming(language_model, set(tensors), source)
    wrong = [f"{k} {tuple(v.shape)} (expected {tuple(state[k].shape)})" for k, v in tensors.items()
             if v.shape != state[k].shape]
    if wrong:
        raise ValueError(f"{source}: shape differs: {', '.join(wrong[:6])}")
    own = tensors if to_own is None else to_own({**state, **tensors})
    with torch.no_grad():
        for name, param in language_model.state_dict().items():
            if name in own and not torch.equal(param, own[name].to(param.device, param.dtype)):
                param.copy_(own[name])


# ---- the seed's LoRA output folder -----------------------------------------------------------------------------
def merge_lora(language_model: PreTrainedModel, adapter_dir: Path) -> None:
    """Fold a LoRA adapter saved by PEFT around the seed's model into ``language_model`` (PEFT does the arithmetic).

    The adapter names the seed's modules (Qwen v1's ``transformer.h.N.attn.c_attn`` for a Qwen LLM). Those modules'
    weights, taken from the LLM in that naming, are wrapped as plain linear layers, PEFT loads the adapter onto them
    and merges it, and the merged weights go back into the LLM by its own names.
    """
    from peft import LoraConfig, PeftModel, set_peft_model_state_dict

    weights_file = next((adapter_dir / n for n in ADAPTER_WEIGHTS if (adapter_dir / n).is_file()), None)
    if weights_file is None:
        raise FileNotFoundError(f"{adapter_dir}: no {' or '.join(ADAPTER_WEIGHTS)} beside {ADAPTER_CONFIG}")
    weights = read_weights(weights_file)
    not_lora = sorted(k for k in weights if ".lora_A." not in k and ".lora_B." not in k)
    if not_lora:
        raise ValueError(f"{weights_file}: tensors that are not LoRA A/B matrices: {', '.join(not_lora[:6])}")
    modules = sorted({k.removeprefix(PEFT_PREFIX).split(".lora_")[0] for k in weights})
    outside = [m for m in modules if "vision_tower." in m or "mm_projector." in m]
    if outside:
        raise ValueError(f"{weights_file}: LoRA on modules outside the LLM, which fusevlm does not merge: {outside[:6]}")
    state, to_own = llm_state_in_naming(language_model, {f"{m}.weight" for m in modules}, str(weights_file))

    view = nn.Module()
    for module in modules:
        weight = state[f"{module}.weight"]
        layer = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
        layer.weight = nn.Parameter(weight.detach(), requires_grad=False)  # no copy: merged where it lies
        parent = view
        *path, leaf = module.split(".")
        for part in path:
            if not hasattr(parent, part):
                parent.add_module(part, nn.Module())
            parent = getattr(parent, part)
        parent.add_module(leaf, layer)
    config = LoraConfig.from_pretrained(str(adapter_dir))
    config.task_type = None  # the view is no causal LM; the arithmetic is the same
    peft_model = PeftModel(view, config)
    result = set_peft_model_state_dict(peft_model, weights)
    missing = [k for k in result.missing_keys if ".lora_" in k]
    if result.unexpected_keys or missing:
        raise ValueError(
            f"{weights_file}: does not fit its {ADAPTER_CONFIG}: unexpected {result.unexpected_keys[:6]}, "
            f"missing {missing[:6]}"
        )
    merged = peft_model.merge_and_unload()
    update_llm(
        language_model,
        {f"{m}.weight": merged.get_submodule(m).weight.detach() for m in modules},
        str(weights_file),
    )
    logger.info("merged the LoRA adapter of %s into %d LLM weights", adapter_dir, len(modules))


def load_non_lora_trainables(language_model: PreTrainedModel, path: Path) -> dict[str, torch.Tensor]:
    """Load the LLM tensors of the seed's ``non_lora_trainables.bin``; return its projector tensors."""
    projector, llm = {}, {}
    for key, tensor in read_weights(path).items():
        name = key.removeprefix(PEFT_PREFIX)
        if "mm_projector." in name:
            projector[key] = tensor
        elif "vision_tower." in name:
            raise ValueError(
                f"{path}: {key!r} is a vision tower tensor; fusevlm reads the vision tower from vision_tower_path only"
            )
        else:
            llm[name] = tensor
    if llm:
        update_llm(language_model, llm, str(path))
    return projector


# ---- the tokenizer ---------------------------------------------------------------------------------------------
def add_qwen_vl_tags(tokenizer: PreTrainedTokenizerBase, image_start_id: int | None) -> None:
    """Make Qwen-VL's ``<img>`` / ``</img>`` (and its other tags) single tokens at the ids the seed trained with.

    Qwen-VL numbers its nine tags right after Qwen v1's special tokens, so a Qwen v1 tokenizer that lacks them gets
    them appended in that order. ``image_start_id`` (the seed's ``visual_config.json``) is ``<img>``'s id, and
    ``</img>``'s is the next: a tokenizer where they land elsewhere is not the seed's and is refused.
    """
    vocab = tokenizer.get_vocab()
    absent = [tag for tag in QWEN_VL_TAGS if tag not in vocab]
    if absent and len(absent) != len(QWEN_VL_TAGS):
        raise ValueError(f"the tokenizer has some of Qwen-VL's tags but not {absent}: it is not a Qwen(-VL) tokenizer")
    if absent:
        tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in QWEN_VL_TAGS], special_tokens=True)
    ids = tokenizer.convert_tokens_to_ids(["<img>", "</img>"])
    if image_start_id is not None and ids != [image_start_id, image_start_id + 1]:
        raise ValueError(
            f"the tokenizer's <img> and </img> are ids {ids}, but the seed's visual_config.json says image_start_id "
            f"{image_start_id} (and {image_start_id + 1}): the LLM's tokenizer is not the one the seed trained with"
        )


__all__ = ["load_mixed_pretrained_model"]
