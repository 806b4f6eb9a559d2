"""The backend contract: what every backend is (:class:`Backend`) and what it can run (:class:`Limits`).

Every backend (torch, ONNX Runtime, TensorRT, ...) reduces to this, and the batch executor
(:mod:`arena.serving.executor`)
needs nothing else: it plans every batch within the backend's limits and calls it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

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


