"""Stages as data: which parts of the model train in ``align`` and ``instruct`` (full, LoRA, QLoRA)."""

from __future__ import annotations

from typing import Any

from torch import nn
from transformers.pytorch_utils import Conv1D

from ..models.vlm import FuseVLMForConditionalGeneration
from .recipe import Recipe, RecipeError


def llm_linear_names(model: FuseVLMForConditionalGeneration, only: list[str] | str | None = None) -> list[str]:
    """Full names of the LLM's linear layers (GPT-2's Conv1D included), its output head excluded.

    ``only`` restricts them to names ending in one of the given suffixes (``["q_proj", "v_proj"]``).
    """
    head = model.language_model.get_output_embeddings()
    names = [
        f"language_model.{name}"
        for name, module in model.language_model.named_modules()
        if isinstance(module, nn.Linear | Conv1D) and module is not head
    ]
    if only:
        suffixes = [only] if isinstance(only, str) else list(only)
        names = [n for n in names if any(n == s or n.endswith("." + s) for s in suffixes)]
        if not names:
            raise RecipeError(f"lora.target_modules {suffixes} match no linear layer of the LLM")
    return names


def prepare_for_stage(model: FuseVLMForConditionalGeneration, recipe: Recipe) -> Any:
    """Freeze and wrap the model for the recipe's stage; returns the model to train (maybe a PeftModel)."""
    model.requires_grad_(False)
    model.projector.requires_grad_(True)
    if recipe.stage == "instruct":
        if recipe.lora is not None:
            model = _with_lora(model, recipe)
        else:
            model.language_model.requires_grad_(True)
            if recipe.train_vision:
                model.vision_tower.requires_grad_(True)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if trainable == 0:
        raise RecipeError(
            f"{recipe.source}: the {recipe.stage} stage would train nothing "
            f"(projector {model.config.projector_config['type']!r} has no parameters?)"
        )
    return model


def _with_lora(model: FuseVLMForConditionalGeneration, recipe: Recipe) -> Any:
    from peft import LoraConfig, get_peft_model

    if recipe.qlora:
        from peft import prepare_model_for_kbit_training

        # The LLM was loaded in 4 bit (run.load_model); this readies it for training adapters on top.
        prepare_model_for_kbit_training(model, use_gradient_checkpointing=bool(recipe.training.get("gradient_checkpointing")))
    lora = recipe.lora
    # The projector (and an unfrozen vision tower) train in full and are saved with the adapter: LLaVA lost its
    # projector when saving LoRA runs; modules_to_save is what keeps it.
    modules_to_save = ["projector"] + (["vision_tower"] if recipe.train_vision else [])
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=llm_linear_names(model, lora.target_modules),
        modules_to_save=modules_to_save,
        bias="none",
    )
    return get_peft_model(model, config)
