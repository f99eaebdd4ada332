"""Distributed training on existing engines, 2 CPU processes on gloo, proven against one process.

One torchrun launch trains the same recipe three ways (DDP, DeepSpeed ZeRO-2, ZeRO-3; see dist_train.py), and the
test process trains it once alone at the same global batch. Equal within fp32 tolerance means the ranks really
synchronised: two ranks that never did would each end on their own half of the data. A second launch runs the
shipped launch script, whose result must be the DDP run's, bit for bit.
"""

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
from recorders import ForwardLosses
from safetensors.torch import load_file
from transformers import TrainerCallback

from fusevlm.train.recipe import recipe_from_dict
from fusevlm.train.run import train

HERE = Path(__file__).parent
REPO = HERE.parent.parent
WORLD = 2
PER_DEVICE_BATCH = 2
SAMPLES = 16  # one epoch: 4 steps of a global batch of 4
# fp32: the runs add the same gradients in another order (two half-batches reduced over gloo, or one batch), so the
# weights agree to rounding, not bit for bit; Adam's normalised steps keep the gap at this size over 4 steps.
ATOL = 1e-5

HAVE_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None
ENGINES = ["ddp", "zero2", "zero3"] if HAVE_DEEPSPEED else ["ddp"]
needs_deepspeed = pytest.mark.skipif(not HAVE_DEEPSPEED,
                                     reason="deepspeed is not installed (pip install -e '.[deepspeed]')")


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "DS_ACCELERATOR": "cpu"}


def write_recipe(path: Path, values: dict) -> Path:
    path.write_text(yaml.safe_dump(values))
    return path


@pytest.fixture(scope="module")
def base(checkpoints, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    data = make_dataset(tmp / "data", SAMPLES)
    entry = [{"path": str(data), "image_root": str(tmp / "data" / "images")}]
    model = {"vision": str(checkpoints("vision", "clip", hidden=64)), "projector": "mlp2x_gelu",
             "llm": str(checkpoints("llm", "llama"))}
    values = recipe(tmp, entry, model=model, stage="instruct", template="chatml", max_steps=-1, num_train_epochs=1,
                    per_device_train_batch_size=PER_DEVICE_BATCH, learning_rate=5e-3)
    return tmp, values


class InitialWeights(TrainerCallback):
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.weights = {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def one_process(base):
    """The reference: one process, the global batch (WORLD x the per-device batch) in each step."""
    tmp, values = base
    losses, initial = ForwardLosses(), InitialWeights()
    out = train(recipe_from_dict({**values, "output_dir": str(tmp / "one"),
                                  "per_device_train_batch_size": WORLD * PER_DEVICE_BATCH}),
                callbacks=[losses, initial])
    weights = load_file(out / "model.safetensors")
    # the tolerance means something: training moved the weights by far more than it
    assert max_difference(weights, {k: initial.weights[k] for k in weights}) > 100 * ATOL
    return weights, losses.losses


@pytest.fixture(scope="module")
def runs(base):
    """The DDP, ZeRO-2 and ZeRO-3 runs of one torchrun launch: {engine: (weights, [rank0 record, rank1 record])}."""
    tmp, values = base
    recipes = []
    for engine in ENGINES:
        extra = {} if engine == "ddp" else {"deepspeed": str(REPO / "recipes" / "deepspeed" / f"{engine}.json")}
        recipes.append(write_recipe(tmp / f"{engine}.yaml", {**values, "output_dir": str(tmp / engine), **extra}))
    records = launch(recipes)
    return {engine: (load_file(tmp / engine / "model.safetensors"), records[position])
            for position, engine in enumerate(ENGINES)}


def launch(recipes: list[Path]) -> list[list[dict]]:
    """One torchrun launch training the recipes in turn; each recipe's [rank0 record, rank1 record]."""
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(WORLD),
         str(HERE / "dist_train.py"), *map(str, recipes)],
        capture_output=True, text=True, timeout=900, env=env(), cwd=REPO,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    outputs = [Path(yaml.safe_load(path.read_text())["output_dir"]) for path in recipes]
    return [[json.loads((out / f"rank{r}.json").read_text()) for r in range(WORLD)] for out in outputs]


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.mark.parametrize("engine", ENGINES)
def test_every_rank_ran_in_a_world_of_two_and_the_ranks_split_the_epoch(runs, base, engine):
    _, ranks = runs[engine]
    for record in ranks:
        assert record["env_world_size"] == record["group_world_size"] == record["trainer_world_size"] == WORLD
    seen = [record["sample_ids"] for record in ranks]
    assert all(len(ids) == SAMPLES // WORLD for ids in seen)
    assert not set(seen[0]) & set(seen[1])  # disjoint ...
    assert set(seen[0]) | set(seen[1]) == {f"train-{i}" for i in range(SAMPLES)}  # ... and covering the epoch


def test_ddp_on_two_ranks_equals_one_process_at_the_same_global_batch(runs, one_process):
    weights, ranks = runs["ddp"]
    reference, reference_losses = one_process
    assert max_difference(weights, reference) <= ATOL
    # Each rank's loss is its half's summed token losses over the whole batch's token count (the Trainer gathers
    # it): the two halves add up to the one-process loss of the step.
    assert len(reference_losses) == len(ranks[0]["losses"]) == SAMPLES // (WORLD * PER_DEVICE_BATCH)
    for step, loss in enumerate(reference_losses):
        assert ranks[0]["losses"][step] + ranks[1]["losses"][step] == pytest.approx(loss, abs=1e-6), step


@needs_deepspeed
@pytest.mark.parametrize("engine", ["zero2", "zero3"])
def test_deepspeed_zero_equals_ddp_and_partitions_the_optimizer_state(runs, engine):
    weights, ranks = runs[engine]
    ddp, _ = runs["ddp"]
    assert max_difference(weights, ddp) <= ATOL
    expected = {"zero2": "DeepSpeedZeroOptimizer", "zero3": "DeepSpeedZeroOptimizer_Stage3"}[engine]
    for record in ranks:
        assert record["optimizer"] == expected
        # each rank keeps fp32 master weights and Adam state for its half of the trainable elements only
        half = record["trainable_elements"] / WORLD
        assert half <= record["fp32_partition_elements"] <= half + 64, record


@needs_deepspeed
def test_zero3_really_partitions_the_parameters(runs):
    _, ranks = runs["zero3"]
    for record in ranks:
        zero3 = record["zero3"]
        # all but the small parameters DeepSpeed keeps whole (under stage3_param_persistence_threshold) are sharded
        assert zero3["partitioned_elements"] >= 0.9 * zero3["elements"]
        assert zero3["materialised_partitioned_elements"] == 0  # released between forwards
        half = zero3["partitioned_elements"] / WORLD
        assert half <= zero3["local_partition_elements"] <= half + WORLD * 64  # one slice each (+ padding)


def test_the_shipped_launch_script_runs_the_same_two_rank_training(base, runs):
    """scripts/pretrain.sh (torchrun over `fusevlm train`) on the DDP recipe: the DDP run's weights, bit for bit.
    One process, or two that never synchronised, would end elsewhere (see the one-process test)."""
    tmp, values = base
    environment = {**env(), "RECIPE": str(tmp / "ddp.yaml"), "NPROC": str(WORLD)}
    out = tmp / "script"
    result = subprocess.run(["bash", str(REPO / "scripts" / "pretrain.sh"), f"output_dir={out}"],
                            capture_output=True, text=True, timeout=600, env=environment, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    ddp, _ = runs["ddp"]
    script = load_file(out / "model.safetensors")
    assert script.keys() == ddp.keys()
    assert all(torch.equal(script[k], ddp[k]) for k in ddp)


def test_a_streamed_run_resumed_on_two_ranks_sees_what_an_uninterrupted_one_does(checkpoints, tmp_path):
    from fusevlm.data.streaming import write_webdataset

    data = make_dataset(tmp_path / "data", 32)
    shards = tmp_path / "shards"
    write_webdataset(data, shards, image_root=tmp_path / "data" / "images", shard_size=4)  # 8 shards: 2 ranks x 2 workers x 2
    model = {"vision": str(checkpoints("vision", "clip", hidden=64)), "projector": "mlp2x_gelu",
             "llm": str(checkpoints("llm", "llama"))}
    values = recipe(tmp_path, [{"path": str(shards), "streaming": True}], model=model, per_device_train_batch_size=2,
                    max_steps=4, save_strategy="steps", save_steps=2, dataloader_num_workers=2, disable_tqdm=True)
    whole = write_recipe(tmp_path / "whole.yaml", {**values, "output_dir": str(tmp_path / "whole")})
    resumed = write_recipe(tmp_path / "resumed.yaml", {**values, "output_dir": str(tmp_path / "resumed"),
                                                        "resume_from_checkpoint": str(tmp_path / "whole" / "checkpoint-2")})
    whole_ranks, resumed_ranks = launch([whole, resumed])  # in turn: the resumed run starts from the whole's step 2
    seen = [r["step_sample_ids"] for r in whole_ranks]
    assert [len(steps) for steps in seen] == [4, 4]
    assert not {i for s in seen[0] for i in s} & {i for s in seen[1] for i in s}  # the ranks split the stream
    assert [r["step_sample_ids"] for r in resumed_ranks] == [steps[2:] for steps in seen]
