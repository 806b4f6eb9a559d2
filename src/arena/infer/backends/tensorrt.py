"""TensorRT backend: checks the engine against this GPU / TensorRT / ONNX file, then runs it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from arena.errors import BackendUnavailable
from arena.export.tensorrt import Profile, check_engine, gpu_identity, tensorrt_available


class TensorRTBackend:  # pragma: no cover - needs TensorRT and a GPU
    name = "tensorrt"
    device = "cuda"

    def __init__(self, folder: Path, manifest: dict[str, Any]) -> None:
        ok, why = tensorrt_available()
        if not ok:
            raise BackendUnavailable(f"--backend tensorrt: {why}")
        import tensorrt as trt

        from arena.export.tensorrt import TensorRTRunner

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
            return
        raise last if section.get("engines") else BackendUnavailable(f"{folder} has no TensorRT engines")

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray,
                 features: np.ndarray | None = None) -> np.ndarray:
        return self.runner(input_ids, attention_mask, features)
