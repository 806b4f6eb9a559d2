"""The automatic choice between backends (the contract itself is :mod:`arena.backends.contract`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from arena.artifacts import read_manifest
from arena.backends.contract import UNLIMITED, Backend, Limits, ShapeRange
from arena.errors import BackendUnavailable, ConfigError

log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "onnx", "tensorrt")
__all__ = ["BACKENDS", "UNLIMITED", "Backend", "Choice", "Limits", "ShapeRange", "choose_backend"]


@dataclass
class Choice:
    backend: str
    reason: str
    options: dict[str, Any] = field(default_factory=dict)


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        return False


def _ort_cuda() -> bool:
    try:
        import onnxruntime as ort

        return "CUDAExecutionProvider" in ort.get_available_providers()
    except ImportError:  # pragma: no cover
        return False


def choose_backend(requested: str, folder: Path, *, precision: str = "auto") -> Choice:
    """Pick a backend from what the folder holds and what the machine has, and say why.

    Order for ``auto``: TensorRT engine and a GPU > ONNX Runtime CUDA > torch CUDA > ONNX Runtime CPU > torch CPU.
    """
    if requested not in BACKENDS:
        raise ConfigError(f"--backend must be one of {', '.join(BACKENDS)}")
    manifest = read_manifest(folder)
    onnx_files = (manifest or {}).get("artifacts", {})
    has_onnx = bool(onnx_files) or any(folder.glob("*.onnx"))
    has_torch = any((folder / name).is_file() for name in ("model.safetensors", "model.safetensors.index.json",
                                                           "adapter_model.safetensors"))  # a LoRA checkpoint too
    engines = (manifest or {}).get("tensorrt", {}).get("engines", [])
    cuda = _cuda()
    if requested == "tensorrt":
        if not engines:
            raise BackendUnavailable(f"{folder} has no TensorRT engine; build one with arena-export --trt")
        return Choice("tensorrt", "asked for")
    if requested == "onnx":
        if not has_onnx:
            raise BackendUnavailable(f"{folder} has no ONNX model; run arena-export first")
        return Choice("onnx", "asked for")
    if requested == "torch":
        if not has_torch:
            raise BackendUnavailable(f"{folder} has no model.safetensors for the torch backend")
        return Choice("torch", "asked for")
    if engines and cuda:
        from arena.backends.tensorrt import tensorrt_available

        ok, why = tensorrt_available()
        if ok:
            return Choice("tensorrt", "a TensorRT engine is in the folder and a GPU is present")
        log.info("not using the TensorRT engine: %s", why)
    if has_onnx and cuda and _ort_cuda():
        return Choice("onnx", "ONNX model present and ONNX Runtime has the CUDA provider")
    if has_torch and cuda:
        return Choice("torch", "a GPU is present and the folder holds PyTorch weights")
    if has_onnx:
        return Choice("onnx", "no GPU; ONNX Runtime on the CPU is the fastest CPU backend measured here")
    if has_torch:
        return Choice("torch", "no ONNX export in the folder; PyTorch on the CPU")
    raise BackendUnavailable(f"{folder} holds neither model.safetensors nor an ONNX export")
