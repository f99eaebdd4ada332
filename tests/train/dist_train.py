"""Run by torchrun in tests: train each recipe in turn in one process group, and record what this rank did.

    torchrun --nproc_per_node 2 dist_train.py RECIPE.yaml [RECIPE.yaml ...]

For each recipe, ``rank{R}.json`` in its output folder holds: the world size (the environment's, the process
group's and the Trainer's), the ids of the samples this rank fetched from the dataset, the exact loss of each of
its forwards, the ids each of its steps trained on when the batches carry them (streamed data), and what the engine holds after the first step (DeepSpeed's ZeRO stage, the elements of the
optimizer's fp32 partition on this rank, and under ZeRO-3 each parameter's local partition). Several recipes share
one launch because starting two Python processes with torch, transformers and DeepSpeed costs more than training
the tiny model: accelerate's and transformers' DeepSpeed state is reset between runs.
"""

import json
import os
import sys
from pathlib import Path

import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/: the recorders

from recorders import ForwardLosses  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from fusevlm.data.dataset import ConversationDataset  # noqa: E402
from fusevlm.train.recipe import load_recipe  # noqa: E402
from fusevlm.train.run import train  # noqa: E402
from fusevlm.train.trainer import VLMTrainer  # noqa: E402


class EngineState(TrainerCallback):
    """What the training engine holds on this rank after the first optimizer step."""

    def __init__(self) -> None:
        self.state: dict = {}

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        if state.global_step != 1:
            return
        zero = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper around DeepSpeed's optimizer
        params = [p for p in model.parameters()]
        self.state = {
            "trainer_world_size": args.world_size,
            "optimizer": type(zero).__name__,
            "trainable_elements": sum(getattr(p, "ds_numel", p.numel()) for p in params if p.requires_grad),
        }
        if hasattr(zero, "single_partition_of_fp32_groups"):  # ZeRO-1/2: a slice of the fp32 master weights
            self.state["fp32_partition_elements"] = sum(t.numel() for t in zero.single_partition_of_fp32_groups)
        if hasattr(zero, "fp32_partitioned_groups_flat"):  # ZeRO-3
            self.state["fp32_partition_elements"] = sum(t.numel() for t in zero.fp32_partitioned_groups_flat)
        if any(hasattr(p, "ds_id") for p in params):  # ZeRO-3: parameters live as partitions between forwards
            sharded = [p for p in params if not p.ds_persist]
            self.state["zero3"] = {
                "elements": sum(p.ds_numel for p in params),
                "partitioned_elements": sum(p.ds_numel for p in sharded),
                "local_partition_elements": sum(p.ds_tensor.numel() for p in sharded),
                "materialised_partitioned_elements": sum(p.data.numel() for p in sharded),
            }


def reset_engines() -> None:
    """Forget the previous run's accelerate state and DeepSpeed config (the process group stays)."""
    from accelerate.state import AcceleratorState
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    AcceleratorState._reset_state(reset_partial_state=True)
    unset_hf_deepspeed_config()


def run_one(recipe_path: str) -> None:
    fetched: list[str] = []
    stepped: list[list[str]] = []
    original, compute_loss = ConversationDataset.__getitem__, VLMTrainer.compute_loss

    def spy(self, index):  # the samples this rank's dataloader asked for (num_workers=0: in this process)
        fetched.append(self.sample(index)[1]["id"])
        return original(self, index)

    def recording(self, model, inputs, *args, **kwargs):  # a streamed batch names its samples
        if "sample_ids" in inputs:
            stepped.append(list(inputs["sample_ids"]))
        return compute_loss(self, model, inputs, *args, **kwargs)

    losses, engine = ForwardLosses(), EngineState()
    ConversationDataset.__getitem__, VLMTrainer.compute_loss = spy, recording
    try:
        output = train(load_recipe(recipe_path), callbacks=[losses, engine])
    finally:
        ConversationDataset.__getitem__, VLMTrainer.compute_loss = original, compute_loss
    rank = int(os.environ.get("RANK", 0))
    info = {
        "rank": rank,
        "env_world_size": int(os.environ.get("WORLD_SIZE", 1)),
        "group_world_size": dist.get_world_size() if dist.is_initialized() else 1,
        "sample_ids": fetched,
        "step_sample_ids": stepped,
        "losses": losses.losses,
        **engine.state,
    }
    (Path(output) / f"rank{rank}.json").write_text(json.dumps(info))


def main() -> int:
    for position, recipe_path in enumerate(sys.argv[1:]):
        if position:
            reset_engines()
        run_one(recipe_path)
    if dist.is_initialized():
        dist.destroy_process_group()  # avoids a rare abort at exit (see NOTES)
    return 0


if __name__ == "__main__":
    sys.exit(main())
