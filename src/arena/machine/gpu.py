"""The one GPU probe module: what this machine's GPU stack is, without loading a model: is a GPU present, can
PyTorch and ONNX Runtime use it, is a usable TensorRT installed, which GPU is this, how much memory it has, which
half precision it computes in (:func:`half_precision`: the one capability -> dtype rule), and would one of a
folder's engines run here.

Kept apart from the backends so that :func:`arena.serving.choice.choose_backend` can ask these questions without
importing a backend (and the backends need not import :mod:`arena.serving.choice`).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from arena.artifacts import select_engine
from arena.errors import BackendUnavailable, ConfigError


def torch_cuda() -> bool:
    """PyTorch can use a CUDA GPU."""
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        return False


def torch_gpus() -> int:
    """CUDA devices PyTorch can use (0 without CUDA)."""
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except ImportError:  # pragma: no cover
        return 0


def gpu_present() -> bool:
    """An NVIDIA GPU is here: the driver lists one, or PyTorch sees one (a CPU build of PyTorch beside
    onnxruntime-gpu still counts the driver's). An installed CUDA provider alone is not a GPU. On Linux, where CUDA
    reaches a GPU only through ``/dev/nvidia*`` (WSL 2: ``/dev/dxg``), a machine without those device files has
    none, and PyTorch is not imported to be told so: serving an export on a CPU imports no torch."""
    gpus = Path("/proc/driver/nvidia/gpus")
    if gpus.is_dir() and any(gpus.iterdir()):
        return True
    if sys.platform.startswith("linux") and not _gpu_device_files():
        return False
    return torch_cuda()


def _gpu_device_files() -> bool:
    dev = Path("/dev")
    return (dev / "dxg").exists() or any(dev.glob("nvidia[0-9]*"))


def ort_cuda() -> bool:
    """ONNX Runtime has the CUDA provider and a GPU is present for it."""
    try:
        import onnxruntime as ort

        return "CUDAExecutionProvider" in ort.get_available_providers() and gpu_present()
    except ImportError:  # pragma: no cover
        return False


MIN_TENSORRT = (10, 12)
INSTALL = "pip install 'tensorrt>=10.12' (or pip install 'arena-toolkit[gpu]')"


def parse_version(text: str) -> tuple[int, ...]:
    """``"10.13.0.35"`` -> ``(10, 13, 0, 35)``; ``"11.0.0rc1"`` -> ``(11, 0, 0)``."""
    parts = []
    for part in text.split("."):
        match = re.match(r"\d+", part)
        if match is None:
            break
        parts.append(int(match.group()))
        if match.group() != part:
            break
    return tuple(parts)


def check_tensorrt_version(version: str | None) -> None:
    """Refuse a TensorRT that cannot build or run strongly typed engines (older than 10.12), or a ``tensorrt``
    module that is not the real one (no ``__version__``: a folder of type stubs, a broken install)."""
    if not version:
        raise BackendUnavailable("the importable `tensorrt` module is not TensorRT's Python package (no version: "
                                 f"type stubs or a broken install); {INSTALL}")
    if parse_version(version)[:2] < MIN_TENSORRT:
        raise BackendUnavailable(f"TensorRT {version} is too old: arena builds and runs strongly typed engines, "
                                 f"which need TensorRT 10.12 or newer (11.x is supported); {INSTALL}")


def tensorrt_available() -> tuple[bool, str]:
    """(available, reason): a real TensorRT >= 10.12 is importable and PyTorch sees a CUDA GPU."""
    try:
        import tensorrt
    except ImportError:
        return False, f"the tensorrt package is not installed ({INSTALL})"
    try:
        check_tensorrt_version(getattr(tensorrt, "__version__", None))
    except BackendUnavailable as exc:
        return False, str(exc)
    try:
        import torch

        if not torch.cuda.is_available():
            return False, "no CUDA GPU is visible to PyTorch; TensorRT engines need an NVIDIA GPU"
    except ImportError:  # pragma: no cover - torch is a dependency
        return False, "PyTorch is not installed"
    return True, "ok"


def gpu_identity(device: str = "cuda") -> tuple[str, str]:
    """(GPU name, compute capability "major.minor") of ``device``, as engines record them."""
    import torch

    major, minor = torch.cuda.get_device_capability(device)
    return torch.cuda.get_device_name(device), f"{major}.{minor}"


def engine_usable(folder: Path, manifest: dict[str, Any] | None,
                  device: str | Sequence[str] = "cuda") -> tuple[bool, str]:
    """(usable, reason) without deserialising anything: TensorRT is here and, for every GPU in ``device``
    (``--device``, or each of ``--devices``; ``auto``/``cuda``: the current GPU), one of the folder's engines was
    built for that GPU, compute capability and TensorRT version from the folder's ONNX file. A CPU device is not
    usable. The reason names the device and the rebuild command when the engines were built elsewhere."""
    ok, why = tensorrt_available()
    if not ok:
        return False, why
    import tensorrt as trt

    devices = [device] if isinstance(device, str) else list(device)
    several = len(set(devices)) > 1
    reasons = []
    for name in dict.fromkeys("cuda" if d == "auto" else d for d in devices):
        if not name.startswith("cuda"):
            return False, f"TensorRT engines run on an NVIDIA GPU, not on --device {name}"
        gpu, cc = gpu_identity(name)
        try:
            entry = select_engine(manifest or {}, gpu_name=gpu, compute_capability=cc,
                                  trt_version=trt.__version__, folder=folder)
        except BackendUnavailable as exc:
            return False, f"{name}: {exc}" if several else str(exc)
        where = f" on {name}" if several else ""
        reasons.append(f"{entry['file']} was built for this {gpu}{where} and TensorRT {trt.__version__}")
    if not reasons:
        return False, "no device to run a TensorRT engine on"
    return True, "; ".join(reasons)


# ------------------------------------------------------------------------------------ precision by the card

BF16_FROM = (8, 0)
"""The compute capability from which a GPU has bf16 arithmetic: Ampere (sm80: A100, A10, RTX 30xx) and newer. Older
GPUs, Kaggle's T4 (Turing, sm75) among them, have none: PyTorch emulates it there (``torch.cuda.is_bf16_supported()``
may even say yes), many times slower than fp16, so arena never picks bf16 on them and refuses it when asked."""


def gpu_capability(device: str = "cuda") -> tuple[int, int] | None:
    """(major, minor) compute capability of ``device`` (``cuda``, ``cuda:N``; ``auto``: the current GPU) as PyTorch
    reports it; None for the CPU or where PyTorch sees no CUDA GPU."""
    name = "cuda" if device == "auto" else device
    if not name.startswith("cuda") or not torch_cuda():
        return None
    import torch

    major, minor = torch.cuda.get_device_capability(name)
    return int(major), int(minor)


def describe_gpu(device: str = "cuda") -> str:
    """``Tesla T4 (sm75)``: a GPU as error lines name it."""
    name, capability = gpu_identity("cuda" if device == "auto" else device)
    return f"{name} (sm{capability.replace('.', '')})"


def _gpus_of(device: str | Sequence[str]) -> list[str]:
    names = [device] if isinstance(device, str) else list(device)
    return [d for d in dict.fromkeys(names) if gpu_capability(d) is not None]


def half_precision(device: str | Sequence[str] = "cuda") -> str:
    """The half precision a GPU computes in when the user names none: ``bf16`` when every GPU in ``device`` (one
    name, or each of ``--devices``) has it (sm80 and newer: bf16 keeps fp32's range, so nothing overflows), else
    ``fp16`` (a T4; also where no GPU is seen). fp16 keeps its fp32 safeguards wherever it is used: autocast runs
    normalisation, softmax and losses in fp32, the decoders' RMSNorm computes in fp32, LoRA's trainable tensors
    stay fp32 and training scales the loss (``GradScaler``). The one rule every default reads: the torch backend's
    autocast and 4/8-bit compute dtype, training's autocast and LoRA base dtype, bitsandbytes'
    ``bnb_4bit_compute_dtype``."""
    gpus = _gpus_of(device)
    if gpus and all(gpu_capability(d) >= BF16_FROM for d in gpus):  # type: ignore[operator]
        return "bf16"
    return "fp16"


def no_bf16(device: str | Sequence[str] = "cuda") -> str | None:
    """Why ``device`` (one name, or each of ``--devices``) cannot compute in bf16, or None: the first GPU among them
    older than sm80 (``this Tesla T4 (sm75) has no bf16 arithmetic ...``). The CPU and ``auto`` without a GPU are
    never refused here."""
    for name in _gpus_of(device):
        if gpu_capability(name) < BF16_FROM:  # type: ignore[operator]
            where = "" if name in ("auto", "cuda") else f" ({name})"
            return f"this {describe_gpu(name)}{where} has no bf16 arithmetic (GPUs have it from sm80, Ampere, on)"
    return None


def check_bf16(precision: str, device: str | Sequence[str], flag: str = "--precision") -> None:
    """Refuse ``bf16`` on a GPU without bf16 arithmetic (a T4), before any work: one :class:`ConfigError` naming the
    GPU and what to ask for instead. ``auto`` counts as the GPU where PyTorch sees one (that is where it runs)."""
    why = no_bf16(device) if precision == "bf16" else None
    if why:
        raise ConfigError(f"{flag} bf16: {why}; use --precision fp16, or auto (fp16 on this GPU), or --device cpu "
                          "to run bf16 on the CPU")


def gpu_memory(device: str = "cuda") -> tuple[int, int]:
    """(free, total) bytes of ``device``. Reading the free memory opens a CUDA context on that GPU in this
    process; callers that only need the size use :func:`gpu_total_memory`."""
    import torch

    return tuple(int(x) for x in torch.cuda.mem_get_info(device_index(device)))  # type: ignore[return-value]


def gpu_total_memory(device: str = "cuda") -> int:
    """Bytes of memory ``device`` has, read from its properties (no CUDA context, no allocation)."""
    import torch

    return int(torch.cuda.get_device_properties(device_index(device)).total_memory)


def device_index(device: str) -> int:
    """``cuda`` / ``auto`` -> 0 (the current GPU is not asked: arena names GPUs by index), ``cuda:N`` -> N."""
    return int(device.partition(":")[2] or 0)
