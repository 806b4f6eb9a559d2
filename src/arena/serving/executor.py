"""The one batch executor: plan batches -> pad -> run the backend -> scatter logits back in input order.

Every command that turns encoded rows into logits goes through :class:`BatchExecutor`: inference and the
benchmark (:mod:`arena.serving.scoring`), evaluation during training (:mod:`arena.train.loop`) and the exporter's parity
batches (:mod:`arena.export.cli`). The token budget is decided here, once, from the user's ``--max-tokens`` and the
backend's :class:`~arena.serving.backends.contract.Limits` (:func:`arena.serving.batching.resolve_budget`), and every
planned batch fits
those limits by construction. Where the backend takes packed batches (:class:`PackingBackend`: torch with
disentangled-flash's attention), the ``sorted`` policy lays the rows of a batch end to end instead of padding them
(:class:`PackedBatch`), under the same budget and the same plan / prepare / run / scatter steps.

The work is split so that padding can happen off the thread that feeds the model: :meth:`BatchExecutor.prepare`
(plan + pad, any thread: the scorer calls it in its encode thread) and :meth:`BatchExecutor.run` (model + scatter).
Both record their own timings, so the model-only time of a pass is measured on the pass that produced the
probabilities, never on a second one.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from arena.encode import Encoded, pad_batch
from arena.errors import ConfigError
from arena.serving.backends.contract import UNLIMITED, Backend, Limits, PackingBackend, ParallelBackend
from arena.serving.batching import packed_batches, padding_stats, plan_batches, resolve_budget, round_up


@dataclass
class Timings:
    """Where a scoring pass spent its time. ``model_s`` is time inside the backend, on the same pass as
    ``wall_s``; ``encode_s`` and ``pad_s`` run in the encode thread, overlapped with the model."""

    rows: int = 0
    batches: int = 0
    encode_s: float = 0.0
    pad_s: float = 0.0
    model_s: float = 0.0
    scatter_s: float = 0.0
    write_s: float = 0.0
    wall_s: float = 0.0
    real_tokens: int = 0
    computed_tokens: int = 0
    batch_ms: list[float] = field(default_factory=list)

    @property
    def padding_efficiency(self) -> float:
        return self.real_tokens / self.computed_tokens if self.computed_tokens else 1.0

    def summary(self) -> dict[str, Any]:
        lat = np.array(self.batch_ms) if self.batch_ms else np.zeros(1)
        return {
            "rows": self.rows, "batches": self.batches, "wall_s": round(self.wall_s, 4),
            "rows_per_s": self.rows / self.wall_s if self.wall_s else 0.0,
            "model_rows_per_s": self.rows / self.model_s if self.model_s else 0.0,
            "encode_s": round(self.encode_s, 4), "pad_s": round(self.pad_s, 4), "model_s": round(self.model_s, 4),
            "scatter_s": round(self.scatter_s, 4), "write_s": round(self.write_s, 4),
            "tokens_per_s": self.real_tokens / self.wall_s if self.wall_s else 0.0,
            "padding_efficiency": round(self.padding_efficiency, 4),
            "batch_ms_p50": float(np.percentile(lat, 50)), "batch_ms_p90": float(np.percentile(lat, 90)),
            "batch_ms_p99": float(np.percentile(lat, 99)),
        }


@dataclass
class PaddedBatch:
    """One batch ready for a backend: the rows it holds (indices into the encoded rows) and its arrays."""

    rows: np.ndarray
    input_ids: np.ndarray
    attention_mask: np.ndarray
    features: np.ndarray | None = None

    def run(self, backend: Backend) -> np.ndarray:
        return backend(self.input_ids, self.attention_mask, self.features)


@dataclass
class PackedBatch:
    """One packed batch: the rows it holds, their tokens end to end (``input_ids``, int64 (total_tokens,)) and each
    row's offset (``cu_seqlens``, int64 (rows + 1,)); for a backend that takes them (:class:`PackingBackend`)."""

    rows: np.ndarray
    input_ids: np.ndarray
    cu_seqlens: np.ndarray
    features: np.ndarray | None = None

    def run(self, backend: PackingBackend) -> np.ndarray:
        return backend.run_packed(self.input_ids, self.cu_seqlens, self.features)


@dataclass
class Prepared:
    """Every batch of a set of encoded rows, padded (or packed); what :meth:`BatchExecutor.run` consumes."""

    n_rows: int
    batches: list[PaddedBatch | PackedBatch]
    real_tokens: int = 0
    computed_tokens: int = 0
    pad_s: float = 0.0


class BatchExecutor:
    """Run one backend over encoded rows under one batch policy and one token budget.

    ``policy``: ``sorted`` (length-sorted, token-budget batches), ``padded`` or ``notebook``
    (:mod:`arena.serving.batching`). ``max_tokens`` None: the default budget for the backend's device, lowered to what
    the
    backend takes (:func:`arena.serving.batching.resolve_budget`); ``max_length``: the encoder's, checked against the
    backend's. ``packing``: with the ``sorted`` policy, plan packed batches where the backend takes them
    (:attr:`packs`); False keeps padded rectangles (the benchmarks compare both). Raises :class:`ConfigError` for a
    combination the backend cannot run, before any batch is built.
    """

    def __init__(self, backend: Backend, *, pad_id: int, max_length: int, policy: str = "sorted", batch_size: int = 64,
                 max_tokens: int | None = None, model_type: str | None = None, packing: bool = True) -> None:
        if batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
        self.backend = backend
        self.pad_id = pad_id
        self.policy = policy
        self.batch_size = batch_size
        self.max_length = max_length
        self.limits: Limits = getattr(backend, "limits", UNLIMITED)
        if self.limits.max_length is not None and max_length > self.limits.max_length:
            raise ConfigError(f"the encoder's max length {max_length} is beyond what "
                              f"{getattr(backend, 'description', type(backend).__name__)} takes "
                              f"({self.limits.max_length} tokens); use --max-length {self.limits.max_length}")
        self.budget = resolve_budget(max_tokens, device=str(getattr(backend, "device", "cpu")),
                                     max_length=max_length, limit=self.limits.max_tokens, model_type=model_type)
        self.pad_multiple = 1 if policy == "notebook" else 8
        self.packing = packing

    @property
    def packs(self) -> bool:
        """Whether batches are planned as packs now: ``sorted`` policy, packing on, and a backend that takes packs
        (read at every plan: ``--attention auto`` may fall back to eager after its first batch)."""
        return self.packing and self.policy == "sorted" and bool(getattr(self.backend, "packs", False))

    def plan(self, lengths: np.ndarray) -> tuple[list[np.ndarray], int | None]:
        """Batches of row indices and the fixed padded length (``padded`` policy) or None."""
        if self.packs:
            return packed_batches(lengths, self.budget, max_batch=max(self.batch_size, 1)), None
        return plan_batches(self.policy, lengths, batch_size=self.batch_size, max_tokens=self.budget,
                            max_length=self.max_length, max_rows=self.limits.max_rows)

    def planned_tokens(self, lengths: np.ndarray) -> list[float]:
        """Computed tokens of every batch planned for ``lengths``: rows x padded length, or a pack's real tokens."""
        batches, fixed = self.plan(lengths)
        lengths = np.asarray(lengths)
        if self.packs:
            return [float(lengths[rows].sum()) for rows in batches]
        return [float(len(rows) * (fixed or round_up(int(lengths[rows].max()), self.pad_multiple)))
                for rows in batches]

    def prepare(self, encoded: Encoded, batches: Sequence[np.ndarray] | None = None,
                length: int | None = None) -> Prepared:
        """Plan (unless ``batches`` are given) and pad every batch; safe to call on any thread."""
        t0 = time.perf_counter()
        if batches is None:
            batches, length = self.plan(encoded.lengths)
        if self.packs and length is None:
            return self._pack(encoded, batches, t0)
        padded: list[PaddedBatch | PackedBatch] = []
        for rows in batches:
            ids, mask = pad_batch([encoded.ids[i] for i in rows], self.pad_id, multiple=self.pad_multiple,
                                  length=length)
            padded.append(PaddedBatch(np.asarray(rows), ids, mask, encoded.feature_rows(rows)))
        stats = padding_stats(list(batches), encoded.lengths, pad_multiple=self.pad_multiple, fixed_length=length)
        return Prepared(len(encoded), padded, stats.real_tokens, stats.computed_tokens, time.perf_counter() - t0)

    def _pack(self, encoded: Encoded, batches: Sequence[np.ndarray], t0: float) -> Prepared:
        """Each batch's rows end to end with their offsets: every computed token is a real one."""
        packs: list[PaddedBatch | PackedBatch] = []
        for rows in batches:
            parts = [np.asarray(encoded.ids[i], dtype=np.int64) for i in rows]
            offsets = np.zeros(len(parts) + 1, dtype=np.int64)
            np.cumsum([len(p) for p in parts], out=offsets[1:])
            packs.append(PackedBatch(np.asarray(rows), np.concatenate(parts), offsets, encoded.feature_rows(rows)))
        real = int(sum(len(p.input_ids) for p in packs))
        return Prepared(len(encoded), packs, real, real, time.perf_counter() - t0)

    def run(self, prepared: Prepared, timings: Timings | None = None) -> np.ndarray:
        """Logits (float32, n_rows x 3) in the encoded rows' order."""
        out = np.zeros((prepared.n_rows, 3), dtype=np.float32)
        latencies: list[float] = []
        t0 = time.perf_counter()
        if isinstance(self.backend, ParallelBackend):  # several devices: every batch in flight at once
            results = self.backend.map([(b.input_ids, b.attention_mask, b.features) for b in prepared.batches])
        else:
            results = []
            for b in prepared.batches:
                tb = time.perf_counter()
                results.append(b.run(self.backend))
                latencies.append((time.perf_counter() - tb) * 1000)
        t1 = time.perf_counter()
        for b, logits in zip(prepared.batches, results, strict=True):
            out[b.rows] = logits
        if timings is not None:
            timings.model_s += t1 - t0
            timings.scatter_s += time.perf_counter() - t1
            timings.pad_s += prepared.pad_s
            timings.batches += len(prepared.batches)
            timings.batch_ms.extend(latencies)
            timings.real_tokens += prepared.real_tokens
            timings.computed_tokens += prepared.computed_tokens
        return out

    def __call__(self, encoded: Encoded, timings: Timings | None = None) -> np.ndarray:
        """Plan, pad and run on this thread (evaluation, the notebook loop)."""
        return self.run(self.prepare(encoded), timings)


