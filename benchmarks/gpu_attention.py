"""Attention cells of the device check (issue 26): eager against disentangled-flash on padded batches and on packed
batches, for the DeBERTa-v3-small architecture (random weights, its head fitted so the logits spread over real rows)
at 512 and 1,024 tokens on the real sample's length mix, through the executor arena-infer uses (length-sorted batches
of up to 64 rows under the GPU token budget, fp16 autocast by default).

Per cell: model-only rows/s and tokens/s on the second pass (the first compiles the Triton kernels and prepares the
position plans), padding efficiency, and parity against eager on every row: max |logit diff|, the eager logits'
spread (per-class std over the rows, so the difference can be read against it), max |probability diff| and argmax
agreement. A table, then one line of JSON. Cells not started before ``--budget-s`` are listed as skipped.

Run with ``PYTHONPATH=src`` (``benchmarks/gpu_check.sh`` sets it). Needs disentangled-flash importable (the GPU
machines have no network: its wheel travels in ``.whl/``, see ``benchmarks/gpu_check.sh``); without it the script
says so in one line and exits 0.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from arena.data import read_train
from arena.encode import ArenaEncoder, EncoderConfig, pad_batch
from arena.metrics import softmax
from arena.models.attention import FLASH_INSTALL, flash_missing
from arena.models.modeling import load_tokenizer
from arena.serving.backends.torch import TorchBackend
from arena.serving.executor import BatchExecutor, Timings

ROOT = Path(__file__).resolve().parents[1]

CELLS = ("eager", "flash", "flash+packed")


def fit_head(model: torch.nn.Module, ids: np.ndarray, mask: np.ndarray, std: float = 1.0) -> None:
    """Set the classifier to the three principal directions of its input over these rows, scaled to a per-class
    logit std of ``std`` (random weights otherwise give logits within 0.01 of each other: parity against them says
    nothing). The same construction as the tests' fixtures (``tests/conftest.py``, ``informative_head``)."""
    seen: list[torch.Tensor] = []
    hook = model.classifier.register_forward_hook(lambda _m, args, _o: seen.append(args[0].detach().double()))
    with torch.no_grad():
        model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
    hook.remove()
    h = seen[0]
    directions = torch.linalg.svd(h - h.mean(0), full_matrices=False).Vh[:3]
    weight = directions * (std / (h @ directions.T).std(0))[:, None]
    with torch.no_grad():
        model.classifier.weight.copy_(weight.float())
        model.classifier.bias.zero_()


def build_model(config: str, tokenizer, records) -> torch.nn.Module:
    from transformers import AutoConfig, AutoModelForSequenceClassification

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(AutoConfig.from_pretrained(config, num_labels=3)).eval()
    fit = ArenaEncoder(tokenizer, EncoderConfig(max_length=128)).encode(records[:32])
    fit_head(model, *pad_batch(fit.ids, tokenizer.pad_token_id))
    return model


def run_cell(name: str, backend: TorchBackend, encoded, *, pad_id: int, max_length: int, batch_size: int,
             reference: np.ndarray | None) -> tuple[dict, np.ndarray]:
    executor = BatchExecutor(backend, pad_id=pad_id, max_length=max_length, batch_size=batch_size,
                             packing=name.endswith("packed"))
    executor(encoded)  # first pass: kernel compilation, position plans, allocator
    timings = Timings()
    logits = executor(encoded, timings)
    out = {"cell": name, "rows": len(encoded), "model_s": round(timings.model_s, 4),
           "rows_per_s": round(len(encoded) / timings.model_s, 1) if timings.model_s else 0.0,
           "tokens_per_s": round(timings.real_tokens / timings.model_s) if timings.model_s else 0,
           "batches": timings.batches, "padding_efficiency": round(timings.padding_efficiency, 4),
           "attention": backend.attention_label}
    base = logits if reference is None else reference
    out.update({"max_abs_logit_diff": float(np.abs(logits - base).max()),
                "eager_logit_spread": float(base.std(0).mean()),
                "max_abs_prob_diff": float(np.abs(softmax(logits) - softmax(base)).max()),
                "argmax_agreement": float((logits.argmax(1) == base.argmax(1)).mean())})
    return out, logits


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    shared = ROOT / ".carry" / "shared"
    parser.add_argument("--config", default=str(shared / "models/deberta-v3/configs/deberta-v3-small.json"))
    parser.add_argument("--tokenizer", default=str(shared / "models/deberta-v3/tokenizer"))
    parser.add_argument("--data", default=str(shared / "data/arena/lmsys_kaggle/train_sample.csv"))
    parser.add_argument("--rows", type=int, default=1500)
    parser.add_argument("--lengths", default="512,1024")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--precision", default="fp16")
    parser.add_argument("--budget-s", type=float, default=90.0, help="start no cell after this many seconds")
    args = parser.parse_args()
    t0 = time.perf_counter()
    missing = flash_missing()
    if missing is not None:
        print(f"disentangled-flash does not import here ({missing}): attention cells skipped. Carry its wheel in "
              f".whl/ ({FLASH_INSTALL} here, or pip download --no-deps -d .whl disentangled-flash==1.1.1)")
        print(json.dumps({"skipped": f"disentangled-flash not importable: {missing}"}))
        return 0
    tokenizer = load_tokenizer(args.tokenizer)
    records = read_train(args.data)[: args.rows]
    eager_model = build_model(args.config, tokenizer, records)
    backends = {"eager": TorchBackend(model=eager_model, device=args.device, precision=args.precision)}
    backends["flash"] = TorchBackend(model=copy.deepcopy(eager_model), device=args.device, precision=args.precision,
                                     attention="flash")
    backends["flash+packed"] = backends["flash"]
    results, skipped = [], []
    for length in (int(x) for x in args.lengths.split(",")):
        encoded = ArenaEncoder(tokenizer, EncoderConfig(max_length=length)).encode(records)
        reference = None
        for name in CELLS:
            if time.perf_counter() - t0 > args.budget_s:
                skipped.append(f"{name}@{length}")
                continue
            cell, logits = run_cell(name, backends[name], encoded, pad_id=tokenizer.pad_token_id, max_length=length,
                                    batch_size=args.batch_size, reference=reference)
            cell["max_length"] = length
            cell["mean_tokens"] = round(float(encoded.lengths.mean()), 1)
            reference = logits if name == "eager" else reference
            results.append(cell)
            print(f"{length:>5} {name:<13} {cell['rows_per_s']:>9.1f} rows/s {cell['tokens_per_s']:>9} tok/s  "
                  f"padding eff {cell['padding_efficiency']:.3f}  max|dlogit| {cell['max_abs_logit_diff']:.4f} "
                  f"(spread {cell['eager_logit_spread']:.3f})  max|dprob| {cell['max_abs_prob_diff']:.4f}  "
                  f"argmax {cell['argmax_agreement']:.4f}  [{cell['attention']}]", flush=True)
    print(json.dumps({"device": torch.cuda.get_device_name() if torch.cuda.is_available() else args.device,
                      "precision": args.precision, "config": Path(args.config).name, "rows": len(records),
                      "cells": results, "skipped": skipped, "seconds": round(time.perf_counter() - t0, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
