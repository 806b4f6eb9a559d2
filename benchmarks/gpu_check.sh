#!/usr/bin/env bash
# The one device check of the GPU half (issue 13), sized for one H100 in under 8 minutes (the caps below add up to
# 475 s: environment 20, wheels 40, tests 130, scoring 165, training 120):
#   1. the gpu- and tensorrt-marked tests: torch fp16/bf16/torch.compile against fp32 on CUDA, ONNX Runtime CUDA
#      (fp32 and the FP16 graph TensorRT builds from) against torch fp32 when an onnxruntime-gpu wheel was carried,
#      --devices cuda:0,cuda:0 against one device, and TensorRT build/run/parity when TensorRT is importable
#      (its libraries are not installable on these machines, so those skip with the reason printed);
#   2. benchmarks/gpu_infer.sh: 25,000 real rows end to end, notebook fp32 vs torch fp16 sorted (+ compile);
#   3. benchmarks/gpu_train.sh at 60 timed steps per mode on 4,000 real rows.
# Everything lands in $OUT (at most 8 files come back from the device): gpu_check.log (all output), env.txt,
# gpu_tests.txt (pytest's summary), bench.md + bench.json (scoring), train.txt, summary.json (one line per step:
# exit status and seconds). A failing step does not stop the later ones; the exit status is the first failure's.
#
# Prepare here, once (both folders are ignored by git and travel with the device tool's `carry`):
#   echo /.carry/ >> .git/info/exclude; mkdir -p .carry/shared && cp -r ../shared/models ../shared/data .carry/shared/
#   optional, ONNX Runtime CUDA: echo /.whl/ >> .git/info/exclude, then put the onnxruntime-gpu wheel in .whl/
#   (see /work/.library/device/README.md). A call carries at most 64 MiB and the wheel is larger, so split it:
#   xz -c onnxruntime_gpu-*.whl | split -b 60m - .whl/onnxruntime_gpu-VERSION-TAGS.whl.xz.part-
#   and send the parts in earlier calls on the same warm machine, one or two per call, each with the command
#   "mkdir -p /tmp/wheels && cp .whl/* /tmp/wheels/"; this script joins parts found in .whl/ and /tmp/wheels/ and
#   installs every wheel there.
# Run: device tool, command "bash benchmarks/gpu_check.sh", carry [".carry", ".whl"], timeout_s 540.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
OUT=${OUT:-runs/gpu-check}
WORK=${WORK:-runs/gpu-check-work}
mkdir -p "$OUT" "$WORK"
export ARENA_SHARED=${ARENA_SHARED:-$PWD/.carry/shared}
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
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
  SUMMARY+=("{\"step\": \"$name\", \"exit\": $rc, \"seconds\": $(($(date +%s) - t0))}")
  if [ "$rc" -ne 0 ] && [ "$STATUS" -eq 0 ]; then STATUS=$rc; fi
}

# shellcheck disable=SC2329
environment() {
  nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv,noheader
  "$PY" - <<'EOF'
import importlib.metadata as md, platform
import torch
print("python", platform.python_version(), "| torch", torch.__version__, "cuda", torch.version.cuda,
      "| GPU", torch.cuda.get_device_name() if torch.cuda.is_available() else None)
for pkg in ("transformers", "onnx", "onnxruntime", "onnxruntime-gpu", "tensorrt", "hypothesis", "pytest-timeout"):
    try:
        print(pkg, md.version(pkg))
    except md.PackageNotFoundError:
        print(pkg, "not installed")
import onnxruntime
print("onnxruntime providers:", onnxruntime.get_available_providers())
from arena.machine.gpu import tensorrt_available
print("tensorrt usable:", tensorrt_available())
EOF
}

# shellcheck disable=SC2329  # the step functions run through `bash -c` under a time cap
carried_wheels() {  # join xz parts, then install every carried wheel into /tmp/site (first on PYTHONPATH)
  mkdir -p /tmp/wheels
  if [ -d .whl ]; then cp .whl/* /tmp/wheels/ 2>/dev/null; fi
  local first parts joined
  for first in /tmp/wheels/*.whl.xz.part-aa; do
    [ -e "$first" ] || continue
    joined=${first%.xz.part-aa}
    parts=("${first%-aa}"-*)
    echo "joining ${#parts[@]} parts into $joined"
    cat "${parts[@]}" | xz -d > "$joined" || return 1
  done
  if ! ls /tmp/wheels/*.whl >/dev/null 2>&1; then
    echo "no wheels carried: the ONNX Runtime CUDA tests will skip"
    return 0
  fi
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    /tmp/wheels/*.whl
}

# shellcheck disable=SC2329
gpu_tests() {
  local timeout_flag=()
  "$PY" -c "import pytest_timeout" 2>/dev/null && timeout_flag=(--timeout 120)
  "$PY" -m pytest -q -p no:cacheprovider -m "gpu or tensorrt" -rA "${timeout_flag[@]}" \
    tests/test_precision.py tests/test_devices.py tests/test_tensorrt.py tests/test_robustness.py \
    2>&1 | tee "$OUT/gpu_tests.txt"
  return "${PIPESTATUS[0]}"
}

# shellcheck disable=SC2329
scoring() {
  OUT="$WORK/infer" ROWS="${INFER_ROWS:-25000}" bash benchmarks/gpu_infer.sh || return $?
  cp "$WORK/infer/bench.md" "$WORK/infer/bench.json" "$OUT/"
}

# shellcheck disable=SC2329
training() {
  ROWS="${TRAIN_ROWS:-4000}" STEPS="${TRAIN_STEPS:-60}" bash benchmarks/gpu_train.sh 2>&1 | tee "$OUT/train.txt"
  return "${PIPESTATUS[0]}"
}

main() {
  if [ ! -f "$ARENA_SHARED/data/arena/lmsys_kaggle/train_sample.csv" ]; then
    echo "ARENA_SHARED=$ARENA_SHARED holds no real data: carry .carry/shared (see the top of this script)"
    return 2
  fi
  export OUT WORK PY
  export -f environment carried_wheels gpu_tests scoring training
  timeout 20 bash -c environment > "$OUT/env.txt" 2>&1
  cat "$OUT/env.txt"
  step wheels 40 carried_wheels
  if [ -d /tmp/site ]; then export PYTHONPATH=/tmp/site:$PYTHONPATH; fi
  step gpu-tests 130 gpu_tests
  step scoring 165 scoring
  step training 120 training

  {
    printf '['
    (IFS=,; printf '%s' "${SUMMARY[*]}")
    printf ']\n'
  } | tee "$OUT/summary.json"
  return "$STATUS"
}

main 2>&1 | tee -a "$OUT/gpu_check.log"
exit "${PIPESTATUS[0]}"
