"""``fusevlm train``: a recipe in, a self-contained model folder out (the next stage's and from_pretrained's input)."""

from __future__ import annotations

import json
import logging
import os
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from transformers import TrainingArguments, set_seed

from ..data.dataset import ConversationDataset, VLMCollator, check_sources, load_mixture
from ..data.packing import packing_collator, without_cache
from ..data.report import BadSampleReport
from ..data.streaming import StreamingDataset
from ..models.builder import build_vlm
from ..models.vlm import FuseVLMForConditionalGeneration
from ..processing import FuseVLMProcessor
from ..templates import get_template
from .checkpoints import SaveWatch, staged_folder
from .guards import NonFiniteGuard
from .preflight import preflight
from .recipe import Recipe, RecipeError
from .stages import prepare_for_stage
from .trainer import VLMTrainer, stream_state_file

logger = logging.getLogger(__name__)

PROJECTOR_FILE = "projector.safetensors"
DATA_REPORT_FILE = "data_report.json"


def load_model(recipe: Recipe) -> tuple[FuseVLMForConditionalGeneration, FuseVLMProcessor]:
    spec = recipe.model
    extra = {"quantization_config": qlora_config()} if recipe.qlora else {}
    if spec.init_from:
        model = FuseVLMForConditionalGeneration.from_pretrained(spec.init_from, **extra)
        return model, FuseVLMProcessor.from_pretrained(spec.init_from)
    return build_vlm(spec.vision, spec.projector, spec.llm, trust_remote_code=spec.trust_remote_code, llm_kwargs=extra)


def qlora_config() -> Any:
    """QLoRA's 4-bit NF4 with double quantisation for the LLM; vision tower, projector and head stay full."""
    from transformers import BitsAndBytesConfig

    try:
        import bitsandbytes  # noqa: F401
    except ImportError as err:
        raise RecipeError("qlora needs bitsandbytes: pip install bitsandbytes") from err
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
        llm_int8_skip_modules=["vision_tower", "projector", "lm_head"],
    )


def training_arguments(recipe: Recipe) -> TrainingArguments:
    values: dict[str, Any] = {"report_to": "none", **recipe.training}
    values["output_dir"] = recipe.output_dir
    values["remove_unused_columns"] = False  # our batches carry task ids and image tensors
    # Only an unfrozen vision tower has parameters a forward skips (the layers past vision_feature_layer).
    values.setdefault("ddp_find_unused_parameters", recipe.train_vision)
    if recipe.data and recipe.data[0].streaming:
        values["ignore_data_skip"] = True  # a streamed run restores its saved position instead of skipping batches
    if not torch.cuda.is_available():
        values.setdefault("use_cpu", True)
    return TrainingArguments(**values)


def train(recipe: Recipe, callbacks: list[Any] | None = None) -> Path:
    """Run one stage. The recipe (``preflight``) and the data files' presence are checked before any weights load,
    so a bad recipe fails fast; the data is tokenized (or its cache opened) once the tokenizer is there. A NaN/inf loss stops the run (``guards``); a failed save leaves the previous
    checkpoint and model folder intact (``checkpoints``).

    ``callbacks`` are ``transformers.TrainerCallback`` objects added to the Trainer's own.
    """
    resume = preflight(recipe)  # resume_from_checkpoint resolved to a complete checkpoint (or None)
    seed = int(recipe.training.get("seed", 42))
    set_seed(seed)
    report = BadSampleReport()
    check_sources(recipe.data)
    streamed = recipe.data[0].streaming

    model, processor = load_model(recipe)
    template = get_template(recipe.template) if recipe.template else None
    if streamed:
        dataset = StreamingDataset(
            recipe.data, processor, model_max_length=recipe.model_max_length, chat_template=template,
            image_aspect_ratio=recipe.image_aspect_ratio, on_bad_sample=recipe.on_bad_sample, seed=seed,
            rank=int(os.environ.get("RANK", 0)), world_size=int(os.environ.get("WORLD_SIZE", 1)),
        )
    else:
        dataset = load_mixture(
            recipe.data, processor, model_max_length=recipe.model_max_length, chat_template=template,
            image_aspect_ratio=recipe.image_aspect_ratio, on_bad_sample=recipe.on_bad_sample, report=report,
            seed=seed, cache_dir=recipe.data_cache_dir, num_proc=recipe.preprocessing_num_workers,
        )
    tasks = dataset.tasks
    model = prepare_for_stage(model, recipe)
    if recipe.training.get("gradient_checkpointing") or recipe.training.get("activation_checkpointing"):
        model.config.use_cache = False
    # Built after the model: DeepSpeed ZeRO-3 must not see TrainingArguments before the model exists (CPU).
    args = training_arguments(recipe)
    stream_state = None
    if streamed:
        if resume:
            state_file = Path(resume) / stream_state_file(args.process_index)
            if not state_file.is_file():
                raise RecipeError(f"resume_from_checkpoint {resume!r} holds no position in the streamed data "
                                  f"({state_file.name}); it was not written by a streamed run")
            stream_state = torch.load(state_file, weights_only=True)
    pad_id = processor.tokenizer.pad_token_id
    collator = (packing_collator(model, pad_id, recipe.model_max_length) if recipe.packing
                else VLMCollator(pad_token_id=pad_id))
    watch = SaveWatch()
    trainer = VLMTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=collator,
        processing_class=processor,
        tasks=tasks,
        mft_loss_mode=recipe.mft_loss,
        projector_lr=recipe.projector_lr,
        vision_lr=recipe.vision_lr,
        group_by_modality_length=recipe.group_by_modality_length,
        data_report=report,
        stream_state=stream_state,
        callbacks=[NonFiniteGuard(dataset), watch, *(callbacks or [])],
    )
    # Packed rows need a cache-free forward; an OSError while writing a checkpoint names what is left.
    with watch.translate_errors(), without_cache(model) if recipe.packing else nullcontext():
        trainer.train(resume_from_checkpoint=resume)

    output = Path(recipe.output_dir)
    save_stage_output(trainer, processor, recipe, output)
    if trainer.is_world_process_zero():
        finish_report(trainer, dataset, report, output)
    return output


def save_stage_output(trainer: VLMTrainer, processor: FuseVLMProcessor, recipe: Recipe, output: Path) -> None:
    """Write the model folder: full weights (LoRA merged, adapter kept in ``adapter/``), processor, projector.

    Everything is written to a staging folder first and moved in once complete, so a save that fails (a full
    disk) leaves an existing model folder as it was.
    """
    model = trainer.model
    main = trainer.is_world_process_zero()
    with staged_folder(output, is_main=main, barrier=trainer.accelerator.wait_for_everyone) as stage:
        if recipe.lora is not None:
            if main:
                model.save_pretrained(stage / "adapter")
                merged = model.merge_and_unload()
                merged.save_pretrained(stage)
        else:
            trainer.save_model(str(stage))
        if main:
            processor.save_pretrained(stage)
            if recipe.stage == "align":
                save_projector(stage)


def save_projector(output: Path) -> None:
    """The projector's weights alone (LLaVA's ``mm_projector.bin``, as safetensors), read back from the folder."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    tensors = {}
    for file in sorted(output.glob("model*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():
                if key.startswith("projector."):
                    tensors[key[len("projector.") :]] = handle.get_tensor(key)
    save_file(tensors, str(output / PROJECTOR_FILE))


def finish_report(trainer: VLMTrainer, dataset: Any, report: BadSampleReport, output: Path) -> None:
    """The run's data report (skips and truncations) in the folder and on screen, and the loss curve."""
    data = report.to_dict()
    data["truncated"] = getattr(dataset, "truncated", {})
    data["samples"] = len(dataset) if isinstance(dataset, ConversationDataset) else None  # a stream has no length
    (output / DATA_REPORT_FILE).write_text(json.dumps(data, indent=2) + "\n")
    print(report.summary())
    if data["truncated"]:
        print(f"truncated to model_max_length (kept): {data['truncated']}")
    history = [h for h in trainer.state.log_history if "loss" in h and "step" in h]
    (output / "log_history.json").write_text(json.dumps(trainer.state.log_history, indent=2) + "\n")
    if history:
        plot_losses(history, output / "loss.png", title=f"{output.name}")


def plot_losses(history: list[dict[str, Any]], path: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    steps = [h["step"] for h in history]
    ax.plot(steps, [h["loss"] for h in history], label="loss", linewidth=2)
    for key in sorted({k for h in history for k in h if k.startswith("loss_")}):
        points = [(h["step"], h[key]) for h in history if key in h]
        ax.plot([s for s, _ in points], [v for _, v in points], label=key[len("loss_") :], alpha=0.7)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
