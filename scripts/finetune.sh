#!/usr/bin/env bash
# The finetune stage on one machine (NPROC processes): RECIPE=... NPROC=8 bash scripts/finetune.sh [key=value ...]
RECIPE=${RECIPE:-recipes/examples/finetune.yaml} exec bash "$(dirname "$0")/launch.sh" "$@"
