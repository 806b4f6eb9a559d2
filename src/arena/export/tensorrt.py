"""TensorRT 10 FP16 engines with length-bucketed optimisation profiles.

Pure, tested everywhere: :func:`plan_profiles` (buckets from the real length distribution), :func:`engine_key`
(an engine only runs on the GPU model, TensorRT version and ONNX file it was built for), :func:`check_engine`.
Needs TensorRT and a GPU (tests marked ``tensorrt``, skipped elsewhere): :func:`build_engine`,
:class:`TensorRTRunner`.

Why several profiles: one profile spanning 1..512 tokens makes TensorRT pick kernels for a single "opt" shape,
which is slow far from it. Each bucket here has its own min/opt/max for batch and sequence, and the runtime picks
the profile that fits each batch.

DeBERTa in FP16: users report garbage FP16 engines when LayerNorm, Softmax and the reductions around them run in
FP16. :func:`build_engine` keeps those layers (and Pow/Sqrt/Div of the normalisation) in FP32 with
``OBEY_PRECISION_CONSTRAINTS``; everything else (the MatMuls) runs in FP16.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from arena.artifacts import Profile
from arena.batching import round_up
from arena.errors import ConfigError, ModelError

log = logging.getLogger(__name__)



def plan_profiles(lengths: np.ndarray, *, max_length: int, max_tokens: int, max_batch: int = 256,
                  buckets: int = 4, multiple: int = 8) -> list[Profile]:
    """Sequence buckets at quantiles of the real (padded) lengths, each with its own batch range.

    Batches come from the token-budget batcher, so a batch padded to ``L`` tokens holds at most
    ``min(max_batch, max_tokens // L)`` rows: that is each bucket's ``batch_max`` at its shortest length.
    The last bucket always reaches ``max_length``, so every row the encoder can produce has a profile.
    """
    if buckets < 1:
        raise ConfigError("--trt-buckets must be at least 1")
    if max_tokens < round_up(max_length, multiple):
        raise ConfigError(f"--max-tokens {max_tokens} is smaller than one row of {max_length} tokens")
    padded = np.array([round_up(max(int(x), 1), multiple) for x in lengths], dtype=np.int64)
    if len(padded) == 0:
        padded = np.array([round_up(max_length, multiple)])
    qs = np.quantile(padded, np.linspace(0, 1, buckets + 1)[1:], method="higher")
    bounds = sorted({min(round_up(int(q), multiple), round_up(max_length, multiple)) for q in qs})
    bounds[-1] = round_up(max_length, multiple)
    profiles = []
    lo = multiple
    for hi in bounds:
        if hi < lo:
            continue
        inside = padded[(padded >= lo) & (padded <= hi)]
        opt = int(np.median(inside)) if len(inside) else hi
        opt = min(max(round_up(opt, multiple), lo), hi)
        b_max = max(1, min(max_batch, max_tokens // lo))
        b_opt = max(1, min(b_max, max_tokens // opt))
        profiles.append(Profile(lo, opt, hi, 1, b_opt, b_max))
        lo = hi + multiple
    return profiles


# --------------------------------------------------------------------------------------------------- GPU only

FP32_LAYER_TYPES = ("NORMALIZATION", "SOFTMAX", "REDUCE")
FP32_UNARY = ("SQRT", "EXP", "LOG")
FP32_ELEMENTWISE = ("POW", "DIV")


def _keep_fp32(trt: Any, layer: Any) -> bool:
    kind = layer.type
    if kind in tuple(getattr(trt.LayerType, n) for n in FP32_LAYER_TYPES):
        return True
    if kind == trt.LayerType.UNARY:
        return layer.op in tuple(getattr(trt.UnaryOperation, n) for n in FP32_UNARY)  # pragma: no cover
    if kind == trt.LayerType.ELEMENTWISE:
        return layer.op in tuple(getattr(trt.ElementWiseOperation, n) for n in FP32_ELEMENTWISE)  # pragma: no cover
    return False


def build_engine(onnx_path: Path, engine_path: Path, profiles: list[Profile], *, fp16: bool = True,
                 workspace_gib: float = 4.0, timing_cache: Path | None = None, fp32_norms: bool = True,
                 n_features: int = 0) -> dict[str, Any]:  # pragma: no cover - needs TensorRT and a GPU
    """Parse the ONNX file and build a serialized engine with one optimisation profile per bucket.

    ``n_features``: the width of a hybrid model's ``features`` input (0: the model has only token inputs).
    """
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ModelError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    kept_fp32 = 0
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
        if fp32_norms:
            config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
            for i in range(network.num_layers):
                layer = network.get_layer(i)
                if _keep_fp32(trt, layer):
                    layer.precision = trt.float32
                    for j in range(layer.num_outputs):
                        layer.set_output_type(j, trt.float32)
                    kept_fp32 += 1
    cache_bytes = timing_cache.read_bytes() if timing_cache is not None and timing_cache.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)
    for p in profiles:
        prof = builder.create_optimization_profile()
        for name, (lo, opt, hi) in p.input_shapes(n_features).items():
            prof.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(prof)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ModelError("TensorRT failed to build the engine (see the TensorRT log above)")
    engine_path.write_bytes(bytes(serialized))
    if timing_cache is not None:
        timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    return {"layers": network.num_layers, "layers_kept_fp32": kept_fp32, "workspace_gib": workspace_gib}
