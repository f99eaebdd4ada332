"""Distributed training on existing engines, 2 CPU processes on gloo: torchrun (DDP) and DeepSpeed ZeRO-2/3."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from helpers import make_dataset, recipe

from fusevlm import FuseVLMForConditionalGeneration

HERE = Path(__file__).parent
REPO = HERE.parent.parent


def torchrun(tmp_path, values, timeout=600):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(values))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "DS_ACCELERATOR": "cpu"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(HERE / "dist_train.py"), str(path)],
        capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    out = Path(values["output_dir"])
    return out, [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


@pytest.fixture()
def base(checkpoints, tmp_path):
    data = make_dataset(tmp_path / "data", 16)
    entry = [{"path": str(data), "image_root": str(tmp_path / "data" / "images")}]
    model = {"vision": str(checkpoints("vision", "clip", hidden=64)), "projector": "mlp2x_gelu",
             "llm": str(checkpoints("llm", "llama"))}
    return recipe(tmp_path, entry, model=model, per_device_train_batch_size=2, max_steps=4, disable_tqdm=True)


def test_torchrun_ddp_trains_and_both_ranks_agree(base, tmp_path):
    out, ranks = torchrun(tmp_path, {**base, "stage": "instruct", "template": "chatml"})
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert ranks[0]["weights"] == ranks[1]["weights"]
    assert len(ranks[0]["losses"]) == 4
    FuseVLMForConditionalGeneration.from_pretrained(out)


needs_deepspeed = pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                                     reason="deepspeed is not installed (pip install -e '.[deepspeed]')")


@needs_deepspeed
@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_zero_trains_and_saves_a_full_model_that_reloads(base, tmp_path, stage):
    config = REPO / "recipes" / "deepspeed" / f"zero{stage}.json"
    out, ranks = torchrun(tmp_path, {**base, "stage": "instruct", "template": "chatml", "deepspeed": str(config)})
    assert all(len(r["losses"]) == 4 for r in ranks)
    reloaded = FuseVLMForConditionalGeneration.from_pretrained(out)
    assert all(p.numel() > 0 for p in reloaded.parameters())  # gathered, not ZeRO-3 shards
    from fusevlm import build_vlm

    initial, _ = build_vlm(base["model"]["vision"], base["model"]["projector"], base["model"]["llm"])
    before, after = initial.state_dict(), reloaded.state_dict()
    changed = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"projector", "language_model"}


def test_the_shipped_launch_script_runs_a_stage_under_torchrun(base, tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({**base, "max_steps": 2}))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RECIPE": str(path), "NPROC": "2"}
    result = subprocess.run(["bash", str(REPO / "scripts" / "pretrain.sh"), f"output_dir={tmp_path / 'script'}"],
                            capture_output=True, text=True, timeout=600, env=env, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    model = FuseVLMForConditionalGeneration.from_pretrained(tmp_path / "script")
    assert model.config.projector_config["type"] == "mlp2x_gelu"
    assert (tmp_path / "script" / "projector.safetensors").exists()


def test_a_streamed_run_resumed_on_two_ranks_sees_what_an_uninterrupted_one_does(checkpoints, tmp_path):
    from fusevlm.data.streaming import write_webdataset

    data = make_dataset(tmp_path / "data", 32)
    shards = tmp_path / "shards"
    write_webdataset(data, shards, image_root=tmp_path / "data" / "images", shard_size=4)  # 8 shards: 2 ranks x 2 workers x 2
    model = {"vision": str(checkpoints("vision", "clip", hidden=64)), "projector": "mlp2x_gelu",
             "llm": str(checkpoints("llm", "llama"))}
    values = recipe(tmp_path, [{"path": str(shards), "streaming": True}], model=model, per_device_train_batch_size=2,
                    max_steps=4, save_strategy="steps", save_steps=2, dataloader_num_workers=2, disable_tqdm=True)
    whole, ranks = torchrun(tmp_path, values)
    seen = [r["sample_ids"] for r in ranks]
    assert [len(steps) for steps in seen] == [4, 4]
    assert not {i for s in seen[0] for i in s} & {i for s in seen[1] for i in s}  # the ranks split the stream
    resumed_values = {**values, "output_dir": str(tmp_path / "resumed"),
                      "resume_from_checkpoint": str(whole / "checkpoint-2")}
    _, resumed = torchrun(tmp_path, resumed_values)
    assert [r["sample_ids"] for r in resumed] == [steps[2:] for steps in seen]
