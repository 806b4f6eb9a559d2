"""The one GPU probe module: what this machine's GPU stack is, without loading a model: is a GPU present, can
PyTorch and ONNX Runtime use it, is a usable TensorRT installed, which GPU is this, and would one of a folder's
engines run here.

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
from arena.errors import BackendUnavailable


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
