"""Check a recipe before any weights load: a mistake costs a second, not a download and a model build.

``preflight(recipe)`` builds the recipe's model on the meta device from config files alone (the planner's code,
``fusevlm.model_configs``: shapes, no memory), so unknown names, projectors that do not fit the encoder and the LLM, LoRA
targets that match nothing and a stage that would train nothing are refused with a ``RecipeError`` naming the
recipe and the key. It also checks the options that are otherwise read only after the model exists (template,
aspect mode), a DeepSpeed config that contradicts the recipe (what the Trainer would refuse only after the model
was built), and resolves ``resume_from_checkpoint`` to a complete checkpoint.

Configs come from a local folder's ``config.json``, the configs shipped in ``recipes/model_configs/``, or the hub
(``config.json`` only; the same file ``from_pretrained`` would fetch first).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from torch import nn

from ..data.images import ASPECT_MODES
from .checkpoints import CheckpointError, resolve_resume
from .recipe import Recipe, RecipeError

# DeepSpeed keys the HF integration fills from TrainingArguments ("auto") or requires to match them.
_DS_MATCHES = (
    ("train_micro_batch_size_per_gpu", "per_device_train_batch_size"),
    ("gradient_accumulation_steps", "gradient_accumulation_steps"),
    ("gradient_clipping", "max_grad_norm"),
    ("optimizer.params.lr", "learning_rate"),
    ("optimizer.params.weight_decay", "weight_decay"),
    ("optimizer.params.eps", "adam_epsilon"),
    ("fp16.enabled", "fp16"),
    ("bf16.enabled", "bf16"),
)
_POSITION_TABLES = ("wpe", "embed_positions", "position_embeddings")


def preflight(recipe: Recipe) -> str | None:
    """Refuse a recipe that cannot train, before any weights load; returns ``resume_from_checkpoint`` resolved
    (a complete checkpoint's path, or None)."""
    _check_options(recipe)
    _check_deepspeed(recipe)
    model = meta_model(recipe)
    if model is not None:
        _check_model(model, recipe)
    try:
        return resolve_resume(recipe.training.get("resume_from_checkpoint"), recipe.output_dir)
    except CheckpointError as err:
        raise RecipeError(f"{recipe.source}: {err}") from None


def _training_value(recipe: Recipe, key: str) -> Any:
    from transformers import TrainingArguments

    if key in recipe.training:
        return recipe.training[key]
    field = next(f for f in dataclasses.fields(TrainingArguments) if f.name == key)
    return field.default


# ---- options the model build would only read later --------------------------------------------------------------
def _check_options(recipe: Recipe) -> None:
    where = recipe.source
    if recipe.template is not None:
        from ..templates import get_template

        try:
            get_template(recipe.template)
        except ValueError as err:
            raise RecipeError(f"{where}: template: {err}") from None
    if recipe.image_aspect_ratio not in ASPECT_MODES:
        raise RecipeError(f"{where}: image_aspect_ratio must be one of {ASPECT_MODES}, got {recipe.image_aspect_ratio!r}")
    if not isinstance(recipe.model_max_length, int) or recipe.model_max_length < 1:
        raise RecipeError(f"{where}: model_max_length must be a positive integer, got {recipe.model_max_length!r}")
    max_steps = _number(_training_value(recipe, "max_steps"))
    epochs = _number(_training_value(recipe, "num_train_epochs"))
    if max_steps is not None and epochs is not None and max_steps <= 0 and epochs <= 0:
        raise RecipeError(f"{where}: the {recipe.stage} stage would train nothing: max_steps and num_train_epochs are 0")
    rates = [_number(_training_value(recipe, "learning_rate")), _number(recipe.projector_lr), _number(recipe.vision_lr)]
    if all(rate == 0 for rate in rates if rate is not None) and rates[0] is not None:
        raise RecipeError(f"{where}: the {recipe.stage} stage would train nothing: learning_rate is 0")


def _number(value: Any) -> float | None:
    """A numeric option as a float (YAML reads ``1e-3`` as a string); None when absent or not a number."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


# ---- DeepSpeed ---------------------------------------------------------------------------------------------------
def _check_deepspeed(recipe: Recipe) -> None:
    source = recipe.training.get("deepspeed")
    if not source:
        return
    where = f"{recipe.source}: deepspeed"
    if recipe.training.get("fsdp"):
        raise RecipeError(f"{where} and fsdp are both set; choose one engine")
    config = _deepspeed_config(source, where)
    mismatches = []
    for ds_key, arg in _DS_MATCHES:
        value = _nested(config, ds_key)
        if value is None or value == "auto":
            continue
        expected = _training_value(recipe, arg)
        if not _same(value, expected):
            mismatches.append(f"{ds_key}={value!r} but {arg}={expected!r}")
    betas = _nested(config, "optimizer.params.betas")
    if isinstance(betas, list) and "auto" not in betas:
        expected = [_training_value(recipe, "adam_beta1"), _training_value(recipe, "adam_beta2")]
        if len(betas) != 2 or not all(_same(a, b) for a, b in zip(betas, expected, strict=False)):
            mismatches.append(f"optimizer.params.betas={betas!r} but adam_beta1, adam_beta2={expected!r}")
    world = os.environ.get("WORLD_SIZE")
    total = config.get("train_batch_size")
    if world and world.isdigit() and total not in (None, "auto"):
        micro = _nested(config, "train_micro_batch_size_per_gpu")
        micro = _training_value(recipe, "per_device_train_batch_size") if micro in (None, "auto") else micro
        accumulation = _nested(config, "gradient_accumulation_steps")
        if accumulation in (None, "auto"):
            accumulation = _training_value(recipe, "gradient_accumulation_steps")
        if total != micro * accumulation * int(world):
            mismatches.append(
                f"train_batch_size={total!r} but micro-batch {micro} x accumulation {accumulation} x {world} processes"
                f" = {micro * accumulation * int(world)}"
            )
    if mismatches:
        raise RecipeError(
            f"{where} config contradicts the recipe: {'; '.join(mismatches)} (set those DeepSpeed values to "
            "\"auto\" to take the recipe's)"
        )


def _deepspeed_config(source: Any, where: str) -> dict[str, Any]:
    if isinstance(source, dict):
        return source
    path = Path(str(source))
    if not path.is_file():
        raise RecipeError(f"{where} config {str(source)!r} not found (paths are relative to where you run)")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RecipeError(f"{where} config {str(source)!r} is not valid JSON: {err}") from None
    if not isinstance(config, dict):
        raise RecipeError(f"{where} config {str(source)!r} is not a JSON object")
    return config


def _nested(config: dict[str, Any], dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return bool(a) == bool(b)
    x, y = _number(a), _number(b)
    if x is not None and y is not None:
        return math.isclose(x, y, rel_tol=1e-9, abs_tol=0.0)
    return a == b


# ---- the model, on the meta device -------------------------------------------------------------------------------
def meta_model(recipe: Recipe) -> Any:
    """The recipe's model with every tensor on the meta device, or None when it can only be built by running a
    checkpoint's own code (``trust_remote_code``). A ``RecipeError`` for anything that cannot be composed."""
    from .. import model_configs

    where = recipe.source
    with tempfile.TemporaryDirectory(prefix="fusevlm-configs-") as configs:
        configs_dir = Path(configs)
        if _gather_configs(recipe, configs_dir) is False:
            return None
        try:
            config, _ = model_configs.model_config(recipe, configs_dir)
            return model_configs.build_meta_model(config)
        except (model_configs.PlanError, ValueError, TypeError, KeyError) as err:
            raise RecipeError(f"{where}: the model cannot be composed: {err}") from None


def _gather_configs(recipe: Recipe, configs_dir: Path) -> bool:
    """Put the config of every named model that is not a local folder into ``configs_dir`` (shipped, or fetched
    from the hub). False: the LLM needs remote code that the recipe allows, so only loading can check it."""
    spec = recipe.model
    if spec.init_from:
        if not Path(str(spec.init_from)).is_dir():
            return False  # a hub folder: from_pretrained checks it (config first, before any weights)
        raw = _raw_config(spec.init_from, configs_dir, f"{recipe.source}: model.init_from")
        if raw.get("model_type") != "fusevlm":
            raise RecipeError(
                f"{recipe.source}: model.init_from {spec.init_from!r}: config.json is a {raw.get('model_type')!r} "
                "model, not a fusevlm one (init_from takes a previous stage's output folder)"
            )
        return True
    for name in _vision_sources(spec.vision):
        _raw_config(name, configs_dir, f"{recipe.source}: model.vision")
    raw = _raw_config(spec.llm, configs_dir, f"{recipe.source}: model.llm")
    model_type = raw.get("model_type")
    if model_type == "qwen" and not spec.trust_remote_code:
        raise RecipeError(
            f"{recipe.source}: model.llm {spec.llm!r} is a Qwen v1 checkpoint (model_type 'qwen'), remote code that "
            "transformers 5 does not run. Convert its downloaded folder once with "
            "`fusevlm convert-llm qwen-v1 <folder> <out>` and set model.llm to <out>"
        )
    if not _known_model_type(model_type):
        if spec.trust_remote_code:
            return False
        raise RecipeError(
            f"{recipe.source}: model.llm {spec.llm!r} has model_type {model_type!r}, which transformers does not "
            "know: it needs the checkpoint's own code. Set model.trust_remote_code: true only if you trust it"
        )
    return True


def _vision_sources(source: Any) -> list[str]:
    """The checkpoint names a vision spec reads configs from (registry names stay: the planner resolves them)."""
    from ..models.vision import VISION_ENCODERS, get_vision_encoder_class

    if isinstance(source, list):
        return [name for item in source for name in _vision_sources(item)]
    if isinstance(source, dict):
        if "encoders" in source:
            return _vision_sources(source["encoders"])
        if source.get("path") is not None:
            return _vision_sources(str(source["path"]))
        if source.get("encoder") is not None:
            try:
                cls = get_vision_encoder_class(source["encoder"])
            except ValueError as err:
                raise RecipeError(str(err)) from None
            return [cls.default_checkpoint] if cls.default_checkpoint else []
        return []
    if source is None:
        return []
    name = str(source)
    if name in VISION_ENCODERS:
        default = VISION_ENCODERS[name].default_checkpoint
        return [default] if default else []
    return [name]


def _raw_config(name: Any, configs_dir: Path, where: str) -> dict[str, Any]:
    from .. import model_configs

    path = Path(str(name))
    if path.is_dir():
        config = path / "config.json"
        if not config.is_file():
            raise RecipeError(f"{where} {str(name)!r}: the folder has no config.json, so it is no model folder")
        return _read_json(config, where)
    shipped = model_configs.MODEL_CONFIGS / model_configs.config_file_name(str(name))
    target = configs_dir / model_configs.config_file_name(str(name))
    if shipped.is_file():
        shutil.copyfile(shipped, target)
        return _read_json(target, where)
    if path.exists() or path.is_absolute() or str(name).startswith((".", "~")):
        raise RecipeError(f"{where} {str(name)!r}: no such model folder")
    try:
        from huggingface_hub import hf_hub_download

        fetched = hf_hub_download(str(name), "config.json")
    except Exception as err:  # the hub raises many types (offline, unknown repo, gated, bad id)
        raise RecipeError(
            f"{where} {str(name)!r}: not a registered name, a local folder, or a hub model whose config.json "
            f"can be read ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
        ) from None
    shutil.copyfile(fetched, target)
    return _read_json(target, where)


def _read_json(path: Path, where: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RecipeError(f"{where}: {path} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{where}: {path} is not a JSON object")
    return data


def _known_model_type(model_type: Any) -> bool:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    return isinstance(model_type, str) and model_type in CONFIG_MAPPING_NAMES


# ---- what the stage would train ----------------------------------------------------------------------------------
def _check_model(model: Any, recipe: Recipe) -> None:
    from .. import plan

    where = recipe.source
    parts = plan.part_parameters(model)
    lora_count = None
    if recipe.stage == "instruct" and recipe.lora is not None:
        try:
            lora_count = plan.lora_parameters(model, recipe.lora)
        except RecipeError as err:
            raise RecipeError(f"{where}: {err}") from None
    trainable = plan.stage_trainable(parts, recipe.stage, lora_count=lora_count, train_vision=recipe.train_vision)
    if sum(trainable.values()) == 0:
        projector = model.config.projector_config.get("type")
        raise RecipeError(
            f"{where}: the {recipe.stage} stage would train nothing: it trains the projector, and projector "
            f"{projector!r} has no parameters (use 'linear' or 'mlp2x_gelu', or the instruct stage)"
        )
    limit = _learned_positions(model.language_model)
    if limit is not None and recipe.model_max_length > limit:
        raise RecipeError(
            f"{where}: model_max_length {recipe.model_max_length} is over the LLM's {limit} learned positions; "
            f"longer sequences would index past its position table (set model_max_length <= {limit})"
        )


def _learned_positions(language_model: nn.Module) -> int | None:
    """The size of a learned absolute position table (GPT-2's ``wpe``, OPT's ``embed_positions``), if any."""
    for name, module in language_model.named_modules():
        if isinstance(module, nn.Embedding) and name.rsplit(".", 1)[-1] in _POSITION_TABLES:
            return int(module.num_embeddings)
    return None
