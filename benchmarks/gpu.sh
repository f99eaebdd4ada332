#!/usr/bin/env bash
# The GPU benchmarks in one command, at a ~0.5B config (benchmarks/common.py: "0.5b"), in bf16:
#   the training step against transformers' Llava (sdpa, and flash-attention-2 when flash-attn is installed),
#   batched generation, packing vs padding, and MFU against the GPU's own bf16 matmul rate.
# Each writes its JSON into benchmarks/results/ (*.cuda.json, with the GPU's name, torch and CUDA versions and the
# date); the README's table is then rebuilt from all results with `python benchmarks/report.py --update README.md`.
#   bash benchmarks/gpu.sh            # CONFIG=0.5b by default; QUICK=1 for a smoke run; PYTHON=... to pick one
# On a machine without a CUDA GPU it says so and exits 0 without running anything.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python}
if ! "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "benchmarks/gpu.sh needs a CUDA GPU: torch.cuda.is_available() is False on this machine, so nothing was run."
  exit 0
fi
CONFIG=${CONFIG:-0.5b}
QUICK_FLAG=()
if [ -n "${QUICK:-}" ]; then QUICK_FLAG=(--quick); fi
"$PYTHON" -c "import torch; print('GPU:', torch.cuda.get_device_name(), '| torch', torch.__version__, '| CUDA', torch.version.cuda)"

ATTNS=(sdpa)
if "$PYTHON" -c "import sys; from transformers.utils import is_flash_attn_2_available as ok; sys.exit(0 if ok() else 1)"; then
  ATTNS+=(flash_attention_2)
else
  echo "flash-attn is not installed: the flash_attention_2 training step is skipped"
fi
COMMON=(--device cuda --dtype bf16)

for attn in "${ATTNS[@]}"; do
  "$PYTHON" train_step.py --configs "$CONFIG" "${COMMON[@]}" --attn "$attn" "${QUICK_FLAG[@]}"
done
"$PYTHON" generation.py --configs "$CONFIG" "${COMMON[@]}" --attn sdpa "${QUICK_FLAG[@]}"
# packed rows need an attention that keeps samples apart: flash-attention-2 (varlen) where installed, else sdpa
"$PYTHON" packing.py --config "$CONFIG" --max-length 2048 --batch 16 "${COMMON[@]}" --attn "${ATTNS[-1]}" "${QUICK_FLAG[@]}"
# FlopCounterMode counts sdpa's kernels, not flash-attn's: MFU is measured with sdpa
"$PYTHON" utilisation.py --configs "$CONFIG" "${COMMON[@]}" --attn sdpa "${QUICK_FLAG[@]}"
"$PYTHON" report.py
