"""Bad recipes are refused with a ``RecipeError`` naming the key, before any weights load.

The proof: every run here points at copies of the tiny checkpoints whose weight files are garbage, and
``PreTrainedModel.from_pretrained`` (through which every model here loads) is patched to fail the test. A good
recipe over the same folders does reach that trap (the control), so a bad one refused with its own message was
refused before any weights were read.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from robust_helpers import good_records, recipe, start_cli, write_records
from transformers import PreTrainedModel

from fusevlm.train.recipe import RecipeError, recipe_from_dict
from fusevlm.train.run import train


class WeightsLoaded(AssertionError):
    pass


@pytest.fixture(scope="module")
def poisoned(checkpoints, tmp_path_factory):
    """Copies of the tiny vision tower (32 wide), a 64-wide one, the Llama and GPT-2 with corrupt weight files."""
    root = tmp_path_factory.mktemp("poisoned")
    sources = {
        "vision": checkpoints("vision", "clip", hidden=32),
        "vision64": checkpoints("vision", "clip", hidden=64),
        "llm": checkpoints("llm", "llama"),
        "gpt2": checkpoints("llm", "gpt2"),
    }
    folders = {}
    for name, source in sources.items():
        folder = root / name
        shutil.copytree(source, folder)
        for weights in folder.glob("*.safetensors"):
            weights.write_bytes(b"not a safetensors file")
        folders[name] = str(folder)
    remote = root / "remote-llm"
    remote.mkdir()
    (remote / "config.json").write_text(json.dumps({"model_type": "my_secret_model",
                                                    "auto_map": {"AutoModelForCausalLM": "modeling_x.M"}}))
    folders["remote"] = str(remote)
    qwen = root / "Qwen-14B"  # the shipped Qwen-14B config.json, as a download has it
    qwen.mkdir()
    shutil.copyfile(Path(__file__).resolve().parents[2] / "recipes/model_configs/Qwen--Qwen-14B.json", qwen / "config.json")
    folders["qwen_v1"] = str(qwen)
    return folders


@pytest.fixture
def no_weights(monkeypatch):
    def fail(cls, *args, **kwargs):
        raise WeightsLoaded(f"{cls.__name__}.from_pretrained was called")

    monkeypatch.setattr(PreTrainedModel, "from_pretrained", classmethod(fail))


@pytest.fixture
def data(tmp_path):
    root = tmp_path / "data"
    path = write_records(root / "train.json", good_records(root / "images", 4))
    return {"path": str(path), "image_root": str(root / "images")}


def ds_file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "ds.json"
    path.write_text(text)
    return str(path)


def ds(tmp_path: Path, **values) -> str:
    config = {"zero_optimization": {"stage": 2}, "train_micro_batch_size_per_gpu": "auto",
              "gradient_accumulation_steps": "auto", "bf16": {"enabled": "auto"}, **values}
    return ds_file(tmp_path, json.dumps(config))


def checkpoint_folder(tmp_path: Path, name: str, state: str | None) -> str:
    folder = tmp_path / "out" / name
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"partial")
    if state is not None:
        (folder / "trainer_state.json").write_text(state)
    return str(folder)


# name -> (function of (poisoned folders, tmp_path) giving recipe overrides, what the error must say)
CASES = {
    "unknown projector name": (lambda p, t: {"model": {**model(p), "projector": "mlp2x_gleu"}},
                               "unknown projector 'mlp2x_gleu'"),
    "unknown vision encoder name": (lambda p, t: {"model": {**model(p), "vision": {"encoder": "clipx", "path": p["vision"]}}},
                                    "unknown vision encoder 'clipx'"),
    "vision folder that does not exist": (lambda p, t: {"model": {**model(p), "vision": str(t / "nowhere")}},
                                          "no such model folder"),
    "vision folder holding an LLM": (lambda p, t: {"model": {**model(p), "vision": p["llm"]}},
                                     "model_type 'llama' is no registered vision encoder's"),
    "LLM folder without config.json": (lambda p, t: {"model": {**model(p), "llm": str(t / "data")}},
                                       "has no config.json"),
    "LLM that needs remote code, not trusted": (lambda p, t: {"model": {**model(p), "llm": p["remote"]}},
                                                "needs the checkpoint's own code"),
    "Qwen v1 LLM, not converted": (lambda p, t: {"model": {**model(p), "llm": p["qwen_v1"]}},
                                   "fusevlm convert-llm qwen-v1"),
    "unknown template": (lambda p, t: {"template": "chatmll"}, "unknown chat template 'chatmll'"),
    "unknown stage": (lambda p, t: {"stage": "pretrain"}, "stage must be one of"),
    "unknown recipe key (typo)": (lambda p, t: {"learning_rat": 1e-3}, "did you mean learning_rate"),
    "unknown model key": (lambda p, t: {"model": {**model(p), "visoin": "clip"}}, "unknown key(s) ['visoin']"),
    "unknown lora key": (lambda p, t: {"stage": "instruct", "lora": {"rank": 4}}, "unknown key(s) ['rank']"),
    "unknown image_aspect_ratio": (lambda p, t: {"image_aspect_ratio": "stretch"}, "image_aspect_ratio must be one of"),
    "unknown mft_loss": (lambda p, t: {"mft_loss": "tokens"}, "mft_loss must be one of"),
    "unknown on_bad_sample": (lambda p, t: {"on_bad_sample": "ignore"}, "on_bad_sample must be error or skip"),
    "identity projector across different widths": (lambda p, t: {"model": {**model(p), "projector": "identity"}},
                                                   "needs the vision hidden size (32) to equal the LLM hidden size (64)"),
    "pixel_shuffle factor that does not divide the grid": (
        lambda p, t: {"model": {**model(p), "projector": {"type": "pixel_shuffle", "factor": 3}}},
        "the 4x4 patch grid is not divisible by factor 3"),
    "cross_attn queries not a square": (
        lambda p, t: {"model": {**model(p), "projector": {"type": "cross_attn", "num_queries": 5}}},
        "num_queries must be a perfect square"),
    "cross_attn width not divisible by heads": (
        lambda p, t: {"model": {**model(p), "projector": {"type": "cross_attn", "num_queries": 4, "num_heads": 3}}},
        "embed_dim 64 is not divisible by num_heads 3"),
    "projector option it does not take": (lambda p, t: {"model": {**model(p), "projector": {"type": "linear", "depth": 3}}},
                                          "bad options ['depth']"),
    "model_max_length over GPT-2's learned positions": (
        lambda p, t: {"model": {**model(p), "llm": p["gpt2"]}, "model_max_length": 4096},
        "over the LLM's 512 learned positions"),
    "align stage with a parameter-free projector": (
        lambda p, t: {"model": {**model(p), "vision": p["vision64"], "projector": "identity"}},
        "the align stage would train nothing"),
    "zero steps and zero epochs": (lambda p, t: {"max_steps": 0, "num_train_epochs": 0}, "would train nothing: max_steps"),
    "learning rate 0": (lambda p, t: {"learning_rate": 0.0}, "would train nothing: learning_rate is 0"),
    "LoRA targets that match no module": (
        lambda p, t: {"stage": "instruct", "lora": {"r": 4, "alpha": 8, "target_modules": ["qkv_proj"]}},
        "lora.target_modules ['qkv_proj'] match no linear layer of the LLM"),
    "LoRA in the align stage": (lambda p, t: {"lora": {"r": 4}}, "the align stage trains the projector only"),
    "qlora without a GPU": (lambda p, t: {"stage": "instruct", "lora": {"r": 4}, "qlora": True}, "qlora needs a CUDA GPU"),
    "vision_lr without train_vision": (lambda p, t: {"stage": "instruct", "vision_lr": 1e-5},
                                       "vision_lr is set but train_vision is false"),
    "DeepSpeed micro-batch against the recipe's": (
        lambda p, t: {"deepspeed": ds(t, train_micro_batch_size_per_gpu=16)},
        "train_micro_batch_size_per_gpu=16 but per_device_train_batch_size=4"),
    "DeepSpeed accumulation against the recipe's": (
        lambda p, t: {"deepspeed": ds(t, gradient_accumulation_steps=8)},
        "gradient_accumulation_steps=8 but gradient_accumulation_steps=1"),
    "DeepSpeed bf16 on, recipe fp32": (lambda p, t: {"deepspeed": ds(t, bf16={"enabled": True})},
                                       "bf16.enabled=True but bf16=False"),
    "DeepSpeed learning rate against the recipe's": (
        lambda p, t: {"deepspeed": ds(t, optimizer={"type": "AdamW", "params": {"lr": 1e-4}})},
        "optimizer.params.lr=0.0001 but learning_rate=0.005"),
    "DeepSpeed gradient clipping against max_grad_norm": (lambda p, t: {"deepspeed": ds(t, gradient_clipping=0.3)},
                                                          "gradient_clipping=0.3 but max_grad_norm=1.0"),
    "DeepSpeed config file missing": (lambda p, t: {"deepspeed": str(t / "missing.json")}, "not found"),
    "DeepSpeed config not JSON": (lambda p, t: {"deepspeed": ds_file(t, "{stage: 2")}, "is not valid JSON"),
    "DeepSpeed and FSDP together": (lambda p, t: {"deepspeed": ds(t), "fsdp": "full_shard"},
                                    "deepspeed and fsdp are both set"),
    "init_from a folder of another architecture": (lambda p, t: {"model": {"init_from": p["llm"]}},
                                                   "config.json is a 'llama' model, not a fusevlm one"),
    "resume from last with no checkpoint": (lambda p, t: {"resume_from_checkpoint": "last"},
                                            "no complete checkpoint"),
    "resume from an incomplete checkpoint": (
        lambda p, t: {"resume_from_checkpoint": checkpoint_folder(t, "checkpoint-4", None)},
        "cannot be resumed from: no trainer_state.json"),
    "resume from a checkpoint whose state was cut short": (
        lambda p, t: {"resume_from_checkpoint": checkpoint_folder(t, "checkpoint-4", '{"global_step": 4, "log_')},
        "trainer_state.json is unreadable or cut short"),
}


def model(p: dict[str, str]) -> dict:
    return {"vision": p["vision"], "projector": "mlp2x_gelu", "llm": p["llm"]}


def test_control_a_good_recipe_over_the_poisoned_folders_reaches_the_weights(poisoned, data, tmp_path, no_weights):
    with pytest.raises(WeightsLoaded):
        train(recipe_from_dict(recipe(poisoned, data, tmp_path / "out")))


@pytest.mark.parametrize("name", list(CASES))
def test_bad_recipe_is_refused_before_any_weights_load(name, poisoned, data, tmp_path, no_weights):
    overrides, fragment = CASES[name]
    values = recipe(poisoned, data, tmp_path / "out", **overrides(poisoned, tmp_path))
    with pytest.raises(RecipeError) as info:
        train(recipe_from_dict(values, source="bad.yaml"))
    assert fragment in str(info.value), str(info.value)
    assert "bad.yaml" in str(info.value)
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_the_cli_prints_one_clear_line_and_exits_2(poisoned, data, tmp_path):
    values = recipe(poisoned, data, tmp_path / "out", model={**model(poisoned), "projector": "mlp2x_gleu"})
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(values))
    process = start_cli("train", str(path))
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 2, output
    assert f"fusevlm train: error: {path}: the model cannot be composed: unknown projector 'mlp2x_gleu'" in output
    assert "Traceback" not in output
