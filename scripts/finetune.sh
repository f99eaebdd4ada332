#!/usr/bin/env bash
# Visual-instruction stage (projector + LLM, full or LoRA) on one machine, one process per GPU.
#   RECIPE=recipes/examples/finetune.yaml NPROC=8 bash scripts/finetune.sh [key=value overrides...]
set -euo pipefail
RECIPE=${RECIPE:-recipes/examples/finetune.yaml}
NPROC=${NPROC:-$(python -c "import torch; print(max(torch.cuda.device_count(), 1))")}
exec torchrun --standalone --nproc_per_node "$NPROC" -m fusevlm.cli train "$RECIPE" "$@"
