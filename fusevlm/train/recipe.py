"""Recipes: a flat YAML file read into dataclasses, with ``key=value`` overrides from the command line.

Our own keys are the fields below; every other top-level key must be a ``transformers.TrainingArguments``
field and is passed through. Anything else is an error that names the key, before any weights load.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

STAGES = ("align", "instruct")
MFT_LOSSES = ("token", "sample")


class RecipeError(ValueError):
    """A recipe that cannot run; the message names the file and key."""


@dataclass
class ModelSpec:
    vision: Any = None  # registry name, hub name, folder, spec dict, or a list (fused)
    projector: Any = "mlp2x_gelu"
    llm: str | None = None
    init_from: str | None = None  # a previous stage's output folder instead of vision/projector/llm
    trust_remote_code: bool = False


@dataclass
class DataEntry:
    path: str
    image_root: str | None = None
    task: str | None = None
    num_samples: int | None = None  # streamed: the entry's mixing weight
    streaming: bool = False  # read as it is trained on (Parquet / WebDataset shards, a datasets streaming source)


@dataclass
class LoraSpec:
    r: int = 16
    alpha: int = 64
    dropout: float = 0.05
    target_modules: list[str] | str | None = None  # default: every linear layer of the LLM


@dataclass
class Recipe:
    model: ModelSpec
    data: list[DataEntry]
    output_dir: str
    stage: str = "instruct"
    template: str | None = None  # a built-in name; omitted: the tokenizer's own chat template
    lora: LoraSpec | None = None
    qlora: bool = False
    train_vision: bool = False
    vision_lr: float | None = None
    projector_lr: float | None = None
    model_max_length: int = 2048
    image_aspect_ratio: str = "pad"
    on_bad_sample: str = "error"
    mft_loss: str | None = None  # token | sample: per-task losses, logged per task (the seed's MFT trainer)
    group_by_modality_length: bool = False
    packing: bool = False  # several samples per row (rows of at most model_max_length), no attention across them
    data_cache_dir: str | None = None  # where tokenized datasets are cached (default $FUSEVLM_CACHE, ~/.cache/fusevlm)
    preprocessing_num_workers: int | None = None  # processes that build a cache (default: the CPU count)
    eval_data: list[DataEntry] = field(default_factory=list)
    training: dict[str, Any] = field(default_factory=dict)  # TrainingArguments fields
    source: str = "<recipe>"

    def validate(self) -> None:
        where = self.source
        if self.stage not in STAGES:
            raise RecipeError(f"{where}: stage must be one of {STAGES}, got {self.stage!r}")
        if self.model.init_from is None and (self.model.vision is None or self.model.llm is None):
            raise RecipeError(f"{where}: model needs vision and llm (or init_from a previous stage's folder)")
        if not self.data:
            raise RecipeError(f"{where}: data lists no dataset")
        if self.stage == "align" and (self.lora or self.qlora or self.train_vision):
            raise RecipeError(f"{where}: the align stage trains the projector only; lora/qlora/train_vision are for instruct")
        if self.qlora and not self.lora:
            raise RecipeError(f"{where}: qlora needs a lora section (r, alpha)")
        if self.qlora:
            import torch

            if not torch.cuda.is_available():
                raise RecipeError(f"{where}: qlora needs a CUDA GPU and bitsandbytes; this machine has no GPU")
        if self.mft_loss not in (None, *MFT_LOSSES):
            raise RecipeError(f"{where}: mft_loss must be one of {MFT_LOSSES}, got {self.mft_loss!r}")
        if self.on_bad_sample not in ("error", "skip"):
            raise RecipeError(f"{where}: on_bad_sample must be error or skip, got {self.on_bad_sample!r}")
        if self.preprocessing_num_workers is not None and self.preprocessing_num_workers < 1:
            raise RecipeError(f"{where}: preprocessing_num_workers must be at least 1, got {self.preprocessing_num_workers}")
        streamed = {entry.streaming for entry in self.data}
        if len(streamed) > 1:
            raise RecipeError(f"{where}: data mixes streamed and cached entries; stream all of them or none")
        if True in streamed:
            if self.group_by_modality_length:
                raise RecipeError(f"{where}: group_by_modality_length needs every sample's length up front, which a "
                                  "streamed dataset does not have (use packing: true to save the padding)")
            if int(self.training.get("max_steps", -1)) <= 0:
                raise RecipeError(f"{where}: streamed data has no length: set max_steps")
        if self.vision_lr is not None and not self.train_vision:
            raise RecipeError(f"{where}: vision_lr is set but train_vision is false")


def _build(cls: type, values: Any, where: str) -> Any:
    if values is None:
        return None
    if isinstance(values, cls):
        return values
    if not isinstance(values, dict):
        raise RecipeError(f"{where}: expected a mapping, got {type(values).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise RecipeError(f"{where}: unknown key(s) {unknown}; known: {sorted(names)}")
    try:
        return cls(**values)
    except TypeError as err:
        raise RecipeError(f"{where}: {err}") from err


def recipe_from_dict(values: dict[str, Any], source: str = "<recipe>") -> Recipe:
    from transformers import TrainingArguments

    values = dict(values)
    ours = {f.name for f in dataclasses.fields(Recipe)} - {"training", "source"}
    trainer_fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    training = {}
    for key in list(values):
        if key in ours:
            continue
        if key in trainer_fields:
            training[key] = values.pop(key)
        else:
            close = difflib.get_close_matches(key, ours | trainer_fields, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise RecipeError(f"{source}: unknown key {key!r} (neither a recipe key nor a TrainingArguments field){hint}")
    if "output_dir" not in values:
        raise RecipeError(f"{source}: output_dir is required")
    data = values.pop("data", None) or []
    eval_data = values.pop("eval_data", None) or []
    if isinstance(data, dict):
        data = [data]
    recipe = Recipe(
        model=_build(ModelSpec, values.pop("model", {}) or {}, f"{source}: model"),
        data=[_build(DataEntry, d, f"{source}: data[{i}]") for i, d in enumerate(data)],
        eval_data=[_build(DataEntry, d, f"{source}: eval_data[{i}]") for i, d in enumerate(eval_data)],
        lora=_build(LoraSpec, values.pop("lora", None), f"{source}: lora"),
        training=training,
        source=source,
        **values,
    )
    recipe.validate()
    return recipe


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=value`` -> (["a", "b"], value parsed as YAML, so numbers, booleans and lists work)."""
    if "=" not in text:
        raise RecipeError(f"override {text!r} is not KEY=VALUE")
    key, raw = text.split("=", 1)
    return key.strip().split("."), yaml.safe_load(raw) if raw.strip() else None


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        path, value = parse_override(text)
        node = values
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise RecipeError(f"override {text!r}: {part!r} is not a mapping")
        node[path[-1]] = value
    return values


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    path = Path(path)
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError as err:
        raise RecipeError(f"recipe not found: {path}") from err
    except yaml.YAMLError as err:
        raise RecipeError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(values, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of keys to values")
    # Relative data paths are relative to where the user runs, as in LLaVA's scripts; nothing to rewrite here.
    return recipe_from_dict(apply_overrides(values, overrides or []), source=str(path))
