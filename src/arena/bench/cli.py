"""``arena-bench``: throughput of backend x precision x batch policy on real rows, side by side in one run."""

from __future__ import annotations

import json
import logging
import platform
import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

from arena.bench.precheck import DEFAULT_BACKENDS
from arena.cli.app import run_app, setup_logging
from arena.errors import BenchmarkCheckFailed, cli_errors

log = logging.getLogger("arena.bench")
app = typer.Typer(add_completion=False, help=__doc__, pretty_exceptions_enable=False)


def machine_description() -> str:
    from arena.machine.cpu import allowed_cores, cpu_kind

    text = f"{allowed_cores()} CPU cores ({cpu_kind()}), Python {platform.python_version()}"
    try:
        import torch

        text += f", torch {torch.__version__}"
        if torch.cuda.is_available():
            text += f", GPU {torch.cuda.get_device_name()}"
    except ImportError:  # pragma: no cover
        pass
    try:
        import onnxruntime

        text += f", onnxruntime {onnxruntime.__version__}"
    except ImportError:  # pragma: no cover
        pass
    return text


@app.command(epilog="Examples:\n\n  arena-bench --model runs/model --export runs/export --rows 240\n\n"
             "  arena-bench --model runs/model --export runs/export --cells torch:fp32/notebook,onnx:int8/sorted "
             "--check benchmarks/thresholds.json")
@cli_errors
def bench(
    model: Annotated[Path, typer.Option(help="Checkpoint folder (torch cells)")],
    export: Annotated[Path | None, typer.Option(help="arena-export folder (onnx/tensorrt cells)")] = None,
    data: Annotated[str | None, typer.Option(help="CSV of real rows (train or test layout)")] = None,
    backends: Annotated[str | None, typer.Option(help="backend:precision list (backends: torch, torch.compile, "
                                                 "onnx, openvino, tensorrt); default: " + DEFAULT_BACKENDS
                                                 + ", skipping what the folders do not hold")] = None,
    policies: Annotated[str, typer.Option(help="notebook, padded, sorted")] = "notebook,sorted",
    cells: Annotated[str | None, typer.Option(help="Exact cells backend:precision/policy (overrides the matrix)")]
    = None,
    rows: Annotated[int, typer.Option(help="Rows to score (the file repeated keeps the real length mix)")] = 240,
    max_length: Annotated[int | None, typer.Option(help="Override the model's max length")] = None,
    batch_size: Annotated[int, typer.Option(help="Rows per batch cap (notebook policy always uses 16)")] = 64,
    max_tokens: Annotated[int | None, typer.Option(
        help="Token budget per sorted batch (default: 2 rows of max length on CPU, 64 on GPU)")] = None,
    repeats: Annotated[int, typer.Option(
        help="Timed passes per cell, interleaved across cells (median, min and max reported)")] = 3,
    warmup: Annotated[int, typer.Option(help="Untimed passes per cell")] = 1,
    threads: Annotated[int | None, typer.Option(help="CPU threads for the backends")] = None,
    encode_workers: Annotated[int, typer.Option(help="Tokenizer processes for padded/sorted end-to-end runs")] = 0,
    baseline: Annotated[str, typer.Option(help="Cell the speed-ups are measured against")] =
    "torch:fp32/notebook",
    out: Annotated[Path, typer.Option(help="Folder for bench.md/json/html and bench.png")] = Path("runs/bench"),
    check: Annotated[Path | None, typer.Option(help="JSON of ratio thresholds; exit 5 below them")] = None,
    title: Annotated[str, typer.Option()] = "scoring throughput",
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Benchmark scoring throughput; print a Markdown table and, last, one line of JSON."""
    setup_logging(verbose)
    from dataclasses import replace

    from arena.bench.precheck import cell_folder, check_bench_request, parse_cells, read_thresholds, runnable_cells
    from arena.bench.report import plot, write_reports
    from arena.bench.runner import check_thresholds, compute_speedups, open_cell, repeat_to, run_cells
    from arena.cli.safety import warn_if_unfinished
    from arena.data import has_labels, read_records, resolve_csv
    from arena.encode import ArenaEncoder
    from arena.models.modeling import load_tokenizer, read_meta
    from arena.serving.batching import token_budget_batches

    specs = parse_cells(cells, backends or DEFAULT_BACKENDS, policies)
    path = resolve_csv(data, "train.csv")
    check_bench_request(model=model, export=export, specs=specs, baseline=baseline, data_path=path, out=out,
                        check=check, numbers=dict(rows=rows, batch_size=batch_size, max_tokens=max_tokens,
                                                  repeats=repeats, warmup=warmup, threads=threads,
                                                  encode_workers=encode_workers, max_length=max_length))
    specs, skipped = runnable_cells(specs, export, explicit=bool(cells or backends), baseline=baseline, model=model)
    for line in skipped:
        log.warning("skipping cell %s", line)
    thresholds = read_thresholds(check, [s.name for s in specs]) if check is not None else {}
    for folder in (model, export):
        if folder is not None:
            warn_if_unfinished(folder)
    records = repeat_to(read_records(path, labelled=has_labels(path)), rows)
    opened = []
    for spec in specs:  # open every cell before timing any
        folder = cell_folder(spec.backend, model, export) or model
        opened.append(open_cell(spec, folder, batch_size=batch_size, max_tokens=max_tokens, threads=threads,
                               max_length=max_length, encode_workers=encode_workers))
    log.info("measuring %s on %d rows, %d interleaved repeats", ", ".join(s.name for s in specs), len(records),
             repeats)
    results = run_cells(opened, records, repeats=repeats, warmup=warmup)
    for res in results:
        log.info("%s: %.2f rows/s end to end (%.2f-%.2f), %.2f rows/s model only", res.name, res.rows_per_s,
                 res.rows_per_s_min, res.rows_per_s_max, res.model_rows_per_s)
    compute_speedups(results, baseline)
    checks = check_thresholds(results, thresholds) if thresholds else []

    # The histogram needs only the encoder and the budget the sorted cells used, not another copy of the model.
    encoder_cfg = read_meta(model).encoder
    if max_length is not None:
        encoder_cfg = replace(encoder_cfg, max_length=max_length)
    encoder = ArenaEncoder(load_tokenizer(model), encoder_cfg)
    lengths = encoder.encode(records).lengths
    sorted_cells = [c for c in opened if c.spec.policy == "sorted"] or opened
    budget = sorted_cells[0].scorer.executor.budget  # the budget the sorted cells planned with
    boundaries = sorted({int(-(-lengths[b].max() // 8) * 8)
                         for b in token_budget_batches(lengths, budget, batch_size)})
    command = "arena-bench " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    payload = {"kind": "arena-bench", "title": title, "command": command, "machine": machine_description(),
               "rows": len(records), "data": str(path), "max_length": encoder.config.max_length, "baseline": baseline,
               "skipped": skipped}
    out.mkdir(parents=True, exist_ok=True)
    plot(results, lengths, boundaries, out / "bench.png",
         f"{title}: {len(records)} real rows, max length {encoder.config.max_length}; {payload['machine']}")
    paths = write_reports(out, payload, results, checks, baseline, "bench.png")
    typer.echo((out / "bench.md").read_text())
    final = {"cells": {r.name: round(r.rows_per_s, 3) for r in results},
             "speedups": {r.name: None if r.speedup is None else round(r.speedup, 3) for r in results},
             "checks": {c["name"]: c["passed"] for c in checks}, "ok": all(c["passed"] for c in checks),
             "report": str(paths["markdown"])}
    typer.echo(json.dumps(final))
    if checks and not final["ok"]:
        failed = ", ".join(_describe(c) for c in checks if not c["passed"])
        raise BenchmarkCheckFailed(f"ratio check(s) below threshold on {payload['machine']}: {failed}")


def _describe(check: dict) -> str:
    value = "not measured" if check["value"] is None else f"{check['value']:.2f}x"
    return f"{check['name']} ({value}, needs >= {check['min']}x, the min for {check.get('min_for', 'every CPU')})"


def main() -> None:
    run_app(app)


if __name__ == "__main__":
    main()
