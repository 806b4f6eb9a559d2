"""``arena-infer``: score test.csv and write a Kaggle submission."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Annotated

import typer

from arena.cli_common import setup_logging
from arena.errors import ConfigError, cli_errors

log = logging.getLogger("arena.infer")
app = typer.Typer(add_completion=False, help=__doc__, pretty_exceptions_enable=False)


@app.command(epilog="Examples:\n\n  arena-infer test.csv --model runs/export --out submission.csv\n\n"
             "  arena-infer test.csv --model runs/model --backend torch --tta swap\n\n"
             "  arena-infer test.csv --model runs/export --precision int8 --max-tokens 16384")
@cli_errors
def infer(
    test_csv: Annotated[Path, typer.Argument(help="Kaggle test.csv (id, prompt, response_a, response_b)")],
    model: Annotated[Path, typer.Option(help="arena-train checkpoint or arena-export folder")],
    out: Annotated[Path, typer.Option(help="Submission CSV to write (atomically)")] = Path("submission.csv"),
    backend: Annotated[str, typer.Option(help="auto, torch, onnx, openvino or tensorrt")] = "auto",
    precision: Annotated[str, typer.Option(
        help="torch: auto/fp32/fp16/bf16; onnx: auto/fp32/fp32_fused/fp16/int8; openvino: auto/fp32/bf16/int8")]
    = "auto",
    tta: Annotated[str, typer.Option(help="none or swap (score A/B-swapped too and average)")] = "none",
    policy: Annotated[str, typer.Option(help="sorted (token budget), notebook or padded")] = "sorted",
    rules: Annotated[str | None, typer.Option(help="Post-processing: identical-tie, empty-loses (comma list)")]
    = None,
    max_tokens: Annotated[int | None, typer.Option(
        help="Token budget per batch (rows x padded length); default 2 rows of max length on CPU, 64 on GPU")] = None,
    batch_size: Annotated[int, typer.Option(help="Max rows per batch")] = 64,
    chunk_rows: Annotated[int, typer.Option(help="Rows read, encoded and scored at a time")] = 8192,
    threads: Annotated[int | None, typer.Option(help="CPU threads for the model")] = None,
    encode_workers: Annotated[int, typer.Option(help="Tokenizer worker processes (0: one background thread)")]
    = 0,
    compile: Annotated[bool, typer.Option(help="torch.compile (torch backend, GPU)")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N")] = "auto",
    devices: Annotated[str | None, typer.Option(
        help="Several devices, one process each: cuda:0,cuda:1 (or a count of GPUs; cpu,cpu on a CPU)")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Score every row of TEST_CSV and write one probability row per id, in the file's order."""
    setup_logging(verbose)
    if tta not in ("none", "swap"):
        raise ConfigError("--tta must be none or swap")
    summary = run_infer(test_csv, model, out, backend=backend, precision=precision, tta=tta == "swap",
                        policy=policy, max_tokens=max_tokens, batch_size=batch_size, chunk_rows=chunk_rows,
                        threads=threads, encode_workers=encode_workers, compile=compile, device=device,
                        devices=devices, rules=rules)
    typer.echo(f"wrote {summary['rows']} rows to {out} with {summary['backend']} in {summary['wall_s']:.2f} s: "
               f"{summary['rows_per_s']:.1f} rows/s end to end, {summary['model_rows_per_s']:.1f} rows/s model "
               f"only (encode {summary['encode_s']:.2f} s, model {summary['model_s']:.2f} s, "
               f"write {summary['write_s']:.2f} s; padding efficiency {summary['padding_efficiency']:.2f})")
    typer.echo(json.dumps(summary))


def run_infer(test_csv: Path, model: Path, out: Path, *, backend: str = "auto", precision: str = "auto",
              tta: bool = False, policy: str = "sorted", max_tokens: int | None = None, batch_size: int = 64,
              chunk_rows: int = 8192, threads: int | None = None, encode_workers: int = 0, compile: bool = False,
              device: str = "auto", devices: str | None = None, rules: str | None = None) -> dict:
    from tqdm.auto import tqdm

    from arena.batching import default_max_tokens
    from arena.data import iter_records
    from arena.infer.sharded import ShardedRunner, parse_devices
    from arena.infer.submission import submission_writer
    from arena.loading import open_model
    from arena.rules import parse_rules
    from arena.scoring import ScoreConfig, Scorer, Timings

    shards = parse_devices(devices)
    loaded = open_model(model, backend=backend, precision=precision, threads=threads, compile=compile,
                        device=device if shards is None else shards[0])
    if shards is not None:
        per = threads or max(1, (os.cpu_count() or 2) // len(shards)) if shards[0] == "cpu" else threads
        loaded.runner = ShardedRunner(model, shards, backend=loaded.choice.backend, precision=precision,
                                      threads=per)
        loaded.description += f" x {len(shards)} processes on {', '.join(shards)}"
    log.info("backend %s: %s", loaded.description, loaded.choice.reason)
    if max_tokens is None:
        max_tokens = default_max_tokens(getattr(loaded.runner, "device", "cpu"), loaded.encoder.config.max_length,
                                        loaded.model_type)
    config = ScoreConfig(policy=policy, batch_size=batch_size, max_tokens=max_tokens, chunk_rows=chunk_rows,
                         tta=tta, temperature=loaded.temperature, encode_workers=encode_workers,
                         rules=parse_rules(rules))
    scorer = Scorer(loaded.runner, loaded.encoder, config, tokenizer_path=model)
    timings = Timings()
    t0 = time.perf_counter()
    try:
        with submission_writer(out) as writer, tqdm(desc="score", unit="row", disable=None) as bar:
            for records, probs in scorer.score_chunks(
                    iter_records(test_csv, labelled=False, chunk_rows=chunk_rows), timings):
                tw = time.perf_counter()
                writer.write([r.id for r in records], probs)
                timings.write_s += time.perf_counter() - tw
                bar.update(len(records))
                bar.set_postfix(rows_s=f"{timings.rows / max(time.perf_counter() - t0, 1e-9):.1f}")
            timings.wall_s = time.perf_counter() - t0
            writer.commit(timings.rows)
    finally:
        scorer.close()
        if shards is not None:
            loaded.runner.close()
    return {"backend": loaded.description, "reason": loaded.choice.reason,
            "threads": getattr(loaded.runner, "threads", None), "tta": tta, "policy": policy,
            "rules": list(config.rules), "max_tokens": max_tokens,
            **timings.summary()}


def main() -> None:
    app()


if __name__ == "__main__":
    main()
