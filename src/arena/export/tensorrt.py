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

import hashlib
import json
import logging
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from arena.batching import round_up
from arena.errors import BackendUnavailable, ConfigError, ModelError

log = logging.getLogger(__name__)

INPUTS = ("input_ids", "attention_mask")
FEATURES = "features"


@dataclass(frozen=True)
class Profile:
    """One optimisation profile: shapes (batch, sequence) at min / opt / max."""

    seq_min: int
    seq_opt: int
    seq_max: int
    batch_min: int
    batch_opt: int
    batch_max: int

    def fits(self, batch: int, seq: int) -> bool:
        return self.seq_min <= seq <= self.seq_max and self.batch_min <= batch <= self.batch_max

    def shapes(self) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
        return (self.batch_min, self.seq_min), (self.batch_opt, self.seq_opt), (self.batch_max, self.seq_max)

    def input_shapes(self, n_features: int = 0) -> dict[str, tuple[tuple[int, ...], ...]]:
        """min / opt / max shape of every engine input: the token inputs are (batch, sequence); a hybrid model's
        ``features`` input is (batch, n_features), its batch range the same as the tokens'."""
        out: dict[str, tuple[tuple[int, ...], ...]] = {name: self.shapes() for name in INPUTS}
        if n_features:
            out[FEATURES] = tuple((b, n_features) for b in (self.batch_min, self.batch_opt, self.batch_max))
        return out


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


def pick_profile(profiles: list[Profile], batch: int, seq: int) -> int:
    """Index of the first profile whose ranges hold (batch, seq); the smallest such bucket comes first."""
    for i, p in enumerate(profiles):
        if p.fits(batch, seq):
            return i
    raise ConfigError(f"no TensorRT profile holds a batch of {batch} x {seq} tokens; rebuild with a wider plan")


def slug(text: str) -> str:
    """A file-name-safe form of a GPU name or version."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def engine_key(onnx_sha256: str, gpu_name: str, compute_capability: str, trt_version: str, precision: str,
               profiles: list[Profile]) -> str:
    """Identity of an engine: it only runs where all of these match."""
    blob = json.dumps({"onnx": onnx_sha256, "gpu": gpu_name, "cc": compute_capability, "trt": trt_version,
                       "precision": precision, "profiles": [asdict(p) for p in profiles]}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def engine_filename(gpu_name: str, trt_version: str, precision: str, key: str) -> str:
    return f"model.{precision}.{slug(gpu_name)}.trt{trt_version}.{key[:12]}.engine"


def check_engine(entry: dict[str, Any], *, gpu_name: str, compute_capability: str, trt_version: str,
                 onnx_sha256: str) -> None:
    """Raise :class:`BackendUnavailable` naming what differs between the engine's build and this machine."""
    wanted = {"gpu_name": gpu_name, "compute_capability": compute_capability, "tensorrt_version": trt_version,
              "onnx_sha256": onnx_sha256}
    diffs = [f"{k}: engine {entry.get(k)!r} vs here {v!r}" for k, v in wanted.items() if entry.get(k) != v]
    if diffs:
        raise BackendUnavailable(
            "the TensorRT engine was built for another setup (" + "; ".join(diffs) + "). Rebuild it here with "
            "`arena-export CHECKPOINT --out DIR --trt`, or use --backend onnx/torch."
        )


def tensorrt_available() -> tuple[bool, str]:
    """(available, reason) without importing anything heavy when it is not."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False, "the tensorrt package is not installed (pip install 'arena-toolkit[gpu]')"
    try:
        import torch

        if not torch.cuda.is_available():
            return False, "no CUDA GPU is visible to PyTorch; TensorRT engines need an NVIDIA GPU"
    except ImportError:
        return False, "PyTorch is not installed"
    return True, "ok"


def gpu_identity() -> tuple[str, str]:
    import torch

    major, minor = torch.cuda.get_device_capability()
    return torch.cuda.get_device_name(), f"{major}.{minor}"


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


class TensorRTRunner:  # pragma: no cover - needs TensorRT and a GPU
    """Run an engine: pick the profile that fits each batch, bind torch CUDA buffers, execute on a stream."""

    def __init__(self, engine_path: Path, profiles: list[Profile], *, n_features: int = 0) -> None:
        import tensorrt as trt
        import torch

        self.torch = torch
        self.profiles = profiles
        self.n_features = n_features
        self.needs_features = n_features > 0
        logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(logger)
        data = Path(engine_path).read_bytes()
        self.engine = self.runtime.deserialize_cuda_engine(data)
        if self.engine is None:
            raise ModelError(f"{engine_path} is not a TensorRT engine this TensorRT version can load (corrupt?)")
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream()
        self.input_dtypes = {n: self.engine.get_tensor_dtype(n) for n in INPUTS}
        self.current = -1

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray,
                 features: np.ndarray | None = None) -> np.ndarray:
        import tensorrt as trt

        torch = self.torch
        batch, seq = input_ids.shape
        k = pick_profile(self.profiles, batch, seq)
        if k != self.current:
            self.context.set_optimization_profile_async(k, self.stream.cuda_stream)
            self.current = k
        tensors = {}
        for name, array in (("input_ids", input_ids), ("attention_mask", attention_mask)):
            dtype = torch.int32 if self.input_dtypes[name] == trt.int32 else torch.int64
            tensors[name] = torch.from_numpy(array).to("cuda", dtype=dtype, non_blocking=True)
            self.context.set_input_shape(name, (batch, seq))
        if self.n_features:
            if features is None or features.shape != (batch, self.n_features):
                raise ConfigError(f"this engine takes a ({batch}, {self.n_features}) features input")
            tensors[FEATURES] = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)).to("cuda")
            self.context.set_input_shape(FEATURES, (batch, self.n_features))
        out = torch.empty((batch, 3), dtype=torch.float32, device="cuda")
        for name, t in tensors.items():
            self.context.set_tensor_address(name, t.data_ptr())
        self.context.set_tensor_address("logits", out.data_ptr())
        with torch.cuda.stream(self.stream):
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise ModelError("TensorRT execution failed")
        self.stream.synchronize()
        return out.cpu().numpy()
