"""Run ``fusevlm train`` on a recipe and SIGKILL this very process in the middle of writing one checkpoint.

    python kill_driver.py RECIPE.yaml POINT STEP

POINT is where the save of ``checkpoint-STEP`` dies: ``weights`` (half of model.safetensors written), ``optimizer``
(half of optimizer.pt written) or ``trainer_state`` (half of trainer_state.json written, the file written last).
The kill is a real SIGKILL: no handler, no cleanup, as when a job is preempted or the OOM killer strikes.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path


def die_after_half(path: str, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data[: len(data) // 2])
        handle.flush()
        os.fsync(handle.fileno())
    os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    recipe_path, point, step = sys.argv[1], sys.argv[2], int(sys.argv[3])
    target = f"checkpoint-{step}"

    import torch
    import transformers.modeling_utils as modeling_utils
    from safetensors.torch import save as safetensors_bytes
    from transformers import Trainer
    from transformers.trainer_callback import TrainerState

    if point == "weights":
        real = modeling_utils.safe_save_file

        def save_file(tensors, filename, metadata=None):
            if target in str(filename):
                die_after_half(str(filename), safetensors_bytes(tensors, metadata=metadata))
            return real(tensors, filename, metadata=metadata)

        modeling_utils.safe_save_file = save_file
    elif point == "optimizer":
        real_opt = Trainer._save_optimizer_and_scheduler

        def save_optimizer(self, output_dir):
            if Path(output_dir).name == target:
                import io

                buffer = io.BytesIO()
                torch.save(self.optimizer.state_dict(), buffer)
                die_after_half(os.path.join(output_dir, "optimizer.pt"), buffer.getvalue())
            return real_opt(self, output_dir)

        Trainer._save_optimizer_and_scheduler = save_optimizer
    elif point == "trainer_state":
        real_state = TrainerState.save_to_json

        def save_state(self, json_path):
            if Path(json_path).parent.name == target:
                import dataclasses
                import json

                text = json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"
                die_after_half(json_path, text.encode())
            return real_state(self, json_path)

        TrainerState.save_to_json = save_state
    else:
        raise SystemExit(f"unknown kill point {point!r}")

    from fusevlm.cli import main as cli_main

    raise SystemExit(cli_main(["train", recipe_path]))


if __name__ == "__main__":
    main()
