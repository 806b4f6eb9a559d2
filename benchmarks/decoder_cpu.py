"""Decoder plumbing on the CPU (issue 17): what the real rows cost in a decoder's tokens, how much of a batch is
padding at 1,024 tokens, and the scoring path's throughput with a tiny decoder against a tiny DeBERTa.

    .venv/bin/python benchmarks/decoder_cpu.py --rows 240 --threads 1

1. Lengths: all real rows of train_sample.csv encoded by ArenaEncoder at 1,024 and 2,048 tokens with Mistral-7B's
   tokenizer (tests/fixtures/mistral-tokenizer) and with DeBERTa-v3's.
2. Padding efficiency (real tokens / computed tokens) of every row at 1,024 Mistral tokens under the batch policies
   of arena.serving.batching: length-sorted token-budget batches (the GPU default budget, 64 rows x 1,024, and the CPU
   default, 2 x 1,024) against file-order batches of 16 padded to their longest row (the starter notebook) or to
   1,024.
3. Throughput of the same scoring path (Scorer -> BatchExecutor -> TorchBackend, sorted batches, fp32) for a tiny
   random Mistral and a tiny random DeBERTa-v3 of the same size (2 layers, hidden 64, 4 heads, FFN 128), each with
   its real tokenizer, at 512 tokens: plumbing only, not what the real models cost.

Prints a table per part, then one line of JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DATA = SHARED / "data" / "arena" / "lmsys_kaggle" / "train_sample.csv"
DEBERTA_TOKENIZER = SHARED / "models" / "deberta-v3" / "tokenizer"
DEBERTA_CONFIG = SHARED / "models" / "deberta-v3" / "configs" / "deberta-v3-xsmall.json"
MISTRAL_TOKENIZER = ROOT / "tests" / "fixtures" / "mistral-tokenizer"
SIZE = dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=128)


def lengths_table(records, tokenizers) -> list[dict]:
    from arena.encode import ArenaEncoder, EncoderConfig

    out = []
    for name, tok in tokenizers.items():
        for max_length in (1024, 2048):
            t0 = time.perf_counter()
            lengths = ArenaEncoder(tok, EncoderConfig(max_length=max_length)).encode(records).lengths
            out.append({"tokenizer": name, "max_length": max_length, "rows": len(lengths),
                        "encode_rows_per_s": round(len(lengths) / (time.perf_counter() - t0), 1),
                        "mean": round(float(lengths.mean()), 1), "p50": int(np.percentile(lengths, 50)),
                        "p90": int(np.percentile(lengths, 90)),
                        "at_cap": round(float((lengths >= max_length).mean()), 3)})
    return out


def padding_table(lengths: np.ndarray) -> list[dict]:
    from arena.serving.batching import padding_stats, plan_batches

    cases = [("sorted, budget 64 x 1,024 (GPU default)", "sorted", 64 * 1024, 64),
             ("sorted, budget 2 x 1,024 (CPU default)", "sorted", 2 * 1024, 64),
             ("file order, 16 rows, pad to batch max (notebook)", "notebook", 0, 16),
             ("file order, 16 rows, pad to 1,024", "padded", 0, 16)]
    out = []
    for name, policy, budget, rows in cases:
        batches, fixed = plan_batches(policy, lengths, batch_size=rows, max_tokens=budget or 1 << 30,
                                      max_length=1024)
        stats = padding_stats(batches, lengths, pad_multiple=1 if policy == "notebook" else 8, fixed_length=fixed)
        out.append({"policy": name, "batches": len(batches), "real_tokens": stats.real_tokens,
                    "computed_tokens": stats.computed_tokens, "efficiency": round(stats.efficiency, 3)})
    return out


def throughput(records, tokenizers, threads: int, max_length: int) -> list[dict]:
    from transformers import AutoConfig, AutoModelForSequenceClassification, MistralConfig

    from arena.encode import ArenaEncoder, EncoderConfig
    from arena.serving.backends.torch import TorchBackend
    from arena.serving.scoring import ScoreConfig, Scorer, Timings

    torch.manual_seed(0)
    configs = {
        "mistral": MistralConfig(vocab_size=32000, num_key_value_heads=2, max_position_embeddings=4096,
                                 num_labels=3, pad_token_id=tokenizers["mistral"].pad_token_id, **SIZE),
        "deberta-v3": AutoConfig.from_pretrained(str(DEBERTA_CONFIG), num_labels=3, pooler_hidden_size=64, **SIZE),
    }
    out = []
    for name, config in configs.items():
        model = AutoModelForSequenceClassification.from_config(config)
        params = sum(p.numel() for p in model.parameters())
        backend = TorchBackend(model=model, device="cpu", precision="fp32", threads=threads)
        scorer = Scorer(backend, ArenaEncoder(tokenizers[name], EncoderConfig(max_length=max_length)),
                        ScoreConfig(policy="sorted"))
        scorer.score(records[:16])  # warm-up
        timings = Timings()
        t0 = time.perf_counter()
        scorer.score(records, timings)
        timings.wall_s = time.perf_counter() - t0
        s = timings.summary()
        out.append({"model": f"tiny {name}", "parameters": params, "non_embedding_parameters":
                    params - model.get_input_embeddings().weight.numel(), "rows": s["rows"],
                    "rows_per_s": round(s["rows_per_s"], 1), "tokens_per_s": round(s["tokens_per_s"]),
                    "model_tokens_per_s": round(timings.real_tokens / timings.model_s),
                    "mean_tokens": round(timings.real_tokens / s["rows"], 1),
                    "padding_efficiency": s["padding_efficiency"]})
    return out


def markdown(rows: list[dict]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(f"{r[k]:,}" if isinstance(r[k], int) else str(r[k]) for k in keys) + " |"
              for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=240, help="real rows scored in the throughput part")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-length", type=int, default=512, help="tokens per row in the throughput part")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from arena.data import read_train
    from arena.encode import ArenaEncoder, EncoderConfig
    from arena.models.modeling import load_tokenizer

    torch.set_num_threads(args.threads)
    records = read_train(DATA)
    tokenizers = {"mistral": load_tokenizer(MISTRAL_TOKENIZER), "deberta-v3": load_tokenizer(DEBERTA_TOKENIZER)}
    lengths = lengths_table(records, tokenizers)
    mistral_1024 = ArenaEncoder(tokenizers["mistral"], EncoderConfig(max_length=1024)).encode(records).lengths
    padding = padding_table(mistral_1024)
    speed = throughput(records[: args.rows], tokenizers, args.threads, args.max_length)
    print(f"## Real rows in tokens ({len(records)} rows of {DATA.name})\n\n{markdown(lengths)}\n")
    print(f"## Padding efficiency at 1,024 Mistral tokens ({len(records)} real rows)\n\n{markdown(padding)}\n")
    print(f"## Scoring throughput, CPU, {args.threads} thread(s), {args.max_length} tokens, sorted batches, fp32 "
          f"({args.rows} real rows)\n\n{markdown(speed)}\n")
    print(json.dumps({"lengths": lengths, "padding": padding, "throughput": speed}))


if __name__ == "__main__":
    main()
