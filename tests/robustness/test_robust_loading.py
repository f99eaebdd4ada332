"""Loading safety: pickles load only as plain tensors (``weights_only=True``), a checkpoint's own Python runs only
when asked, and a folder of another architecture, or weights that do not fit their config, are refused by name."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from robust_helpers import good_records, recipe, write_records
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

from fusevlm import FuseVLMForConditionalGeneration, build_vlm, load_mixed_pretrained_model
from fusevlm.models.llm import load_llm
from fusevlm.models.vision import load_vision_encoder
from fusevlm.models.vlm import WeightsMismatchError
from fusevlm.serve.engine import Engine
from fusevlm.train.recipe import recipe_from_dict
from fusevlm.train.run import train


class Payload:
    """Unpickling this runs code: it writes ``marker``. weights_only=True must refuse it before that."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pickle code ran')",))


def evil_pickle(path: Path, marker: Path, tensors: dict | None = None) -> None:
    with open(path, "wb") as handle:
        pickle.dump({**(tensors or {"weight": torch.zeros(2)}), "evil": Payload(marker)}, handle)


def copy_with_pickled_weights(source: str | Path, target: Path, marker: Path) -> Path:
    """A copy of a checkpoint folder whose safetensors weights are replaced by a malicious pytorch_model.bin."""
    shutil.copytree(source, target)
    for weights in target.glob("*.safetensors"):
        weights.unlink()
    evil_pickle(target / "pytorch_model.bin", marker)
    return target


@pytest.fixture(scope="module")
def qwen_vl(checkpoints):
    return checkpoints("vision", "qwen_vl")


WHERE = ["projector weights file", "LLM folder", "vision folder", "Qwen-VL folder", "fusevlm model folder",
         "served model folder"]


@pytest.mark.parametrize("where", WHERE)
def test_a_malicious_pickle_is_refused_and_never_runs(where, parts, model_dir, qwen_vl, tmp_path):
    marker = tmp_path / "MARKER"
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        if where == "projector weights file":
            evil_pickle(tmp_path / "mm_projector.bin", marker)
            load_mixed_pretrained_model(parts["llm"], None, None, parts["vision"], "linear", tmp_path / "mm_projector.bin")
        elif where == "LLM folder":
            load_llm(copy_with_pickled_weights(parts["llm"], tmp_path / "llm", marker))
        elif where == "vision folder":
            load_vision_encoder(str(copy_with_pickled_weights(parts["vision"], tmp_path / "vision", marker)))
        elif where == "Qwen-VL folder":
            load_vision_encoder(str(copy_with_pickled_weights(qwen_vl, tmp_path / "qwen", marker)))
        elif where == "fusevlm model folder":
            FuseVLMForConditionalGeneration.from_pretrained(copy_with_pickled_weights(model_dir, tmp_path / "m", marker))
        else:
            Engine.load(copy_with_pickled_weights(model_dir, tmp_path / "m", marker))
    assert not marker.exists()


def test_plain_tensor_pickles_still_load(parts, tmp_path):
    model, _ = build_vlm(parts["vision"], "linear", parts["llm"])
    torch.save({f"model.mm_projector.{k}": v for k, v in model.projector.state_dict().items()}, tmp_path / "p.bin")
    _, loaded, _, _ = load_mixed_pretrained_model(parts["llm"], None, None, parts["vision"], "linear", tmp_path / "p.bin")
    for key, value in model.projector.state_dict().items():
        assert torch.equal(loaded.projector.state_dict()[key], value)


@pytest.fixture(scope="module")
def trained(parts, tmp_path_factory):
    """A run with checkpoints, made once: (data entry, output folder, common recipe values)."""
    tmp = tmp_path_factory.mktemp("resume")
    root = tmp / "data"
    data = {"path": str(write_records(root / "train.json", good_records(root / "images", 4))),
            "image_root": str(root / "images")}
    common = dict(max_steps=2, save_strategy="steps", save_steps=1)
    return data, train(recipe_from_dict(recipe(parts, data, tmp / "out", **common))), common


@pytest.mark.parametrize("file", ["rng_state.pth", "optimizer.pt", "scheduler.pt"])
def test_a_malicious_pickle_in_a_checkpoint_is_refused_on_resume(file, parts, trained, tmp_path):
    data, first, common = trained
    out = tmp_path / "out"
    shutil.copytree(first, out)
    marker = tmp_path / "MARKER"
    evil_pickle(out / "checkpoint-2" / file, marker, tensors={})
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        train(recipe_from_dict(recipe(parts, data, out, resume_from_checkpoint="last", **{**common, "max_steps": 3})))
    assert not marker.exists()


# ---- remote code ----------------------------------------------------------------------------------------------------
@pytest.fixture
def remote_llm(tmp_path):
    folder = tmp_path / "remote"
    folder.mkdir()
    marker = tmp_path / "MARKER"
    config = {"model_type": "my_secret_model",
              "auto_map": {"AutoConfig": "configuration_x.MyConfig", "AutoModelForCausalLM": "modeling_x.MyModel"}}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "configuration_x.py").write_text(f"open({str(marker)!r}, 'w').write('remote code ran')\n")
    return folder, marker


def test_remote_code_is_refused_unless_asked(remote_llm):
    folder, marker = remote_llm
    with pytest.raises(ValueError, match="trust_remote_code"):
        load_llm(folder)
    assert not marker.exists()


@pytest.mark.parametrize("asked", [False, True])
def test_trust_remote_code_reaches_the_loader_only_when_the_recipe_asks(asked, parts, monkeypatch):
    seen = {}

    def spy(name, **kwargs):
        seen["trust_remote_code"] = kwargs.get("trust_remote_code")
        raise RuntimeError("stop after the call")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", spy)
    from fusevlm.train.run import load_model

    values = recipe(parts, {"path": "unused.json"}, Path("unused"))
    values["model"]["trust_remote_code"] = asked
    with pytest.raises(RuntimeError, match="stop after the call"):
        load_model(recipe_from_dict(values))
    assert seen["trust_remote_code"] is asked


def test_an_auto_map_in_a_fusevlm_folder_never_runs(model_dir, tmp_path):
    folder = tmp_path / "with-auto-map"
    shutil.copytree(model_dir, folder)
    marker = tmp_path / "MARKER"
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForImageTextToText": "modeling_evil.Evil"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').write('remote code ran')\n")
    model = AutoModelForImageTextToText.from_pretrained(folder)
    assert isinstance(model, FuseVLMForConditionalGeneration)
    assert not marker.exists()


# ---- folders of another architecture, weights of another model -------------------------------------------------------
def test_a_folder_of_another_architecture_is_refused_by_name(parts, model_dir):
    with pytest.raises(ValueError, match="config.json is a 'llama' model, not a fusevlm one"):
        FuseVLMForConditionalGeneration.from_pretrained(parts["llm"])
    with pytest.raises(ValueError, match="config.json is a 'llama' model, not a fusevlm one"):
        Engine.load(parts["llm"])
    with pytest.raises(ValueError, match="model_type 'llama', which no vision encoder accepts"):
        load_vision_encoder(parts["llm"])
    with pytest.raises(ValueError, match="Unrecognized configuration class"):
        load_llm(parts["vision"])
    with pytest.raises(ValueError, match="model_type 'fusevlm', which no vision encoder accepts"):
        load_vision_encoder(str(model_dir))


@pytest.mark.parametrize("edit", ["projector type", "LLM width"])
def test_weights_that_do_not_fit_the_config_are_refused(edit, model_dir, tmp_path):
    folder = tmp_path / "edited"
    shutil.copytree(model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    if edit == "projector type":  # loaded alone, this gives a randomly initialised projector
        config["projector_config"] = {"type": "linear"}
        expected = "missing: projector.linear.bias, projector.linear.weight; unexpected: projector.mlp.0.bias"
    else:
        config["text_config"].update(hidden_size=128, intermediate_size=256)
        expected = "the weights do not fit"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises((WeightsMismatchError, RuntimeError)) as info:
        Engine.load(folder)
    assert expected in str(info.value) or "ignore_mismatched_sizes" in str(info.value)


def test_init_from_a_folder_whose_weights_do_not_fit_is_refused(model_dir, parts, tmp_path):
    folder = tmp_path / "edited"
    shutil.copytree(model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["projector_config"] = {"type": "linear"}
    (folder / "config.json").write_text(json.dumps(config))
    root = tmp_path / "data"
    data = {"path": str(write_records(root / "train.json", good_records(root / "images", 4))),
            "image_root": str(root / "images")}
    values = recipe(parts, data, tmp_path / "out", model={"init_from": str(folder)})
    with pytest.raises(WeightsMismatchError, match="missing: projector.linear.bias"):
        train(recipe_from_dict(values))


def test_a_truncated_weights_file_is_refused(model_dir, tmp_path):
    folder = tmp_path / "cut"
    shutil.copytree(model_dir, folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(Exception, match="(?i)incomplete|header|deserializ"):
        Engine.load(folder)
