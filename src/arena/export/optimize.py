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


FP32_OPS = ("LayerNormalization", "SkipLayerNormalization", "Softmax", "LogSoftmax", "ReduceMean", "ReduceSum",
            "ReduceSumSquare", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2", "ReduceLogSum",
            "ReduceLogSumExp", "Pow", "Sqrt", "Reciprocal", "Exp", "Log")
"""Operators that stay FP32 in the FP16 model: normalisation, softmax, reductions and the functions around them
(DeBERTa's FP16 overflow traps: ``../shared/reference/TASK.md``)."""

_INDEX_SINKS = ("Shape", "Size", "Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual")
_FLOAT_TYPES = (1, 10, 11, 16)  # TensorProto FLOAT, FLOAT16, DOUBLE, BFLOAT16


def _is_index_sink(node: Any) -> bool:
    if node.op_type in _INDEX_SINKS:
        return True
    if node.op_type == "Cast":
        return next(a.i for a in node.attribute if a.name == "to") not in _FLOAT_TYPES
    return False


def index_only_nodes(graph: Any) -> set[str]:
    """Names of the nodes whose results only ever become integers or shapes (positions, buckets, masks).

    DeBERTa computes its relative-position buckets in float (``log`` of the distance, ``ceil``, cast back to int):
    in FP16 a bucket can round to its neighbour and the model attends to the wrong position, with no error.
    Walking the graph backwards from integer casts finds that arithmetic; it stays FP32. Needs named nodes.
    """
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    graph_outputs = {o.name for o in graph.output}
    keep: set[str] = set()
    for node in reversed(graph.node):  # ONNX graphs are topologically sorted: consumers come later
        if any(o in graph_outputs for o in node.output):
            continue
        users = [u for o in node.output for u in consumers.get(o, [])]
        if users and all(u.name in keep or _is_index_sink(u) for u in users):
            keep.add(node.name)
    return keep


def to_fp16(src: Path, dst: Path) -> dict[str, Any]:
    """Convert the exported (unfused, standard-operator) graph to FP16 with the precision written into the graph.

    MatMuls, Gemms, GELU and the element-wise work run in FP16; :data:`FP32_OPS` and the integer-position
    arithmetic (:func:`index_only_nodes`) stay FP32 behind explicit Casts; inputs and logits keep their types.
    TensorRT builds its strongly typed engine from this file as it is, so it holds only standard ONNX operators
    (no ``com.microsoft`` fusions, which TensorRT cannot parse); ONNX Runtime fuses at session start instead.
    Returns what the manifest records: the FP32 operator list and node counts per precision.
    """
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST
    from onnxruntime.transformers.onnx_model import OnnxModel

    try:
        proto = onnx.load(str(src))
        for i, node in enumerate(proto.graph.node):
            node.name = node.name or f"{node.op_type}_{i}"
        index_nodes = sorted(index_only_nodes(proto.graph))
        model = OnnxModel(proto)
        model.convert_float_to_float16(keep_io_types=True, op_block_list=[*DEFAULT_OP_BLOCK_LIST, *FP32_OPS],
                                       node_block_list=index_nodes)
        model.topological_sort()
        big = model.model.ByteSize() >= 2 * 1024**3
        onnx.save(model.model, str(dst), save_as_external_data=big)
    except Exception as exc:
        raise ModelError(f"FP16 conversion of {src} failed: {exc}") from exc
    return {"fp32_ops": list(FP32_OPS), "fp32_index_nodes": len(index_nodes),
            "domains": sorted({n.domain or "ai.onnx" for n in model.model.graph.node})}


def to_int8(src: Path, dst: Path) -> dict[str, Any]:
    """Dynamic INT8 quantisation of the weight MatMuls (for CPU serving), from the unfused graph."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    try:
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=False)
    except Exception as exc:
        raise ModelError(f"INT8 quantisation of {src} failed: {exc}") from exc
    return {"weight_type": "QInt8", "method": "quantize_dynamic"}
