"""The Kaggle submission: id, winner_model_a, winner_model_b, winner_tie; one row per test id in file order.

Rows are streamed into a temporary file beside the target and renamed into place only after every id got exactly
one finite row that sums to 1, so a crash or a kill never leaves a partial submission under the final name.
"""

from __future__ import annotations

import contextlib
import csv
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

import numpy as np

from arena.artifacts import SUBMISSION_HEADER as HEADER
from arena.errors import ArenaError
from arena.io import atomic_open


def check_probs(probs: np.ndarray, ids: Sequence[str]) -> None:
    if probs.shape != (len(ids), 3):
        raise ArenaError(f"internal error: {probs.shape[0]} predictions for {len(ids)} ids")
    bad = ~np.isfinite(probs).all(axis=1) | (np.abs(probs.sum(axis=1) - 1.0) > 1e-6) | (probs < 0).any(axis=1)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise ArenaError(f"prediction for id {ids[first]} is not a probability vector: {probs[first].tolist()}")


class SubmissionWriter:
    """Append chunks of (ids, probs) to an open file; :meth:`commit` checks that every id got its row."""

    def __init__(self, fh: IO[str]) -> None:
        self.writer = csv.writer(fh, lineterminator="\n")
        self.writer.writerow(HEADER)
        self.rows = 0

    def write(self, ids: Sequence[str], probs: np.ndarray) -> None:
        check_probs(probs, ids)
        for row_id, p in zip(ids, probs, strict=True):
            self.writer.writerow((row_id, repr(float(p[0])), repr(float(p[1])), repr(float(p[2]))))
        self.rows += len(ids)

    def commit(self, expected_rows: int) -> None:
        if self.rows != expected_rows:
            raise ArenaError(f"internal error: wrote {self.rows} rows for {expected_rows} test ids")


@contextlib.contextmanager
def submission_writer(path: str | Path) -> Iterator[SubmissionWriter]:
    """A writer whose file appears under ``path`` only when the block ends without an error."""
    with atomic_open(path, "w", encoding="utf-8", newline="") as fh:
        yield SubmissionWriter(fh)


LOGIT_COLUMNS = ("logit_a", "logit_b", "logit_tie")
LOGITS_HEADER = (*HEADER, *LOGIT_COLUMNS)
"""The first line of every ``--save-logits`` file: how arena-infer knows a file it may replace as its own."""


def is_logits_file(path: str | Path) -> bool:
    """Whether ``path`` is a ``--save-logits`` file arena-infer wrote (its first line is :data:`LOGITS_HEADER`)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.readline().strip() == ",".join(LOGITS_HEADER)
    except OSError:
        return False


class PredictionWriter(SubmissionWriter):
    """The submission's columns plus log-probabilities (``logit_*``, the form of arena-train's ``oof.csv``):
    what ``arena-train --soft-labels`` reads to train a student on these predictions."""

    def __init__(self, fh: IO[str]) -> None:
        self.writer = csv.writer(fh, lineterminator="\n")
        self.writer.writerow(LOGITS_HEADER)
        self.rows = 0

    def write(self, ids: Sequence[str], probs: np.ndarray) -> None:
        check_probs(probs, ids)
        logs = np.log(np.clip(probs, 1e-12, 1.0))
        for row_id, p, z in zip(ids, probs, logs, strict=True):
            self.writer.writerow((row_id, *(repr(float(x)) for x in p), *(repr(float(x)) for x in z)))
        self.rows += len(ids)


class _NoWriter:
    def write(self, ids: Sequence[str], probs: np.ndarray) -> None:
        pass

    def commit(self, expected_rows: int) -> None:
        pass


@contextlib.contextmanager
def predictions_writer(path: str | Path | None) -> Iterator[PredictionWriter | _NoWriter]:
    """Like :func:`submission_writer` for ``--save-logits``; a writer that writes nothing when ``path`` is None."""
    if path is None:
        yield _NoWriter()
        return
    with atomic_open(path, "w", encoding="utf-8", newline="") as fh:
        yield PredictionWriter(fh)
