#!/usr/bin/env bash
# Alignment stage (train the projector) on one machine, one process per GPU.
#   RECIPE=recipes/examples/pretrain.yaml NPROC=8 bash scripts/pretrain.sh [key=value overrides...]
set -euo pipefail
RECIPE=${RECIPE:-recipes/examples/pretrain.yaml}
NPROC=${NPROC:-$(python -c "import torch; print(max(torch.cuda.device_count(), 1))")}
exec torchrun --standalone --nproc_per_node "$NPROC" -m fusevlm.cli train "$RECIPE" "$@"
