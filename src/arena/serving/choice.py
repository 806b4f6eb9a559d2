"""The automatic choice between backends (the contract itself is :mod:`arena.serving.backends.contract`)."""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from arena.artifacts import openvino_passed, read_manifest, rebuild_command
from arena.errors import BackendUnavailable, ConfigError
from arena.machine.gpu import engine_usable, gpu_present, ort_cuda, torch_cuda
from arena.serving.backends.contract import UNLIMITED, Backend, Limits, ShapeRange

log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "onnx", "openvino", "tensorrt")
__all__ = ["BACKENDS", "CPU_RANKING", "UNLIMITED", "Backend", "Choice", "Limits", "ShapeRange", "choose_backend",
           "choose_cpu", "cpu_options"]

CPU_RANKING: tuple[tuple[str, str], ...] = (
    ("openvino", "int8"), ("openvino", "bf16"), ("onnx", "int8"), ("openvino", "fp32"), ("onnx", "fp32"),
    ("onnx", "fp32_fused"),
)
"""CPU (backend, precision) options, fastest first, as measured side by side on DeBERTa-v3-xsmall at 512 tokens
and MiniLM-L6 at 256 on 2-core AMD EPYC (Zen 4) machines: ``benchmarks/RESULTS.md``, "The fastest CPU path"."""


@dataclass
class Choice:
    backend: str
    reason: str
    options: dict[str, Any] = field(default_factory=dict)


def _auto_gpu_choice(folder: Path, manifest: dict[str, Any] | None, *, has_onnx: bool,
                     has_torch: bool, device: str | Sequence[str] = "auto") -> Choice | None:
    """The GPU part of ``auto``: a TensorRT engine built for this GPU and TensorRT > ONNX Runtime CUDA > torch CUDA.
    None without a GPU, or when ``device`` names only CPUs. An engine built elsewhere (an H100 engine on Kaggle's T4,
    or on one of two different GPUs) is skipped, and the choice says why and how to rebuild it."""
    devices = [device] if isinstance(device, str) else list(device)
    if not gpu_present() or all(d.startswith("cpu") for d in devices):
        return None
    skipped = ""
    if ((manifest or {}).get("tensorrt") or {}).get("engines"):

        ok, why = engine_usable(folder, manifest, devices)
        if ok:
            return Choice("tensorrt", f"a GPU is present and {why}")
        log.warning("not using the TensorRT engine: %s", why)
        skipped = f"; the TensorRT engine is not used: {why}"
    if has_onnx and ort_cuda():
        return Choice("onnx", "a GPU is present and ONNX Runtime has the CUDA provider" + skipped)
    if has_torch and torch_cuda():
        return Choice("torch", "a GPU is present and the folder holds PyTorch weights" + skipped)
    return None


def choose_backend(requested: str, folder: Path, *, precision: str = "auto",
                   device: str | Sequence[str] = "auto") -> Choice:
    """Pick a backend from what the folder holds and what the machine has, and say why.

    ``device``: ``--device``, or every device of ``--devices``: a TensorRT engine is chosen only when it was built
    for each of those GPUs.

    Order for ``auto``: TensorRT engine and a GPU > ONNX Runtime CUDA > torch CUDA > the fastest CPU option of an
    export (:func:`choose_cpu`; the choice carries its precision in ``options``) > torch CPU.
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

        ok, why = engine_usable(folder, manifest, device)
        if not ok:
            raise BackendUnavailable(f"--backend tensorrt: {why}")
        return Choice("tensorrt", "asked for")
    if requested == "onnx":
        if not has_onnx:
            raise BackendUnavailable(f"{folder} has no ONNX model; run arena-export first")
        return Choice("onnx", "asked for")
    if requested == "openvino":
        if not has_onnx:
            raise BackendUnavailable(f"{folder} has no ONNX model for OpenVINO; run arena-export first")
        if importlib.util.find_spec("openvino") is None:
            raise BackendUnavailable("OpenVINO is not installed; pip install 'arena-toolkit[openvino]'")
        return Choice("openvino", "asked for")
    if requested == "torch":
        if not has_torch:
            raise BackendUnavailable(f"{folder} has no model.safetensors for the torch backend")
        return Choice("torch", "asked for")
    on_gpu = _auto_gpu_choice(folder, manifest, has_onnx=has_onnx, has_torch=has_torch, device=device)
    if on_gpu is not None:
        return on_gpu
    if has_onnx and manifest is None:  # a foreign or hand-made folder: its one ONNX model, on ONNX Runtime
        return Choice("onnx", "no GPU; the folder has no arena manifest, so its ONNX model runs on ONNX Runtime")
    if has_onnx:
        return choose_cpu(manifest, precision)
    if has_torch:
        return Choice("torch", "no ONNX export in the folder; PyTorch on the CPU")
    raise BackendUnavailable(f"{folder} holds neither model.safetensors nor an ONNX export")


def cpu_options(manifest: dict[str, Any] | None, precision: str = "auto") -> list[tuple[str, str, str | None]]:
    """Every :data:`CPU_RANKING` option as ``(backend, precision, why not)``; ``why not`` is None for the options
    this export holds, that passed their parity check and that this machine can run."""
    from arena.machine.cpu import has_native_bf16

    ort_files = (manifest or {}).get("artifacts") or {"fp32": {"file": "model.onnx"}}  # no manifest: plain export
    ov_passed = openvino_passed(manifest)
    ov_section = ((manifest or {}).get("openvino") or {}).get("precisions") or {}
    has_ov = importlib.util.find_spec("openvino") is not None
    out: list[tuple[str, str, str | None]] = []
    for backend, prec in CPU_RANKING:
        why = None
        if precision not in ("auto", prec):
            why = f"--precision {precision}"
        elif backend == "onnx":
            why = None if prec in ort_files else "not exported"  # ONNX Runtime artefacts exist only if they passed
        elif prec not in ov_section:
            why = "not exported" if prec == "int8" else "no OpenVINO parity record (export with OpenVINO installed)"
        elif prec not in ov_passed:
            why = "failed or skipped its parity check at export"
        elif not has_ov:
            why = "OpenVINO not installed"
        elif prec == "bf16" and not has_native_bf16():
            why = "this CPU has no native bf16"
        out.append((backend, prec, why))
    return out


def choose_cpu(manifest: dict[str, Any] | None, precision: str = "auto") -> Choice:
    """The fastest CPU option that the export holds and that passed parity (:data:`CPU_RANKING`), and why."""
    options = cpu_options(manifest, precision)
    usable = [(b, p) for b, p, why in options if why is None]
    if not usable:
        relevant = [(b, p, why) for b, p, why in options if precision in ("auto", p)]
        flag = {"int8": "--int8 (ONNX Runtime) or --int8-static (OpenVINO)", "fp32_fused": "--optimize"}.get(
            precision, "OpenVINO installed")
        raise BackendUnavailable(
            f"--precision {precision}: no CPU backend can run it from this export ("
            + "; ".join(f"{b} {p}: {why}" for b, p, why in relevant)
            + f"); re-export with {flag}, or choose another --precision")
    backend, prec = usable[0]
    passed_over = [f"{b} {p} ({why})" for b, p, why in options[:options.index((backend, prec, None))]]
    reason = (f"no GPU; {backend} {prec} is the fastest CPU option this export holds that passed its parity check "
              f"(order measured in benchmarks/RESULTS.md)")
    if passed_over:
        reason += "; passed over: " + ", ".join(passed_over)
    return Choice(backend, reason, {"precision": prec})
