"""The published recipes load, carry the published numbers, and plan; the planner's errors say what to do."""

from pathlib import Path

import pytest
import yaml

from fusevlm.plan import PlanError, main, plan
from fusevlm.train.recipe import load_recipe

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "recipes"
PUBLISHED = [
    "llava-1.5-7b/pretrain.yaml",
    "llava-1.5-7b/finetune.yaml",
    "codefuse-vlm-14b/pretrain.yaml",
    "codefuse-vlm-14b/finetune.yaml",
]


@pytest.mark.parametrize("name", PUBLISHED)
def test_recipe_loads_and_its_deepspeed_file_exists(name):
    recipe = load_recipe(RECIPES / name)
    assert recipe.training["bf16"] is True
    assert recipe.model_max_length == 2048
    assert (REPO / recipe.training["deepspeed"]).is_file()  # relative to the repo root, where runs start


@pytest.mark.parametrize("name", PUBLISHED)
def test_recipe_training_arguments_are_accepted(name, monkeypatch):
    # The TrainingArguments the run would build (warmup fraction, adam_beta2, DeepSpeed file, ...) construct.
    from fusevlm.train.run import training_arguments

    monkeypatch.chdir(REPO)  # the recipes' DeepSpeed paths are relative to the repo root
    args = training_arguments(load_recipe(RECIPES / name))
    recipe = load_recipe(RECIPES / name)
    assert args.learning_rate == recipe.training["learning_rate"]
    assert args.warmup_steps == 0.03


def global_batch(recipe, gpus: int) -> int:
    t = recipe.training
    return t["per_device_train_batch_size"] * t.get("gradient_accumulation_steps", 1) * gpus


def test_llava_hyperparameters():
    pretrain = load_recipe(RECIPES / "llava-1.5-7b/pretrain.yaml")
    finetune = load_recipe(RECIPES / "llava-1.5-7b/finetune.yaml")
    assert (pretrain.stage, pretrain.template, pretrain.training["learning_rate"]) == ("align", "plain", 1e-3)
    assert global_batch(pretrain, 8) == 256 and pretrain.training["num_train_epochs"] == 1
    assert (finetune.stage, finetune.template, finetune.training["learning_rate"]) == (
        "instruct",
        "vicuna_v1",
        2e-5,
    )
    assert global_batch(finetune, 8) == 128 and finetune.training["num_train_epochs"] == 1
    assert finetune.lora is None and finetune.training["deepspeed"].endswith("zero3.json")
    assert finetune.model.init_from == pretrain.output_dir


def test_codefuse_hyperparameters():
    pretrain = load_recipe(RECIPES / "codefuse-vlm-14b/pretrain.yaml")
    finetune = load_recipe(RECIPES / "codefuse-vlm-14b/finetune.yaml")
    assert pretrain.model.vision == {"encoder": "qwen_vl", "path": "Qwen/Qwen-VL"}
    assert pretrain.model.projector["type"] == "cross_attn" and pretrain.model.projector["num_queries"] == 256
    assert pretrain.training["learning_rate"] == 1e-4 and pretrain.training["adam_beta2"] == 0.95
    assert global_batch(pretrain, 64) == 512 and global_batch(finetune, 32) == 128  # the seed's 8 and 4 nodes
    assert (finetune.lora.r, finetune.lora.alpha) == (16, 64)
    assert pretrain.template == finetune.template == "chatml"
    assert finetune.model.init_from == pretrain.output_dir


@pytest.mark.parametrize("stage", ["pretrain", "finetune"])
def test_codefuse_data_is_the_mixture_of_data_yaml(stage):
    mixture = yaml.safe_load((RECIPES / "codefuse-vlm-14b/data.yaml").read_text())["data"]
    recipe = yaml.safe_load((RECIPES / f"codefuse-vlm-14b/{stage}.yaml").read_text())
    assert recipe["data"] == mixture


def test_finetune_plans_from_the_pretrain_recipe_it_follows():
    result = plan(RECIPES / "codefuse-vlm-14b/finetune.yaml", num_gpus=32)
    assert "codefuse-vlm-14b/pretrain.yaml" in result["sources"]["init_from"]
    assert result["recipe_strategy"] == "zero2"
    # LoRA r=16 on each layer's q, k, v, o (5120 -> 5120) and gate, up, down (5120 <-> 13696), 40 layers.
    per_layer = 16 * ((5120 + 5120) * 4 + (5120 + 13696) * 3)
    assert result["parameters"]["language_model"]["instruct"] == 40 * per_layer
    assert result["batch"]["global"] == 128


def test_llava_finetune_uses_zero3_and_trains_the_llm():
    result = plan(RECIPES / "llava-1.5-7b/finetune.yaml", num_gpus=8)
    assert result["recipe_strategy"] == "zero3"
    assert result["trainable_parameters"] == (
        result["parameters"]["projector"]["total"] + result["parameters"]["language_model"]["total"]
    )


def test_unknown_model_name_lists_the_known_ones():
    with pytest.raises(PlanError) as err:
        plan(RECIPES / "llava-1.5-7b/pretrain.yaml", overrides=["model.llm=acme/no-such-llm"])
    message = str(err.value)
    assert "acme/no-such-llm" in message
    for known in (
        "lmsys/vicuna-7b-v1.5",
        "Qwen/Qwen-14B",
        "openai/clip-vit-large-patch14-336",
        "Qwen/Qwen-VL",
    ):
        assert known in message


def test_init_from_without_config_or_previous_stage_is_an_error(write_recipe):
    path = write_recipe(model={"init_from": "out/nowhere"})
    with pytest.raises(PlanError, match="out/nowhere"):
        plan(path)


def test_init_from_a_saved_folder_reads_its_config(write_recipe, tmp_path):
    from fusevlm.plan import build_meta_model, model_config
    from fusevlm.train.recipe import load_recipe as load

    config, _ = model_config(load(write_recipe()))
    config.save_pretrained(tmp_path / "stage1")
    result = plan(write_recipe(model={"init_from": str(tmp_path / "stage1")}), num_gpus=1)
    assert result["parameters"]["projector"]["total"] == 416
    assert result["total_parameters"] == sum(p.numel() for p in build_meta_model(config).parameters())


def test_command_line(capsys, write_recipe):
    assert main([str(RECIPES / "llava-1.5-7b/pretrain.yaml"), "--gpus", "8"]) == 0
    out = capsys.readouterr().out
    assert "image tokens per image: 576" in out and "ZeRO-2*" in out
    assert main([str(write_recipe()), "--json"]) == 0
    assert '"total_parameters": 12600' in capsys.readouterr().out
    assert main([str(RECIPES / "llava-1.5-7b/pretrain.yaml"), "model.llm=acme/x"]) == 2
    assert "known:" in capsys.readouterr().err
