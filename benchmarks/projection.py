"""How close is ``arena-infer --time-limit``'s projection to the run it projects? (issue 24; goal: within 15%)

    python benchmarks/projection.py --model runs/ci/xsmall-export --model runs/small-export \\
        --data ../shared/data/arena/lmsys_kaggle/train_sample.csv --rows 1500,10000 --tta swap

For every model and every row count, a test file is written from the real rows (the first N rows; repeated, with
new ids, past the end of the file: 10,000 from the 1,500-row sample) and scored by ``run_infer`` with a time
limit far above the run, so it projects and then runs: the projection (with its 95% interval) and the measured
wall time of the scoring pass come from the same process and the same loaded models. Run it on a quiet machine
(the projection is measured on the machine's speed at sampling time; a neighbour's load that comes and goes in
between shows up as error). Prints a Markdown table for ``benchmarks/RESULTS.md``, then one line of JSON.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path


def write_rows(source: Path, rows: int, out: Path) -> Path:
    """``rows`` rows of ``source`` as a test.csv (id, prompt, response_a, response_b), repeated with new ids."""
    import pandas as pd

    frame = pd.read_csv(source)[["id", "prompt", "response_a", "response_b"]]
    reps = -(-rows // len(frame))
    big = pd.concat([frame] * reps, ignore_index=True).head(rows)
    big["id"] = range(1, rows + 1)
    big.to_csv(out, index=False)
    return out


def measure(model: Path | list[Path], test_csv: Path, *, tta: str, backend: str) -> dict:
    from arena.infer.cli import run_infer

    with tempfile.TemporaryDirectory() as tmp:
        summary = run_infer(test_csv, model, Path(tmp) / "submission.csv", tta=tta, backend=backend,
                            time_limit="1000h", time_limit_action="warn", calibrate=False)
    p = summary["projection"]
    actual = summary["wall_s"]
    model_projected = sum(m["projected_s"] for m in p["members"])
    models = model if isinstance(model, list) else [model]
    return {"model": "+".join(map(str, models)), "label": "+".join(Path(m).name for m in models),
            "rows": summary["rows"], "backend": summary["backend"], "tta": tta,
            "projected_s": p["projected_s"], "low_s": p["low_s"], "high_s": p["high_s"],
            "actual_s": actual, "error": (p["projected_s"] - actual) / actual,
            "inside_interval": p["low_s"] <= actual <= p["high_s"], "sampling_s": p["spent_s"],
            # where the error sits: the model's share (projected vs measured inside the backend) and the rest
            "model_projected_s": model_projected, "model_actual_s": summary["model_s"],
            "encode_projected_s": p["encode_s"], "encode_actual_s": summary["encode_s"],
            "batches": summary["batches"], "padding_efficiency": summary["padding_efficiency"],
            "sample_rows": p["sample_rows"], "sample_rounds": [m["sample_rounds"] for m in p["members"]],
            "drift": [m["drift"] for m in p["members"]]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, action="append", default=[], help="an export or checkpoint (repeat)")
    ap.add_argument("--blend", action="append", default=[],
                    help="A,B,...: models scored together as one blend, as arena-infer --model A --model B (repeat)")
    ap.add_argument("--data", type=Path, required=True, help="a CSV of real rows (train_sample.csv)")
    ap.add_argument("--rows", default="1500,10000", help="row counts, comma-separated")
    ap.add_argument("--tta", default="swap")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--repeats", type=int, default=1, help="run every case this many times (run-to-run spread)")
    args = ap.parse_args()
    cases: list[Path | list[Path]] = [*args.model, *([Path(p) for p in b.split(",")] for b in args.blend)]
    if not cases:
        ap.error("give --model or --blend")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for rows in [int(r) for r in args.rows.split(",")]:
            test_csv = write_rows(args.data, rows, Path(tmp) / f"test-{rows}.csv")
            for _ in range(args.repeats):
                for model in cases:
                    results.append(measure(model, test_csv, tta=args.tta, backend=args.backend))
    from arena.machine.cpu import cpu_kind

    print(f"CPU: {cpu_kind()}\n")
    print("| model | rows | backend | projected (95% interval) | actual | error | model: projected / in backend | "
          "sampled rows (rounds) | drift | sampling cost |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['label']} | {r['rows']} | {r['backend']} | {r['projected_s']:.1f} s "
              f"({r['low_s']:.1f}-{r['high_s']:.1f}) | {r['actual_s']:.1f} s | {100 * r['error']:+.1f}% | "
              f"{r['model_projected_s']:.1f} / {r['model_actual_s']:.1f} s | {r['sample_rows']} "
              f"({'+'.join(map(str, r['sample_rounds']))}) | {'/'.join(f'{100 * d:.1f}%' for d in r['drift'])} | "
              f"{r['sampling_s']:.1f} s |")
    worst = max(abs(r["error"]) for r in results)
    print(json.dumps({"results": results, "worst_abs_error": worst, "goal": 0.15, "met": worst <= 0.15}))


if __name__ == "__main__":
    main()
