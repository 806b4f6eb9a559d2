"""Render benchmark results: Markdown table, JSON, PNG plot, and an HTML/Markdown report embedding the plot."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from arena.bench.runner import CellResult
from arena.io import atomic_write_text


def markdown_table(results: Sequence[CellResult], baseline: str) -> str:
    head = ("| cell | backend | rows/s e2e, median (min-max) | rows/s model only | tokens/s | padding eff. | "
            "batches | batch ms p50 / p90 / p99 | peak RSS MiB | load + warm-up s | vs " + baseline + " |")
    lines = [head, "|" + "---|" * 11]
    for r in results:
        speed = f"{r.speedup:.2f}x" if r.speedup is not None else "-"
        lines.append(
            f"| {r.name} | {r.description} | {r.rows_per_s:.2f} ({r.rows_per_s_min:.2f}-{r.rows_per_s_max:.2f}) | "
            f"{r.model_rows_per_s:.2f} | {r.tokens_per_s:.0f} | "
            f"{r.padding_efficiency:.2f} | {r.batches} | {r.batch_ms_p50:.0f} / {r.batch_ms_p90:.0f} / "
            f"{r.batch_ms_p99:.0f} | {r.peak_rss_mib:.0f} | {r.load_s:.1f} + {r.warmup_s:.1f} | {speed} |"
        )
    return "\n".join(lines)


def checks_table(checks: Sequence[dict[str, Any]]) -> str:
    if not checks:
        return ""
    lines = ["| check | ratio | measured | threshold (holds on) | result |", "|---|---|---|---|---|"]
    for c in checks:
        value = "n/a" if c["value"] is None else f"{c['value']:.2f}x"
        lines.append(f"| {c['name']} | {c['numerator']} / {c['denominator']} ({c.get('metric', 'rows_per_s')}) | "
                     f"{value} | >= {c['min']:.2f}x ({c.get('min_for', 'every CPU kind measured')}) | "
                     f"{'pass' if c['passed'] else 'FAIL'} |")
    return "\n".join(lines)


def plot(results: Sequence[CellResult], lengths: np.ndarray, boundaries: Sequence[int], path: Path,
         title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [1.4, 1]})
    names = [r.name for r in results]
    y = np.arange(len(results))
    ax1.barh(y - 0.2, [r.rows_per_s for r in results], height=0.4, label="end to end", color="#3b75af")
    ax1.barh(y + 0.2, [r.model_rows_per_s for r in results], height=0.4, label="model only", color="#9ecae1")
    for i, r in enumerate(results):
        if r.speedup is not None:
            ax1.text(r.rows_per_s, i - 0.2, f" {r.speedup:.2f}x", va="center", fontsize=8)
    ax1.set_yticks(y, names, fontsize=8)
    ax1.invert_yaxis()
    ax1.set_xlabel("rows / s")
    ax1.set_title("throughput per cell")
    ax1.legend(loc="best", fontsize=8)
    ax2.hist(lengths, bins=40, color="#888888")
    for b in boundaries:
        ax2.axvline(b, color="#d62728", lw=0.6, alpha=0.6)
    ax2.set_xlabel("tokens per row (red: padded length of each sorted batch)")
    ax2.set_ylabel("rows")
    ax2.set_title("length distribution and batch boundaries")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_reports(out_dir: Path, payload: dict[str, Any], results: Sequence[CellResult], checks, baseline: str,
                  plot_name: str) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    table = markdown_table(results, baseline)
    md = [f"# arena-bench: {payload['title']}", "", f"Command: `{payload['command']}`", "",
          f"Machine: {payload['machine']}", "",
          f"{len(results[0].e2e_runs_s) if results else 0} timed passes per cell, interleaved across cells; end to "
          "end is the median pass with the slowest and fastest beside it; model only is the time inside the "
          "backend on that same pass.", "", table, ""]
    if payload.get("skipped"):
        md += ["Cells of the default matrix not measured (the folders do not support them):", ""]
        md += [f"- {line}" for line in payload["skipped"]] + [""]
    ct = checks_table(checks)
    if ct:
        md += ["## Ratio checks", "", ct, ""]
    md += [f"![throughput]({plot_name})", ""]
    paths = {"json": out_dir / "bench.json", "markdown": out_dir / "bench.md", "html": out_dir / "bench.html"}
    atomic_write_text(paths["json"], json.dumps({**payload, "cells": [asdict(r) for r in results],
                                                 "checks": list(checks)}, indent=2))
    atomic_write_text(paths["markdown"], "\n".join(md))
    rows = "".join(
        f"<tr><td>{r.name}</td><td>{r.description}</td><td>{r.rows_per_s:.2f}</td><td>{r.model_rows_per_s:.2f}</td>"
        f"<td>{r.padding_efficiency:.2f}</td><td>{'' if r.speedup is None else f'{r.speedup:.2f}x'}</td></tr>"
        for r in results)
    html = (f"<!doctype html><meta charset=utf-8><title>arena-bench</title><h1>{payload['title']}</h1>"
            f"<p>{payload['machine']}</p><p><code>{payload['command']}</code></p><table border=1 cellpadding=4>"
            "<tr><th>cell</th><th>backend</th><th>rows/s e2e</th><th>rows/s model</th><th>padding eff.</th>"
            f"<th>vs {baseline}</th></tr>{rows}</table><p><img src='{plot_name}' width=1100></p>")
    atomic_write_text(paths["html"], html)
    return paths
