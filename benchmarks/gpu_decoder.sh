#!/usr/bin/env bash
# Decoder scoring on an NVIDIA H100/H200 (issue 17): a random-weight decoder of about 1.1B parameters (TinyLlama-1.1B
# shape: Llama, 22 layers, hidden 2048, GQA 32/4 heads, FFN 5632; Mistral-7B's tokenizer from tests/fixtures), max
# length 1,024, bf16, on the real length mix (the sample repeated to 3,000 rows): file order (the notebook loop,
# batches of 16 padded to their longest row) against length-sorted token-budget batches (64 rows x 1,024 tokens).
# Then, where peft is installed, 30 LoRA training steps (r 16, all projections, bf16 base, gradient checkpointing)
# as a check that the GPU path of arena-train runs. Budget: under 6 minutes.
#
# Not run yet: no session that wrote it had a GPU. The estimate for Gemma-2-9B on 2x T4 in benchmarks/RESULTS.md
# takes its tokens per row from benchmarks/decoder_cpu.py; rerun it with this script's rows/s when one is lent.
#
# The GPU machine gets a copy of this repository only: carry the data (see gpu_train.sh), e.g.
#   echo /.carry/ >> .git/info/exclude; mkdir -p .carry/shared && cp -r ../shared/data .carry/shared/
# peft (and bitsandbytes for 4-bit) are not installed there: send their wheels along (pip download peft) if needed.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${ARENA_SHARED:-.carry/shared}
OUT=${OUT:-runs/gpu-decoder}
WORK=${WORK:-runs/gpu-decoder-work}  # the 1.1B model (4.4 GB) and the LoRA run: never in $OUT, whose files come back
DATA="$SHARED/data/arena/lmsys_kaggle"
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
mkdir -p "$OUT" "$WORK/config"
python3 - "$WORK/config" <<'EOF'
import sys
from transformers import LlamaConfig
LlamaConfig(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
            num_key_value_heads=4, max_position_embeddings=4096, bos_token_id=1, eos_token_id=2).save_pretrained(sys.argv[1])
EOF
python3 -m arena.train.cli --data "$DATA" --model "$WORK/config/config.json" --random-init \
  --tokenizer tests/fixtures/mistral-tokenizer --max-steps 0 --head hf --lora-r 0 --max-length 1024 \
  --no-calibrate --overwrite --output "$WORK/model"
timeout 300 python3 -m arena.bench.cli --model "$WORK/model" --data "$DATA/train_sample.csv" --rows 3000 \
  --cells torch:bf16/notebook,torch:bf16/sorted --baseline torch:bf16/notebook --repeats 1 --warmup 1 \
  --encode-workers 8 --out "$OUT/bench" --title "GPU: 1.1B Llama-shape decoder (random), 3,000 real rows, 1,024 tokens, bf16"
if python3 -c "import peft" 2>/dev/null; then
  timeout 150 python3 -m arena.train.cli --data "$DATA" --model "$WORK/model" --max-length 1024 --lora-r 16 \
    --lr 1e-4 --batch-size 8 --gradient-checkpointing --precision bf16 --max-steps 30 --max-rows 400 \
    --no-calibrate --overwrite --output "$WORK/lora"
else
  echo "peft is not installed here: LoRA training step skipped"
fi
