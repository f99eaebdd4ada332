#!/usr/bin/env bash
# The pretrain stage on one machine (NPROC processes): RECIPE=... NPROC=8 bash scripts/pretrain.sh [key=value ...]
RECIPE=${RECIPE:-recipes/examples/pretrain.yaml} exec bash "$(dirname "$0")/launch.sh" "$@"
