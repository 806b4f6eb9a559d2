"""Batch policies: which rows go together and how far each batch is padded. Pure functions of the row lengths.

* ``notebook``: file order, a fixed number of rows, padded to the batch's longest row (the starter notebook).
* ``padded``: file order, a fixed number of rows, every batch padded to ``max_length``.
* ``sorted``: rows sorted by length, packed under a token budget (rows x padded length), each batch padded to
  its own longest row rounded up to a multiple of 8 (tensor cores and ONNX Runtime kernels like multiples of 8).
  Where the backend takes packed batches (attention with ``cu_seqlens``: torch with ``--attention flash``), the
  same sorted rows go end to end without padding instead (:func:`packed_batches`), under the same budget.

Training uses :func:`length_grouped_batches`: random, but rows of similar length share a batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from arena.errors import ConfigError

POLICIES = ("notebook", "padded", "sorted")


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple if multiple > 1 else n


def default_max_tokens(device: str, max_length: int, model_type: str | None = None) -> int:
    """Token budget per batch when none is given, from measurements (``benchmarks/RESULTS.md``).

    * GPU: 64 rows of ``max_length`` (batch 64 at 512 tokens is where ``../shared/reference/GPU.md`` measured).
    * CPU: 2 rows. DeBERTa's disentangled attention is memory-bound on CPU, so small batches run fastest (xsmall at
      512 tokens: 5.1 rows/s at 1,024 tokens per batch against 2.8 at 8,192); MiniLM-L6 (BERT) at 256 tokens ran at
      31-32 rows/s with any budget from 2 to 16 rows and slower with 32.

    ``model_type`` is accepted so the rule can differ per architecture; the two measured so far share it.
    """
    rows = 64 if str(device).startswith("cuda") else 2
    return rows * round_up(max_length, 8)


def resolve_budget(requested: int | None, *, device: str, max_length: int, limit: int | None = None,
                   model_type: str | None = None) -> int:
    """The token budget per batch, decided once: the user's ``--max-tokens``, else :func:`default_max_tokens`;
    never above ``limit`` (what the backend was built for, e.g. a TensorRT engine's planned budget).

    An explicit request beyond the limit is an error naming both numbers; the default is lowered to it.
    """
    if requested is not None and requested < 1:
        raise ConfigError(f"--max-tokens must be positive, got {requested}")
    budget = requested if requested is not None else default_max_tokens(device, max_length, model_type)
    if limit is not None and budget > limit:
        if requested is not None:
            raise ConfigError(f"--max-tokens {requested} is more than this model's backend takes in one batch "
                              f"({limit}); use --max-tokens {limit} or less, or rebuild it for a larger budget")
        budget = limit
    return budget


def token_budget_batches(lengths: np.ndarray, max_tokens: int, max_batch: int = 256,
                         pad_multiple: int = 8, max_rows: Callable[[int], int] | None = None) -> list[np.ndarray]:
    """Length-sorted batches (longest first) with ``len(batch) * padded_length <= max_tokens``.

    ``max_rows(padded_length)``, when given, caps the rows of a batch at that length: a backend's limits
    (:meth:`arena.serving.backends.contract.Limits.max_rows`, e.g. the TensorRT profile that holds that length).
    Every index appears in exactly one batch. Raises :class:`ConfigError` if a single row does not fit.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if len(lengths) == 0:
        return []
    longest = round_up(int(lengths.max()), pad_multiple)
    if max_tokens < longest:
        raise ConfigError(f"--max-tokens {max_tokens} is smaller than one padded row ({longest} tokens)")
    order = np.argsort(-lengths, kind="stable")
    batches: list[np.ndarray] = []
    start = 0
    n = len(order)
    while start < n:
        padded = round_up(max(int(lengths[order[start]]), 1), pad_multiple)  # the longest row of this batch
        cap = max_batch if max_rows is None else min(max_batch, max_rows(padded))
        if cap < 1:
            raise ConfigError(f"the backend takes no batch of rows padded to {padded} tokens (its limits: see the "
                              "model's description); lower --max-length or rebuild the model for that length")
        size = max(1, min(cap, max_tokens // padded, n - start))
        batches.append(order[start:start + size])
        start += size
    return batches


def packed_batches(lengths: np.ndarray, max_tokens: int, max_batch: int = 256) -> list[np.ndarray]:
    """Length-sorted packs (longest first) of whole rows laid end to end, each with at most ``max_tokens`` real
    tokens and ``max_batch`` rows: for attention that takes ``cu_seqlens``, so no token is padding (padding efficiency
    1.0 by construction). Every index appears in exactly one pack; :class:`ConfigError` if a single row does not
    fit the budget."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if len(lengths) == 0:
        return []
    if max_tokens < int(lengths.max()):
        raise ConfigError(f"--max-tokens {max_tokens} is smaller than one row ({int(lengths.max())} tokens)")
    order = np.argsort(-lengths, kind="stable")
    sizes = lengths[order]
    batches: list[np.ndarray] = []
    start, n = 0, len(order)
    while start < n:
        end, total = start, 0
        while end < n and end - start < max_batch and total + sizes[end] <= max_tokens:
            total += int(sizes[end])
            end += 1
        end = max(end, start + 1)
        batches.append(order[start:end])
        start = end
    return batches


def fixed_batches(n: int, batch_size: int) -> list[np.ndarray]:
    """File-order batches of ``batch_size`` rows (the last one may be shorter)."""
    if batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, got {batch_size}")
    return [np.arange(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]


def length_grouped_batches(lengths: np.ndarray, batch_size: int, seed: int, *,
                           mega_factor: int = 32) -> list[np.ndarray]:
    """Shuffled training batches whose rows have similar lengths (deterministic in ``seed``).

    Rows are shuffled, cut into mega-batches of ``mega_factor * batch_size`` rows, each mega-batch is sorted by
    length and cut into batches, and the batches are shuffled. Little compute goes to padding, while each epoch
    still sees a different random grouping.
    """
    lengths = np.asarray(lengths)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(lengths))
    mega = max(batch_size, batch_size * mega_factor)
    batches = []
    for i in range(0, len(perm), mega):
        chunk = perm[i:i + mega]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches.extend(chunk[j:j + batch_size] for j in range(0, len(chunk), batch_size))
    order = rng.permutation(len(batches))
    return [batches[k] for k in order]


def plan_batches(policy: str, lengths: np.ndarray, *, batch_size: int, max_tokens: int, max_length: int,
                 max_rows: Callable[[int], int] | None = None) -> tuple[list[np.ndarray], int | None]:
    """Batches for a named policy, and the fixed padded length (``padded``) or None (pad to batch max).

    ``max_rows``: the backend's cap on rows at a padded length (see :func:`token_budget_batches`); the fixed-size
    policies check their batches against it too.
    """
    if policy == "sorted":
        return token_budget_batches(lengths, max_tokens, max_batch=max(batch_size, 1), max_rows=max_rows), None
    if policy not in ("notebook", "padded"):
        raise ConfigError(f"unknown batch policy {policy!r}; choose one of {', '.join(POLICIES)}")
    batches = fixed_batches(len(lengths), batch_size)
    fixed = max_length if policy == "padded" else None
    if max_rows is not None:
        for b in batches:
            width = fixed or round_up(int(np.asarray(lengths)[b].max()), 1)
            if len(b) > max_rows(width):
                raise ConfigError(f"--batch-size {batch_size}: the backend takes at most {max_rows(width)} rows "
                                  f"of {width} tokens; lower --batch-size or use --policy sorted")
    return batches, fixed


@dataclass(frozen=True)
class PaddingStats:
    real_tokens: int
    computed_tokens: int

    @property
    def efficiency(self) -> float:
        """Real tokens / computed tokens (1.0 = no padding)."""
        return self.real_tokens / self.computed_tokens if self.computed_tokens else 1.0


def padding_stats(batches: list[np.ndarray], lengths: np.ndarray, *, pad_multiple: int = 8,
                  fixed_length: int | None = None) -> PaddingStats:
    lengths = np.asarray(lengths)
    real = int(sum(int(lengths[b].sum()) for b in batches))
    computed = 0
    for b in batches:
        width = fixed_length if fixed_length is not None else round_up(int(lengths[b].max()), pad_multiple)
        computed += width * len(b)
    return PaddingStats(real, computed)
