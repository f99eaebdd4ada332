#!/usr/bin/env bash
# The pretrain stage over several machines; run on every node with its own NODE_RANK:
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 NPROC=8 bash scripts/pretrain_multinode.sh [key=value ...]
: "${NNODES:?set NNODES (number of machines)}"
RECIPE=${RECIPE:-recipes/examples/pretrain.yaml} exec bash "$(dirname "$0")/launch.sh" "$@"
