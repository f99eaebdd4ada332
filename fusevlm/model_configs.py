"""A recipe's model from config files alone, on the meta device: no weights read or allocated.

The configs of the shipped recipes' models live in ``recipes/model_configs/`` (one JSON per hub name, ``/`` written
as ``--``); a local folder with a ``config.json`` works too. Used by ``fusevlm plan`` (sizes and memory) and by the
training preflight (a recipe checked before any weights load).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, PretrainedConfig

from .models.configuration import FuseVLMConfig
from .models.qwen_v1 import QwenV1ConversionError, qwen_v1_config_to_qwen2
from .models.vision import VISION_ENCODERS, get_vision_encoder_class
from .models.vision.hf import HFVisionEncoder
from .models.vision.qwen_vl import DEFAULT_CONFIG as QWEN_VL_DEFAULTS
from .models.vlm import FuseVLMForConditionalGeneration
from .train.recipe import Recipe, RecipeError, load_recipe

REPO_ROOT = Path(__file__).resolve().parent.parent
MODEL_CONFIGS = REPO_ROOT / "recipes" / "model_configs"


class PlanError(ValueError):
    """A recipe the planner cannot build a model for; the message says what to supply."""


# ---- config files ------------------------------------------------------------------------------------------
def config_file_name(name: str) -> str:
    """The shipped file for a hub name: ``Qwen/Qwen-14B`` -> ``Qwen--Qwen-14B.json`` (the hub cache's spelling)."""
    return name.replace("/", "--") + ".json"


def known_models(configs_dir: Path = MODEL_CONFIGS) -> list[str]:
    return sorted(p.stem.replace("--", "/") for p in Path(configs_dir).glob("*.json"))


def read_model_config(name: str | Path, configs_dir: Path = MODEL_CONFIGS) -> dict[str, Any]:
    """The raw ``config.json`` of a local folder, a JSON file, or a shipped hub name. Keys starting with ``_``
    (our provenance notes) are dropped."""
    path = Path(name)
    candidates = [path / "config.json", path] if path.is_dir() else [path]
    candidates.append(Path(configs_dir) / config_file_name(str(name)))
    for candidate in candidates:
        if candidate.is_file():
            raw = json.loads(candidate.read_text())
            return {k: v for k, v in raw.items() if not k.startswith("_")}
    known = ", ".join(known_models(configs_dir)) or "none"
    raise PlanError(
        f"no config for {str(name)!r}: it is neither a local folder with a config.json nor a model whose config "
        f"ships in {configs_dir} (known: {known}). Point the recipe at a downloaded folder "
        f"(e.g. model.llm=/models/x) or add its config.json there as {config_file_name(str(name))}."
    )


# ---- the model, from configs only -------------------------------------------------------------------------
def text_config(name: str | Path, configs_dir: Path = MODEL_CONFIGS) -> PretrainedConfig:
    """The LLM's config as a transformers config object (what ``AutoModelForCausalLM.from_config`` takes)."""
    raw = read_model_config(name, configs_dir)
    if raw.get("model_type") == "qwen":
        # Remote code that AutoConfig cannot read: planned as what `fusevlm convert-llm qwen-v1` makes of it (a
        # Qwen-VL config's vision part is the vision spec's business).
        try:
            return qwen_v1_config_to_qwen2({k: v for k, v in raw.items() if k != "visual"})
        except QwenV1ConversionError as err:
            raise PlanError(f"{name}: {err}") from err
    if "model_type" not in raw:
        raise PlanError(f"{name}: config has no model_type, so it names no transformers model")
    raw = dict(raw)
    try:
        return AutoConfig.for_model(raw.pop("model_type"), **raw)
    except ValueError as err:
        raise PlanError(f"{name}: {err}") from err


def vision_spec(source: Any, configs_dir: Path = MODEL_CONFIGS) -> tuple[dict[str, Any], dict[str, Any]]:
    """What ``load_vision_encoder(source)`` would put in ``FuseVLMConfig.vision_config``, from configs alone.

    Returns ``(spec, projector_defaults)``; the defaults are the options a checkpoint's own projector implies
    (Qwen-VL's resampler), which ``build_vlm`` fills into a same-typed projector config.
    """
    if isinstance(source, list):
        return fused_spec(source, configs_dir), {}
    spec = {"path": str(source)} if isinstance(source, str | Path) else dict(source)
    if "encoders" in spec:
        return fused_spec(spec["encoders"], configs_dir), {}
    path, name = spec.pop("path", None), spec.pop("encoder", None)
    if name is None and path in VISION_ENCODERS:
        name, path = path, None
    cls = get_vision_encoder_class(name) if name is not None else None
    if path is None:
        path = getattr(cls, "default_checkpoint", None)
        if path is None:
            raise PlanError(f"vision spec {source!r} names no checkpoint (path) to read a config from")
    raw = read_model_config(path, configs_dir)
    if cls is None:
        cls = next((c for c in VISION_ENCODERS.values() if c.accepts_checkpoint(raw)), None)
        if cls is None:
            raise PlanError(
                f"{path}: model_type {raw.get('model_type')!r} is no registered vision encoder's "
                f"(registered: {', '.join(sorted(VISION_ENCODERS))})"
            )
    spec.setdefault("source", str(path))
    if cls.name == "qwen_vl":
        return qwen_vl_spec(raw, spec, path)
    if not issubclass(cls, HFVisionEncoder):
        raise PlanError(f"the planner cannot read a {cls.name!r} encoder's config from {path}")
    # Full CLIP/SigLIP configs nest the tower's config; DINOv2's is flat.
    config = cls.config_class.from_dict(raw.get("vision_config", raw)).to_dict()
    return {**spec, "encoder": cls.name, "config": config}, {}


def qwen_vl_spec(
    raw: dict[str, Any], spec: dict[str, Any], path: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Qwen-VL's ``visual`` section as a ``qwen_vl`` spec, and its resampler's shape as cross_attn defaults."""
    visual = raw.get("visual")
    if not isinstance(visual, dict):
        raise PlanError(f"{path}: not a Qwen-VL config (no 'visual' section)")
    # num_positions is not in config.json (the loader reads it off the weights); Qwen-VL's table has 256 rows.
    config = {key: visual.get(key, QWEN_VL_DEFAULTS[key]) for key in QWEN_VL_DEFAULTS}
    output_dim = int(visual.get("output_dim", 4096))
    defaults = {
        "type": "cross_attn",
        "num_queries": int(visual.get("n_queries", 256)),
        "embed_dim": output_dim,
        "num_heads": max(1, output_dim // 128),
    }
    return {**spec, "encoder": "qwen_vl", "config": config}, defaults


def fused_spec(sources: list[Any], configs_dir: Path) -> dict[str, Any]:
    members = [vision_spec(s, configs_dir)[0] for s in sources]
    # Every member runs at the first one's resolution, as load_vision_encoder arranges it.
    first = members[0]
    return {
        "encoder": "fused",
        "encoders": members,
        "image_size": first.get("image_size") or first["config"]["image_size"],
    }


def projector_config(projector: Any, defaults: dict[str, Any]) -> dict[str, Any]:
    """As ``build_vlm`` does: the recipe's options win; a checkpoint's own projector fills the rest."""
    config = {"type": projector} if isinstance(projector, str) else dict(projector)
    if defaults and config.get("type") == defaults["type"]:
        for key in ("num_queries", "embed_dim", "num_heads"):
            config.setdefault(key, defaults[key])
    return config


def model_config(recipe: Recipe, configs_dir: Path = MODEL_CONFIGS) -> tuple[FuseVLMConfig, dict[str, str]]:
    """The recipe's ``FuseVLMConfig`` and a description of where each part's config came from."""
    spec = recipe.model
    if spec.init_from:
        return init_from_config(recipe, configs_dir)
    vision, defaults = vision_spec(spec.vision, configs_dir)
    config = FuseVLMConfig(
        vision_config=vision,
        projector_config=projector_config(spec.projector, defaults),
        text_config=text_config(spec.llm, configs_dir),
    )
    return config, {"vision": describe_source(spec.vision), "llm": str(spec.llm)}


def init_from_config(recipe: Recipe, configs_dir: Path) -> tuple[FuseVLMConfig, dict[str, str]]:
    """``init_from``: the folder's own config when it exists; else the sibling recipe whose output_dir it is
    (the previous stage), so a finetune recipe plans before its pretrain has run."""
    folder = Path(recipe.model.init_from)
    if (folder / "config.json").is_file():
        config = FuseVLMConfig.from_pretrained(folder)
        return config, {"vision": f"{folder} ({config.vision_config.get('encoder')})", "llm": str(folder)}
    previous = previous_stage(recipe)
    if previous is None:
        raise PlanError(
            f"{recipe.source}: model.init_from {str(folder)!r} has no config.json yet, and no recipe next to this "
            "one has that output_dir; plan the previous stage's recipe, or override model.init_from"
        )
    config, sources = model_config(previous, configs_dir)
    return config, {**sources, "init_from": f"{folder} (written by {previous.source})"}


def previous_stage(recipe: Recipe) -> Recipe | None:
    """The recipe next to this one whose output_dir is this one's init_from."""
    here = Path(recipe.source)
    if not here.is_file():
        return None
    target = Path(recipe.model.init_from)
    for candidate in sorted(here.parent.glob("*.y*ml")):
        if candidate.resolve() == here.resolve():
            continue
        try:
            other = load_recipe(candidate)
        except RecipeError:
            continue  # e.g. a data-only file such as data.yaml
        if Path(other.output_dir) == target:
            return other
    return None


def describe_source(source: Any) -> str:
    if isinstance(source, dict):
        return str(source.get("path") or source.get("encoder"))
    if isinstance(source, list):
        return " + ".join(describe_source(s) for s in source)
    return str(source)


def build_meta_model(config: FuseVLMConfig) -> FuseVLMForConditionalGeneration:
    """The full model with every tensor on the meta device: shapes without memory, in well under a second."""
    with torch.device("meta"):
        return FuseVLMForConditionalGeneration(config)
