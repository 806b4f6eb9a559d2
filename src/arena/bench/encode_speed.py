"""Encoder throughput on real rows: the segment encoder (with its character pre-cut), the same encoder without the
pre-cut (whole texts tokenized), and the notebook format, side by side in one run.

``python -m arena.bench.encode_speed --data train.csv --tokenizer DIR --max-length 512``
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Annotated

import typer

from arena.cli.app import setup_logging
from arena.encode import ArenaEncoder, EncoderConfig
from arena.errors import cli_errors

app = typer.Typer(add_completion=False, help=__doc__, pretty_exceptions_enable=False)


@app.command()
@cli_errors
def main_command(
    data: Annotated[Path, typer.Option(help="Real train or test CSV")],
    tokenizer: Annotated[Path, typer.Option(help="Tokenizer folder")],
    max_length: Annotated[int, typer.Option()] = 512,
    repeats: Annotated[int, typer.Option()] = 5,
) -> None:
    setup_logging()
    from arena.data import has_labels, read_records
    from arena.models.modeling import load_tokenizer

    labelled = has_labels(data)
    records = read_records(data, labelled=labelled)
    tok = load_tokenizer(tokenizer)
    seg = ArenaEncoder(tok, EncoderConfig(max_length=max_length))
    nb = ArenaEncoder(tok, EncoderConfig(max_length=max_length, strategy="notebook"))
    hybrid = ArenaEncoder(tok, EncoderConfig(max_length=max_length, features=True))
    variants = {
        "segments (pre-cut, exact fallback)": lambda: seg.encode(records),
        "segments + hand-crafted features (hybrid head input)": lambda: hybrid.encode(records),
        "segments without pre-cut (whole texts)": lambda: seg._encode_segments(records, precut=False),
        "notebook format (pre-cut)": lambda: nb.encode(records),
    }
    out = {}
    for name, fn in variants.items():
        fn()  # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        out[name] = len(records) / statistics.median(times)
        typer.echo(f"{name}: {out[name]:.0f} rows/s (median of {repeats})")
    enc = seg.encode(records)
    typer.echo(json.dumps({"rows": len(records), "max_length": max_length, "rows_per_s": out,
                           "exact_fallback_rows": enc.fallbacks, "mean_tokens": float(enc.lengths.mean())}))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
