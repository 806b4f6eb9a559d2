"""Soft labels and pseudo-labelled rows: what a student trains on besides the hard labels.

* ``--soft-labels FILE``: teacher probabilities keyed by id (an ``oof.csv`` of arena-train, the file of
  ``arena-infer --save-logits``, or any CSV with ``id, winner_model_a, winner_model_b, winner_tie``). A row's
  training target becomes ``(1 - soft_weight) * one_hot(label) + soft_weight * teacher``, and the loss the cross-entropy
  against it (with one-hot targets exactly the hard-label loss). Rows the file lacks keep their hard label.
* ``--extra FILE`` (repeatable): unlabelled pairs (test layout) that train with their teacher probabilities alone;
  they join the training rows of every split and never a validation fold (:mod:`arena.train.partition` drops
  those that are rows of the training file). Every extra id kept needs a soft label.
* A soft-label file must match at least half of the labelled rows, unless it holds the extra rows' ids only.

Model selection and the reported log loss stay on the hard labels of the validation rows.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from arena import LABELS
from arena.data import Record
from arena.errors import ConfigError
from arena.train.partition import ExtraFile

log = logging.getLogger(__name__)

MIN_SOFT_COVERAGE = 0.5
"""The least share of the labelled rows a ``--soft-labels`` file must have an id for."""


@dataclass
class Extra:
    """Pseudo-labelled rows: their records and teacher probabilities (rows x 3)."""

    records: list[Record]
    targets: np.ndarray


def read_soft_labels(path: str | Path) -> dict[str, np.ndarray]:
    """id -> teacher probabilities (3,), checked to be probability vectors."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--soft-labels {path} does not exist")
    try:
        frame = pd.read_csv(path, dtype={"id": str})
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--soft-labels {path} is not a readable CSV: {exc}") from None
    missing = [c for c in ("id", *LABELS) if c not in frame.columns]
    if missing:
        raise ConfigError(f"--soft-labels {path} lacks the columns {', '.join(missing)} (it needs id and the three "
                          "probability columns, as in oof.csv or arena-infer --save-logits)")
    probs = frame[list(LABELS)].to_numpy(np.float64)
    bad = ~np.isfinite(probs).all(1) | (probs < 0).any(1) | (np.abs(probs.sum(1) - 1) > 1e-3)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ConfigError(f"--soft-labels {path}, id {frame['id'].iloc[row]}: {probs[row].tolist()} is not a "
                          "probability vector")
    if frame["id"].duplicated().any():
        raise ConfigError(f"--soft-labels {path}: id {frame['id'][frame['id'].duplicated()].iloc[0]} appears twice")
    return dict(zip(frame["id"], probs / probs.sum(1, keepdims=True), strict=True))


def training_targets(records: list[Record], labels: np.ndarray, soft: dict[str, np.ndarray] | None,
                     weight: float) -> tuple[np.ndarray | None, int]:
    """Per-row target distributions for labelled rows (None without soft labels) and how many rows had one."""
    if soft is None:
        return None, 0
    if not 0.0 <= weight <= 1.0:
        raise ConfigError(f"--soft-weight must be between 0 and 1, got {weight}")
    targets = np.eye(3)[labels]
    found = 0
    for i, r in enumerate(records):
        teacher = soft.get(str(r.id))
        if teacher is not None:
            targets[i] = (1.0 - weight) * targets[i] + weight * teacher
            found += 1
    return targets.astype(np.float32), found


def read_extra_files(paths: tuple[str, ...] | list[str], soft: dict[str, np.ndarray] | None) -> list[ExtraFile]:
    """The rows of every ``--extra`` file, in the order given (checked to be readable; soft labels needed)."""
    from arena.data import read_records, resolve_csv

    if paths and soft is None:
        raise ConfigError("--extra rows train on teacher probabilities: give --soft-labels with their ids too")
    return [ExtraFile(str(p), read_records(resolve_csv(str(p), "train.csv"), labelled=False)) for p in paths]


def extra_targets(records: list[Record], sources: list[str], soft: dict[str, np.ndarray]) -> Extra:
    """The kept extra rows with their teacher probabilities from ``--soft-labels``; every one needs one."""
    lacking = [(src, r.id) for src, r in zip(sources, records, strict=True) if str(r.id) not in soft]
    if lacking:
        raise ConfigError(f"--extra {lacking[0][0]}: {len(lacking)} ids have no soft label in --soft-labels "
                          f"(first: {lacking[0][1]})")
    if not records:
        return Extra([], np.zeros((0, 3), dtype=np.float32))
    return Extra(records, np.stack([soft[str(r.id)] for r in records]).astype(np.float32))


def check_soft_coverage(path: str, found: int, rows: int, soft: dict[str, np.ndarray],
                        extra: list[Record]) -> None:
    """Refuse a ``--soft-labels`` file that matches fewer than :data:`MIN_SOFT_COVERAGE` of the labelled rows (a
    file for other data, or a hold-out run's oof.csv) and would leave the run on hard labels without a word.

    A file that holds teacher probabilities for the ``--extra`` rows only (pseudo-labelling) is meant for them, and
    the labelled rows keep their hard labels."""
    extra_ids = {str(r.id) for r in extra}
    if extra_ids and set(soft) <= extra_ids:
        log.info("--soft-labels %s: teacher probabilities for the %d --extra rows only; the labelled rows train on "
                 "their hard labels", path, len(extra_ids))
        return
    if found < MIN_SOFT_COVERAGE * rows:
        raise ConfigError(f"--soft-labels {path}: its ids match only {found} of the {rows} training rows (fewer than "
                          f"{MIN_SOFT_COVERAGE:.0%}); it is for other data (or is a hold-out run's oof.csv, which "
                          "covers its validation rows only): use a k-fold run's oof.csv or arena-infer --save-logits "
                          "on the training file")
