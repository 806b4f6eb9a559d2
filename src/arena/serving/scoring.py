"""Scoring: records -> encoded rows -> batches -> backend -> probabilities, in the input order.

The input is processed in chunks (``chunk_rows``), so memory grows with the chunk, not with the file. Within a
chunk, :class:`~arena.serving.executor.BatchExecutor` plans the batches (length-sorted under a token budget by default),
and puts the results back in input order. Encoding and padding of the next chunk run in a background thread (and
optionally in worker processes) while the backend computes the current one: the tokenizer and the backends
release the GIL, so the two overlap, and the thread that feeds the model only runs it.

The ``notebook`` policy is the starter notebook's loop, kept as the benchmarks' yardstick: file order, a fixed
number of rows, each batch tokenized and padded on the same thread right before the model runs it.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from arena.data import Record
from arena.encode import ArenaEncoder, Encoded, EncoderConfig
from arena.metrics import softmax
from arena.serving.backends.contract import Backend
from arena.serving.ensemble import DEFAULT_COMBINE, combine
from arena.serving.executor import BatchExecutor, Prepared, Timings
from arena.serving.rules import apply_rules
from arena.serving.tta import combine_swap

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScoreConfig:
    policy: str = "sorted"
    batch_size: int = 64
    """Rows per batch (notebook/padded policies) or the cap on rows per batch (sorted)."""
    max_tokens: int | None = None
    """Token budget per batch for the sorted policy (rows x padded length); None: the default for the backend's
    device within its limits (:func:`arena.serving.batching.resolve_budget`)."""
    chunk_rows: int = 8192
    tta: bool = False
    temperature: float = 1.0
    encode_workers: int = 0
    """0: encode in a background thread; N > 1: in N worker processes."""
    rules: tuple[str, ...] = ()
    """Post-processing rules (:mod:`arena.serving.rules`)."""


# -------------------------------------------------------------------------------------- encode worker processes
_WORKER: ArenaEncoder | None = None


def _worker_init(tokenizer_path: str, encoder: dict[str, Any]) -> None:
    global _WORKER
    from arena.models.modeling import load_tokenizer

    _WORKER = ArenaEncoder(load_tokenizer(tokenizer_path), EncoderConfig.from_dict(encoder))


def _worker_encode(records: list[Record], swap: bool) -> Encoded:
    assert _WORKER is not None
    return _WORKER.encode(records, swap=swap)


@dataclass
class Member:
    """One model of an ensemble: its own encoder settings, executor (backend + batch plan) and temperature."""

    encoder: ArenaEncoder
    executor: BatchExecutor
    temperature: float = 1.0
    weight: float = 1.0


def encoder_signature(encoder: ArenaEncoder) -> tuple:
    """Members with equal signatures produce identical token ids, so their rows are encoded once."""
    probe = encoder.tokenizer("Prompt: Hello, world! 123 \u00fcnicode", add_special_tokens=False)["input_ids"]
    return (type(encoder.tokenizer).__name__, len(encoder.tokenizer), tuple(probe),
            json.dumps(encoder.config.to_dict(), sort_keys=True))


class Scorer:
    """Turn records into probabilities with one backend (or an ensemble of members) and one batch policy."""

    def __init__(self, runner: Backend | None, encoder: ArenaEncoder | None, config: ScoreConfig = ScoreConfig(), *,
                 tokenizer_path: str | Path | None = None, model_type: str | None = None,
                 members: list[Member] | None = None, combine: str = DEFAULT_COMBINE) -> None:
        self.config = config
        if members is None:
            members = [Member(encoder, BatchExecutor(runner, pad_id=encoder.pad_id,
                                                     max_length=encoder.config.max_length, policy=config.policy,
                                                     batch_size=config.batch_size, max_tokens=config.max_tokens,
                                                     model_type=model_type), config.temperature)]
        self.members = members
        self.combine = combine
        self.encoder, self.executor = members[0].encoder, members[0].executor
        self.runner = self.executor.backend
        keys = [encoder_signature(m.encoder) for m in members] if len(members) > 1 else [()]
        self._group = [keys.index(k) for k in keys]  # member -> the first member with its encoding
        self._pool: ProcessPoolExecutor | None = None
        if config.encode_workers > 1:
            if tokenizer_path is None:
                raise ValueError("encode_workers > 1 needs tokenizer_path")
            # spawn, not fork: a forked child of a process whose torch/OpenMP threads have run can deadlock
            self._pool = ProcessPoolExecutor(config.encode_workers, mp_context=mp.get_context("spawn"),
                                             initializer=_worker_init,
                                             initargs=(str(tokenizer_path), self.encoder.config.to_dict()))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)

    # -- encoding -------------------------------------------------------------------------------------------------
    def _encode(self, records: list[Record], swap: bool, member: int = 0) -> Encoded:
        encoder = self.members[member].encoder
        if self._pool is None or member != 0:
            return encoder.encode(records, swap=swap)
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

    def _prepare_chunk(self, records: list[Record]) -> tuple[list[tuple[Prepared, Prepared | None]], float]:
        """Encode (with TTA, also swapped) once per distinct encoder, then pad for every member: runs in the
        encode thread. Returns each member's (prepared, prepared swapped or None) and the encoding seconds."""
        t0 = time.perf_counter()
        encoded: dict[int, tuple[Encoded, Encoded | None]] = {}
        for g in sorted(set(self._group)):
            encoded[g] = (self._encode(records, False, g),
                          self._encode(records, True, g) if self.config.tta else None)
        encode_s = time.perf_counter() - t0
        out = []
        for m, g in zip(self.members, self._group, strict=True):
            enc, swapped = encoded[g]
            out.append((m.executor.prepare(enc), None if swapped is None else m.executor.prepare(swapped)))
        return out, encode_s

    # -- model ----------------------------------------------------------------------------------------------------
    def logits(self, encoded: Encoded, timings: Timings | None = None) -> np.ndarray:
        """The first member's logits for every encoded row, in input order (planned, padded and run here)."""
        return self.executor(encoded, timings)

    def _probs(self, prepared: list[tuple[Prepared, Prepared | None]], timings: Timings | None) -> np.ndarray:
        """Each member's probabilities (temperature, then swap TTA), combined across members."""
        probs = []
        for m, (enc, swapped) in zip(self.members, prepared, strict=True):
            p = softmax(m.executor.run(enc, timings), m.temperature)
            if swapped is not None:
                p = combine_swap(p, softmax(m.executor.run(swapped, timings), m.temperature))
            probs.append(p)
        if len(probs) == 1:
            return probs[0]
        return combine(probs, [m.weight for m in self.members], self.combine)

    def _notebook_chunk(self, records: list[Record], timings: Timings | None) -> np.ndarray:
        """The starter notebook's loop: per batch, in file order, tokenize then run, all on this thread."""
        parts = []
        for start in range(0, len(records), self.config.batch_size):
            prepared, encode_s = self._prepare_chunk(records[start:start + self.config.batch_size])
            if timings is not None:
                timings.encode_s += encode_s
            parts.append(self._probs(prepared, timings))
        return np.concatenate(parts) if parts else np.zeros((0, 3), dtype=np.float32)

    def score_chunks(self, chunks: Iterable[list[Record]],
                     timings: Timings | None = None) -> Iterator[tuple[list[Record], np.ndarray]]:
        """Yield (records, probabilities) per chunk; the next chunk is encoded and padded while this one is scored."""
        if self.config.policy == "notebook":
            for records in chunks:
                probs = self._notebook_chunk(records, timings)
                if timings is not None:
                    timings.rows += len(records)
                yield records, apply_rules(probs, records, self.config.rules)
            return
        it = iter(chunks)
        with ThreadPoolExecutor(1, thread_name_prefix="arena-encode") as pool:
            def submit() -> tuple[list[Record], Future] | None:
                chunk = next(it, None)
                return None if chunk is None else (chunk, pool.submit(self._prepare_chunk, chunk))

            pending = submit()
            while pending is not None:
                records, future = pending
                prepared, encode_s = future.result()
                pending = submit()
                if timings is not None:
                    timings.encode_s += encode_s
                    timings.rows += len(records)
                yield records, apply_rules(self._probs(prepared, timings), records, self.config.rules)

    def score(self, records: list[Record], timings: Timings | None = None) -> np.ndarray:
        """Probabilities (len(records) x 3) in input order."""
        size = self.config.chunk_rows
        parts = [p for _, p in self.score_chunks(
            (records[i:i + size] for i in range(0, len(records), size)), timings)]
        return np.concatenate(parts) if parts else np.zeros((0, 3))


def scorer_for(ensemble: Any, config: ScoreConfig, *, combine: str | None = None) -> Scorer:
    """A scorer over every member of a :class:`~arena.serving.loading.LoadedEnsemble` (one model is an ensemble of one):
    each member with its own encoder, executor (same batch policy and budget rule), temperature and weight."""
    members = [Member(m.encoder, BatchExecutor(m.runner, pad_id=m.encoder.pad_id,
                                               max_length=m.encoder.config.max_length, policy=config.policy,
                                               batch_size=config.batch_size, max_tokens=config.max_tokens,
                                               model_type=m.model_type), m.temperature, w)
               for m, w in zip(ensemble.members, ensemble.weights, strict=True)]
    first = ensemble.members[0]
    return Scorer(None, None, replace(config, temperature=first.temperature), tokenizer_path=first.folder,
                  members=members, combine=combine or ensemble.combine)
