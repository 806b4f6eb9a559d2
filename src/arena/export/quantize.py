"""Static INT8 for the CPU: post-training quantisation calibrated on real rows (NNCF, for OpenVINO).

Dynamic INT8 (:func:`arena.export.optimize.to_int8`) quantises only the weight MatMuls and computes activation
scales at run time; on DeBERTa it gains 1.26-1.38x over fp32 (``benchmarks/RESULTS.md``). Static quantisation fixes
the activation scales from calibration batches, so OpenVINO runs the MatMuls - including attention's - as INT8
with VNNI and fuses the rescaling into neighbouring operations.

The calibration batches are built by the executor inference uses: real rows, length-sorted, packed under the CPU
token budget and padded to a multiple of 8, so the activation ranges seen are the ones served.
"""

from __future__ import annotations

import contextlib
import importlib.metadata as md
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from arena.artifacts import FEATURES, INPUT_IDS, TOKEN_INPUTS, feed_arrays, numpy_dtype
from arena.errors import ModelError

log = logging.getLogger(__name__)


def calibration_batches(records, encoder, executor,
                        input_names: tuple[str, ...] | None = None) -> list[dict[str, np.ndarray]]:
    """``records`` encoded by ``encoder`` and planned and padded by ``executor`` (the
    :class:`~arena.serving.executor.BatchExecutor` inference uses, so the batches are length-sorted and packed under its
    token budget): a list of feed dicts (graph input name -> array) for a graph taking ``input_names`` (default:
    the token inputs, and features where the rows have them), built as every backend feeds
    (:func:`arena.artifacts.feed_arrays`)."""
    out = []
    for b in executor.prepare(encoder.encode(records)).batches:
        names = input_names or (*TOKEN_INPUTS, *((FEATURES,) if b.features is not None else ()))
        feeds = feed_arrays(names, b.input_ids, b.attention_mask, b.features)
        out.append({k: np.ascontiguousarray(v, dtype=numpy_dtype(k)) for k, v in feeds.items()})
    return out


def quantize_openvino(src: Path, dst: Path, batches: list[dict[str, np.ndarray]]) -> dict[str, Any]:
    """Quantise ``src`` (ONNX) with NNCF on ``batches`` and save the INT8 model as OpenVINO IR at ``dst`` (.xml,
    weights beside it in .bin). Returns what the manifest records about the method.

    ``ModelType.TRANSFORMER`` keeps LayerNorm, Softmax and the like in floating point and applies SmoothQuant; the
    ``MIXED`` preset (symmetric weights, asymmetric activations) suits GELU/softmax outputs. Weights that stay
    float are saved in fp32 (``compress_to_fp16=False``), so only the quantised operations differ from the ONNX.
    """
    try:
        import nncf
        import openvino as ov
    except ImportError:
        raise ModelError("static INT8 needs NNCF and OpenVINO: pip install 'arena-toolkit[openvino]'") from None
    if not batches:
        raise ModelError("static INT8 needs calibration rows; none were given")
    t0 = time.perf_counter()
    try:  # NNCF draws progress bars on stdout, which belongs to the CLI's one line of JSON
        model = ov.Core().read_model(str(src))
        with contextlib.redirect_stdout(sys.stderr):
            quantized = nncf.quantize(model, nncf.Dataset(batches), model_type=nncf.ModelType.TRANSFORMER,
                                      preset=nncf.QuantizationPreset.MIXED, subset_size=len(batches))
        ov.save_model(quantized, str(dst), compress_to_fp16=False)
    except Exception as exc:  # NNCF and OpenVINO raise their own RuntimeError subclasses
        raise ModelError(f"NNCF static INT8 quantisation of {src} failed: {exc}") from exc
    seconds = time.perf_counter() - t0
    rows = int(sum(len(b[INPUT_IDS]) for b in batches))
    log.info("static INT8 (NNCF %s): %d calibration batches, %d rows, %.1f s", md.version("nncf"), len(batches),
             rows, seconds)
    return {"method": "nncf.quantize", "nncf": md.version("nncf"), "model_type": "transformer", "preset": "mixed",
            "calibration_batches": len(batches), "calibration_rows": rows, "seconds": round(seconds, 1)}
