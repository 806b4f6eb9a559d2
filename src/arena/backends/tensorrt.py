"""TensorRT runtime: is TensorRT usable here, which GPU is this, run an engine; the backend that checks an engine
against this GPU / TensorRT / ONNX file (:func:`arena.artifacts.check_engine`) before running it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from arena.artifacts import FEATURES, TOKEN_INPUTS, Profile, check_engine, pick_profile
from arena.backends.contract import Limits, ShapeRange
from arena.errors import BackendUnavailable, ConfigError, ModelError


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
        self.input_dtypes = {n: self.engine.get_tensor_dtype(n) for n in TOKEN_INPUTS}
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


class TensorRTBackend:  # pragma: no cover - needs TensorRT and a GPU
    name = "tensorrt"
    device = "cuda"

    def __init__(self, folder: Path, manifest: dict[str, Any]) -> None:
        ok, why = tensorrt_available()
        if not ok:
            raise BackendUnavailable(f"--backend tensorrt: {why}")
        import tensorrt as trt

        gpu, cc = gpu_identity()
        section = manifest.get("tensorrt", {})
        onnx_sha = section.get("onnx_sha256", "")
        for entry in section.get("engines", []):
            try:
                check_engine(entry, gpu_name=gpu, compute_capability=cc, trt_version=trt.__version__,
                             onnx_sha256=onnx_sha)
            except BackendUnavailable as exc:
                last = exc
                continue
            profiles = [Profile(**p) for p in entry["profiles"]]
            self.runner = TensorRTRunner(folder / entry["file"], profiles, n_features=int(entry.get("features", 0)))
            self.profiles = profiles
            self.needs_features = self.runner.needs_features
            self.limits = Limits(max_length=max(p.seq_max for p in profiles),
                                 ranges=tuple(ShapeRange(p.seq_min, p.seq_max, p.batch_max) for p in profiles))
            self.description = f"tensorrt ({entry['file']}, {entry.get('precision', 'fp16')}, cuda)"
            return
        raise last if section.get("engines") else BackendUnavailable(f"{folder} has no TensorRT engines")

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray,
                 features: np.ndarray | None = None) -> np.ndarray:
        return self.runner(input_ids, attention_mask, features)
