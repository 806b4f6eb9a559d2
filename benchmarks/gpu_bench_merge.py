"""Merge the per-cell ``arena-bench`` runs of ``benchmarks/gpu_infer.sh`` into one ``bench.md`` + ``bench.json``.

gpu_infer.sh runs each cell as its own process under its own time cap, so a cell that is cut (a slow compile, a
hang) costs only its own numbers; this puts the cells that finished into one report, speed-ups against the first
cell named (the notebook loop), and lists the ones that did not finish.

Usage: python benchmarks/gpu_bench_merge.py CELLS_DIR OUT_DIR CELL[,CELL...] TITLE
Exit 1 when a cell has no result.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from arena.bench.report import write_reports
from arena.bench.runner import CellResult, compute_speedups


def cell_folder(cells_dir: Path, cell: str) -> Path:
    """Where gpu_infer.sh writes one cell's run (``${cell//[:\\/]/_}`` there): ``:`` and ``/`` made ``_``."""
    return cells_dir / cell.replace(":", "_").replace("/", "_")


def merge(cells_dir: Path, out: Path, cells: list[str], title: str) -> dict:
    """Write ``out/bench.md`` and ``out/bench.json`` from the finished cells; return the final JSON line."""
    results, payload, missing = [], None, []
    for cell in cells:
        path = cell_folder(cells_dir, cell) / "bench.json"
        if not path.is_file():
            missing.append(cell)
            continue
        run = json.loads(path.read_text())
        payload = payload or run
        results += [CellResult(**c) for c in run["cells"]]
    baseline = cells[0]
    compute_speedups(results, baseline)
    payload = {**(payload or {"machine": "unknown", "rows": 0, "data": "", "max_length": 0}), "title": title,
               "baseline": baseline, "command": "benchmarks/gpu_infer.sh (one arena-bench run per cell)",
               "skipped": [f"{c}: no result (cut at its time cap or failed; see gpu_check.log)" for c in missing]}
    write_reports(out, payload, results, [], baseline, "bench.png")
    return {"cells": {r.name: round(r.rows_per_s, 3) for r in results},
            "speedups": {r.name: None if r.speedup is None else round(r.speedup, 3) for r in results},
            "missing": missing}


def main() -> int:
    cells_dir, out, cells, title = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3].split(","), sys.argv[4]
    final = merge(cells_dir, out, cells, title)
    print(json.dumps(final))
    return 1 if final["missing"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
