#!/usr/bin/env bash
# Training throughput on an NVIDIA H100/H200 (issue 3): the deberta-v3-small architecture, the real sample repeated
# to ROWS rows (default 20,000) at max length 512, bf16 autocast + fused AdamW, STEPS timed steps per mode (default
# 150): length-grouped batches against fixed 512 padding in the same run (eager), then grouped + torch.compile.
# Reference: eager bf16 at fixed 512, batch 32: 437 sequences/s on an H200 (../shared/reference/GPU.md); goal >= 1.4x.
# Budget: under 5 minutes at the defaults; benchmarks/gpu_check.sh runs STEPS=60 in under 100 s.
#
# The GPU machine gets a copy of this repository only, so ../shared must travel inside it: copy what is needed into
# an ignored folder first (here: .carry/shared) and name it in the device tool's `carry`:
#   echo /.carry/ >> .git/info/exclude; mkdir -p .carry && cp -r ../shared/models ../shared/data .carry/shared/
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${ARENA_SHARED:-.carry/shared}
ROWS=${ROWS:-20000}
STEPS=${STEPS:-150}
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
run() {
  timeout 150 python3 -m arena.bench.train_speed --config "$SHARED/models/deberta-v3/configs/deberta-v3-small.json" \
    --tokenizer "$SHARED/models/deberta-v3/tokenizer" --data "$SHARED/data/arena/lmsys_kaggle/train_sample.csv" \
    --rows "$ROWS" --max-length 512 --batch-size 32 "$@"
}
run --modes padded,grouped --max-steps "$STEPS"
run --modes grouped --max-steps "$STEPS" --compile
