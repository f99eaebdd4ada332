"""Faults during training: a SIGKILL mid-run or mid-save, a full disk, a NaN loss. Nothing is lost that was saved,
nothing corrupt is saved, and a resumed run ends on the same weights as one that was never interrupted."""

from __future__ import annotations

import errno
import hashlib
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from recorders import ForwardLosses
from robust_helpers import cli_env, good_records, recipe, start_cli, write_records
from safetensors.torch import load_file
from transformers import TrainerCallback
from transformers.trainer_utils import get_last_checkpoint

from fusevlm import FuseVLMForConditionalGeneration
from fusevlm.train.checkpoints import CheckpointError, incomplete_reason, last_complete_checkpoint
from fusevlm.train.guards import NonFiniteLossError
from fusevlm.train.recipe import recipe_from_dict
from fusevlm.train.run import train

HERE = Path(__file__).parent
# A: long enough to be killed at a random step; B: short, killed while writing checkpoint-4.
LONG = dict(max_steps=30, save_strategy="steps", save_steps=4, save_total_limit=2, gradient_accumulation_steps=2,
            learning_rate=1e-2)
SHORT = dict(max_steps=6, save_strategy="steps", save_steps=2, learning_rate=1e-2)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("fault-data")
    path = write_records(root / "train.json", good_records(root / "images", 16))
    return {"path": str(path), "image_root": str(root / "images")}


def run(parts, data, out: Path, **overrides) -> Path:
    return train(recipe_from_dict(recipe(parts, data, out, **overrides)))


def write_recipe(parts, data, out: Path, **overrides) -> Path:
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(recipe(parts, data, out, **overrides)))
    return path


def assert_same_weights(a: Path, b: Path) -> None:
    x, y = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert set(x) == set(y)
    for key in x:
        assert torch.equal(x[key], y[key]), key


def kill_step_rng() -> tuple[int, random.Random]:
    """A seeded draw of the kill step: FUSEVLM_KILL_SEED=N replays a run; otherwise a fresh seed, printed."""
    seed = int(os.environ.get("FUSEVLM_KILL_SEED", random.SystemRandom().randrange(10**6)))
    print(f"kill step drawn with FUSEVLM_KILL_SEED={seed}")
    return seed, random.Random(seed)


@pytest.fixture(scope="module")
def reference_long(parts, data, tmp_path_factory):
    """The uninterrupted run: its folder and the exact loss of each of its forwards (2 per step here)."""
    losses = ForwardLosses()
    out = train(recipe_from_dict(recipe(parts, data, tmp_path_factory.mktemp("ref-long") / "out", **LONG)),
                callbacks=[losses])
    return out, losses.losses


@pytest.fixture(scope="module")
def reference_short(parts, data, tmp_path_factory):
    return run(parts, data, tmp_path_factory.mktemp("ref-short") / "out", **SHORT)


# ---- (a) SIGKILL at a random step, then resume ------------------------------------------------------------------
def test_sigkill_at_a_random_step_then_resume_gives_the_uninterrupted_weights(parts, data, tmp_path, reference_long):
    seed, rng = kill_step_rng()
    kill_at = rng.randint(LONG["save_steps"] + 1, 12)  # after checkpoint-4 exists, well before step 30
    replay = f"kill at step {kill_at} (FUSEVLM_KILL_SEED={seed})"
    out = tmp_path / "out"
    process = start_cli("train", str(write_recipe(parts, data, out, **LONG)))
    steps, lines = 0, []
    assert process.stdout is not None
    for line in process.stdout:
        lines.append(line)
        if line.startswith("{'loss':"):
            steps += 1
            if steps == kill_at:
                process.send_signal(signal.SIGKILL)
                break
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, f"{replay}?\n" + "".join(lines[-20:])
    assert not (out / "model.safetensors").exists(), replay  # it really died mid-run
    last = last_complete_checkpoint(out)
    assert last is not None and 4 <= int(last.name.split("-")[1]) <= kill_at, (replay, last)

    reference, reference_losses = reference_long
    losses = ForwardLosses()
    resumed = train(recipe_from_dict(recipe(parts, data, out, resume_from_checkpoint="last", **LONG)),
                    callbacks=[losses])
    done = int(last.name.split("-")[1]) * LONG["gradient_accumulation_steps"]  # forwards before the checkpoint
    assert losses.losses == reference_losses[done:], replay  # every later step's loss, float for float
    assert_same_weights(reference, resumed)


# ---- (b) SIGKILL while a checkpoint is being written --------------------------------------------------------------
@pytest.mark.parametrize("point", ["weights", "trainer_state"])  # the first file written, and the last
def test_sigkill_during_a_checkpoint_save_keeps_the_previous_one(point, parts, data, tmp_path, reference_short):
    out = tmp_path / "out"
    driver = [sys.executable, str(HERE / "kill_driver.py"), str(write_recipe(parts, data, out, **SHORT)), point, "4"]
    process = subprocess.run(driver, env=cli_env(), capture_output=True, text=True, timeout=180)
    assert process.returncode == -signal.SIGKILL, process.stdout[-2000:] + process.stderr[-2000:]

    partial, previous = out / "checkpoint-4", out / "checkpoint-2"
    assert partial.is_dir() and incomplete_reason(partial) is not None
    assert get_last_checkpoint(str(out)) == str(partial)  # what resume_from_checkpoint=True would have taken
    assert last_complete_checkpoint(out) == previous
    model = FuseVLMForConditionalGeneration.from_pretrained(previous)  # the previous checkpoint still loads
    assert all(torch.isfinite(p).all() for p in model.parameters())

    resumed = run(parts, data, out, resume_from_checkpoint="last", **SHORT)
    assert_same_weights(reference_short, resumed)


# ---- (c) a full disk ------------------------------------------------------------------------------------------------
def fill_disk_when(monkeypatch, marker: str) -> list[str]:
    """Every safetensors write whose path contains ``marker`` writes a few bytes, then fails with ENOSPC."""
    import transformers.modeling_utils as modeling_utils

    real, failed = modeling_utils.safe_save_file, []

    def save_file(tensors, filename, metadata=None):
        if marker in str(filename):
            Path(filename).write_bytes(b"\0" * 64)
            failed.append(str(filename))
            raise OSError(errno.ENOSPC, "No space left on device", str(filename))
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(modeling_utils, "safe_save_file", save_file)
    return failed


class Digest(TrainerCallback):
    """The checksum of every file of each checkpoint, taken right after it was written."""

    def __init__(self):
        self.saved: dict[str, dict[str, str]] = {}

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        self.saved[folder.name] = digest(folder)


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_full_disk_during_a_checkpoint_save_is_a_clear_error_and_keeps_the_previous(
    parts, data, tmp_path, monkeypatch, reference_short
):
    out = tmp_path / "out"
    failed = fill_disk_when(monkeypatch, "checkpoint-4")
    watch = Digest()
    with pytest.raises(CheckpointError) as info:
        train(recipe_from_dict(recipe(parts, data, out, **SHORT)), callbacks=[watch])
    message = str(info.value)
    assert failed and f"saving checkpoint {out / 'checkpoint-4'} failed: the disk is full" in message, message
    assert f"the last complete checkpoint, {out / 'checkpoint-2'}, is intact" in message, message
    assert isinstance(info.value.__cause__, OSError) and info.value.__cause__.errno == errno.ENOSPC
    assert digest(out / "checkpoint-2") == watch.saved["checkpoint-2"]  # byte for byte as written
    assert not (out / "model.safetensors").exists()

    monkeypatch.undo()  # space freed: resume from what is left
    resumed = run(parts, data, out, resume_from_checkpoint="last", **SHORT)
    assert_same_weights(reference_short, resumed)


def test_full_disk_during_the_final_save_leaves_the_existing_model_folder(parts, data, tmp_path, monkeypatch):
    out = tmp_path / "out"
    run(parts, data, out, max_steps=2)
    before = digest(out)
    FuseVLMForConditionalGeneration.from_pretrained(out)

    failed = fill_disk_when(monkeypatch, ".fusevlm-saving")
    with pytest.raises(CheckpointError, match="saving the model folder .* failed: the disk is full") as info:
        run(parts, data, out, max_steps=3, learning_rate=2e-2)
    assert failed and "the files there before this save are intact" in str(info.value)
    assert digest(out) == before  # the old model folder, untouched
    assert not (out / ".fusevlm-saving").exists()
    FuseVLMForConditionalGeneration.from_pretrained(out)

    monkeypatch.undo()
    run(parts, data, out, max_steps=3, learning_rate=2e-2)
    assert digest(out)["model.safetensors"] != before["model.safetensors"]  # a good save does replace it
    assert not (out / ".fusevlm-saving").exists()


# ---- (d) NaN / inf --------------------------------------------------------------------------------------------------
class Sabotage(TrainerCallback):
    """At optimizer step ``step``, make the loss ``inf`` (``what='loss'``) or the gradients NaN (``'grad'``)."""

    def __init__(self, step: int, what: str):
        self.step, self.what, self.handles = step, what, []

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step + 1 != self.step:
            return
        if self.what == "loss":
            def poison(module, inputs, output):
                output.loss = output.loss * float("inf")
                return output

            self.handles.append(model.register_forward_hook(poison, prepend=True))
        else:
            weight = next(p for p in model.parameters() if p.requires_grad)
            self.handles.append(weight.register_hook(lambda grad: grad * float("nan")))


@pytest.mark.parametrize("what", ["loss", "grad"])
def test_non_finite_loss_or_gradient_stops_naming_step_and_batch(what, parts, data, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(NonFiniteLossError) as info:
        train(recipe_from_dict(recipe(parts, data, out, **SHORT)), callbacks=[Sabotage(3, what)])
    message = str(info.value)
    assert "training stopped at step 3: " in message, message
    assert ("loss is inf" if what == "loss" else "non-finite gradients") in message, message
    assert f"{data['path']} record " in message and "(id 'good-" in message, message  # the batch's records
    assert message.count("(id 'good-") == 4  # all four of the batch
    # Nothing corrupt was saved: the checkpoint before is finite, none after it, no model folder.
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]
    assert not (out / "model.safetensors").exists()
    weights = load_file(out / "checkpoint-2" / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values())
