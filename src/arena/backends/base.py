"""The automatic choice between backends (the contract itself is :mod:`arena.backends.contract`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from arena.artifacts import read_manifest, rebuild_command
from arena.backends.contract import UNLIMITED, Backend, Limits, ShapeRange
from arena.backends.gpu import engine_usable, gpu_present, ort_cuda, torch_cuda
from arena.errors import BackendUnavailable, ConfigError

log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "onnx", "tensorrt")
__all__ = ["BACKENDS", "UNLIMITED", "Backend", "Choice", "Limits", "ShapeRange", "choose_backend"]


@dataclass
class Choice:
    backend: str
    reason: str
    options: dict[str, Any] = field(default_factory=dict)


def _auto_gpu_choice(folder: Path, manifest: dict[str, Any] | None, *, has_onnx: bool,
                     has_torch: bool) -> Choice | None:
    """The GPU part of ``auto``: a TensorRT engine built for this GPU and TensorRT > ONNX Runtime CUDA > torch CUDA.
    None without a GPU. An engine built elsewhere (an H100 engine on Kaggle's T4) is skipped, and the choice says
    why and how to rebuild it."""
    if not gpu_present():
        return None
    skipped = ""
    if ((manifest or {}).get("tensorrt") or {}).get("engines"):

        ok, why = engine_usable(folder, manifest)
        if ok:
            return Choice("tensorrt", f"a GPU is present and {why}")
        log.warning("not using the TensorRT engine: %s", why)
        skipped = f"; the TensorRT engine is not used: {why}"
    if has_onnx and ort_cuda():
        return Choice("onnx", "a GPU is present and ONNX Runtime has the CUDA provider" + skipped)
    if has_torch and torch_cuda():
        return Choice("torch", "a GPU is present and the folder holds PyTorch weights" + skipped)
    return None


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
    if requested == "tensorrt":
        if not engines:
            raise BackendUnavailable(f"{folder} has no TensorRT engine; build one with "
                                     f"`{rebuild_command(manifest, folder)}`")

        ok, why = engine_usable(folder, manifest)
        if not ok:
            raise BackendUnavailable(f"--backend tensorrt: {why}")
        return Choice("tensorrt", "asked for")
    if requested == "onnx":
        if not has_onnx:
            raise BackendUnavailable(f"{folder} has no ONNX model; run arena-export first")
        return Choice("onnx", "asked for")
    if requested == "torch":
        if not has_torch:
            raise BackendUnavailable(f"{folder} has no model.safetensors for the torch backend")
        return Choice("torch", "asked for")
    on_gpu = _auto_gpu_choice(folder, manifest, has_onnx=has_onnx, has_torch=has_torch)
    if on_gpu is not None:
        return on_gpu
    if has_onnx:
        return Choice("onnx", "no GPU; ONNX Runtime on the CPU is the fastest CPU backend measured here")
    if has_torch:
        return Choice("torch", "no ONNX export in the folder; PyTorch on the CPU")
    raise BackendUnavailable(f"{folder} holds neither model.safetensors nor an ONNX export")
