"""Smaller pieces of the training path: sampling, samplers, optimizer groups, mixed batches, refusals."""

import json

import pytest
import torch
from helpers import make_dataset, recipe
from safetensors.torch import load_file

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


def test_each_rows_loss_in_a_mixed_batch_equals_that_sample_alone(checkpoints, tmp_path):
    model, processor = build_vlm(str(checkpoints("vision", "clip", hidden=64)), "linear",
                                 str(checkpoints("llm", "llama")))
    data = make_dataset(tmp_path, 2, seed=1)
    records = json.loads(data.read_text())
    assert records[0]["conversations"][1]["value"] != records[1]["conversations"][1]["value"]  # two colours
    text_only = {"id": "text", "conversations": [{"from": "human", "value": "Say hi, then describe a cat."},
                                                 {"from": "gpt", "value": "hi; a cat on a mat"}]}
    records.insert(1, text_only)  # image, text, image: the second image belongs to the third row
    data.write_text(json.dumps(records))
    dataset = load_mixture([Source(str(data), image_root=str(tmp_path / "images"))], processor, model_max_length=128)
    assert dataset.lengths[1] < 0 < dataset.lengths[0]
    collator = VLMCollator(pad_token_id=processor.tokenizer.pad_token_id)
    keys = ("input_ids", "attention_mask", "labels", "pixel_values")

    def inputs(indices):
        batch = collator([dataset[i] for i in indices])
        return {k: batch[k] for k in keys if k in batch}

    batch = inputs([0, 1, 2])
    assert batch["pixel_values"].shape[0] == 2
    assert len({int(m.sum()) for m in batch["attention_mask"]}) == 3  # three lengths: every row is padded but one
    model.train()  # the training forward (head and loss at trained positions only), as the Trainer runs it
    with torch.no_grad():
        output = model(**batch)
        trained = batch["labels"][:, 1:] != -100
        row_losses = output.token_losses.sum(1) / trained.sum(1)
        alone = [model(**inputs([i])).loss for i in range(3)]
        assert output.loss == pytest.approx(float(output.token_losses.sum() / trained.sum()), abs=1e-6)
    for row, loss in enumerate(alone):
        assert float(row_losses[row]) == pytest.approx(float(loss), abs=1e-5), row
    # the swap a misplaced image would cause is visible at this tolerance: the two image samples differ
    assert abs(float(alone[0]) - float(alone[2])) > 1e-3


def test_vision_and_projector_learning_rates(checkpoints, tmp_path):
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
                    learning_rate=1e-3, max_steps=1)
    train(recipe_from_dict(values), callbacks=[Capture()])
    assert set(groups) == {1e-5, 2e-4, 1e-3}


class SavedActivations:
    """A Trainer callback that counts the bytes autograd keeps for backward during each training forward.

    Hooks on the model open ``torch.autograd.graph.saved_tensors_hooks`` around its forward: every tensor saved for
    backward is packed through it, except those inside a checkpointed block, whose own hooks keep nothing.
    """

    def __init__(self):
        self.per_step: list[int] = []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        def pack(tensor):
            self.per_step[-1] += tensor.numel() * tensor.element_size()
            return tensor

        def pre(module, args, kwargs):
            self.per_step.append(0)
            module._saved_hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor)
            module._saved_hooks.__enter__()

        def post(module, args, kwargs, output):
            module._saved_hooks.__exit__(None, None, None)

        model.register_forward_pre_hook(pre, with_kwargs=True)
        model.register_forward_hook(post, with_kwargs=True)


def as_callback(counter):
    from transformers import TrainerCallback

    return type("Counter", (TrainerCallback,), {"on_train_begin": counter.on_train_begin})()


def test_gradient_checkpointing_keeps_fewer_activations_and_the_same_weights(checkpoints, tmp_path):
    data = make_dataset(tmp_path / "data", 8)
    model = {"vision": str(checkpoints("vision", "clip", hidden=64)), "projector": "mlp2x_gelu",
             "llm": str(checkpoints("llm", "llama"))}
    entry = [{"path": str(data), "image_root": str(tmp_path / "data" / "images")}]
    saved, weights = {}, {}
    for checkpointing in (False, True):
        counter = SavedActivations()
        out = train(recipe_from_dict(recipe(tmp_path, entry, model=model, stage="instruct", template="chatml",
                                            max_steps=3, gradient_checkpointing=checkpointing,
                                            output_dir=str(tmp_path / f"gc-{checkpointing}"))),
                    callbacks=[as_callback(counter)])
        assert len(counter.per_step) == 3
        saved[checkpointing] = counter.per_step[0]
        weights[checkpointing] = load_file(out / "model.safetensors")
    # Only each decoder layer's input is kept across a checkpointed layer: here less than half of the bytes.
    assert saved[True] < 0.5 * saved[False], saved
    # The recomputed forward is the same computation: the gradients, and so the weights after 3 steps, are equal.
    assert weights[True].keys() == weights[False].keys()
    for key in weights[False]:
        assert torch.equal(weights[True][key], weights[False][key]), key


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


def test_dataloader_workers_give_the_weights_of_a_run_without_workers(checkpoints, tmp_path):
    data = make_dataset(tmp_path / "data", 8)
    model = {"vision": str(checkpoints("vision", "clip", hidden=64)), "projector": "mlp2x_gelu",
             "llm": str(checkpoints("llm", "llama"))}
    entry = [{"path": str(data), "image_root": str(tmp_path / "data" / "images")}]
    weights = {}
    for workers in (0, 2):
        out = train(recipe_from_dict(recipe(tmp_path, entry, model=model, max_steps=3, dataloader_num_workers=workers,
                                            output_dir=str(tmp_path / f"workers-{workers}"))))
        weights[workers] = load_file(out / "model.safetensors")
    assert weights[0].keys() == weights[2].keys()
    for key in weights[0]:
        assert torch.equal(weights[0][key], weights[2][key]), key
