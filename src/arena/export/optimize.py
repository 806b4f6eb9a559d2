"""ONNX Runtime graph optimisation: fusion (onnxruntime.transformers), FP16 conversion, INT8 dynamic quantisation.

Measured on the 2-core CPUs here (``../shared/reference/CPU.md`` and ``benchmarks/RESULTS.md``): the transformer
optimizer's fusions can make DeBERTa *slower* on CPU, and ``quantize_dynamic`` fails on the fused graph, so INT8 is
quantised from the graph as exported. Each derived model is parity-checked by the caller.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from arena.errors import ModelError

log = logging.getLogger(__name__)


def _optimizer_model(src: Path, config: Any, use_gpu: bool) -> Any:
    from onnxruntime.transformers.optimizer import optimize_model

    # DeBERTa's disentangled attention does not match the BERT attention pattern; the optimizer still fuses
    # LayerNorm, Gelu, bias adds and the like. num_heads/hidden_size come from the model config.
    return optimize_model(str(src), model_type="bert", num_heads=int(config.num_attention_heads),
                          hidden_size=int(config.hidden_size), opt_level=1 if not use_gpu else 2,
                          use_gpu=use_gpu)


def fuse(src: Path, dst: Path, config: Any, *, use_gpu: bool = False) -> dict[str, int]:
    """Write the fused graph to ``dst``; return the fusion statistics (operator -> count)."""
    try:
        model = _optimizer_model(src, config, use_gpu)
    except Exception as exc:
        raise ModelError(f"onnxruntime.transformers could not optimise {src}: {exc}") from exc
    stats = {k: int(v) for k, v in model.get_fused_operator_statistics().items() if v}
    log.info("fusions applied: %s", ", ".join(f"{k} x{v}" for k, v in stats.items()) or "none")
    model.save_model_to_file(str(dst))
    return stats


def to_fp16(src: Path, dst: Path, config: Any, *, use_gpu: bool = True) -> dict[str, int]:
    """Fuse, then convert weights and activations to FP16 keeping float32 inputs/outputs (``keep_io_types``).

    LayerNorm stays fused (its FP16 kernel accumulates in FP32); the model's logits come out as float32.
    """
    try:
        model = _optimizer_model(src, config, use_gpu)
        stats = {k: int(v) for k, v in model.get_fused_operator_statistics().items() if v}
        model.convert_float_to_float16(keep_io_types=True)
    except Exception as exc:
        raise ModelError(f"FP16 conversion of {src} failed: {exc}") from exc
    model.save_model_to_file(str(dst))
    return stats


def to_int8(src: Path, dst: Path) -> dict[str, Any]:
    """Dynamic INT8 quantisation of the weight MatMuls (for CPU serving), from the unfused graph."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    try:
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=False)
    except Exception as exc:
        raise ModelError(f"INT8 quantisation of {src} failed: {exc}") from exc
    return {"weight_type": "QInt8", "method": "quantize_dynamic"}
