"""align then instruct on a small LLaVA-format dataset: what trains, what is saved, what reloads."""

import json

import pytest
import torch
from helpers import make_dataset, recipe
from peft import PeftModel
from safetensors.torch import load_file

from fusevlm import FuseVLMForConditionalGeneration
from fusevlm.train.recipe import RecipeError, recipe_from_dict
from fusevlm.train.run import train


def losses(folder):
    history = json.loads((folder / "log_history.json").read_text())
    return [h["loss"] for h in history if "loss" in h]


@pytest.fixture(scope="module")
def setup(checkpoints, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stages")
    data = make_dataset(tmp / "data", 16)
    entry = [{"path": str(data), "image_root": str(tmp / "data" / "images")}]
    model = {"vision": str(checkpoints("vision", "clip", hidden=64)), "projector": "mlp2x_gelu",
             "llm": str(checkpoints("llm", "llama"))}
    return tmp, entry, model


@pytest.fixture(scope="module")
def aligned(setup):
    tmp, entry, model = setup
    out = train(recipe_from_dict(recipe(tmp, entry, model=model, output_dir=str(tmp / "align"), max_steps=12,
                                        learning_rate=1e-2)))
    return out


def test_align_trains_only_the_projector_and_saves_it_alone(setup, aligned):
    tmp, entry, model = setup
    from fusevlm import build_vlm

    initial, _ = build_vlm(model["vision"], model["projector"], model["llm"])
    trained = FuseVLMForConditionalGeneration.from_pretrained(aligned)
    before, after = initial.state_dict(), trained.state_dict()
    changed = sorted(k for k in before if not torch.equal(before[k], after[k]))
    assert changed and all(k.startswith("projector.") for k in changed)
    assert set(changed) == {k for k in before if k.startswith("projector.")}
    alone = load_file(aligned / "projector.safetensors")
    assert set(alone) == {k[len("projector."):] for k in changed}
    assert all(torch.equal(alone[k], after["projector." + k]) for k in alone)
    history = losses(aligned)
    assert sum(history[-3:]) / 3 < sum(history[:3]) / 3
    report = json.loads((aligned / "data_report.json").read_text())
    assert report["skipped"] == 0 and report["samples"] == 16


def test_full_instruct_trains_llm_and_projector_not_vision(setup, aligned):
    tmp, entry, _ = setup
    out = train(recipe_from_dict(recipe(tmp, entry, model={"init_from": str(aligned)}, stage="instruct",
                                        template="chatml", output_dir=str(tmp / "full"), max_steps=10,
                                        learning_rate=3e-3)))
    before = FuseVLMForConditionalGeneration.from_pretrained(aligned).state_dict()
    after = FuseVLMForConditionalGeneration.from_pretrained(out).state_dict()
    changed = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"projector", "language_model"}
    history = losses(out)
    assert sum(history[-3:]) / 3 < sum(history[:3]) / 3


@pytest.fixture(scope="module")
def lora_run(setup, aligned):
    tmp, entry, _ = setup
    return train(recipe_from_dict(recipe(tmp, entry, model={"init_from": str(aligned)}, stage="instruct",
                                         template="chatml", output_dir=str(tmp / "lora"), max_steps=10,
                                         learning_rate=3e-3, lora={"r": 4, "alpha": 8, "dropout": 0.0})))


def test_lora_instruct_keeps_base_weights_and_saves_the_trained_projector(aligned, lora_run):
    out = lora_run
    base = FuseVLMForConditionalGeneration.from_pretrained(aligned)
    base_state = {k: v.clone() for k, v in base.state_dict().items()}
    # The adapter folder holds LoRA weights + the projector; loading it leaves the base LLM weights untouched.
    peft_model = PeftModel.from_pretrained(base, out / "adapter")
    adapter_files = load_file(out / "adapter" / "adapter_model.safetensors")
    assert any("lora_A" in k for k in adapter_files)
    # Besides the LoRA matrices, the adapter holds the whole trained projector (PEFT's modules_to_save) and nothing
    # else: no base LLM or vision weight.
    projector_keys = [k for k in base_state if k.startswith("projector.")]
    assert {k for k in adapter_files if "lora_" not in k} == {"base_model.model." + k for k in projector_keys}
    for name, param in peft_model.base_model.model.language_model.named_parameters():
        if "lora_" not in name:
            key = "language_model." + name.replace(".base_layer", "")
            assert torch.equal(param, base_state[key]), name
    # The merged folder reloads with the trained projector (changed from the aligned one, equal to the adapter's).
    merged = FuseVLMForConditionalGeneration.from_pretrained(out).state_dict()
    assert any(not torch.equal(merged[k], base_state[k]) for k in projector_keys)
    adapter_projector = peft_model.base_model.model.projector.modules_to_save["default"].state_dict()
    for k in projector_keys:
        assert torch.equal(merged[k], adapter_projector[k[len("projector."):]])
        assert torch.equal(merged[k], adapter_files["base_model.model." + k])
    # LoRA was merged into the LLM, and only there
    assert any(not torch.equal(merged[k], base_state[k]) for k in base_state if k.startswith("language_model."))
    assert all(torch.equal(merged[k], base_state[k]) for k in base_state if k.startswith("vision_tower."))


def test_recipe_errors_are_named_before_any_weights_load(setup):
    tmp, entry, model = setup
    with pytest.raises(RecipeError, match="unknown key 'learning_rat'.*did you mean learning_rate"):
        recipe_from_dict(recipe(tmp, entry, model=model, learning_rat=1e-3))
    with pytest.raises(RecipeError, match="align stage trains the projector only"):
        recipe_from_dict(recipe(tmp, entry, model=model, lora={"r": 4}))
    with pytest.raises(RecipeError, match="model: unknown key"):
        recipe_from_dict(recipe(tmp, entry, model={**model, "visoin": "x"}))


def test_identity_projector_in_align_would_train_nothing(checkpoints, tmp_path):
    data = make_dataset(tmp_path / "data", 4)
    model = {"vision": str(checkpoints("vision", "clip", hidden=64)), "projector": "identity",
             "llm": str(checkpoints("llm", "llama"))}
    with pytest.raises(RecipeError, match="would train nothing"):
        train(recipe_from_dict(recipe(tmp_path, [{"path": str(data), "image_root": str(tmp_path / "data" / "images")}],
                                      model=model)))


def test_lora_targets_that_match_nothing_are_refused(setup, aligned):
    tmp, entry, _ = setup
    with pytest.raises(RecipeError, match=r"target_modules \['nonexistent_proj'\] match no linear layer"):
        train(recipe_from_dict(recipe(tmp, entry, model={"init_from": str(aligned)}, stage="instruct",
                                      output_dir=str(tmp / "x"), lora={"r": 4, "target_modules": ["nonexistent_proj"]})))


def test_train_command_reads_the_recipe_and_applies_overrides(setup, tmp_path):
    import yaml

    from fusevlm.cli import main

    tmp, entry, model = setup
    values = recipe(tmp, entry, model=model, output_dir=str(tmp_path / "ignored"))
    path = tmp_path / "align.yaml"
    path.write_text(yaml.safe_dump(values))
    out = tmp_path / "cli"
    assert main(["train", str(path), f"output_dir={out}", "max_steps=2", "model.projector=linear"]) == 0
    trained = FuseVLMForConditionalGeneration.from_pretrained(out)
    assert trained.config.projector_config == {"type": "linear"}
    assert len(losses(out)) == 2
    assert not (tmp_path / "ignored").exists()
    assert main(["train", str(path), "learning_rat=1"]) == 2


def test_a_corrupt_image_is_skipped_once_and_reported_in_the_output_folder(checkpoints, tmp_path):
    data = make_dataset(tmp_path / "data", 8)
    (tmp_path / "data" / "images" / "train_3.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    model = {"vision": str(checkpoints("vision", "clip", hidden=64)), "projector": "linear",
             "llm": str(checkpoints("llm", "llama"))}
    values = recipe(tmp_path, [{"path": str(data), "image_root": str(tmp_path / "data" / "images")}], model=model,
                    on_bad_sample="skip", max_steps=6)
    out = train(recipe_from_dict(values))
    report = json.loads((out / "data_report.json").read_text())
    assert report["skipped"] == 1
    (dataset,) = report["datasets"].values()
    assert dataset["reasons"] == {"bad_image": 1}
    assert "train_3.png" in dataset["examples"][0]["message"]
    with pytest.raises(Exception, match="train_3.png"):
        train(recipe_from_dict({**values, "on_bad_sample": "error", "output_dir": str(tmp_path / "strict")}))


def test_merge_command_rebuilds_the_merged_folder_from_base_and_adapter(aligned, lora_run, tmp_path):
    from fusevlm.cli import main

    assert main(["merge", "--adapter", str(lora_run / "adapter"), "--base", str(aligned),
                 "--out", str(tmp_path / "merged")]) == 0
    ours = FuseVLMForConditionalGeneration.from_pretrained(tmp_path / "merged").state_dict()
    reference = FuseVLMForConditionalGeneration.from_pretrained(lora_run).state_dict()
    assert set(ours) == set(reference)
    for key in reference:
        torch.testing.assert_close(ours[key], reference[key], rtol=0, atol=1e-6, msg=key)
    assert (tmp_path / "merged" / "processor_config.json").exists()
    assert main(["merge", "--adapter", str(tmp_path), "--out", str(tmp_path / "x")]) == 2
