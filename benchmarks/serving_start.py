"""Serving start-up, measured from outside: the wall time from starting ``arena-infer`` on an export to its first
batch scored, and what the interpreter imports on the way.

    python benchmarks/serving_start.py runs/export --rows 8 --repeats 5 --config onnx:fp32 --config openvino:fp32

Each configuration (``BACKEND:PRECISION``, ``auto`` for the automatic choice) runs ``arena-infer`` in a fresh
interpreter on the sample's first ``--rows`` rows (test layout) as one padded batch (``--policy padded``,
``--batch-size`` = ``--chunk-rows`` = rows), so the first batch scored is the whole file. The child stamps the
wall clock when :meth:`arena.serving.executor.BatchExecutor.run` first returns; the time from just before the
process was spawned to that stamp is "start to first batch" (interpreter start, imports, argument and folder checks,
tokenizer and model loading, encoding, one batch). Repeats are interleaved: each repeat runs every configuration
once, in an order rotated per repeat. Reported per configuration: start to first batch and whole process (to exit)
in seconds, min / median / max; whether ``torch`` or ``transformers`` was imported; and, from one more run under
``python -X importtime``, the top-level modules that took longest to import (cumulative).

Prints Markdown tables, then one line of JSON; ``--out`` keeps the JSON. Numbers are only worth quoting from a quiet
machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from arena.artifacts import MANIFEST

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
DATA = HERE.parents[0].parent / "shared" / "data" / "arena" / "lmsys_kaggle" / "train_sample.csv"
FIRST_BATCH, MODULES = "ARENA_FIRST_BATCH", "ARENA_MODULES"
CHILD = f"""
import json, sys, time
import arena.serving.executor as executor

_run = executor.BatchExecutor.run


def _first(self, *args, **kwargs):
    out = _run(self, *args, **kwargs)
    executor.BatchExecutor.run = _run
    print("{FIRST_BATCH}", repr(time.time()), flush=True)
    return out


executor.BatchExecutor.run = _first
from arena.cli.app import run_app
from arena.infer.cli import app

run_app(app, sys.argv[1:])
print("{MODULES}", json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers"))))
"""
"""arena-infer's own entry point, with the first batch stamped and the torch / transformers modules listed at exit."""


def write_test_csv(src: Path, rows: int, dst: Path) -> None:
    pd.read_csv(src)[["id", "prompt", "response_a", "response_b"]].iloc[:rows].to_csv(dst, index=False)


def infer_args(config: str, export: Path, csv: Path, out: Path, rows: int) -> list[str]:
    backend, _, precision = config.partition(":")
    args = [str(csv), "--model", str(export), "--out", str(out), "--policy", "padded", "--batch-size", str(rows),
            "--chunk-rows", str(rows), "--backend", backend]
    return args + (["--precision", precision] if precision else [])


def child_env(cache: Path) -> dict[str, str]:
    """Every arena cache (calibration, OpenVINO's compiled model, ONNX Runtime's optimised graph) in ``cache``,
    filled by the untimed warm-up: the start measured is a repeat start on this machine."""
    path = os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1", "ARENA_CACHE_DIR": str(cache),
            "ARENA_OPENVINO_CACHE": str(cache / "openvino"), "ARENA_ORT_CACHE": str(cache / "onnxruntime")}


def run_once(args: list[str], env: dict[str, str], *, importtime: bool = False) -> dict:
    """One fresh interpreter: seconds to the first batch and to exit, the torch/transformers modules it loaded, and
    (``importtime``) its ``-X importtime`` report."""
    command = [sys.executable, *(["-X", "importtime"] if importtime else []), "-c", CHILD, *args]
    spawned, t0 = time.time(), time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"error: arena-infer {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    marks = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if line.startswith((FIRST_BATCH, MODULES)))
    return {"first_batch_s": float(marks[FIRST_BATCH]) - spawned, "process_s": wall,
            "loaded": json.loads(marks[MODULES]), "importtime": proc.stderr if importtime else ""}


def top_imports(report: str, top: int) -> list[dict]:
    """The top-level modules of a ``-X importtime`` report (its unindented names), longest cumulative time first."""
    rows = []
    for line in report.splitlines():
        if not line.startswith("import time:") or "|" not in line or "cumulative" in line:
            continue
        _, cumulative, name = line.split("|")
        if name.startswith(" ") and not name.startswith("  "):  # depth 0: one space after the bar
            rows.append({"module": name.strip(), "cumulative_ms": round(int(cumulative) / 1000, 1)})
    return sorted(rows, key=lambda r: -r["cumulative_ms"])[:top]


def measure(export: Path, configs: list[str], rows: int, repeats: int, top: int, work: Path) -> dict:
    csv = work / "test.csv"
    write_test_csv(DATA, rows, csv)
    env = child_env(work / "ov-cache")
    times: dict[str, list[dict]] = {c: [] for c in configs}
    for config in configs:  # warm-up, not counted: fills the caches (child_env), the OS caches the files
        run_once(infer_args(config, export, csv, work / "warm.csv", rows), env)
    for repeat in range(repeats):
        for config in configs[repeat % len(configs):] + configs[:repeat % len(configs)]:
            times[config].append(run_once(infer_args(config, export, csv, work / "sub.csv", rows), env))
    out = {}
    for config in configs:
        traced = run_once(infer_args(config, export, csv, work / "traced.csv", rows), env, importtime=True)
        first = [r["first_batch_s"] for r in times[config]]
        whole = [r["process_s"] for r in times[config]]
        out[config] = {"first_batch_s": summary(first), "process_s": summary(whole),
                       "loaded": sorted({m for r in times[config] for m in r["loaded"]}),
                       "top_imports": top_imports(traced["importtime"], top)}
    return out


def summary(values: list[float]) -> dict[str, float]:
    return {"min": round(min(values), 3), "median": round(statistics.median(values), 3), "max": round(max(values), 3)}


def render(results: dict, rows: int, repeats: int) -> str:
    lines = [f"Start to first batch ({rows} rows, one batch; {repeats} interleaved repeats), seconds", "",
             "| configuration | start to first batch (min / median / max) | whole process (min / median / max) | "
             "torch | transformers |", "|---|---|---|---|---|"]
    for config, r in results.items():
        tops = {m.split(".")[0] for m in r["loaded"]}
        lines.append(f"| {config} | {_span(r['first_batch_s'])} | {_span(r['process_s'])} | "
                     f"{'imported' if 'torch' in tops else 'not imported'} | "
                     f"{'imported' if 'transformers' in tops else 'not imported'} |")
    for config, r in results.items():
        lines += ["", f"Slowest top-level imports, {config} (`python -X importtime`, cumulative)", "",
                  "| module | ms |", "|---|---|"]
        lines += [f"| {i['module']} | {i['cumulative_ms']:.1f} |" for i in r["top_imports"]]
    return "\n".join(lines)


def _span(s: dict[str, float]) -> str:
    return f"{s['min']:.2f} / {s['median']:.2f} / {s['max']:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("export", type=Path, help="an arena-export folder")
    parser.add_argument("--config", action="append", help="BACKEND:PRECISION or auto (repeat; default onnx:fp32, "
                                                          "openvino:fp32, auto)")
    parser.add_argument("--rows", type=int, default=8, help="rows of the sample scored, as one batch")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--top", type=int, default=12, help="top-level imports listed per configuration")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    if not (args.export / MANIFEST).is_file():
        raise SystemExit(f"error: {args.export} is not an arena-export folder (no {MANIFEST})")
    if args.rows < 1 or args.repeats < 1:
        raise SystemExit("error: --rows and --repeats must be at least 1")
    configs = args.config or ["onnx:fp32", "openvino:fp32", "auto"]
    with tempfile.TemporaryDirectory(prefix="arena-serving-start-") as work:
        results = measure(args.export, configs, args.rows, args.repeats, args.top, Path(work))
    print(render(results, args.rows, args.repeats))
    record = {"export": str(args.export), "rows": args.rows, "repeats": args.repeats, "python": sys.version.split()[0],
              "results": results}
    if args.out:
        args.out.write_text(json.dumps(record, indent=2))
    print(json.dumps(record))


if __name__ == "__main__":
    main()
