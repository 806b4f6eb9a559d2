"""Model-only speed of every CPU backend and precision, side by side, repeats interleaved.

    python benchmarks/cpu_backends.py --model runs/cpu/xsmall --export runs/cpu/xsmall-export --rows 120

The same real rows, encoded once, in the batches inference uses (length-sorted, the CPU token budget, padded to a
multiple of 8), go through each backend in turn; each repeat visits every backend once, in an order rotated per
repeat, so a burst of load from another process on a shared machine hits all of them alike. Reported per backend:
rows/s (min / median / max over repeats) and the speed-up over ONNX Runtime fp32 and over the same backend's fp32,
each taken as the median of per-repeat ratios (pairs measured minutes apart are not compared).

ONNX Runtime static INT8 is not an arena-export artefact: it is made here (``quantize_static``, QDQ, calibrated on
the same real rows as NNCF) so the table can show why the static INT8 path goes through OpenVINO instead.
``--profile`` adds OpenVINO's per-operation-type time split (where the time goes).

Prints a Markdown table, then one line of JSON; ``--out`` keeps the JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "arena" / "lmsys_kaggle" / "train_sample.csv"
ALL = ("torch:fp32", "torch:bf16", "onnx:fp32", "onnx:int8", "onnx:int8_static", "openvino:fp32", "openvino:bf16",
       "openvino:int8")


def encoded_batches(folder: Path, csv: Path, rows: int, skip: int = 0):
    """Real rows ``skip .. skip+rows`` of ``csv`` as inference batches (feed dicts) with the export's encoder."""
    from arena.data import has_labels, read_records
    from arena.export.quantize import calibration_batches
    from arena.serving.executor import BatchExecutor
    from arena.serving.loading import open_model

    loaded = open_model(folder, backend="onnx", precision="fp32")
    records = read_records(csv, labelled=has_labels(csv))[skip:skip + rows]
    executor = BatchExecutor(loaded.runner, pad_id=loaded.encoder.pad_id, max_length=loaded.encoder.config.max_length,
                             model_type=loaded.model_type)  # the CPU token budget inference packs
    return calibration_batches(records, loaded.encoder, executor), loaded.encoder


def ort_static_int8(export: Path, calibration: list[dict]) -> Path:
    """ONNX Runtime static QDQ INT8 of the export's model.onnx (MatMul/Gemm, per-channel weights), made once."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    dst = export.parent / f"{export.name}.ort-static-int8.onnx"  # beside the export, not in it (manifest hashes)
    if dst.is_file():
        return dst

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(calibration)

        def get_next(self):
            return next(self.items, None)

    quantize_static(str(export / "model.onnx"), str(dst), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                    op_types_to_quantize=["MatMul", "Gemm"])
    return dst


def make_backends(names: list[str], model: Path, export: Path, calibration: list[dict]) -> dict:
    from arena.serving.backends.onnx import OnnxBackend
    from arena.serving.backends.torch import TorchBackend
    from arena.serving.loading import open_model

    out = {}
    for name in names:
        backend, prec = name.split(":")
        if backend == "torch":
            # torch:bf16-plain: bf16 with transformers' own relative-position gather (the backend's rewrite off)
            out[name] = TorchBackend(model, device="cpu", precision=prec.removesuffix("-plain"))
            out[name].rewrites_relpos &= not prec.endswith("-plain")
        elif prec == "int8_static":
            out[name] = OnnxBackend(ort_static_int8(export, calibration), device="cpu", precision=prec)
        else:
            out[name] = open_model(export, backend=backend, precision=prec).runner
        print(f"loaded {name}: {out[name].description}", file=sys.stderr)
    return out


def one_pass(backend, batches) -> tuple[float, np.ndarray]:
    outs = []
    t0 = time.perf_counter()
    for feeds in batches:
        outs.append(backend(feeds["input_ids"], feeds["attention_mask"], feeds.get("features")))
    return time.perf_counter() - t0, np.concatenate(outs)


def measure(backends: dict, batches, repeats: int) -> tuple[dict[str, list[float]], dict[str, np.ndarray]]:
    """Seconds per pass for each backend (repeat r visits the backends rotated by r), and each one's logits."""
    names = list(backends)
    for name in names:
        one_pass(backends[name], batches[:2])  # warm-up: first-shape compilation, allocations
    times: dict[str, list[float]] = {n: [] for n in names}
    logits: dict[str, np.ndarray] = {}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            seconds, logits[name] = one_pass(backends[name], batches)
            times[name].append(seconds)
            print(f"repeat {r} {name}: {seconds:.2f} s", file=sys.stderr, flush=True)
    return times, logits


def profile_openvino(path: Path, precision: str, batches, top: int = 8) -> list[tuple[str, float]]:
    """Share of OpenVINO's compute time by operation type, over ``batches``."""
    import openvino as ov

    from arena.machine.cpu import allowed_cores

    hint = "f32" if precision == "fp32" else "bf16"
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": hint, "PERF_COUNT": True,
                                                          "INFERENCE_NUM_THREADS": allowed_cores()})
    request = compiled.create_infer_request()
    totals: dict[str, float] = {}
    for feeds in batches:
        names = set().union(*(i.get_names() for i in compiled.inputs))
        request.infer({k: v for k, v in feeds.items() if k in names})
        for info in request.profiling_info:
            key = f"{info.node_type} ({info.exec_type})"
            totals[key] = totals.get(key, 0.0) + info.real_time.total_seconds()
    whole = sum(totals.values())
    return [(k, v / whole) for k, v in sorted(totals.items(), key=lambda kv: -kv[1])[:top]]


def fmt(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}x"


def report(times: dict[str, list[float]], rows: int, descriptions: dict[str, str]) -> tuple[str, dict]:
    def ratios(num: str, den: str) -> float | None:
        if num not in times or den not in times:
            return None
        return statistics.median(d / n for n, d in zip(times[num], times[den], strict=True))

    lines = ["| backend:precision | what ran | rows/s min / median / max | vs onnx:fp32 | vs its fp32 |",
             "|---|---|---|---|---|"]
    result = {}
    for name, secs in times.items():
        rps = sorted(rows / s for s in secs)
        own = name.split(":")[0] + ":fp32"
        vs_ort, vs_own = ratios(name, "onnx:fp32"), ratios(name, own) if own != name else None
        result[name] = {"rows_per_s": rps, "median": statistics.median(rps), "vs_onnx_fp32": vs_ort,
                        "vs_own_fp32": vs_own, "seconds": secs}
        lines.append(f"| {name} | {descriptions[name]} | {rps[0]:.2f} / {statistics.median(rps):.2f} / {rps[-1]:.2f} "
                     f"| {fmt(vs_ort)} | {fmt(vs_own)} |")
    return "\n".join(lines), result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, required=True, help="checkpoint (torch cells)")
    ap.add_argument("--export", type=Path, required=True, help="arena-export folder (with --int8 --int8-static)")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--rows", type=int, default=120)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--backends", default=",".join(ALL),
                    help="comma list of backend:precision (torch:bf16-plain: bf16, relative-position rewrite off)")
    ap.add_argument("--profile", default="", help="comma list of openvino:PRECISION to profile by operation type")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    from arena.bench.cli import machine_description

    names = [n.strip() for n in args.backends.split(",") if n.strip()]
    batches, encoder = encoded_batches(args.export, args.data, args.rows)
    calibration, _ = encoded_batches(args.export, args.data, 64, skip=256)
    backends = make_backends(names, args.model, args.export, calibration)
    times, logits = measure(backends, batches, args.repeats)
    agreement = {n: float(np.abs(v - logits[names[0]]).max()) for n, v in logits.items()}
    table, result = report(times, args.rows, {n: b.description for n, b in backends.items()})
    tokens = int(sum(f["attention_mask"].sum() for f in batches))
    print(f"{args.rows} real rows, {len(batches)} batches, {tokens} real tokens, max length "
          f"{encoder.config.max_length}; {machine_description()}; {args.repeats} interleaved repeats\n")
    print(table)
    print(f"\nmax |logit diff| vs {names[0]}: " + ", ".join(f"{n} {v:.1e}" for n, v in agreement.items()))
    profiles = {}
    for spec in filter(None, args.profile.split(",")):
        prec = spec.split(":")[1]
        entry = backends.get(spec)
        path = entry.path if entry is not None else args.export / "model.onnx"
        profiles[spec] = profile_openvino(path, "bf16" if prec == "int8" else prec, batches)
        print(f"\nwhere {spec} spends its time: " + ", ".join(f"{k} {v:.0%}" for k, v in profiles[spec]))
    payload = {"rows": args.rows, "batches": len(batches), "machine": machine_description(),
               "command": "python " + " ".join(sys.argv), "results": result, "max_logit_diff": agreement,
               "profiles": profiles}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(payload, indent=2))
    print(json.dumps({n: round(r["median"], 3) for n, r in result.items()}))


if __name__ == "__main__":
    main()
