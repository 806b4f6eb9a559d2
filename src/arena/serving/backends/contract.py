"""The backend contract: what every backend is (:class:`Backend`) and what it can run (:class:`Limits`).

Every backend (torch, ONNX Runtime, TensorRT, ...) reduces to this, and the batch executor
(:mod:`arena.serving.executor`)
needs nothing else: it plans every batch within the backend's limits and calls it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class ShapeRange:
    """A box of batch shapes a backend accepts: padded lengths ``seq_min..seq_max`` with up to ``batch_max`` rows
    (a TensorRT optimisation profile)."""

    seq_min: int
    seq_max: int
    batch_max: int


@dataclass(frozen=True)
class Limits:
    """What a backend can run. The executor (:mod:`arena.serving.executor`) plans every batch within these, so a batch
    the
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




@runtime_checkable
class PackingBackend(Backend, Protocol):
    """A backend that also runs packed, unpadded batches (attention that takes ``cu_seqlens``: the torch backend with
    ``--attention flash``). ``packs`` says whether it takes them now; the executor then plans packs instead of padded
    rectangles (:func:`arena.serving.batching.packed_batches`).

    ``run_packed(input_ids, cu_seqlens, features)``: int64 (total_tokens,) the rows' tokens end to end, int64
    (rows + 1,) each row's offset, float32 (rows, n_features) or None; returns float32 logits (rows, 3) in host memory.
    """

    packs: bool

    def run_packed(self, input_ids: np.ndarray, cu_seqlens: np.ndarray,
                   features: np.ndarray | None = None) -> np.ndarray:
        ...


@runtime_checkable
class ParallelBackend(Backend, Protocol):
    """A backend that also runs many batches at once and returns them in order: several devices, one process each
    (:class:`arena.serving.sharded.ShardedRunner`). The executor hands it every batch in one call."""

    def map(self, batches: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray | None]]) -> list[np.ndarray]:
        ...


# ------------------------------------------------------------------------------------------- declarations


@dataclass(frozen=True)
class Variant:
    """One way to score a model folder: a backend at one precision from one file, and whether it may run here.

    A folder offers every variant its files allow (:attr:`BackendSpec.variants`); the choice
    (:mod:`arena.serving.choice`) takes one and the backend's :attr:`BackendSpec.open` opens it.
    ``why_not`` None: runnable on this machine; otherwise the reason (not exported, failed its parity check, not
    installed, needs a GPU) in words a user can act on. ``checked``: exact (fp32 as trained) or admitted by a parity
    check at export, so ``--backend auto`` may pick it unasked; a variant that changes the numbers unchecked (torch
    bf16 on a CPU) runs only on request.
    """

    backend: str
    precision: str
    device: str = "cpu"
    """``cpu`` or ``cuda``: where it runs (a backend that runs on both offers one variant each)."""
    file: str | None = None
    """The file it reads, relative to the folder (None: the checkpoint's weights)."""
    speed: float = 1.0
    """Measured rows/s relative to ONNX Runtime fp32 on the same device kind (``benchmarks/RESULTS.md``); the
    automatic choice takes the fastest usable variant."""
    checked: bool = True
    default: bool = False
    """What ``--backend NAME`` runs without ``--precision`` on its device kind (ONNX Runtime: the exact fp32 graph on
    a CPU, int8 only when asked); a backend with no default runs its fastest usable variant."""
    why_not: str | None = None
    detail: dict = field(default_factory=dict, compare=False, hash=False)
    """What the backend needs to open it (the manifest entry, the parity record, ...)."""

    @property
    def usable(self) -> bool:
        return self.why_not is None

    @property
    def name(self) -> str:
        return f"{self.backend} {self.precision}" + (" cuda" if self.device == "cuda" else "")


@dataclass(frozen=True)
class OpenOptions:
    """What the command line says about how to run, beyond the variant itself."""

    device: str = "auto"
    threads: int | None = None
    compile: bool = False
    attention: str = "auto"
    """``--attention`` (:data:`arena.models.attention_choices.ATTENTIONS`): the torch backend's; others take
    only ``auto``."""
    device_map: dict[str, Any] | None = None
    """A layer split across GPUs (:mod:`arena.serving.layer_split`; the torch backend only): module name -> GPU."""


@dataclass(frozen=True)
class BackendSpec:
    """A backend, declared once: its name, what it serves, which folders it reads, how it opens.

    Everything else is derived from these declarations (:mod:`arena.serving.backends` registers them): the CLI's
    ``--backend`` / ``--precision`` choices and their up-front checks, ``--backend auto``, arena-bench's cells and
    the folder each cell reads, the README's backend table. Adding a backend is one module that defines ``SPEC``
    plus one line in :data:`arena.serving.backends.BACKEND_MODULES`.
    """

    name: str
    precisions: tuple[str, ...]
    """What ``--precision`` may name for this backend (besides ``auto``)."""
    devices: tuple[str, ...]
    reads: str
    """``checkpoint`` (PyTorch weights) or ``export`` (an arena-export folder): the folder arena-bench gives it."""
    variants: Callable[[Any, Sequence[str]], list[Variant]]
    """``(folder, devices)``: the variants a :class:`~arena.serving.folder.ModelFolder` offers this backend (empty:
    none) for the devices the command runs on (``("auto",)``, ``--device``, or every device of ``--devices``: an
    engine built for one GPU is no variant on another)."""
    open: Callable[[Any, Variant, OpenOptions], Backend]
    """Open one variant of a folder; raises :class:`~arena.errors.ArenaError` subclasses only."""
    absent: Callable[[Any], str] = lambda folder: f"{folder.path} has no files for this backend"
    """Why a folder offers this backend nothing, and what to run to change that (``--backend X`` asked for)."""
    check_request: Callable[[str, str], None] | None = None
    """``(precision, device)`` checked at the CLI before any work (e.g. fp16 on torch needs a GPU); raises
    :class:`~arena.errors.ConfigError`."""
    summary: str = ""
    """One line for the README's backend table and ``--help``."""
    runtime: str = ""
    """The Python module the backend runs on (``onnxruntime``, ``openvino``, ...): its version is part of the key a
    measured choice is cached under (:mod:`arena.serving.calibration`); empty: none to name."""
