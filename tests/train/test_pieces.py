"""Smaller pieces of the training path: sampling, samplers, optimizer groups, mixed batches, refusals."""

import json

import pytest
import torch
from helpers import make_dataset, recipe

from fusevlm import build_vlm
from fusevlm.data.dataset import Source, VLMCollator, load_mixture, sample_indices
from fusevlm.train.recipe import RecipeError, recipe_from_dict
from fusevlm.train.run import train
from fusevlm.train.samplers import ModalityLengthGroupedSampler, TaskInterleavedSampler


def test_sample_indices_down_and_up_samples_reproducibly():
    down = sample_indices(10, 4, seed=1).tolist()
    assert len(down) == 4 and len(set(down)) == 4 and down == sample_indices(10, 4, seed=1).tolist()
    assert set(down) <= set(range(10)) and down != sample_indices(10, 4, seed=2).tolist()
    up = sample_indices(10, 25, seed=1).tolist()
    assert len(up) == 25 and all(up.count(r) in (2, 3) for r in range(10))
    assert sample_indices(10, None, seed=1).tolist() == list(range(10))
    with pytest.raises(ValueError, match="positive"):
        sample_indices(10, 0, seed=1)


def test_modality_length_sampler_keeps_batches_of_one_modality():
    lengths = [10, -5, 30, -7, 12, 40, -9, 8, 25, -3, 14, 33]
    sampler = ModalityLengthGroupedSampler(lengths, group_size=2, seed=0)
    order = list(sampler)
    assert sorted(order) == list(range(len(lengths)))
    for start in range(0, len(order), 2):
        batch = order[start : start + 2]
        assert len({lengths[i] > 0 for i in batch}) == 1, batch
    sampler.set_epoch(1)
    assert list(sampler) != order


def test_task_interleaved_sampler_puts_every_task_in_every_batch():
    tasks = [0] * 8 + [1] * 8 + [2] * 8
    order = list(TaskInterleavedSampler(tasks, seed=3))
    assert sorted(order) == list(range(24))
    for start in range(0, 24, 6):
        assert {tasks[i] for i in order[start : start + 6]} == {0, 1, 2}


def test_text_only_and_image_samples_share_a_batch(checkpoints, tmp_path):
    model, processor = build_vlm(str(checkpoints("vision", "clip", hidden=64)), "linear",
                                 str(checkpoints("llm", "llama")))
    data = make_dataset(tmp_path, 2)
    records = json.loads(data.read_text())
    records.append({"id": "text", "conversations": [{"from": "human", "value": "Say hi."},
                                                    {"from": "gpt", "value": "hi"}]})
    data.write_text(json.dumps(records))
    dataset = load_mixture([Source(str(data), image_root=str(tmp_path / "images"))], processor, model_max_length=128)
    assert dataset.lengths[2] < 0 < dataset.lengths[0]
    batch = VLMCollator(pad_token_id=processor.tokenizer.pad_token_id)([dataset[i] for i in range(3)])
    assert batch["pixel_values"].shape[0] == 2
    batch.pop("task_ids"), batch.pop("data_errors")
    loss = model(**batch).loss
    assert torch.isfinite(loss)


def test_vision_and_projector_learning_rates_and_gradient_checkpointing(checkpoints, tmp_path):
    data = make_dataset(tmp_path / "data", 8)
    model = {"vision": str(checkpoints("vision", "clip", hidden=64)), "projector": "mlp2x_gelu",
             "llm": str(checkpoints("llm", "llama"))}
    groups = {}

    from transformers import TrainerCallback

    class Capture(TrainerCallback):
        def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
            for group in optimizer.param_groups:
                groups[group["lr"]] = groups.get(group["lr"], 0) + len(group["params"])

    values = recipe(tmp_path, [{"path": str(data), "image_root": str(tmp_path / "data" / "images")}], model=model,
                    stage="instruct", template="chatml", train_vision=True, vision_lr=1e-5, projector_lr=2e-4,
                    learning_rate=1e-3, max_steps=2, gradient_checkpointing=True)
    train(recipe_from_dict(values), callbacks=[Capture()])
    assert set(groups) == {1e-5, 2e-4, 1e-3}


def test_qlora_on_a_machine_without_cuda_is_a_clear_error(checkpoints, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    data = make_dataset(tmp_path / "data", 4)
    model = {"vision": str(checkpoints("vision", "clip", hidden=64)), "projector": "linear",
             "llm": str(checkpoints("llm", "llama"))}
    values = recipe(tmp_path, [{"path": str(data), "image_root": str(tmp_path / "data" / "images")}], model=model,
                    stage="instruct", lora={"r": 4}, qlora=True)
    with pytest.raises(RecipeError, match="qlora needs a CUDA GPU"):
        recipe_from_dict(values)  # refused while reading the recipe, before data or weights load


def test_training_with_dataloader_workers(checkpoints, tmp_path):
    data = make_dataset(tmp_path / "data", 8)
    model = {"vision": str(checkpoints("vision", "clip", hidden=64)), "projector": "mlp2x_gelu",
             "llm": str(checkpoints("llm", "llama"))}
    entry = [{"path": str(data), "image_root": str(tmp_path / "data" / "images")}]
    out = train(recipe_from_dict(recipe(tmp_path, entry, model=model, max_steps=2, dataloader_num_workers=2)))
    assert (out / "model.safetensors").is_file()
