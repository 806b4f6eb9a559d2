"""Up-front checks of CLI option values: every mistake becomes one :class:`~arena.errors.ConfigError` that names
the option and what it accepts, raised before the command reads a model or writes a file."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from arena.errors import ConfigError


def at_least(flag: str, value: float | None, minimum: float) -> None:
    """``value`` (skipped when None) must be >= ``minimum``."""
    if value is not None and not value >= minimum:  # also refuses NaN
        raise ConfigError(f"{flag} must be at least {minimum:g}; got {value:g}")


def positive(flag: str, value: float | None) -> None:
    """``value`` (skipped when None) must be > 0."""
    if value is not None and not value > 0:
        raise ConfigError(f"{flag} must be greater than 0; got {value:g}")


def within(flag: str, value: float | None, low: float, high: float, *, low_open: bool = False,
           high_open: bool = False) -> None:
    """``value`` (skipped when None) must lie in the interval from ``low`` to ``high``."""
    if value is None:
        return
    ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ConfigError(f"{flag} must be within {interval}; got {value:g}")


def one_of(flag: str, value: str, choices: Iterable[str]) -> None:
    choices = tuple(choices)
    if value not in choices:
        raise ConfigError(f"{flag} must be one of {', '.join(choices)}; got {value!r}")


def existing_folder(flag: str, path: str | Path, what: str) -> Path:
    """``path`` must be an existing folder (``what`` says which, e.g. 'the checkpoint folder')."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{flag} {path} does not exist; pass {what}")
    if not path.is_dir():
        raise ConfigError(f"{flag} {path} is a file; pass {what}")
    return path


def existing_file(flag: str, path: str | Path, what: str) -> Path:
    """``path`` must be an existing file (``what`` says which, e.g. 'the test CSV')."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{flag} {path} does not exist; pass {what}")
    if path.is_dir():
        raise ConfigError(f"{flag} {path} is a folder; pass {what}")
    return path


BACKEND_PRECISIONS = {
    "torch": ("auto", "fp32", "fp16", "bf16"),  # arena.serving.backends.torch.DTYPES
    "onnx": ("auto", "fp32", "fp32_fused", "fp16", "int8"),  # arena.serving.loading.ONNX_PRECISIONS
    "openvino": ("auto", "fp32", "bf16", "int8"),  # arena.serving.backends.openvino.PRECISIONS
    "tensorrt": ("auto", "fp16"),
}
BACKEND_PRECISIONS["torch.compile"] = BACKEND_PRECISIONS["torch"]
BACKEND_PRECISIONS["auto"] = tuple(dict.fromkeys(BACKEND_PRECISIONS["torch"] + BACKEND_PRECISIONS["onnx"]))
# (auto + bf16 on the CPU: the fastest bf16 option that passed parity, openvino or torch)


def check_precision(flag: str, backend: str, precision: str) -> None:
    """``precision`` must be one the backend runs (fp16 on torch also needs a GPU)."""
    one_of("--backend", backend, BACKEND_PRECISIONS)
    one_of(f"{flag} for backend {backend}", precision, BACKEND_PRECISIONS[backend])
    if backend.startswith("torch") and precision == "fp16":
        from arena.machine.devices import torch_gpus

        if not torch_gpus():
            raise ConfigError(f"{flag} fp16 with the torch backend needs a CUDA GPU and this machine has none; "
                              "use fp32 or bf16")
