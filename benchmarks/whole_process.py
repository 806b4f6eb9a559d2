"""Whole process, measured from outside: the time from starting a command to its submission being written.

    python benchmarks/whole_process.py --model runs/cpu/xsmall --export runs/cpu/xsmall-default --rows 300

Every configuration runs as a subprocess on the same real rows (the sample's first ``--rows``, in the test layout):
the notebook loop (``benchmarks/notebook_infer.py``) and ``arena-infer`` on the export, once with the automatic
choice and warm caches, once with empty caches (the first use on a machine: it calibrates ``--backend auto``,
OpenVINO compiles, ONNX Runtime optimises its graph; :func:`configurations`), once forced onto the previous default
(ONNX Runtime fp32), plus any ``--extra NAME=EXPORT`` folders. Repeats are interleaved: each
repeat runs every configuration once, in an order rotated per repeat. Reported: seconds min / median / max and the
speed-up over the notebook loop as the median of per-repeat ratios; the submissions are compared with the notebook's.

Prints a Markdown table, then one line of JSON; ``--out`` keeps the JSON.
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

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[0].parent / "shared" / "data" / "arena" / "lmsys_kaggle" / "train_sample.csv"
BIN = Path(sys.executable).parent


def write_test_csv(src: Path, rows: int, dst: Path) -> None:
    frame = pd.read_csv(src)[["id", "prompt", "response_a", "response_b"]].iloc[:rows]
    frame.to_csv(dst, index=False)


def configurations(model: Path, export: Path, extra: list[str], work: Path) -> dict[str, tuple[list[str], dict]]:
    """Each process's command and environment. arena keeps what it learns about a machine in its cache folder
    (the ``--backend auto`` calibration, OpenVINO's compiled model, ONNX Runtime's optimised graph): "warm" shares
    one folder filled by an untimed warm-up, "empty" gets a new folder every run, so it pays the calibration, the
    compilation and the graph optimisation a first use on a machine pays."""
    warm = {"ARENA_CACHE_DIR": str(work / "cache-warm"), "ARENA_OPENVINO_CACHE": str(work / "cache-warm" / "openvino"),
            "ARENA_ORT_CACHE": str(work / "cache-warm" / "onnxruntime")}
    fresh = {"ARENA_CACHE_DIR": "{fresh}", "ARENA_OPENVINO_CACHE": "{fresh}/openvino",
             "ARENA_ORT_CACHE": "{fresh}/onnxruntime"}
    infer = [str(BIN / "arena-infer"), "{csv}", "--out", "{out}", "--model"]
    out = {
        "notebook loop (torch fp32, file order, batch 16)":
            ([sys.executable, str(HERE / "notebook_infer.py"), "{csv}", "--model", str(model), "--out", "{out}"], {}),
        "arena-infer, auto (warm caches)": (infer + [str(export)], warm),
        "arena-infer, auto (empty caches: calibrates, compiles)": (infer + [str(export)], fresh),
        "arena-infer --backend onnx --precision fp32": (infer + [str(export), "--backend", "onnx", "--precision",
                                                                 "fp32"], warm),
    }
    for item in extra:
        name, _, folder = item.partition("=")
        out[f"arena-infer, auto, {name}"] = (infer + [folder], warm)
    return out


def run_once(argv: list[str], env: dict, csv: Path, work: Path, tag: str) -> tuple[float, Path, str]:
    sub = work / f"{tag}.csv"
    fresh = tempfile.mkdtemp(dir=work, prefix="ov-cache-fresh-")
    argv = [a.format(csv=csv, out=sub) for a in argv]
    full_env = {**os.environ, **{k: v.format(fresh=fresh) for k, v in env.items()}}
    t0 = time.perf_counter()
    proc = subprocess.run(argv, env=full_env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    return seconds, sub, last


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, required=True, help="arena-train checkpoint (the notebook loop)")
    ap.add_argument("--export", type=Path, required=True, help="arena-export folder made with the defaults")
    ap.add_argument("--extra", action="append", default=[], help="NAME=EXPORT_FOLDER, also timed with auto")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--rows", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    from arena.bench.cli import machine_description

    work = Path(tempfile.mkdtemp(prefix="arena-whole-"))
    csv = work / "test.csv"
    write_test_csv(args.data, args.rows, csv)
    configs = configurations(args.model, args.export, args.extra, work)
    names = list(configs)
    small = work / "warmup-rows.csv"
    write_test_csv(args.data, 4, small)
    for name in names[1:]:  # fills the warm caches (each export's calibration and compiled models), untimed
        if configs[name][1].get("ARENA_CACHE_DIR") != "{fresh}":
            run_once(configs[name][0], configs[name][1], small, work, "warmup")
    times: dict[str, list[float]] = {n: [] for n in names}
    summaries: dict[str, str] = {}
    subs: dict[str, Path] = {}
    for r in range(args.repeats):
        for k, name in enumerate(names[r % len(names):] + names[:r % len(names)]):
            seconds, subs[name], summaries[name] = run_once(*configs[name], csv, work, f"r{r}-{k}")
            times[name].append(seconds)
            print(f"repeat {r} {name}: {seconds:.1f} s", file=sys.stderr, flush=True)
    base = names[0]
    reference = pd.read_csv(subs[base]).iloc[:, 1:].to_numpy()
    lines = ["| process | seconds min / median / max | vs notebook loop | max prob diff vs notebook |",
             "|---|---|---|---|"]
    result = {}
    for name in names:
        secs = sorted(times[name])
        speedup = statistics.median(b / s for s, b in zip(times[name], times[base], strict=True))
        diff = float(np.abs(pd.read_csv(subs[name]).iloc[:, 1:].to_numpy() - reference).max())
        result[name] = {"seconds": times[name], "median_s": statistics.median(secs), "speedup": speedup,
                        "max_prob_diff": diff, "summary": summaries[name][:2000]}
        lines.append(f"| {name} | {secs[0]:.1f} / {statistics.median(secs):.1f} / {secs[-1]:.1f} | "
                     f"{speedup:.2f}x | {diff:.1e} |")
    print(f"{args.rows} real rows, {args.repeats} interleaved repeats; {machine_description()}\n")
    print("\n".join(lines))
    for name in names[1:]:
        try:
            backend = json.loads(result[name]["summary"]).get("backend")
        except ValueError:
            backend = None
        print(f"- {name}: {backend}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"rows": args.rows, "machine": machine_description(),
                                        "command": "python " + " ".join(sys.argv), "results": result}, indent=2))
    print(json.dumps({n: round(r["speedup"], 3) for n, r in result.items()}))


if __name__ == "__main__":
    main()
