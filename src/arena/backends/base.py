"""The backend contract and the automatic choice between backends."""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from arena.artifacts import openvino_passed, read_manifest
from arena.errors import BackendUnavailable, ConfigError

log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "onnx", "openvino", "tensorrt")

CPU_RANKING: tuple[tuple[str, str], ...] = (
    ("openvino", "int8"), ("openvino", "bf16"), ("onnx", "int8"), ("openvino", "fp32"), ("onnx", "fp32"),
    ("onnx", "fp32_fused"),
)
"""CPU (backend, precision) options, fastest first, as measured side by side on DeBERTa-v3-xsmall at 512 tokens
and MiniLM-L6 at 256 on 2-core AMD EPYC (Zen 4) machines: ``benchmarks/RESULTS.md``, "The fastest CPU path"."""


@dataclass(frozen=True)
class ShapeRange:
    """A box of batch shapes a backend accepts: padded lengths ``seq_min..seq_max`` with up to ``batch_max`` rows
    (a TensorRT optimisation profile)."""

    seq_min: int
    seq_max: int
    batch_max: int


@dataclass(frozen=True)
class Limits:
    """What a backend can run. The executor (:mod:`arena.executor`) plans every batch within these, so a batch the
    backend cannot take is never built; ``None`` means no limit of that kind."""

    max_length: int | None = None
    """The longest padded sequence the model accepts (absolute position embeddings, an engine's largest profile)."""
    max_batch: int | None = None
    """The most rows in one batch."""
    max_tokens: int | None = None
    """The most rows x padded length in one batch (what an engine was planned for)."""
    ranges: tuple[ShapeRange, ...] = ()
    """When not empty, every batch must fit one of these (TensorRT profiles)."""

    def max_rows(self, padded_length: int) -> int:
        """The largest batch this backend takes at ``padded_length`` tokens per row; 0 when no batch fits."""
        if self.max_length is not None and padded_length > self.max_length:
            return 0
        rows = [r.batch_max for r in self.ranges if r.seq_min <= padded_length <= r.seq_max] if self.ranges \
            else [1 << 30]
        best = max(rows, default=0)
        if self.max_batch is not None:
            best = min(best, self.max_batch)
        if self.max_tokens is not None:
            best = min(best, self.max_tokens // max(padded_length, 1))
        return best


UNLIMITED = Limits()


@runtime_checkable
class Backend(Protocol):
    """What every backend is: a callable from one padded batch to logits, which states its device and limits.

    ``__call__(input_ids, attention_mask, features)``: int64 arrays (batch, sequence), and for a hybrid model
    (``needs_features``) float32 (batch, n_features), else None; returns float32 logits (batch, 3) in host memory
    (GPU backends synchronise before returning, so wall-clock timing around a call is honest).
    """

    name: str
    device: str
    needs_features: bool
    limits: Limits

    @property
    def description(self) -> str:
        """One line for summaries: backend, file, precision, device."""
        ...

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray,
                 features: np.ndarray | None = None) -> np.ndarray:
        ...


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

    Order for ``auto``: TensorRT engine and a GPU > ONNX Runtime CUDA > torch CUDA > the fastest CPU option of an
    export (:func:`choose_cpu`; the choice carries its precision in ``options``) > torch CPU.
    """
    if requested not in BACKENDS:
        raise ConfigError(f"--backend must be one of {', '.join(BACKENDS)}")
    manifest = read_manifest(folder)
    onnx_files = (manifest or {}).get("artifacts", {})
    has_onnx = bool(onnx_files) or any(folder.glob("*.onnx"))
    has_torch = (folder / "model.safetensors").is_file() or (folder / "model.safetensors.index.json").is_file()
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
        return choose_cpu(manifest, precision)
    if has_torch:
        return Choice("torch", "no ONNX export in the folder; PyTorch on the CPU")
    raise BackendUnavailable(f"{folder} holds neither model.safetensors nor an ONNX export")


def cpu_options(manifest: dict[str, Any] | None, precision: str = "auto") -> list[tuple[str, str, str | None]]:
    """Every :data:`CPU_RANKING` option as ``(backend, precision, why not)``; ``why not`` is None for the options
    this export holds, that passed their parity check and that this machine can run."""
    from arena.cpu import has_native_bf16

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
        raise BackendUnavailable("no CPU backend can run this export: " + "; ".join(
            f"{b} {p}: {why}" for b, p, why in options))
    backend, prec = usable[0]
    passed_over = [f"{b} {p} ({why})" for b, p, why in options[:options.index((backend, prec, None))]]
    reason = (f"no GPU; {backend} {prec} is the fastest CPU option this export holds that passed its parity check "
              f"(order measured in benchmarks/RESULTS.md)")
    if passed_over:
        reason += "; passed over: " + ", ".join(passed_over)
    return Choice(backend, reason, {"precision": prec})
