"""Resume reaches the same weights as an uninterrupted run; MFT logs every task's loss at every logging step."""

import json

import pytest
import torch
import torch.nn.functional as F
from helpers import make_dataset, recipe
from recorders import ForwardLosses
from safetensors.torch import load_file
from transformers import TrainerCallback

from fusevlm.train.recipe import recipe_from_dict
from fusevlm.train.run import train
from fusevlm.train.trainer import mft_loss


class StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True
        return control


@pytest.mark.parametrize("stop", [4, 6])  # on the save step, and two steps past it (those two are lost and redone)
def test_resumed_run_reaches_the_uninterrupted_weights_and_losses_exactly(checkpoints, tmp_path, stop):
    data = make_dataset(tmp_path / "data", 24)
    entry = [{"path": str(data), "image_root": str(tmp_path / "data" / "images")}]
    model = {"vision": str(checkpoints("vision", "siglip", hidden=64)), "projector": "mlp2x_gelu",
             "llm": str(checkpoints("llm", "qwen2"))}
    common = dict(model=model, max_steps=8, save_strategy="steps", save_steps=4, learning_rate=1e-2)

    whole_losses, stopped_losses, resumed_losses = ForwardLosses(), ForwardLosses(), ForwardLosses()
    whole = train(recipe_from_dict(recipe(tmp_path, entry, output_dir=str(tmp_path / "whole"), **common)),
                  callbacks=[whole_losses])
    stopped = tmp_path / "stopped"
    train(recipe_from_dict(recipe(tmp_path, entry, output_dir=str(stopped), **common)),
          callbacks=[StopAt(stop), stopped_losses])
    assert (stopped / "checkpoint-4").is_dir() and not (stopped / "checkpoint-8").exists()
    resumed = train(recipe_from_dict(recipe(tmp_path, entry, output_dir=str(stopped), **common,
                                            resume_from_checkpoint=str(stopped / "checkpoint-4"))),
                    callbacks=[resumed_losses])
    assert len(whole_losses.losses) == 8
    assert stopped_losses.losses == whole_losses.losses[:stop]
    assert resumed_losses.losses == whole_losses.losses[4:]  # steps 5-8, float for float
    a, b = load_file(whole / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert set(a) == set(b)
    start = load_file(stopped / "checkpoint-4" / "model.safetensors")
    assert any(not torch.equal(start[k], a[k]) for k in a)  # the last 4 steps did change something
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_mft_mixture_logs_every_task_at_every_logging_step(checkpoints, tmp_path):
    color = make_dataset(tmp_path / "a", 12, name="color.json", task="color")
    shape = make_dataset(tmp_path / "b", 12, seed=1, name="shape.json", question="Name the colour, please.")
    entries = [
        {"path": str(color), "image_root": str(tmp_path / "a" / "images"), "task": "color"},
        {"path": str(shape), "image_root": str(tmp_path / "b" / "images"), "task": "shape", "num_samples": 6},
    ]
    model = {"vision": str(checkpoints("vision", "clip", hidden=64)), "projector": "linear",
             "llm": str(checkpoints("llm", "gpt2"))}
    out = train(recipe_from_dict(recipe(tmp_path, entries, model=model, mft_loss="sample", max_steps=8,
                                        logging_steps=2, per_device_train_batch_size=6)))
    logs = [h for h in json.loads((out / "log_history.json").read_text()) if "loss" in h]
    assert len(logs) == 4
    for entry in logs:
        assert {"loss_color", "loss_shape"} <= set(entry), entry
        assert all(v > 0 for k, v in entry.items() if k.startswith("loss_"))
    assert (out / "loss.png").stat().st_size > 0


def test_mft_loss_modes_weigh_tasks_equally():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 7)
    labels = torch.tensor([[-100, 1, 2, 3, 4], [-100, -100, -100, 5, 6], [-100, -100, 1, -100, -100]])
    task_ids = torch.tensor([0, 0, 1])
    per_token = F.cross_entropy(logits[:, :-1].reshape(-1, 7), labels[:, 1:].reshape(-1), ignore_index=-100,
                                reduction="none").view(3, 4)
    mask = labels[:, 1:] != -100
    sample_means = (per_token * mask).sum(1) / mask.sum(1)
    task0_token = (per_token[:2] * mask[:2]).sum() / mask[:2].sum()
    token_loss, sums, counts = mft_loss(logits, labels, task_ids, 3, "token")
    torch.testing.assert_close(token_loss, (task0_token + sample_means[2]) / 2)
    assert counts.tolist() == [6.0, 1.0, 0.0]
    sample_loss, _, _ = mft_loss(logits, labels, task_ids, 3, "sample")
    torch.testing.assert_close(sample_loss, ((sample_means[0] + sample_means[1]) / 2 + sample_means[2]) / 2)
