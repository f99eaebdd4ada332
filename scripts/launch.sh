#!/usr/bin/env bash
# One training stage under torchrun: one process per GPU; several machines when NNODES > 1.
#   RECIPE=recipes/x.yaml [NPROC=8] [NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 MASTER_PORT=29500] \
#     bash scripts/launch.sh [key=value recipe overrides...]
set -euo pipefail
: "${RECIPE:?set RECIPE (a recipe YAML)}"
NPROC=${NPROC:-$(python -c "import torch; print(max(torch.cuda.device_count(), 1))")}
NNODES=${NNODES:-1}
if [ "$NNODES" -gt 1 ]; then
  : "${NODE_RANK:?set NODE_RANK (0 .. NNODES-1) on each machine}"
  : "${MASTER_ADDR:?set MASTER_ADDR (the address of node 0)}"
  RENDEZVOUS=(--nnodes "$NNODES" --node_rank "$NODE_RANK" --master_addr "$MASTER_ADDR" --master_port "${MASTER_PORT:-29500}")
else
  RENDEZVOUS=(--standalone)
fi
exec torchrun "${RENDEZVOUS[@]}" --nproc_per_node "$NPROC" -m fusevlm.cli train "$RECIPE" "$@"
