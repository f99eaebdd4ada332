"""``fusevlm plan RECIPE.yaml``: what a recipe's model is and what it costs per GPU, before anything is downloaded.

The model is built on the meta device from config files alone (no weights are read or allocated): the configs of
the recipes' models ship in ``recipes/model_configs/`` (one JSON per hub name, ``/`` written as ``--``), and a local
folder with a ``config.json`` works too. Printed: parameters per part (total, trainable in ``align`` and in
``instruct``), image tokens per image, and the estimated memory per GPU for DDP / ZeRO-2 / ZeRO-3.

The memory model, per GPU, with Ψ parameters of which Ψ_t train, on N GPUs (ZeRO paper, Rajbhandari et al. 2020,
§3: mixed-precision Adam holds 2 + 2 + 12 bytes per trainable parameter)::

    weights     2·Ψ  bytes (bf16/fp16; 4·Ψ in fp32)           ZeRO-3 divides by N
    gradients   2·Ψ_t                                         ZeRO-2 and ZeRO-3 divide by N
    optimizer   12·Ψ_t: fp32 master copy + Adam's two moments  ZeRO-2 and ZeRO-3 divide by N
                (8·Ψ_t in fp32 training: no master copy)

DDP here means data parallelism without sharding (DeepSpeed stage 0), with the same mixed-precision states.
Activations per transformer layer at sequence length s, micro-batch b, width h, heads a (Korthikanti et al. 2022,
"Reducing Activation Recomputation in Large Transformer Models", §4.1, 16-bit activations, no tensor parallelism)::

    s·b·h·(34 + 5·a·s/h) bytes     the 5·a·s/h part is the s×s attention scores; flash/SDPA kernels never store
                                   them (--flash-attention drops it)
    with gradient checkpointing: 2·s·b·h per layer (its bf16 input), plus one layer's full activations, which
                                 the backward recomputes one layer at a time

over the LLM's layers at s = model_max_length (the longest a batch can be; image tokens are part of it), plus
the vision tower's layers when it trains (s = its tokens per image, b = one image per sample). A frozen tower
stores nothing (no tensor in it needs a gradient). On top: the logits, 6 bytes per position and vocabulary entry
(the bf16 logits the model returns and the fp32 log-softmax the loss keeps for its backward). Not counted: the
CUDA context and allocator fragmentation (~1-3 GiB), ZeRO-3's gathered parameters of the layers in flight
(``stage3_max_live_parameters``), temporary buffers of the backward. The totals are estimates, not guarantees.

How far the layer formula is from transformers' Llama/Qwen2 layers (RMSNorm computed in fp32, SwiGLU MLP of width
~2.7·h), measured by summing the tensors autograd saves in a small bf16 model on CPU: ~49·s·b·h instead of 34
(the fp32 norm inputs and the gated MLP's four wide tensors), and 6 bytes per attention score in eager mode (fp32
softmax + its bf16 copy) instead of 5; with checkpointing, 2·s·b·h per layer as stated. So for those families the
unchecked activations row is ~1.4x low; the checkpointed row, dominated by the layer inputs and logits, less so.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .model_configs import MODEL_CONFIGS, REPO_ROOT, PlanError, build_meta_model, model_config
from .models.vision import VisionEncoder
from .models.vlm import FuseVLMForConditionalGeneration
from .train.recipe import LoraSpec, Recipe, RecipeError, load_recipe
from .train.stages import llm_linear_names

STRATEGIES = ("ddp", "zero2", "zero3")
STRATEGY_NAMES = {"ddp": "DDP", "zero2": "ZeRO-2", "zero3": "ZeRO-3"}
PARTS = ("vision_tower", "projector", "language_model")
GIB = 2**30
DEFAULT_MICRO_BATCH = 8  # TrainingArguments' per_device_train_batch_size default



# ---- parameters -------------------------------------------------------------------------------------------
def part_parameters(model: FuseVLMForConditionalGeneration) -> dict[str, int]:
    return {part: sum(p.numel() for p in getattr(model, part).parameters()) for part in PARTS}


def lora_parameters(model: FuseVLMForConditionalGeneration, lora: LoraSpec) -> int:
    """Adapter parameters: r·(in + out) per targeted linear layer (A is r×in, B is out×r), the layers chosen
    exactly as training chooses them (``llm_linear_names``: every linear of the LLM but its head, by default)."""
    modules = dict(model.named_modules())
    # sum(weight.shape) is in + out for nn.Linear (out, in) and GPT-2's Conv1D (in, out) alike.
    return sum(
        lora.r * sum(modules[name].weight.shape) for name in llm_linear_names(model, lora.target_modules)
    )


def stage_trainable(
    parts: dict[str, int], stage: str, *, lora_count: int | None = None, train_vision: bool = False
) -> dict[str, int]:
    """Trainable parameters per part, as ``prepare_for_stage`` sets them: align trains the projector; instruct
    adds the LLM (in full, or its LoRA adapters) and, with train_vision, the tower."""
    trainable = {"vision_tower": 0, "projector": parts["projector"], "language_model": 0}
    if stage == "instruct":
        trainable["language_model"] = parts["language_model"] if lora_count is None else lora_count
        if train_vision:
            trainable["vision_tower"] = parts["vision_tower"]
    return trainable


def lora_extra_parameters(parts: dict[str, int], lora_count: int, train_vision: bool) -> int:
    """What PEFT adds to the model: the adapters, and a trainable copy of every ``modules_to_save`` module
    (the projector, and the tower with train_vision) next to the frozen original."""
    return lora_count + parts["projector"] + (parts["vision_tower"] if train_vision else 0)


# ---- memory -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Stack:
    """A stack of transformer layers, as activation memory sees it."""

    layers: int
    hidden: int
    heads: int


def layer_activation_bytes(
    seq: int, batch: int, hidden: int, heads: int, flash_attention: bool = False
) -> int:
    """One layer's stored activations, s·b·h·(34 + 5·a·s/h) bytes (Korthikanti et al. 2022); flash attention
    stores no s×s scores, leaving 34·s·b·h."""
    scores = 0 if flash_attention else 5 * heads * seq * seq * batch
    return 34 * seq * batch * hidden + scores


def stack_activation_bytes(
    stack: Stack, seq: int, batch: int, *, checkpointing: bool, flash_attention: bool = False
) -> int:
    full = layer_activation_bytes(seq, batch, stack.hidden, stack.heads, flash_attention)
    if not checkpointing:
        return stack.layers * full
    # Each layer keeps its bf16 input (2·s·b·h); the backward rebuilds one layer's activations at a time.
    return stack.layers * 2 * seq * batch * stack.hidden + full


def logits_bytes(seq: int, batch: int, vocab: int) -> int:
    """bf16 logits (2 bytes) plus the fp32 log-softmax the cross-entropy saves for backward (4 bytes)."""
    return 6 * seq * batch * vocab


def model_state_bytes(
    total: int, trainable: int, num_gpus: int, strategy: str, weight_bytes: int = 2
) -> dict[str, float]:
    """Weights, gradients and AdamW states per GPU (ZeRO paper's accounting, see the module docstring)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    # Mixed precision keeps an fp32 master copy next to Adam's two fp32 moments; fp32 training needs no copy.
    optimizer_bytes = 12 if weight_bytes < 4 else 8
    weights = float(weight_bytes * total)
    gradients = float(weight_bytes * trainable)
    optimizer = float(optimizer_bytes * trainable)
    if strategy in ("zero2", "zero3"):
        gradients /= num_gpus
        optimizer /= num_gpus
    if strategy == "zero3":
        weights /= num_gpus
    return {"weights": weights, "gradients": gradients, "optimizer": optimizer}


def memory_per_gpu(
    *,
    total: int,
    trainable: int,
    num_gpus: int,
    weight_bytes: int,
    activations: int,
    activations_checkpointed: int,
) -> dict[str, dict[str, float]]:
    """Per strategy: the model states plus activations, with and without gradient checkpointing."""
    table = {}
    for strategy in STRATEGIES:
        row: dict[str, float] = model_state_bytes(total, trainable, num_gpus, strategy, weight_bytes)
        states = sum(row.values())
        row["activations"] = float(activations)
        row["activations_checkpointed"] = float(activations_checkpointed)
        row["total"] = states + activations
        row["total_checkpointed"] = states + activations_checkpointed
        table[strategy] = row
    return table


def vision_stacks(encoder: VisionEncoder) -> list[tuple[Stack, int]] | None:
    """The tower's layer stacks with the tokens each runs on (a fused tower has one per member); None when a
    family's layer shape is unknown to us."""
    members = getattr(encoder, "encoders", None)
    if members is not None:
        found = [vision_stacks(member) for member in members]
        return None if any(f is None for f in found) else [pair for f in found for pair in f]
    cfg = getattr(encoder, "cfg", None)  # Qwen-VL's trunk
    config = getattr(getattr(encoder, "model", None), "config", None)  # transformers towers
    if isinstance(cfg, dict) and {"layers", "width", "heads"} <= set(cfg):
        stack = Stack(cfg["layers"], cfg["width"], cfg["heads"])
    elif config is not None:
        layers = config.num_hidden_layers
        if getattr(encoder, "layers_path", None):  # the tower stops at the layer it reads: none above it runs
            layers = encoder.feature_index(layers)
        stack = Stack(layers, config.hidden_size, config.num_attention_heads)
    else:
        return None
    return [(stack, tower_tokens(encoder))]


def tower_tokens(encoder: VisionEncoder) -> int:
    """Tokens inside a tower: its patches, and its CLS token where it has one (even when the projector drops it)."""
    rows, cols = encoder.grid
    return rows * cols + (1 if encoder.has_cls_token else 0)


def recipe_strategy(training: dict[str, Any]) -> tuple[str, list[str]]:
    """Which column the recipe runs (from its DeepSpeed file's ZeRO stage) and notes on offloading."""
    path = training.get("deepspeed")
    if not path:
        return "ddp", []
    if isinstance(path, dict):
        ds = path
    else:
        found = next((p for p in (Path(path), REPO_ROOT / path) if p.is_file()), None)
        if found is None:
            return "?", [f"deepspeed config {path} not found; its ZeRO stage is unknown"]
        ds = json.loads(found.read_text())
    zero = ds.get("zero_optimization", {})
    stage = int(zero.get("stage", 0))
    notes = []
    if stage == 1:
        notes.append("ZeRO-1 shards only the optimizer states: between the DDP and ZeRO-2 columns")
    if zero.get("offload_optimizer", {}).get("device") in ("cpu", "nvme"):
        notes.append("the optimizer states are offloaded to CPU: take the optimizer row off the GPU total")
    if zero.get("offload_param", {}).get("device") in ("cpu", "nvme"):
        notes.append("the parameters are offloaded to CPU: take the weights row off the GPU total")
    return {0: "ddp", 1: "zero1", 2: "zero2", 3: "zero3"}.get(stage, "?"), notes


# ---- the plan ---------------------------------------------------------------------------------------------
def plan(
    recipe: str | Path | Recipe,
    num_gpus: int = 8,
    *,
    overrides: list[str] | None = None,
    flash_attention: bool = False,
    seq_len: int | None = None,
    model_configs: str | Path | None = None,
) -> dict[str, Any]:
    """Parameters, image tokens and memory per GPU of a recipe (a path or a loaded ``Recipe``) on ``num_gpus``.

    ``seq_len`` replaces the recipe's model_max_length in the activation estimate (e.g. a typical length).
    """
    if num_gpus < 1:
        raise PlanError(f"num_gpus must be at least 1, got {num_gpus}")
    if isinstance(recipe, str | Path):
        recipe = load_recipe(recipe, overrides)
    config, sources = model_config(recipe, Path(model_configs) if model_configs else MODEL_CONFIGS)
    model = build_meta_model(config)
    params = parameter_plan(model, recipe)
    batch = batch_plan(recipe, num_gpus, seq_len)
    activations = activation_plan(model, recipe, batch, flash_attention)
    half = bool(recipe.training.get("bf16") or recipe.training.get("fp16"))
    memory = memory_per_gpu(
        total=params["total_parameters"],
        trainable=params["trainable_parameters"],
        num_gpus=num_gpus,
        weight_bytes=2 if half else 4,
        activations=activations["activations"] + activations["logits"],
        activations_checkpointed=activations["activations_checkpointed"] + activations["logits"],
    )
    strategy, strategy_notes = recipe_strategy(recipe.training)
    return {
        "recipe": recipe.source,
        "stage": recipe.stage,
        "variant": stage_variant(recipe),
        "num_gpus": num_gpus,
        "sources": sources,
        "vision_encoder": config.vision_config.get("encoder"),
        "projector": config.projector_config,
        "llm_type": getattr(config.text_config, "model_type", "?"),
        "vision_tokens": model.vision_tower.num_tokens,
        "image_tokens": config.image_seq_length,
        **params,
        "batch": batch,
        "dtype": "bf16" if recipe.training.get("bf16") else "fp16" if recipe.training.get("fp16") else "fp32",
        "flash_attention": flash_attention,
        "logits_bytes": activations["logits"],
        "memory": memory,
        "recipe_strategy": strategy,
        # transformers 5 renamed the flag activation_checkpointing; recipes may use either.
        "gradient_checkpointing": bool(
            recipe.training.get("gradient_checkpointing") or recipe.training.get("activation_checkpointing")
        ),
        "notes": params["notes"] + activations["notes"] + strategy_notes,
    }


def parameter_plan(model: FuseVLMForConditionalGeneration, recipe: Recipe) -> dict[str, Any]:
    """Parameters per part: total, trainable in align and in instruct (the recipe's kind of instruct when the
    recipe is one, else a full fine-tune), and the totals of the recipe's own stage, PEFT's additions included."""
    parts = part_parameters(model)
    lora_count = lora_parameters(model, recipe.lora) if recipe.stage == "instruct" and recipe.lora else None
    by_stage = {
        "align": stage_trainable(parts, "align"),
        "instruct": stage_trainable(
            parts, "instruct", lora_count=lora_count, train_vision=recipe.train_vision
        ),
    }
    extra = lora_extra_parameters(parts, lora_count, recipe.train_vision) if lora_count is not None else 0
    notes = []
    if lora_count is not None:
        copies = "projector" + (" and the vision tower" if recipe.train_vision else "")
        notes.append(
            f"LoRA r={recipe.lora.r}: {lora_count:,} adapter parameters; PEFT also keeps a trainable copy of the "
            f"{copies} (modules_to_save), {extra - lora_count:,} more; both are in the total"
        )
    return {
        "parameters": {
            part: {"total": parts[part], **{s: by_stage[s][part] for s in by_stage}} for part in PARTS
        },
        "extra_parameters": extra,
        "total_parameters": sum(parts.values()) + extra,
        "trainable_parameters": sum(by_stage[recipe.stage].values()),
        "notes": notes,
    }


def batch_plan(recipe: Recipe, num_gpus: int, seq_len: int | None = None) -> dict[str, int]:
    micro_batch = int(recipe.training.get("per_device_train_batch_size", DEFAULT_MICRO_BATCH))
    accumulation = int(recipe.training.get("gradient_accumulation_steps", 1))
    return {
        "per_device": micro_batch,
        "accumulation": accumulation,
        "global": micro_batch * accumulation * num_gpus,
        "seq_len": seq_len or recipe.model_max_length,
    }


def activation_plan(
    model: FuseVLMForConditionalGeneration, recipe: Recipe, batch: dict[str, int], flash_attention: bool
) -> dict[str, Any]:
    """Activation bytes per GPU, with and without checkpointing, and the logits' bytes.

    The LLM always counts: even when it is frozen, the gradient flows back through every layer to the image
    positions (an upper bound for frozen layers, whose weight gradients need no saved inputs).
    """
    text = model.config.text_config
    seq, micro = batch["seq_len"], batch["per_device"]
    stacks = [(Stack(text.num_hidden_layers, text.hidden_size, text.num_attention_heads), seq)]
    notes = []
    if recipe.stage == "instruct" and recipe.train_vision:
        tower = vision_stacks(model.vision_tower)
        if tower is None:
            notes.append(
                "the vision tower trains, but its activations are not estimated (unknown layer shape)"
            )
        else:
            stacks += tower
    totals = {}
    for key, checkpointing in (("activations", False), ("activations_checkpointed", True)):
        totals[key] = sum(
            stack_activation_bytes(
                stack, tokens, micro, checkpointing=checkpointing, flash_attention=flash_attention
            )
            for stack, tokens in stacks
        )
    return {**totals, "logits": logits_bytes(seq, micro, text.vocab_size), "notes": notes}


def stage_variant(recipe: Recipe) -> str:
    if recipe.stage == "align":
        return "projector only"
    what = f"LoRA r={recipe.lora.r} alpha={recipe.lora.alpha}" if recipe.lora else "full fine-tune"
    return what + (" + vision tower" if recipe.train_vision else "")


# ---- printing ---------------------------------------------------------------------------------------------
def _gib(value: float) -> str:
    return f"{value / GIB:.1f}"


def format_plan(result: dict[str, Any]) -> str:
    """A plan (``plan()``'s result) as a readable report: the model, a parameter table, a memory table."""
    sources, batch = result["sources"], result["batch"]
    projector = dict(result["projector"])
    projector_name = projector.pop("type")
    options = ", ".join(f"{k}={v}" for k, v in projector.items())
    lines = [
        f"recipe    {result['recipe']}  (stage {result['stage']}: {result['variant']})",
        f"vision    {sources['vision']}  [{result['vision_encoder']}, {result['vision_tokens']} features per image]",
        f"projector {projector_name}{f' ({options})' if options else ''}",
        f"llm       {sources['llm']}  [{result['llm_type']}]",
    ]
    if "init_from" in sources:
        lines.append(f"init_from {sources['init_from']}")
    lines += [
        f"image tokens per image: {result['image_tokens']}",
        f"batch: {batch['per_device']} per GPU x {batch['accumulation']} accumulation x {result['num_gpus']} GPUs = "
        f"{batch['global']} per step; sequence length {batch['seq_len']}; {result['dtype']}",
        "",
        f"{'parameters':<16}{'total':>16}{'train: align':>16}{'train: instruct':>18}",
    ]
    params = result["parameters"]
    for part in PARTS:
        row = params[part]
        lines.append(f"{part:<16}{row['total']:>16,}{row['align']:>16,}{row['instruct']:>18,}")
    sums = {key: sum(params[p][key] for p in PARTS) for key in ("total", "align", "instruct")}
    lines.append(f"{'all':<16}{sums['total']:>16,}{sums['align']:>16,}{sums['instruct']:>18,}")
    if result["extra_parameters"]:
        lines.append(f"{'+ LoRA/PEFT':<16}{result['extra_parameters']:>16,}")
    lines += ["", *format_memory(result)]
    lines += [f"note: {note}" for note in result["notes"]]
    return "\n".join(lines)


def format_memory(result: dict[str, Any]) -> list[str]:
    memory, chosen = result["memory"], result["recipe_strategy"]
    header = "".join(f"{STRATEGY_NAMES[s] + ('*' if s == chosen else ''):>10}" for s in STRATEGIES)
    attention = "flash/SDPA" if result["flash_attention"] else "eager attention (scores stored)"
    rows = [
        ("weights", "weights"),
        ("gradients", "gradients"),
        ("optimizer (Adam)", "optimizer"),
        ("activations", "activations"),
        ("  checkpointed", "activations_checkpointed"),
        ("total", "total"),
        ("total, checkpointed", "total_checkpointed"),
    ]
    lines = [
        f"memory per GPU, GiB, {result['num_gpus']} GPUs; trainable {result['trainable_parameters']:,} "
        f"of {result['total_parameters']:,} parameters",
        f"{'':<22}{header}",
    ]
    for label, key in rows:
        lines.append(f"{label:<22}" + "".join(f"{_gib(memory[s][key]):>10}" for s in STRATEGIES))
    used = "checkpointed" if result["gradient_checkpointing"] else "not checkpointed"
    lines.append(
        f"(* the recipe's DeepSpeed stage; the recipe runs {used}; activations: {attention}, "
        f"incl. logits {_gib(result['logits_bytes'])} GiB)"
    )
    return lines


# ---- command line -----------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", type=Path, help="a YAML recipe (see recipes/)")
    parser.add_argument("overrides", nargs="*", help="key=value recipe overrides, e.g. model.llm=/models/x")
    parser.add_argument(
        "--gpus", type=int, default=8, help="number of GPUs (processes) in the run (default 8)"
    )
    parser.add_argument(
        "--flash-attention",
        action="store_true",
        help="count no s x s attention scores (flash / SDPA kernels); default counts them (eager attention)",
    )
    parser.add_argument(
        "--seq-len",
        type=int,
        default=None,
        help="sequence length for activations (default: model_max_length)",
    )
    parser.add_argument(
        "--model-configs", type=Path, default=None, help=f"folder of model configs (default {MODEL_CONFIGS})"
    )
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")


def run(args: argparse.Namespace) -> int:
    try:
        result = plan(
            args.recipe,
            args.gpus,
            overrides=args.overrides,
            flash_attention=args.flash_attention,
            seq_len=args.seq_len,
            model_configs=args.model_configs,
        )
    except (PlanError, RecipeError) as err:
        print(f"fusevlm plan: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2, default=str) if args.json else format_plan(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fusevlm plan", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    # Intermixed, so that overrides may follow options: plan R.yaml --gpus 64 model.llm=/models/x
    return run(parser.parse_intermixed_args(argv))


if __name__ == "__main__":
    sys.exit(main())
