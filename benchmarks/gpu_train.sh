#!/usr/bin/env bash
# Training throughput on an NVIDIA H100/H200 (issue 3): the deberta-v3-small architecture, the real sample repeated
# to ROWS rows (default 20,000) at max length 512, bf16 autocast + fused AdamW, STEPS timed steps per mode (default
# 150): length-grouped batches against fixed 512 padding in the same run (eager), then grouped + torch.compile
# (dynamic=True: compiled once for every batch shape, not once per shape).
# Reference: eager bf16 at fixed 512, batch 32: 437 sequences/s on an H200 (../shared/reference/GPU.md); goal >= 1.4x.
# Budget: under 5 minutes at the defaults; benchmarks/gpu_check.sh runs ROWS=3000 STEPS=40 (each eager mode
# ~40 x 75 ms, the compiled one ~60 s of compiling): about 100 s.
#
# The GPU machine gets a copy of this repository only: the data travels in .carry/shared (see gpu_check.sh).
# Knobs (small in the CPU dry run): ARENA_SHARED, ROWS, STEPS, MAX_LENGTH, BATCH_SIZE, TRAIN_CONFIG, RUN_CAP (s per
# eager run), COMPILE_CAP (s for the compiled run), COMPILE (0 skips the compiled run), PY.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${ARENA_SHARED:-.carry/shared}
ROWS=${ROWS:-20000}
STEPS=${STEPS:-150}
MAX_LENGTH=${MAX_LENGTH:-512}
BATCH_SIZE=${BATCH_SIZE:-32}
RUN_CAP=${RUN_CAP:-150}
CONFIG=${TRAIN_CONFIG:-$SHARED/models/deberta-v3/configs/deberta-v3-small.json}
PY=${PY:-python3}
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
run() {  # run CAP_SECONDS ARGS...
  local cap=$1
  shift
  timeout --kill-after=5 "$cap" "$PY" -m arena.bench.train_speed --config "$CONFIG" \
    --tokenizer "$SHARED/models/deberta-v3/tokenizer" --data "$SHARED/data/arena/lmsys_kaggle/train_sample.csv" \
    --rows "$ROWS" --max-length "$MAX_LENGTH" --batch-size "$BATCH_SIZE" "$@"
}
status=0
run "$RUN_CAP" --modes padded,grouped --max-steps "$STEPS" || status=$?
if [ "${COMPILE:-1}" != 0 ]; then
  run "${COMPILE_CAP:-$RUN_CAP}" --modes grouped --max-steps "$STEPS" --compile || { rc=$?; [ "$status" -ne 0 ] || status=$rc; }
fi
exit "$status"
