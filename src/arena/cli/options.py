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


def backend_precisions() -> dict[str, tuple[str, ...]]:
    """What ``--precision`` may say for each ``--backend``, from the backends' declarations
    (:mod:`arena.serving.backends`); ``auto`` takes any precision some backend serves."""
    from arena.serving.backends import specs

    out = {name: ("auto", *s.precisions) for name, s in specs().items()}
    out["auto"] = tuple(dict.fromkeys(p for precisions in out.values() for p in precisions))
    return out


def check_precision(flag: str, backend: str, precision: str, device: str = "auto") -> None:
    """``precision`` must be one the backend serves, and one this machine can run where that is known before a
    model is read (the backend's declared request check: fp16 on torch needs a GPU, 4-bit needs bitsandbytes, bf16
    needs a GPU from sm80 or the CPU)."""
    from arena.machine.gpu import gpu_present
    from arena.serving.backends import specs

    allowed = backend_precisions()
    one_of("--backend", backend, allowed)
    one_of(f"{flag} for backend {backend}", precision, allowed[backend])
    declared = specs()
    # a named backend's own checks; with --backend auto only where one backend alone serves the precision on the
    # kind of device the request runs on (4bit anywhere; bf16 on a GPU: torch)
    kind = "cpu" if device == "cpu" or (device == "auto" and not gpu_present()) else "cuda"
    serving = [declared[backend]] if backend != "auto" else \
        [s for s in declared.values() if precision in s.precisions and kind in s.devices]
    if len(serving) == 1 and serving[0].check_request is not None:
        serving[0].check_request(precision, device)


CALIBRATE_HELP = ("--backend auto on a CPU: the first time an export runs on this machine, time its parity-checked "
                  "variants on a few batches of this input (seconds) and cache the fastest; --no-calibrate uses "
                  "the cached choice, else the declared order (a named --backend or a GPU never measures)")
"""``--calibrate/--no-calibrate``'s help, the same wherever ``--backend auto`` scores
(:mod:`arena.serving.calibration`)."""


def backend_help() -> str:
    """``--backend``'s help, from the declarations."""
    from arena.serving.backends import backend_names

    return f"{', '.join(backend_names())} (auto: the fastest variant the folder holds that passed its checks)"


def precision_help() -> str:
    """``--precision``'s help: each backend's declared precisions."""
    return "auto, or per backend: " + "; ".join(f"{name}: {'/'.join(p[1:])}" for name, p in
                                                 backend_precisions().items() if name != "auto")


def attention_help() -> str:
    """``--attention``'s help, from the one declaration (:data:`arena.models.attention_choices.ATTENTIONS`)."""
    from arena.models.attention_choices import ATTENTIONS

    return (f"{', '.join(ATTENTIONS)}: the torch backend's attention. flash: disentangled-flash's fused DeBERTa-v2/v3 "
            "attention, with packed batches (pip install 'arena-toolkit\\[flash]'); sdpa where transformers has it "
            "(not DeBERTa); auto: flash on a CUDA GPU when it matches eager on the first batch, else as loaded "
            "(eager for DeBERTa)")


def check_attention_folders(attention: str, backend: str, folders: Iterable[str | Path], *,
                            compile: bool = False) -> None:
    """arena-infer's ``--attention``: one of the choices; anything but ``auto`` needs the torch backend and
    checkpoint folders (a fold ensemble's members too) whose model runs it (:func:`arena.models.attention.
    check_attention`)."""
    from arena.models.attention_choices import ATTENTIONS, check_attention
    from arena.serving.folder import CHECKPOINT, LORA, read_folder

    one_of("--attention", attention, ATTENTIONS)
    if attention == "auto":
        return
    if backend not in ("auto", "torch"):
        raise ConfigError(f"--attention {attention} is the torch backend's and --backend {backend} runs an exported "
                          "graph; use --backend torch with the arena-train checkpoint, or drop --attention")
    for folder in folders:
        read = read_folder(folder)
        for part in [read_folder(m) for m in read.members] or [read]:
            if part.kind not in (CHECKPOINT, LORA):
                raise ConfigError(f"--attention {attention} runs on the torch backend and {part.path} is a "
                                  f"{part.describe()} (ONNX: its attention was fixed at export); pass the arena-train "
                                  "checkpoint, or drop --attention")
            check_attention(attention, part.model_type, compile=compile)
