"""Run by torchrun in tests: train one recipe, then record what this rank holds, for the test to compare."""

import hashlib
import json
import os
import sys
from pathlib import Path

import torch.distributed as dist

from fusevlm.train.recipe import load_recipe
from fusevlm.train.run import train


def main() -> int:
    from transformers import TrainerCallback

    fingerprints = {}

    class Fingerprint(TrainerCallback):
        def on_train_end(self, args, state, control, model=None, **kwargs):
            digest = hashlib.sha256()
            for name, tensor in sorted(model.state_dict().items()):
                digest.update(name.encode())
                digest.update(tensor.detach().float().cpu().numpy().tobytes())
            fingerprints["weights"] = digest.hexdigest()
            fingerprints["losses"] = [h["loss"] for h in state.log_history if "loss" in h]

    from fusevlm.train.trainer import VLMTrainer

    sample_ids = []
    compute_loss = VLMTrainer.compute_loss

    def recording(self, model, inputs, *args, **kwargs):  # a streamed batch names its samples
        if "sample_ids" in inputs:
            sample_ids.append(list(inputs["sample_ids"]))
        return compute_loss(self, model, inputs, *args, **kwargs)

    VLMTrainer.compute_loss = recording
    recipe = load_recipe(sys.argv[1], sys.argv[2:])
    output = train(recipe, callbacks=[Fingerprint()])
    fingerprints["sample_ids"] = sample_ids
    rank = int(os.environ.get("RANK", 0))
    info = {"rank": rank, "world_size": int(os.environ.get("WORLD_SIZE", 1)), **fingerprints}
    (Path(output) / f"rank{rank}.json").write_text(json.dumps(info))
    if dist.is_initialized():
        dist.destroy_process_group()  # avoids a rare abort at exit (see NOTES)
    return 0


if __name__ == "__main__":
    sys.exit(main())
