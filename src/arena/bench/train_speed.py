"""Training throughput: length-grouped batches against fixed max-length padding, in the same run.

``python -m arena.bench.train_speed --config CONFIG.json --tokenizer DIR --data train.csv --rows 20000``
trains a randomly initialised model of that architecture (speed does not depend on weight values) on the real rows
repeated to ``--rows``, one pass per batching mode, and prints sequences/s for each and their ratio, then one line
of JSON. On a GPU it uses bf16 autocast and fused AdamW, like arena-train; ``--compile`` adds torch.compile.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import typer

from arena.cli.app import setup_logging
from arena.encode import ArenaEncoder, EncoderConfig, pad_batch
from arena.errors import cli_errors
from arena.serving.batching import length_grouped_batches
from arena.train.runtime import resolve_precision
from arena.train.trainer import forward_backward, optimizer_step

app = typer.Typer(add_completion=False, help=__doc__, pretty_exceptions_enable=False)


def measure(model, rows: list[np.ndarray], pad_id: int, *, batch_size: int, mode: str, max_length: int,
            device: torch.device, dtype: torch.dtype | None, warmup_steps: int = 3,
            max_steps: int | None = None) -> dict:
    """Train for one pass over ``rows`` (or ``max_steps``) with the trainer's own step (:func:`forward_backward`,
    :func:`optimizer_step`: clipping and the fp16 scaler included); return sequences/s over the timed steps."""
    lengths = np.array([len(r) for r in rows])
    if mode == "grouped":
        batches = length_grouped_batches(lengths, batch_size, seed=0)
    elif mode == "padded":
        perm = np.random.default_rng(0).permutation(len(rows))
        batches = [perm[i:i + batch_size] for i in range(0, len(perm), batch_size)]
    else:
        raise ValueError(mode)
    if max_steps is not None:
        batches = batches[: warmup_steps + max_steps]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda")
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    model.train()
    labels = torch.randint(0, 3, (len(rows),), generator=torch.Generator().manual_seed(0)).numpy()
    seqs, real, computed = 0, 0, 0
    t0 = None
    for step, batch in enumerate(batches):
        if step == warmup_steps:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        ids, mask = pad_batch([rows[i] for i in batch], pad_id, length=max_length if mode == "padded" else None)
        forward_backward(model, ids, mask, None, labels[batch], device=device, dtype=dtype, scaler=scaler)
        optimizer_step(model, opt, scaler, None, max_grad_norm=1.0)
        if step >= warmup_steps:
            seqs += len(batch)
            real += int(mask.sum())
            computed += mask.size
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0 if t0 is not None else float("nan")
    return {"mode": mode, "sequences": seqs, "seconds": elapsed, "sequences_per_s": seqs / elapsed,
            "padding_efficiency": real / computed if computed else 1.0}


@app.command()
@cli_errors
def main_command(
    config: Annotated[Path, typer.Option(help="Architecture config.json (random weights)")],
    tokenizer: Annotated[Path, typer.Option(help="Tokenizer folder")],
    data: Annotated[Path, typer.Option(help="Real train CSV")],
    rows: Annotated[int, typer.Option(help="Rows (the file repeated)")] = 20000,
    max_length: Annotated[int, typer.Option()] = 512,
    batch_size: Annotated[int, typer.Option()] = 32,
    precision: Annotated[str, typer.Option(help="auto (the GPU's: bf16 from sm80 on, fp16 on a T4; fp32 on CPU), "
                                                "fp32, bf16, fp16")] = "auto",
    compile: Annotated[bool, typer.Option(help="torch.compile the model (GPU)")] = False,
    max_steps: Annotated[int | None, typer.Option(help="Timed steps per mode (default: one full pass)")] = None,
    modes: Annotated[str, typer.Option()] = "padded,grouped",
) -> None:
    setup_logging()
    from arena.bench.runner import repeat_to
    from arena.data import read_records
    from arena.models.modeling import load_classifier, load_tokenizer

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = resolve_precision(precision, device)  # auto: the GPU's half precision (bf16 from sm80, fp16 on a T4)
    records = repeat_to(read_records(data, labelled=True), rows)
    tok = load_tokenizer(tokenizer)
    t0 = time.perf_counter()
    encoded = ArenaEncoder(tok, EncoderConfig(max_length=max_length)).encode(records)
    encode_s = time.perf_counter() - t0
    results = []
    for mode in modes.split(","):
        torch.manual_seed(0)
        model = load_classifier(None, random_init_from=config).to(device)
        fwd = torch.compile(model, dynamic=True) if compile else model
        res = measure(fwd, encoded.ids, tok.pad_token_id or 0, batch_size=batch_size, mode=mode,
                      max_length=max_length, device=device, dtype=dtype, max_steps=max_steps)
        if device.type == "cuda":
            res["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
            torch.cuda.reset_peak_memory_stats()
        typer.echo(f"{mode}: {res['sequences_per_s']:.1f} sequences/s over {res['sequences']} sequences "
                   f"(padding efficiency {res['padding_efficiency']:.2f})")
        results.append(res)
        del model, fwd
    by = {r["mode"]: r for r in results}
    ratio = (by["grouped"]["sequences_per_s"] / by["padded"]["sequences_per_s"]
             if {"grouped", "padded"} <= by.keys() else None)
    device_name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    typer.echo(json.dumps({"device": device_name, "config": str(config), "rows": rows, "max_length": max_length,
                           "batch_size": batch_size, "precision": precision, "compile": compile,
                           "encode_s": encode_s, "results": results, "grouped_vs_padded": ratio}))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
