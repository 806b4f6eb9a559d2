"""Which variant of a model folder runs: the one asked for, or for ``--backend auto`` the fastest that may.

A folder offers variants (backend x precision x device x file, :meth:`arena.serving.folder.ModelFolder.variants`),
each declared by its backend with its measured speed and, where it cannot run here, why not. The choice filters
them by what the command line asked (backend, precision, device), keeps the usable ones, and takes the fastest;
``--backend auto`` with ``--precision auto`` only takes *checked* variants (exact, or admitted by a parity check at
export), so it never changes the numbers unasked. With a GPU present the GPU variants come first (a TensorRT engine
built for this GPU > ONNX Runtime CUDA > torch CUDA), else the CPU ones in their declared order (OpenVINO int8 >
bf16 > ONNX Runtime int8 > OpenVINO fp32 > ONNX Runtime fp32 > torch fp32, as measured on one CPU in
``benchmarks/RESULTS.md``). The choice says why, and what it passed over.

That CPU order is one machine's: on Intel AMX bf16 runs ~8x fp32, on an AVX2-only CPU INT8 gains nothing. So an
automatic CPU choice also lists its *candidates* (the usable checked variants, declared order), and
:mod:`arena.serving.calibration` settles it on this machine when scoring opens an export: it times the candidates
on the input's own rows once and caches the fastest (``--no-calibrate``: the cached choice, else this order). This
module stays the pure, static part: it reads no cache and times nothing. A named ``--backend`` and a GPU choice have
no candidates: they are never measured.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from arena.errors import BackendUnavailable, ConfigError
from arena.machine.gpu import gpu_present
from arena.serving.backends import backend_names, spec
from arena.serving.backends.contract import Variant
from arena.serving.folder import ModelFolder, read_folder

log = logging.getLogger(__name__)


@dataclass
class Choice:
    """The variant that runs and why. ``backend`` and ``options["precision"]`` name it for summaries.

    ``candidates``: for ``--backend auto`` on a CPU, every usable checked variant in the declared order (what a
    calibration may time; empty for a named backend or a GPU). ``calibration``: where a calibrated choice came from
    (:class:`arena.serving.calibration.Calibration`; None when none was asked for)."""

    backend: str
    reason: str
    options: dict[str, Any] = field(default_factory=dict)
    variant: Variant | None = None
    candidates: tuple[Variant, ...] = ()
    calibration: Any = None


def _device_kind(device: str) -> str | None:
    """``cpu`` / ``cuda`` for a device the user named; None for ``auto``."""
    return None if device == "auto" else ("cuda" if device.startswith("cuda") else "cpu")


def _candidates(folder: ModelFolder, backend: str, precision: str, devices: Sequence[str]) -> list[Variant]:
    variants = folder.variants(devices)
    if backend != "auto":
        variants = [v for v in variants if v.backend == backend]
        if not variants:
            raise BackendUnavailable(spec(backend).absent(folder))
    if precision != "auto":
        variants = [v for v in variants if v.precision == precision]
    return variants


def choose_variant(folder: ModelFolder, backend: str = "auto", precision: str = "auto",
                   device: str | Sequence[str] = "auto") -> Choice:
    """The variant that runs for this request, and why; :class:`BackendUnavailable` listing what each candidate
    lacks when none can. ``device``: ``--device``, or every device of ``--devices`` (the variant must suit each:
    a TensorRT engine built for an H100 is no variant on a T4)."""
    if backend not in backend_names():
        raise ConfigError(f"--backend must be one of {', '.join(backend_names())}; got {backend!r}")
    devices = (device,) if isinstance(device, str) else tuple(device)
    candidates = _candidates(folder, backend, precision, devices)
    asked = backend != "auto" or precision != "auto"
    kinds = {_device_kind(d) for d in devices}
    kind = kinds.pop() if len(kinds) == 1 else "cuda"  # cpu,cuda:0 mixes are refused at the CLI
    if kind is None:
        on_gpu = [v for v in candidates if v.device == "cuda" and v.usable and (v.checked or asked)]
        kind = "cuda" if on_gpu and gpu_present() else "cpu"
        if kind == "cpu" and backend != "auto" and not [v for v in candidates if v.device == "cpu"]:
            kind = "cuda"  # a GPU-only backend asked for by name: say why it cannot run, not "no CPU option"
    named = backend != "auto" and precision == "auto"  # the backend's default variant first (exact ONNX fp32)
    ranked = sorted((v for v in candidates if v.device == kind),
                    key=lambda v: (-(named and v.default and v.usable), -v.checked, -v.speed))
    usable = [v for v in ranked if v.usable and (v.checked or asked)]
    if not usable:
        raise BackendUnavailable(_nothing_runs(folder, backend, precision, kind, ranked))
    chosen = usable[0]
    for v in ranked[:ranked.index(chosen)]:
        if v.checked and v.file and not asked:  # a faster option the folder holds that cannot run here: say so
            log.warning("not using %s: %s", v.name, v.why_not)
    candidates = tuple(v for v in usable if v.checked) if backend == "auto" and kind == "cpu" else ()
    return Choice(chosen.backend, _reason(folder, chosen, ranked, asked, kind), {"precision": chosen.precision},
                  chosen, candidates)


def _reason(folder: ModelFolder, chosen: Variant, ranked: list[Variant], asked: bool, kind: str) -> str:
    where = ("a GPU is present" if gpu_present() else "--device cuda") if kind == "cuda" else \
        ("no GPU" if not gpu_present() else "--device cpu")
    if asked:
        text = f"asked for; {chosen.name} is the fastest matching option"
    else:
        held = "export" if folder.manifest is not None else "folder"
        text = (f"{where}; {chosen.backend} {chosen.precision} is the fastest "
                f"{'GPU' if kind == 'cuda' else 'CPU'} option this {held} holds that passed its parity check "
                "(declared order, measured in benchmarks/RESULTS.md)")
    faster = ranked[:ranked.index(chosen)]
    passed_over = [f"{v.name} ({v.why_not or 'unchecked: ask for it with --precision'})" for v in faster
                   if v.checked or asked]
    if passed_over:
        text += "; passed over: " + ", ".join(passed_over)
    return text


def _nothing_runs(folder: ModelFolder, backend: str, precision: str, kind: str, ranked: list[Variant]) -> str:
    what = " ".join(x for x in (backend if backend != "auto" else "", precision if precision != "auto" else "") if x)
    if not ranked:
        offered = sorted({f"{v.backend} {v.precision}" for v in folder.variants() if v.usable})
        return (f"{folder.path}: no {'GPU' if kind == 'cuda' else 'CPU'} backend can run {what or 'it'} (this "
                f"folder offers: {', '.join(offered) or 'nothing runnable'}); choose another --backend/--precision")
    reasons = "; ".join(f"{v.name}: {v.why_not or 'unchecked'}" for v in ranked)
    return f"{folder.path}: no {'GPU' if kind == 'cuda' else 'CPU'} backend can run {what or 'it'} ({reasons})"


def choose_backend(requested: str, folder: Any, *, precision: str = "auto",
                   device: str | Sequence[str] = "auto") -> Choice:
    """:func:`choose_variant` for a folder path or a :class:`ModelFolder`."""
    if not isinstance(folder, ModelFolder):
        folder = read_folder(folder)
    return choose_variant(folder, requested, precision, device)
