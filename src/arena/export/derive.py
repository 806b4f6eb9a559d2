"""The models derived from a parity-checked ``model.onnx``: fused fp32, FP16 and INT8, each checked by the same
:class:`~arena.export.parity.ParityGate` before it is kept. Shared by the checkpoint exporter and the foreign-export
path (:mod:`arena.export.foreign`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from arena.export.parity import ParityGate, Tolerance


def derived_artifacts(tmp: Path, model_config: Any, gate: ParityGate, *, fp16: bool, int8: bool, optimize: bool,
                      fp32: Tolerance, fp16_tol: Tolerance, int8_tol: Tolerance) -> dict[str, Any]:
    """Write and check each derived model asked for from ``tmp/model.onnx``; their manifest artefact entries.
    ``model_config``: the Hugging Face config (attributes ``model_type``, ``num_attention_heads``, ``hidden_size``)
    that ONNX Runtime's fusion needs."""
    from arena.export import optimize as ort_opt
    from arena.serving.backends.onnx import OnnxBackend

    src = tmp / "model.onnx"
    out: dict[str, Any] = {}

    def check(name: str, file: str, tol: Tolerance) -> dict[str, Any]:
        return gate.check(name, OnnxBackend(tmp / file, device="cpu"), tol)

    if optimize:
        stats = ort_opt.fuse(src, tmp / "model.opt.onnx", model_config)
        out["fp32_fused"] = {"file": "model.opt.onnx", "precision": "fp32", "fusions": stats,
                             "parity": check("fp32_fused", "model.opt.onnx", fp32)}
    if fp16:
        # the one FP16 graph: ONNX Runtime CUDA runs it and TensorRT builds its strongly typed engine from it
        stats = ort_opt.to_fp16(src, tmp / "model.fp16.onnx")
        out["fp16"] = {"file": "model.fp16.onnx", "precision": "fp16", "conversion": stats,
                       "parity": check("fp16", "model.fp16.onnx", fp16_tol), "checked_on": "CPUExecutionProvider"}
    if int8:
        info = ort_opt.to_int8(src, tmp / "model.int8.onnx")
        out["int8"] = {"file": "model.int8.onnx", "precision": "int8", **info,
                       "parity": check("int8", "model.int8.onnx", int8_tol)}
    return out
