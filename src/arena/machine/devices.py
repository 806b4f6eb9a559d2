"""Device options (``--device``, ``--devices``): parsed and checked against the machine before any work.

A device that was asked for and cannot be had is an error, never a silent fall-back: ``--device cuda`` on a
machine without a CUDA GPU, ``--device cuda:3`` with two GPUs, ``--devices cuda:0,cuda:1`` on a CPU. ``auto`` is
the only value that picks for the user.
"""

from __future__ import annotations

import re

from arena.errors import ConfigError
from arena.machine.gpu import ort_cuda, torch_gpus

DEVICE = re.compile(r"^(cpu|cuda(:\d+)?)$")


def check_device(device: str, flag: str = "--device") -> str:
    """``device`` normalised (``auto``, ``cpu``, ``cuda``, ``cuda:N``); raise :class:`ConfigError` for a name
    that is not a device or a GPU this machine does not have. Whether a given backend can use that GPU is the
    backend's own request check (:attr:`arena.serving.backends.contract.BackendSpec.check_request`)."""
    name = device.strip().lower()
    if name == "auto":
        return name
    if not DEVICE.match(name):
        hint = " (GPUs are named cuda or cuda:N)" if name in ("gpu", "nvidia", "cuda0", "gpu:0", "gpu0") else ""
        raise ConfigError(f"{flag} {device!r} is not a device{hint}; use auto, cpu, cuda or cuda:N")
    if name == "cpu":
        return name
    gpus = torch_gpus()
    if not (gpus > 0 or ort_cuda()):
        raise ConfigError(f"{flag} {device}: no CUDA GPU is available to PyTorch or ONNX Runtime on this machine; "
                          f"use {flag} cpu (or auto)")
    index = int(name.partition(":")[2] or 0)
    if gpus and index >= gpus:
        raise ConfigError(f"{flag} {device}: this machine has {gpus} CUDA GPU(s), cuda:0 to cuda:{gpus - 1}")
    return name


def parse_devices(text: str | None) -> list[str] | None:
    """``--devices``: ``cuda:0,cuda:1`` / ``cpu,cpu`` / ``2`` (the first N GPUs) -> checked device names (one
    name is a list of one: it is used, not ignored), or None when the option was not given."""
    if text is None:
        return None
    text = text.strip()
    if text.isdigit():
        count = int(text)
        if count < 1:
            raise ConfigError(f"--devices {text}: give a number of GPUs >= 1 or a list such as cuda:0,cuda:1")
        gpus = torch_gpus()
        if count > gpus and not gpus:
            raise ConfigError(f"--devices {text}: this machine has no CUDA GPU; list devices such as cpu,cpu instead")
        if count > gpus:
            raise ConfigError(f"--devices {text}: this machine has {gpus} CUDA GPU(s); ask for at most {gpus}, "
                              "or list devices such as cpu,cpu")
        return [f"cuda:{i}" for i in range(count)]
    parts = [p.strip() for p in text.split(",")]
    if not text or any(not p for p in parts):
        raise ConfigError(f"--devices {text!r} has an empty entry; list devices such as cuda:0,cuda:1 or cpu,cpu")
    if any(p.lower() == "auto" for p in parts):
        raise ConfigError("--devices lists devices by name (cpu, cuda:N); auto is for --device")
    return [check_device(p, "--devices") for p in parts]
