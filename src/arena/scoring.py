"""Scoring: records -> encoded rows -> batches -> backend -> probabilities, in the input order.

The input is processed in chunks (``chunk_rows``), so memory grows with the chunk, not with the file. Within a
chunk, rows are sorted by length and packed under a token budget (:mod:`arena.batching`); results are put back in
input order. Encoding of the next chunk runs in a background thread (and optionally in worker processes) while
the backend computes the current one: the tokenizer and the backends release the GIL, so the two overlap.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from arena.batching import default_max_tokens, padding_stats, plan_batches
from arena.data import Record
from arena.encode import ArenaEncoder, Encoded, EncoderConfig, pad_batch
from arena.metrics import softmax
from arena.rules import apply_rules
from arena.tta import combine_swap

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScoreConfig:
    policy: str = "sorted"
    batch_size: int = 64
    """Rows per batch (notebook/padded policies) or the cap on rows per batch (sorted)."""
    max_tokens: int | None = None
    """Token budget per batch for the sorted policy (rows x padded length); None: :func:`default_max_tokens`."""
    chunk_rows: int = 8192
    tta: bool = False
    temperature: float = 1.0
    encode_workers: int = 0
    """0: encode in a background thread; N > 1: in N worker processes."""
    rules: tuple[str, ...] = ()
    """Post-processing rules (:mod:`arena.rules`)."""


@dataclass
class Timings:
    rows: int = 0
    batches: int = 0
    encode_s: float = 0.0
    model_s: float = 0.0
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
            "encode_s": round(self.encode_s, 4), "model_s": round(self.model_s, 4), "write_s": round(self.write_s, 4),
            "tokens_per_s": self.real_tokens / self.wall_s if self.wall_s else 0.0,
            "padding_efficiency": round(self.padding_efficiency, 4),
            "batch_ms_p50": float(np.percentile(lat, 50)), "batch_ms_p90": float(np.percentile(lat, 90)),
            "batch_ms_p99": float(np.percentile(lat, 99)),
        }


Runner = Callable[..., np.ndarray]
"""``runner(input_ids, attention_mask, features=None) -> logits``; ``features`` only for hybrid models."""

# -------------------------------------------------------------------------------------- encode worker processes
_WORKER: ArenaEncoder | None = None


def _worker_init(tokenizer_path: str, encoder: dict[str, Any]) -> None:
    global _WORKER
    from arena.modeling import load_tokenizer

    _WORKER = ArenaEncoder(load_tokenizer(tokenizer_path), EncoderConfig.from_dict(encoder))


def _worker_encode(records: list[Record], swap: bool) -> Encoded:
    assert _WORKER is not None
    return _WORKER.encode(records, swap=swap)


class Scorer:
    """Turn records into probabilities with one backend and one batch policy."""

    def __init__(self, runner: Runner, encoder: ArenaEncoder, config: ScoreConfig = ScoreConfig(), *,
                 tokenizer_path: str | Path | None = None) -> None:
        self.runner = runner
        self.encoder = encoder
        self.config = config
        self.pad_id = encoder.pad_id
        self._pool: ProcessPoolExecutor | None = None
        if config.encode_workers > 1:
            if tokenizer_path is None:
                raise ValueError("encode_workers > 1 needs tokenizer_path")
            # spawn, not fork: a forked child of a process whose torch/OpenMP threads have run can deadlock
            self._pool = ProcessPoolExecutor(config.encode_workers, mp_context=mp.get_context("spawn"),
                                             initializer=_worker_init,
                                             initargs=(str(tokenizer_path), encoder.config.to_dict()))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)

    # -- encoding -------------------------------------------------------------------------------------------------
    def _encode(self, records: list[Record], swap: bool) -> Encoded:
        if self._pool is None:
            return self.encoder.encode(records, swap=swap)
        n = self.config.encode_workers
        size = -(-len(records) // n)
        parts = [records[i:i + size] for i in range(0, len(records), size)]
        ids: list[np.ndarray] = []
        feats: list[np.ndarray] = []
        for part in self._pool.map(_worker_encode, parts, [swap] * len(parts)):
            ids.extend(part.ids)
            if part.features is not None:
                feats.append(part.features)
        return Encoded(ids=ids, features=np.concatenate(feats) if feats else None)

    def _encode_chunk(self, records: list[Record]) -> tuple[Encoded, Encoded | None, float]:
        t0 = time.perf_counter()
        enc = self._encode(records, swap=False)
        swapped = self._encode(records, swap=True) if self.config.tta else None
        return enc, swapped, time.perf_counter() - t0

    # -- model ----------------------------------------------------------------------------------------------------
    def logits(self, encoded: Encoded, timings: Timings | None = None) -> np.ndarray:
        """Logits for every encoded row, in input order."""
        cfg = self.config
        out = np.zeros((len(encoded), 3), dtype=np.float32)
        if len(encoded) == 0:
            return out
        max_length = self.encoder.config.max_length
        budget = cfg.max_tokens or default_max_tokens(getattr(self.runner, "device", "cpu"), max_length)
        batches, fixed = plan_batches(cfg.policy, encoded.lengths, batch_size=cfg.batch_size,
                                      max_tokens=budget, max_length=max_length)
        if hasattr(self.runner, "map"):  # several devices: all batches of the chunk in flight at once
            padded = [(*pad_batch([encoded.ids[i] for i in batch], self.pad_id, length=fixed),
                       encoded.feature_rows(batch)) for batch in batches]
            t0 = time.perf_counter()
            for batch, logits in zip(batches, self.runner.map(padded), strict=True):
                out[batch] = logits
            if timings is not None:
                timings.model_s += time.perf_counter() - t0
                timings.batches += len(batches)
        else:
            for batch in batches:
                ids, mask = pad_batch([encoded.ids[i] for i in batch], self.pad_id, length=fixed)
                feats = encoded.feature_rows(batch)
                t0 = time.perf_counter()
                out[batch] = self.runner(ids, mask, feats)
                dt = time.perf_counter() - t0
                if timings is not None:
                    timings.model_s += dt
                    timings.batch_ms.append(dt * 1000)
                    timings.batches += 1
        if timings is not None:
            stats = padding_stats(batches, encoded.lengths, fixed_length=fixed)
            timings.real_tokens += stats.real_tokens
            timings.computed_tokens += stats.computed_tokens
        return out

    def probs(self, encoded: Encoded, swapped: Encoded | None, timings: Timings | None = None) -> np.ndarray:
        p = softmax(self.logits(encoded, timings), self.config.temperature)
        if swapped is not None:
            p = combine_swap(p, softmax(self.logits(swapped, timings), self.config.temperature))
        return p

    def score_chunks(self, chunks: Iterable[list[Record]],
                     timings: Timings | None = None) -> Iterator[tuple[list[Record], np.ndarray]]:
        """Yield (records, probabilities) per chunk; the next chunk is encoded while this one is scored."""
        it = iter(chunks)
        with ThreadPoolExecutor(1, thread_name_prefix="arena-encode") as pool:
            def submit() -> tuple[list[Record], Future] | None:
                chunk = next(it, None)
                return None if chunk is None else (chunk, pool.submit(self._encode_chunk, chunk))

            pending = submit()
            while pending is not None:
                records, future = pending
                enc, swapped, enc_s = future.result()
                pending = submit()
                if timings is not None:
                    timings.encode_s += enc_s
                    timings.rows += len(records)
                yield records, apply_rules(self.probs(enc, swapped, timings), records, self.config.rules)

    def score(self, records: list[Record], timings: Timings | None = None) -> np.ndarray:
        """Probabilities (len(records) x 3) in input order."""
        size = self.config.chunk_rows
        parts = [p for _, p in self.score_chunks(
            (records[i:i + size] for i in range(0, len(records), size)), timings)]
        return np.concatenate(parts) if parts else np.zeros((0, 3))
