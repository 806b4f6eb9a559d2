#!/usr/bin/env bash
# The optimum round trip (issue 18), both directions, with the tiny DeBERTa-v3 model (random weights, real
# tokenizer) on real rows: arena's export loads in optimum's ORTModelForSequenceClassification with arena's logits;
# optimum-cli's export of the same checkpoint is scored by arena-infer like the checkpoint. optimum-onnx pins
# transformers < 4.58, so it gets its own venv ($OPTIMUM_VENV, default .venv-optimum), built here from PyPI with the
# CPU torch wheel (`--venv-only`: build it and stop, as `make install` does). Assumes `make install`. Prints the
# versions and a table; the last line is JSON. A minute or two, plus the venv build the first time.
set -euo pipefail
cd "$(dirname "$0")/.."
B=.venv/bin
VENV=${OPTIMUM_VENV:-.venv-optimum}
TORCH=${TORCH:-torch==2.13.0}   # pinned: an unpinned torch pulls a multi-GB CUDA build
WORK=${WORK:-runs/optimum-roundtrip}
DATA=../shared/data/arena/lmsys_kaggle
TOK=../shared/models/deberta-v3/tokenizer

if ! "$VENV/bin/python" -c "import optimum.onnxruntime" 2>/dev/null; then
  echo "building $VENV (optimum-onnx[onnxruntime], the transformers it requires, $TORCH)" >&2
  python3 -m venv "$VENV"
  if ! { "$VENV/bin/pip" install -q "$TORCH" && "$VENV/bin/pip" install -q "optimum-onnx[onnxruntime]"; }; then
    echo "cannot build the optimum venv at $VENV (needs PyPI); nothing checked" >&2
    exit 3
  fi
fi
if [ "${1:-}" = "--venv-only" ]; then  # make install: the venv tests/test_optimum.py runs in, nothing measured
  exit 0
fi

mkdir -p "$WORK"
$B/python - "$WORK/tiny-config.json" <<'PY'
import json, sys
cfg = json.load(open("../shared/models/deberta-v3/configs/deberta-v3-xsmall.json"))
cfg.update(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, pooler_hidden_size=32)
json.dump(cfg, open(sys.argv[1], "w"))
PY
$B/arena-train --data $DATA/train_sample.csv --model "$WORK/tiny-config.json" --random-init --tokenizer $TOK \
  --max-steps 0 --head hf --max-length 128 --output "$WORK/model" > "$WORK/train.log" 2>&1
# --int8 too: the folder then holds several ONNX files, and optimum must still pick model.onnx
$B/arena-export "$WORK/model" --out "$WORK/export" --int8 --parity-shapes 1x17,7x64,16x128 --overwrite \
  > "$WORK/export.log" 2>&1
$B/python benchmarks/optimum_roundtrip.py arena --export "$WORK/export" --work "$WORK"
# optimum's exporter on the same checkpoint; its tokenizer files as arena-export writes them, so transformers 4 reads
# them (the checkpoint's own tokenizer_config.json is transformers 5's)
rm -rf "$WORK/ckpt-tf4" "$WORK/optimum-export" && mkdir -p "$WORK/ckpt-tf4"
$B/python -c "import sys, shutil; from pathlib import Path; from arena.artifacts import copy_model_files
copy_model_files(Path(sys.argv[1]), Path(sys.argv[2])); shutil.copy2(Path(sys.argv[1], 'model.safetensors'), sys.argv[2])" \
  "$WORK/model" "$WORK/ckpt-tf4"
"$VENV/bin/optimum-cli" export onnx --model "$WORK/ckpt-tf4" --task text-classification "$WORK/optimum-export" \
  > "$WORK/optimum-export.log" 2>&1
rm -f "$WORK/optimum-export/arena.json"   # optimum does not copy it; the foreign half places it for the comparison
# a full arena export from optimum's folder, parity-checked against it (the parity lines go to the log)
$B/arena-export "$WORK/optimum-export" --out "$WORK/from-optimum" --int8 --parity-shapes 1x17,7x64 --overwrite \
  2> "$WORK/from-optimum.log"
grep "parity" "$WORK/from-optimum.log" | sed 's/^INFO arena.export: //'
$B/python benchmarks/optimum_roundtrip.py foreign --checkpoint "$WORK/model" --foreign "$WORK/optimum-export" \
  --work "$WORK"
"$VENV/bin/python" benchmarks/optimum_roundtrip.py optimum --export "$WORK/export" --work "$WORK"
