#!/usr/bin/env bash
# End-to-end scoring on an NVIDIA H100/H200 (issue 5): ROWS real rows (default 25,000: the real sample repeated),
# deberta-v3-small architecture (random weights: speed does not depend on them), max length 512, encode + model +
# write, for the notebook loop in fp32, torch fp16 sorted, torch fp16 sorted + torch.compile (dynamic shapes).
# Goals: >= 4,000 rows/s end to end for the best variant and >= 5x the notebook loop, measured in the same run.
# Budget: about 3 minutes at 25,000 rows (benchmarks/gpu_check.sh gives it 165 s). See gpu_check.sh for carrying
# ../shared to the GPU machine (.carry/shared, or ARENA_SHARED).
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${ARENA_SHARED:-.carry/shared}
OUT=${OUT:-runs/gpu}
ROWS=${ROWS:-25000}
CELLS=${CELLS:-torch:fp32/notebook,torch:fp16/sorted,torch.compile:fp16/sorted}
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -m arena.train.cli --model "$SHARED/models/deberta-v3/configs/deberta-v3-small.json" --random-init \
  --tokenizer "$SHARED/models/deberta-v3/tokenizer" --max-steps 0 --head hf --max-length 512 --output runs/gpu-small
python3 -m arena.bench.cli --model runs/gpu-small --data "$SHARED/data/arena/lmsys_kaggle/train_sample.csv" \
  --rows "$ROWS" --cells "$CELLS" --repeats 1 --warmup 1 --encode-workers 8 --out "$OUT" \
  --title "GPU: DeBERTa-v3-small architecture, $ROWS real rows, max length 512"
