"""Build TensorRT engines: strongly typed, from the export's parity-checked FP16 ONNX, one profile per length bucket.

Pure, tested everywhere: :func:`plan_profiles` (buckets from the real length distribution, batch ranges from the
token budget inference packs) and :func:`planned_budget`. Needs TensorRT >= 10.12 and a GPU (tests marked
``tensorrt``): :func:`build_engine`.

Precision lives in the graph. TensorRT 11 removed weak typing (the FP16/INT8 builder flags, precision constraints,
per-layer precision and output-type hints, INT8 calibrators), so the engine is built from ``model.fp16.onnx``, whose
normalisation, softmax, reductions and position arithmetic are FP32 behind explicit Casts
(:func:`arena.export.optimize.to_fp16`), and the network is created with the STRONGLY_TYPED flag: TensorRT runs each
layer in the type the graph gives it. The flag is needed on 10.12-10.x and accepted (always on) on 11.x.

Why several profiles: one profile spanning 1..512 tokens makes TensorRT pick kernels for a single "opt" shape,
which is slow far from it. Each bucket here has its own min/opt/max for batch and sequence, and the runtime picks
the profile that fits each batch (:func:`arena.artifacts.pick_profile`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from arena.artifacts import Profile
from arena.errors import ConfigError, ModelError, ParityError
from arena.serving.batching import resolve_budget, round_up

if TYPE_CHECKING:  # the real 11.4 API, as stubs generated from NVIDIA's bindings describe it (tests/tensorrt_api.py)
    import tensorrt as trt

log = logging.getLogger(__name__)

DEFAULT_MAX_BATCH = 64
"""Rows per batch the profiles allow: ``arena-infer --batch-size``'s default, so "opt" shapes are the real ones."""


def planned_budget(max_tokens: int | None, max_length: int, model_type: str | None = None) -> int:
    """The token budget engines are planned for: ``--max-tokens``, else exactly what ``arena-infer`` packs on a GPU
    (:func:`arena.serving.batching.resolve_budget` with ``device="cuda"``), so the default plan and the default
    batches are
    one number. The manifest records it and the TensorRT backend states it as its ``limits.max_tokens``."""
    return resolve_budget(max_tokens, device="cuda", max_length=max_length, model_type=model_type)


def plan_profiles(lengths: np.ndarray, *, max_length: int, max_tokens: int, max_batch: int = DEFAULT_MAX_BATCH,
                  buckets: int = 4, multiple: int = 8) -> list[Profile]:
    """Sequence buckets at quantiles of the real (padded) lengths, each with its own batch range.

    The buckets tile every length from 1 to ``max_length`` rounded up to ``multiple`` without gaps, so a batch of
    any padded length (multiple of 8 under the ``sorted`` policy, or not) has exactly one profile. A batch padded
    to ``L`` tokens holds at most ``min(max_batch, max_tokens // L)`` rows, so each bucket's ``batch_max`` is that
    at its shortest length: it never grows from one bucket to the next, and a batch that fits the bucket of its
    rounded-up length also fits the bucket of its exact length.
    """
    if buckets < 1:
        raise ConfigError("--trt-buckets must be at least 1")
    if max_batch < 1:
        raise ConfigError("the TensorRT batch limit must be at least 1")
    top = round_up(max_length, multiple)
    if max_tokens < top:
        raise ConfigError(f"--max-tokens {max_tokens} is smaller than one row of {top} tokens")
    padded = np.array([min(round_up(max(int(x), 1), multiple), top) for x in lengths], dtype=np.int64)
    if len(padded) == 0:
        padded = np.array([top])
    qs = np.quantile(padded, np.linspace(0, 1, buckets + 1)[1:], method="higher")
    bounds = sorted({min(round_up(int(q), multiple), top) for q in qs})
    bounds[-1] = top
    profiles = []
    lo = 1
    for hi in bounds:
        inside = padded[(padded >= lo) & (padded <= hi)]
        opt = int(np.median(inside)) if len(inside) else hi
        opt = min(max(round_up(opt, multiple), lo), hi)
        b_max = max(1, min(max_batch, max_tokens // lo))
        b_opt = max(1, min(b_max, max_tokens // opt))
        profiles.append(Profile(lo, opt, hi, 1, b_opt, b_max))
        lo = hi + 1
    return profiles


def use_timing_cache(config: trt.IBuilderConfig, path: Path | None) -> bool:
    """Give the build ``path``'s timing cache; True when the saved one was taken.

    TensorRT refuses (``set_timing_cache`` returns False) a cache recorded on another GPU or TensorRT version; the
    build then starts from an empty cache, with a warning, and :func:`build_engine` writes the new one over the
    stale file. Raises :class:`ModelError` when even an empty cache is refused.
    """
    saved = path.read_bytes() if path is not None and path.is_file() else b""
    if saved and config.set_timing_cache(config.create_timing_cache(saved), ignore_mismatch=False):
        return True
    if saved:
        log.warning("%s was recorded on another GPU or TensorRT version; building without it (it will be "
                    "replaced)", path)
    if not config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False):
        raise ModelError("TensorRT refused an empty timing cache")
    return False


# --------------------------------------------------------------------------------------------------- GPU only


def build_engine(onnx_path: Path, engine_path: Path, profiles: list[Profile], *, workspace_gib: float = 4.0,
                 timing_cache: Path | None = None,
                 n_features: int = 0) -> dict[str, Any]:  # pragma: no cover - needs TensorRT and a GPU
    """Parse the FP16 ONNX file into a strongly typed network and write a serialized engine with one
    optimisation profile per bucket to ``engine_path``.

    ``n_features``: the width of a hybrid model's ``features`` input (0: the model has only token inputs).
    Raises :class:`ModelError` when TensorRT cannot parse or build, :class:`BackendUnavailable` when the installed
    TensorRT is older than 10.12.
    """
    import tensorrt as trt

    from arena.serving.backends.tensorrt import check_tensorrt_version

    check_tensorrt_version(trt.__version__)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(parser.get_error(i).desc() for i in range(parser.num_errors))
        raise ModelError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    use_timing_cache(config, timing_cache)
    for p in profiles:
        prof = builder.create_optimization_profile()
        for name, (lo, opt, hi) in p.input_shapes(n_features).items():
            prof.set_shape(name, trt.Dims(list(lo)), trt.Dims(list(opt)), trt.Dims(list(hi)))
        config.add_optimization_profile(prof)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ModelError("TensorRT failed to build the engine (see the TensorRT log above)")
    engine_path.write_bytes(bytes(serialized))
    if timing_cache is not None:
        timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    return {"layers": network.num_layers, "workspace_gib": workspace_gib, "strongly_typed": True,
            "built_with": trt.__version__}


def build_trt_section(folder: Path, *, lengths: np.ndarray, max_length: int, model_type: str | None,
                      n_features: int, buckets: int, max_tokens: int | None, workspace_gib: float,
                      parity: Callable[[Any], Any]) -> dict[str, Any]:  # pragma: no cover - needs TensorRT and a GPU
    """Plan profiles for the token budget inference packs (from the real rows' encoded ``lengths``), build the
    strongly typed engine from ``folder/model.fp16.onnx``, and check it with ``parity(runner)`` (the export's
    reference on the real parity rows, the FP16 gate; a failure raises :class:`ParityError` and nothing is kept).
    The same builder serves a checkpoint and a foreign export: it needs no PyTorch model, only what the graph is.

    Returns the manifest's ``tensorrt`` section: the budget the profiles were planned for, and per engine the GPU,
    compute capability and TensorRT version it runs on, the ONNX file and hash it came from, profiles and parity.
    """
    from dataclasses import asdict

    import tensorrt as trt_mod

    from arena.artifacts import engine_filename, engine_key, slug
    from arena.io import sha256_file
    from arena.serving.backends.tensorrt import TensorRTRunner, gpu_identity

    onnx_file, version = "model.fp16.onnx", trt_mod.__version__
    budget = planned_budget(max_tokens, max_length, model_type)
    profiles = plan_profiles(lengths, max_length=max_length, max_tokens=budget, buckets=buckets)
    gpu, cc = gpu_identity()
    onnx_sha = sha256_file(folder / onnx_file)
    key = engine_key(onnx_sha, gpu, cc, version, "fp16", profiles)
    name = engine_filename(gpu, version, "fp16", key)
    cache = Path.home() / ".cache" / "arena" / f"trt-timing-{slug(gpu)}-{version}.cache"
    cache.parent.mkdir(parents=True, exist_ok=True)
    info = build_engine(folder / onnx_file, folder / name, profiles, workspace_gib=workspace_gib,
                        timing_cache=cache, n_features=n_features)
    report = parity(TensorRTRunner((folder / name).read_bytes()))
    for line in report.lines():
        log.info("parity %s", line)
    if not report.passed:
        raise ParityError("tensorrt parity check failed, nothing was kept: " + "; ".join(report.failures)
                          + "\n" + "\n".join(report.lines()))
    return {"status": "built", "max_tokens": budget, "engines": [{
        "file": name, "key": key, "gpu_name": gpu, "compute_capability": cc, "tensorrt_version": version,
        "onnx_file": onnx_file, "onnx_sha256": onnx_sha, "precision": "fp16", "strongly_typed": True,
        "features": n_features, "max_tokens": budget, "profiles": [asdict(p) for p in profiles],
        "parity": report.to_dict(), **info}]}
