#!/usr/bin/env bash
# The one device check of the GPU half (issues 13, 23 and 26), sized to end inside 9 minutes 20 s on one H100/H200: the
# caps below add up to 490 s (environment 15, wheels 30, tests 110, scoring 140, training 105, attention 90; a step
# that ignores the cut is killed 10 s later), and every result is written as it comes, so a cut step still returns
# what it measured:
#   1. the gpu- and tensorrt-marked tests: torch fp16/bf16/torch.compile against fp32 on CUDA, ONNX Runtime CUDA
#      (fp32 and the FP16 graph TensorRT builds from) against torch fp32 when an onnxruntime-gpu wheel was carried,
#      --devices cuda:0,cuda:0 against one device on 200 real rows, and TensorRT build/run/parity when TensorRT is
#      importable (it is not installable on these machines, so those skip with the reason printed). Every
#      comparison is against a tiny model whose logits on real rows spread over several units (tests/conftest.py).
#   2. benchmarks/gpu_infer.sh: 6,000 real rows end to end, notebook fp32 vs torch fp16 sorted (+ compile), one
#      arena-bench run per cell under a 60 s cap each (estimated 40, 20 and 60 s on an H100).
#   3. benchmarks/gpu_train.sh at 40 timed steps per mode on 3,000 real rows: eager padded/grouped (cap 40 s,
#      estimated 20 s), then grouped + torch.compile(dynamic=True) (cap 65 s, estimated 40-60 s of compiling).
#   4. benchmarks/gpu_attention.py: eager vs disentangled-flash (padded) vs flash + packed batches, DeBERTa-v3-small
#      architecture, fp16, 1,500 real rows at 512 and at 1,024 tokens, parity (max |logit diff| vs eager against
#      the logits' spread) and model-only rows/s; only where disentangled-flash imports (its wheel travels in .whl/,
#      below), else one line says it was skipped. No cell starts after 65 s.
# Everything lands in $OUT (at most 8 files come back from the device): gpu_check.log (all output, the environment
# first), gpu_tests.txt (pytest's summary), bench.md/json/html (scoring), train.txt, attention.txt, summary.json (one
# entry per step: exit status, seconds, cap; rewritten after every step). A failing step does not stop the later
# ones; the exit status is the first failure's (124: a step was cut at its cap).
#
# Data: the GPU machine gets a copy of this repository only, not ../shared. Copy it into the ignored .carry/ once:
#   bash benchmarks/gpu_check.sh prepare          (models/deberta-v3 and data/arena from ../shared, about 7 MB, and
#                                                  the disentangled-flash wheel into .whl/, 120 kB, from PyPI)
# optional, ONNX Runtime CUDA: put the onnxruntime-gpu wheel in .whl/ (see /work/.library/device/README.md). A call
#   carries at most 64 MiB and the wheel is larger, so split it:
#   xz -c onnxruntime_gpu-*.whl | split -b 60m - .whl/onnxruntime_gpu-VERSION-TAGS.whl.xz.part-
#   and send the parts in earlier calls on the same warm machine, one or two per call, each with the command
#   "mkdir -p /tmp/wheels && cp .whl/* /tmp/wheels/"; this script joins parts found in .whl/ and /tmp/wheels/ and
#   installs every wheel there.
# Run: device tool, command "bash benchmarks/gpu_check.sh", carry [".carry", ".whl"], timeout_s 590.
# Dry run on a CPU (tests/test_gpu_check.py): a fake nvidia-smi on PATH and small sizes through the knobs of each
# step: INFER_ROWS, INFER_CELLS, CELL_CAP, SCORING_CONFIG, MAX_LENGTH, ENCODE_WORKERS, BATCH_SIZE, TRAIN_ROWS,
# TRAIN_STEPS, TRAIN_COMPILE, TEST_FILES, ATTENTION_ROWS, ATTENTION_LENGTHS, ATTENTION_DEVICE, ATTENTION_PRECISION,
# the caps CAP_TESTS, CAP_SCORING, CAP_TRAINING, CAP_ATTENTION, TRAIN_RUN_CAP (the eager training run's), and
# WHEELS / SITE (where
# wheels are joined and installed; /tmp/wheels and /tmp/site on the device).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
if [ "${1:-}" = prepare ]; then
  src=${ARENA_SHARED:-../shared}
  mkdir -p .carry/shared/models .carry/shared/data
  cp -r "$src/models/deberta-v3" .carry/shared/models/ && cp -r "$src/data/arena" .carry/shared/data/ || exit 1
  du -sh .carry
  ls .whl/disentangled_flash-*.whl >/dev/null 2>&1 || "${PY:-python3}" -m pip download -q --no-deps -d .whl \
    "disentangled-flash==1.1.1" || echo "could not download the disentangled-flash wheel: the attention step will skip"
  exit 0
fi
OUT=${OUT:-runs/gpu-check}
WORK=${WORK:-runs/gpu-check-work}
mkdir -p "$OUT" "$WORK"
OUT=$(cd "$OUT" && pwd) WORK=$(cd "$WORK" && pwd)
if [ -z "${ARENA_SHARED:-}" ]; then
  ARENA_SHARED=$PWD/.carry/shared
  [ -d "$ARENA_SHARED" ] || ARENA_SHARED=$(cd .. && pwd)/shared  # a checkout beside ../shared (not the device)
fi
export ARENA_SHARED
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY=${PY:-python3}
STATUS=0
SUMMARY=()
step() {  # step NAME CAP_SECONDS FUNCTION: run under a time cap (the whole process group), record exit and seconds
  local name=$1 cap=$2 t0 rc
  t0=$(date +%s)
  echo "=== $name (cap ${cap}s) $(date -u +%H:%M:%S)"
  timeout --kill-after=10 "$cap" bash -c "$3"
  rc=$?
  echo "=== $name: exit $rc after $(($(date +%s) - t0)) s"
  SUMMARY+=("{\"step\": \"$name\", \"exit\": $rc, \"seconds\": $(($(date +%s) - t0)), \"cap\": $cap}")
  if [ "$rc" -ne 0 ] && [ "$STATUS" -eq 0 ]; then STATUS=$rc; fi
  (IFS=,; printf '[%s]\n' "${SUMMARY[*]}") > "$OUT/summary.json"
}

# shellcheck disable=SC2329
environment() {
  nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv,noheader
  "$PY" - <<'PYEOF'
import importlib.metadata as md, platform
import torch
print("python", platform.python_version(), "| torch", torch.__version__, "cuda", torch.version.cuda,
      "| GPU", torch.cuda.get_device_name() if torch.cuda.is_available() else None)
for pkg in ("transformers", "triton", "onnx", "onnxruntime", "onnxruntime-gpu", "tensorrt", "disentangled-flash",
            "hypothesis", "pytest-timeout"):
    try:
        print(pkg, md.version(pkg))
    except md.PackageNotFoundError:
        print(pkg, "not installed")
import onnxruntime
print("onnxruntime providers:", onnxruntime.get_available_providers())
from arena.machine.gpu import tensorrt_available
print("tensorrt usable:", tensorrt_available())
PYEOF
}

# shellcheck disable=SC2329  # the step functions run through `bash -c` under a time cap
carried_wheels() {  # join xz parts, then install every carried wheel into $SITE (first on PYTHONPATH)
  mkdir -p "$WHEELS"
  if [ -d .whl ]; then cp .whl/* "$WHEELS"/ 2>/dev/null; fi
  local first parts joined
  for first in "$WHEELS"/*.whl.xz.part-aa; do
    [ -e "$first" ] || continue
    joined=${first%.xz.part-aa}
    parts=("${first%-aa}"-*)
    echo "joining ${#parts[@]} parts into $joined"
    cat "${parts[@]}" | xz -d > "$joined" || return 1
  done
  if ! ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    echo "no wheels carried: the ONNX Runtime CUDA tests will skip"
    return 0
  fi
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
    "$WHEELS"/*.whl
}

# shellcheck disable=SC2329
gpu_tests() {
  local timeout_flag=()
  "$PY" -c "import pytest_timeout" 2>/dev/null && timeout_flag=(--timeout 90)
  # shellcheck disable=SC2086  # TEST_FILES is a list of paths
  "$PY" -m pytest -q -p no:cacheprovider -m "gpu or tensorrt" -rA "${timeout_flag[@]}" $TEST_FILES \
    2>&1 | tee "$OUT/gpu_tests.txt"
  return "${PIPESTATUS[0]}"
}

# shellcheck disable=SC2329
scoring() {
  OUT="$OUT" WORK="$WORK/infer" ROWS="$INFER_ROWS" CELLS="$INFER_CELLS" CELL_CAP="$CELL_CAP" \
    bash benchmarks/gpu_infer.sh
}

# shellcheck disable=SC2329
training() {
  ROWS="$TRAIN_ROWS" STEPS="$TRAIN_STEPS" COMPILE="$TRAIN_COMPILE" RUN_CAP="$TRAIN_RUN_CAP" \
    COMPILE_CAP=$((CAP_TRAINING - TRAIN_RUN_CAP - 5)) \
    TRAIN_CONFIG="${SCORING_CONFIG:-$ARENA_SHARED/models/deberta-v3/configs/deberta-v3-small.json}" \
    bash benchmarks/gpu_train.sh 2>&1 | tee "$OUT/train.txt"
  return "${PIPESTATUS[0]}"
}

# shellcheck disable=SC2329
attention() {
  "$PY" benchmarks/gpu_attention.py --config "${SCORING_CONFIG:-$ARENA_SHARED/models/deberta-v3/configs/deberta-v3-small.json}" \
    --tokenizer "$ARENA_SHARED/models/deberta-v3/tokenizer" --data "$ARENA_SHARED/data/arena/lmsys_kaggle/train_sample.csv" \
    --rows "$ATTENTION_ROWS" --lengths "$ATTENTION_LENGTHS" --device "$ATTENTION_DEVICE" \
    --precision "$ATTENTION_PRECISION" --budget-s $((CAP_ATTENTION - 25)) 2>&1 | tee "$OUT/attention.txt"
  return "${PIPESTATUS[0]}"
}

main() {
  if [ ! -f "$ARENA_SHARED/data/arena/lmsys_kaggle/train_sample.csv" ]; then
    echo "ARENA_SHARED=$ARENA_SHARED holds no real data: run 'bash benchmarks/gpu_check.sh prepare' here and" \
      "carry .carry (see the top of this script)"
    return 2
  fi
  export OUT WORK PY WHEELS=${WHEELS:-/tmp/wheels} SITE=${SITE:-/tmp/site}
  export TEST_FILES=${TEST_FILES:-tests/test_precision.py tests/test_devices.py tests/test_tensorrt.py \
tests/test_robustness.py tests/test_attention.py}
  export INFER_ROWS=${INFER_ROWS:-6000} INFER_CELLS=${INFER_CELLS:-torch:fp32/notebook,torch:fp16/sorted,torch.compile:fp16/sorted}
  export CELL_CAP=${CELL_CAP:-60} TRAIN_ROWS=${TRAIN_ROWS:-3000} TRAIN_STEPS=${TRAIN_STEPS:-40}
  export TRAIN_COMPILE=${TRAIN_COMPILE:-1} CAP_TRAINING=${CAP_TRAINING:-105} TRAIN_RUN_CAP=${TRAIN_RUN_CAP:-40}
  export ATTENTION_ROWS=${ATTENTION_ROWS:-1500} ATTENTION_LENGTHS=${ATTENTION_LENGTHS:-512,1024}
  export ATTENTION_DEVICE=${ATTENTION_DEVICE:-cuda} ATTENTION_PRECISION=${ATTENTION_PRECISION:-fp16}
  export CAP_ATTENTION=${CAP_ATTENTION:-90}
  export -f environment carried_wheels gpu_tests scoring training attention
  echo "data: $ARENA_SHARED"
  timeout 15 bash -c environment 2>&1
  step wheels 30 carried_wheels
  if [ -d "$SITE" ]; then export PYTHONPATH=$SITE:$PYTHONPATH; fi
  step gpu-tests "${CAP_TESTS:-110}" gpu_tests
  step scoring "${CAP_SCORING:-140}" scoring
  "$PY" benchmarks/gpu_bench_merge.py "$WORK/infer/cells" "$OUT" "$INFER_CELLS" "GPU scoring (cells that finished)" \
    >/dev/null 2>&1 || true  # bench.md/json from the cells that finished, also when the step was cut
  step training "$CAP_TRAINING" training
  step attention "$CAP_ATTENTION" attention
  cat "$OUT/summary.json"
  return "$STATUS"
}

main 2>&1 | tee -a "$OUT/gpu_check.log"
exit "${PIPESTATUS[0]}"
