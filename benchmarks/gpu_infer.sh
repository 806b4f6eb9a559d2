#!/usr/bin/env bash
# End-to-end scoring on an NVIDIA H100/H200 (issue 5): ROWS real rows (default 8,000: the real sample repeated, so
# the real length mix), the deberta-v3-small architecture (random weights: speed does not depend on them), max length
# 512, encode + model + write, for the notebook loop in fp32, torch fp16 sorted, torch fp16 sorted + torch.compile
# (dynamic shapes). Goals: >= 4,000 rows/s end to end for the best variant and >= 5x the notebook loop.
#
# Each cell is its own arena-bench run under its own cap (CELL_CAP s), so a cut cell loses only its own numbers;
# benchmarks/gpu_bench_merge.py then writes $OUT/bench.md + bench.json from the cells that finished. The model lives
# in $WORK (never in $OUT, whose files are what comes back from the device).
# Budget, estimated from ../shared/reference/GPU.md (H200, small, 64 x 512: fp32 58 ms, fp16 42 ms; compile with
# dynamic=True ~40 s once) for the 6,000 rows gpu_check.sh asks for: notebook fp32 ~2 x 12 s, fp16 sorted ~2 x 5 s,
# compile ~40 s + 2 x 4 s, plus ~10 s start-up per cell and ~15 s for the random model: about 2 minutes;
# gpu_check.sh gives it 140 s and each cell 60 s.
#
# Knobs (the CPU dry run in tests/test_gpu_check.py sets them small): ARENA_SHARED (models/ and data/ as in
# ../shared), ROWS, CELLS, CELL_CAP, MAX_LENGTH, SCORING_CONFIG (a model config.json), ENCODE_WORKERS, OUT, WORK, PY.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${ARENA_SHARED:-.carry/shared}
OUT=${OUT:-runs/gpu}
WORK=${WORK:-runs/gpu-work}
ROWS=${ROWS:-8000}
MAX_LENGTH=${MAX_LENGTH:-512}
CELL_CAP=${CELL_CAP:-60}
CONFIG=${SCORING_CONFIG:-$SHARED/models/deberta-v3/configs/deberta-v3-small.json}
CELLS=${CELLS:-torch:fp32/notebook,torch:fp16/sorted,torch.compile:fp16/sorted}
DATA="$SHARED/data/arena/lmsys_kaggle/train_sample.csv"
PY=${PY:-python3}
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
mkdir -p "$OUT" "$WORK"
TITLE="GPU: $(basename "$CONFIG" .json) architecture, $ROWS real rows, max length $MAX_LENGTH"
"$PY" -m arena.train.cli --data "$DATA" --model "$CONFIG" --random-init \
  --tokenizer "$SHARED/models/deberta-v3/tokenizer" --max-steps 0 --head hf --max-length "$MAX_LENGTH" \
  --no-calibrate --overwrite --output "$WORK/model"
status=0
for cell in ${CELLS//,/ }; do
  folder="$WORK/cells/${cell//[:\/]/_}"
  echo "--- cell $cell (cap ${CELL_CAP}s)"
  timeout --kill-after=5 "$CELL_CAP" "$PY" -m arena.bench.cli --model "$WORK/model" --data "$DATA" --rows "$ROWS" \
    --cells "$cell" --baseline "$cell" --repeats 1 --warmup 1 --encode-workers "${ENCODE_WORKERS:-8}" --out "$folder" \
    --title "$TITLE" || { rc=$?; echo "--- cell $cell: exit $rc"; [ "$status" -ne 0 ] || status=$rc; }
done
"$PY" benchmarks/gpu_bench_merge.py "$WORK/cells" "$OUT" "$CELLS" "$TITLE" || [ "$status" -ne 0 ] || status=$?
exit "$status"
