"""Model-only speed of DeBERTa-v3's relative-position gather, plain or rewritten (issue 25).

    python benchmarks/relpos_gather.py --repeats 7

The xsmall architecture (its config in ../shared/models/deberta-v3/configs; random weights, since speed does not
depend on trained values) is traced by arena's exporter plain, whose c2p/p2c gathers are ONNX GatherElements, and
in each form of the rewrite (:mod:`arena.models.relpos`: ``rows``, the form OpenVINO gets, one Gather over the
flattened scores; ``table``, Gather on the position table, MatMul, a Pad/Reshape/Slice shift). ONNX Runtime fp32 and
OpenVINO fp32 each run every graph, and torch the eager model in each form (fp32, and bf16 under autocast as the
torch backend runs it on the CPU), on the same (batch, length) token ids (default 2 x 512: the CPU batch arena-infer
packs, at DeBERTa's trained length). Each repeat visits the cells in an order rotated per repeat, so a burst of load
from another process hits all alike; a cell's time in one repeat is the mean of ``--iters`` calls after a warm-up.
Reported per cell: ms per batch (min / median / max over repeats) and, for a rewritten graph, its speed-up over the
plain one on the same runtime (the median of per-repeat ratios). Run it on a quiet machine.

Prints a Markdown table, then one line of JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CONFIG = (Path(__file__).resolve().parents[1].parent / "shared" / "models" / "deberta-v3" / "configs"
          / "deberta-v3-xsmall.json")
RUNTIMES = ("onnx", "openvino", "torch", "torch_bf16")
LABELS = {"onnx": "ONNX Runtime fp32", "openvino": "OpenVINO fp32", "torch": "torch fp32 (eager)",
          "torch_bf16": "torch bf16 (eager, autocast)"}
"""The torch cells run the eager model itself, plain or inside :func:`arena.models.relpos.relpos_rewrite` (what
the torch backend does for bf16 on the CPU); the others run the traced graphs."""


def export_graphs(config: Path, folder: Path, forms: list[str]) -> tuple[object, dict[str, Path]]:
    """The architecture in ``config`` with random weights, and its traces plain and in each rewrite form of
    ``forms``."""
    import torch
    from transformers import DebertaV2Config, DebertaV2ForSequenceClassification

    from arena.export.onnx import export_onnx
    from arena.models.relpos import relpos_rewrite

    torch.manual_seed(0)
    model = DebertaV2ForSequenceClassification(DebertaV2Config(**{**json.loads(config.read_text()),
                                                                  "num_labels": 3})).eval()
    paths = {graph: folder / f"{graph}.onnx" for graph in ("plain", *forms)}
    export_onnx(model, paths["plain"])
    for form in forms:
        with relpos_rewrite(model, form) as swapped:
            if not swapped:
                raise SystemExit(f"{config} has no DeBERTa-v2/v3 relative-position attention to rewrite")
            export_onnx(model, paths[form])
    return model, paths


def eager_cell(model, form: str | None, bf16: bool):
    """The eager model as a backend: (ids, mask) -> logits, under bf16 autocast if asked, in the rewrite ``form``
    (None: transformers' own bias)."""
    import contextlib

    import torch

    from arena.models.relpos import relpos_rewrite

    def run(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        with (torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16),
              relpos_rewrite(model, form) if form else contextlib.nullcontext()):
            out = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
        return out.logits.float().numpy()
    return run


def open_cells(model, paths: dict[str, Path], runtimes: list[str], threads: int | None) -> dict[str, object]:
    """``runtime:graph`` -> a backend running that graph (ONNX Runtime, OpenVINO: fp32) or that form of the eager
    model (torch) on the CPU."""
    import torch

    from arena.machine.cpu import allowed_cores
    from arena.serving.backends.onnx import OnnxBackend
    from arena.serving.backends.openvino import OpenVinoBackend

    torch.set_num_threads(threads or allowed_cores())  # what the other runtimes get and the report prints
    cells: dict[str, object] = {}
    for runtime in runtimes:
        for graph, path in paths.items():
            if runtime.startswith("torch"):
                cell = eager_cell(model, None if graph == "plain" else graph, bf16=runtime == "torch_bf16")
            elif runtime == "onnx":
                cell = OnnxBackend(path, device="cpu", threads=threads)
            else:
                cell = OpenVinoBackend(path, precision="fp32", threads=threads, cache_dir=None)
            cells[f"{runtime}:{graph}"] = cell
    return cells


def measure(cells: dict, ids: np.ndarray, mask: np.ndarray, *, repeats: int, iters: int,
            warmup: int) -> tuple[dict[str, list[float]], dict[str, np.ndarray]]:
    """Milliseconds per call for each cell (one mean of ``iters`` calls per repeat, cells rotated by repeat) and
    each cell's logits."""
    names = list(cells)
    logits = {}
    for name in names:
        for _ in range(warmup):
            logits[name] = cells[name](ids, mask)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            t0 = time.perf_counter()
            for _ in range(iters):
                cells[name](ids, mask)
            times[name].append(1000 * (time.perf_counter() - t0) / iters)
            print(f"repeat {r} {name}: {times[name][-1]:.1f} ms", file=sys.stderr, flush=True)
    return times, logits


def report(times: dict[str, list[float]]) -> tuple[str, dict]:
    """The Markdown table and the per-cell results (speed-up of a rewritten graph: plain / rewritten, the median of
    per-repeat ratios)."""
    lines = ["| runtime | graph | ms per batch min / median / max | rewrite speed-up |", "|---|---|---|---|"]
    result: dict[str, dict] = {}
    for name, ms in times.items():
        runtime, graph = name.split(":")
        plain = times.get(f"{runtime}:plain")
        speedup = (statistics.median(p / m for p, m in zip(plain, ms, strict=True))
                   if graph != "plain" and plain else None)
        s = sorted(ms)
        result[name] = {"ms": ms, "min": s[0], "median": statistics.median(s), "max": s[-1], "speedup": speedup}
        lines.append(f"| {LABELS[runtime]} | {graph} | {s[0]:.1f} / {statistics.median(s):.1f} / {s[-1]:.1f} | "
                     f"{'-' if speedup is None else f'{speedup:.2f}x'} |")
    return "\n".join(lines), result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", type=Path, default=CONFIG, help="a DeBERTa-v2/v3 config.json")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--length", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--iters", type=int, default=5, help="calls per cell per repeat")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="default: every core this process may use")
    ap.add_argument("--runtimes", default=",".join(RUNTIMES))
    ap.add_argument("--forms", default=None, help="rewrite forms to time (default: all of arena.models.relpos.FORMS)")
    args = ap.parse_args()

    from arena.export.relpos import gather_elements_count
    from arena.machine.cpu import allowed_cores, cpu_kind
    from arena.models.relpos import DEFAULT_FORM, FORMS

    runtimes = [r.strip() for r in args.runtimes.split(",") if r.strip()]
    forms = [f.strip() for f in (args.forms or ",".join(FORMS)).split(",") if f.strip()]
    if set(forms) - set(FORMS):
        ap.error(f"--forms takes {', '.join(FORMS)}")
    if set(runtimes) - set(RUNTIMES):
        ap.error(f"--runtimes takes {', '.join(RUNTIMES)}")
    rng = np.random.default_rng(0)
    ids = rng.integers(5, 120000, size=(args.batch, args.length), dtype=np.int64)
    mask = np.ones_like(ids)
    with tempfile.TemporaryDirectory() as tmp:
        model, paths = export_graphs(args.config, Path(tmp), forms)
        gathers = {graph: gather_elements_count(path) for graph, path in paths.items()}
        cells = open_cells(model, paths, runtimes, args.threads)
        times, logits = measure(cells, ids, mask, repeats=args.repeats, iters=args.iters, warmup=args.warmup)
    table, result = report(times)
    first = next(iter(logits))
    agreement = {n: float(np.abs(v - logits[first]).max()) for n, v in logits.items()}
    threads = args.threads or allowed_cores()
    print(f"{args.config.stem}, random weights, {args.batch} x {args.length} tokens; {cpu_kind()}, {threads} "
          f"threads; {args.repeats} interleaved repeats of {args.iters} calls; arena-export ships {DEFAULT_FORM}; "
          "GatherElements nodes: "
          + ", ".join(f"{g} {n}" for g, n in gathers.items()) + "\n")
    print(table)
    print(f"\nmax |logit diff| vs {first}: " + ", ".join(f"{n} {v:.1e}" for n, v in agreement.items()))
    print(json.dumps({"config": str(args.config), "batch": args.batch, "length": args.length, "cpu": cpu_kind(),
                      "threads": threads, "repeats": args.repeats, "iters": args.iters,
                      "shipped_form": DEFAULT_FORM, "gather_elements": gathers, "results": result,
                      "max_logit_diff": agreement,
                      "command": "python " + " ".join(sys.argv)}))


if __name__ == "__main__":
    main()
