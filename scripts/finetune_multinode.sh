#!/usr/bin/env bash
# The finetune stage over several machines. Run the same command on every node, with its own NODE_RANK:
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 NPROC=8 bash scripts/finetune_multinode.sh [key=value overrides...]
set -euo pipefail
RECIPE=${RECIPE:-recipes/examples/finetune.yaml}
: "${NNODES:?set NNODES (number of machines)}"
: "${NODE_RANK:?set NODE_RANK (0 .. NNODES-1)}"
: "${MASTER_ADDR:?set MASTER_ADDR (address of node 0)}"
MASTER_PORT=${MASTER_PORT:-29500}
NPROC=${NPROC:-$(python -c "import torch; print(max(torch.cuda.device_count(), 1))")}
exec torchrun --nnodes "$NNODES" --node_rank "$NODE_RANK" --master_addr "$MASTER_ADDR" \
  --master_port "$MASTER_PORT" --nproc_per_node "$NPROC" -m fusevlm.cli train "$RECIPE" "$@"
