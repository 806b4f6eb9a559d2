"""Which rows train, which validate, and which ``--extra`` rows join training: the one place a run's rows are split.

Every path by which a row can reach training goes through :func:`partition_rows`, and it checks on every run that

* in each split (hold-out, or each fold), the training and validation rows of the training file are disjoint;
* no ``--extra`` row is a row of the training file: one with the same id, or the same prompt and the two responses
  (in either order: the A/B-swapped copy is the same battle) is dropped, with a count, so a validation row can never
  come back into training as a "pseudo-labelled" row (issue 27); an id given twice in the extra files is kept once;
* every extra row trains in every split and validates in none.

Only the A/B-swapped copies of a split's own training rows are added to them later (:func:`arena.train.trainer.
prepare_rows`), so the validation rows of a split reach no model trained for that split.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from arena.data import Record
from arena.errors import ConfigError
from arena.train.config import TrainConfig
from arena.train.folds import holdout_split, stratified_folds

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Split:
    """One model to train: its name, checkpoint folder, and the rows (indices into the training rows) it trains
    and selects on."""

    name: str
    output: Path
    train_index: np.ndarray
    val_index: np.ndarray


@dataclass(frozen=True)
class ExtraFile:
    """The rows of one ``--extra`` file."""

    path: str
    records: list[Record]


@dataclass(frozen=True)
class Partition:
    """The splits, the extra rows kept (with the file each came from), and how many extra rows were dropped."""

    splits: list[Split]
    extra: list[Record] = field(default_factory=list)
    extra_sources: list[str] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)
    """``id_in_training_file``, ``pair_in_training_file`` (same prompt and responses), ``repeated``."""

    def summary(self, files: list[str]) -> dict[str, object]:
        """What ``metrics.json`` records of the extra rows."""
        return {"files": files, "kept": len(self.extra), "dropped": dict(self.dropped)}


def pair_key(record: Record) -> tuple[tuple[str, ...], ...]:
    """A battle's text, the same for the battle and its A/B-swapped copy."""
    a, b = sorted((record.response_a, record.response_b))
    return record.prompt, a, b


def plan_splits(labels: np.ndarray, config: TrainConfig, out: Path) -> list[Split]:
    """Hold-out (``folds`` None) or the requested folds, stratified and seeded."""
    if config.folds is None:
        train_idx, val_idx = holdout_split(labels, config.val_fraction, config.seed)
        return [Split("holdout", out, train_idx, val_idx)]
    fold_of = stratified_folds(labels, config.folds, config.seed)
    which = [config.fold] if config.fold is not None else list(range(config.folds))
    single = config.fold is not None
    return [Split(f"fold{k}", out if single else out / f"fold_{k}", np.flatnonzero(fold_of != k),
                  np.flatnonzero(fold_of == k)) for k in which]


def keep_new_extra(training_file: list[Record], extra_files: list[ExtraFile]
                   ) -> tuple[list[Record], list[str], dict[str, int]]:
    """The extra rows that are not rows of the training file, each id once; the file of each; the drop counts.

    Raises :class:`ConfigError` when every row of an extra file is dropped: such a file adds nothing but rows the
    run already has labels for (and may validate on), which is a mistake to report, not a run to start."""
    ids = {str(r.id) for r in training_file}
    pairs = {pair_key(r) for r in training_file}
    seen: set[str] = set()
    kept: list[Record] = []
    sources: list[str] = []
    dropped = {"id_in_training_file": 0, "pair_in_training_file": 0, "repeated": 0}
    for extra in extra_files:
        before = len(kept)
        for r in extra.records:
            rid = str(r.id)
            reason = ("id_in_training_file" if rid in ids else "pair_in_training_file" if pair_key(r) in pairs
                      else "repeated" if rid in seen else None)
            if reason is not None:
                dropped[reason] += 1
                continue
            seen.add(rid)
            kept.append(r)
            sources.append(extra.path)
        if extra.records and len(kept) == before:
            raise ConfigError(f"--extra {extra.path}: all {len(extra.records)} rows are rows of the training file "
                              "(same id, or same prompt and responses) or of an earlier --extra file; extra rows "
                              "must be unlabelled pairs that are not in --data (e.g. the test file)")
    if any(dropped.values()):
        log.warning("--extra: dropped %d rows whose id is in the training file, %d whose prompt and responses are, "
                    "and %d repeated ids; %d extra rows train", dropped["id_in_training_file"],
                    dropped["pair_in_training_file"], dropped["repeated"], len(kept))
    return kept, sources, dropped


def check_partition(part: Partition, n_rows: int, training_file: list[Record]) -> None:
    """The invariants of the module docstring; a violation is a bug in arena, never the user's doing."""
    ids = {str(r.id) for r in training_file}
    pairs = {pair_key(r) for r in training_file}
    for split in part.splits:
        train, val = split.train_index, split.val_index
        if len(np.intersect1d(train, val)) or len(train) == 0 or len(val) == 0 or \
                max(train.max(), val.max()) >= n_rows or min(train.min(), val.min()) < 0:
            raise RuntimeError(f"{split.name}: training and validation rows overlap or are out of range")
    if any(str(r.id) in ids or pair_key(r) in pairs for r in part.extra):
        raise RuntimeError("an --extra row that is a row of the training file reached training")
    if len({str(r.id) for r in part.extra}) != len(part.extra):
        raise RuntimeError("an --extra row would train twice")


def partition_rows(config: TrainConfig, labels: np.ndarray, training_file: list[Record],
                   extra_files: list[ExtraFile]) -> Partition:
    """The splits of the training rows (the first ``len(labels)`` rows of ``training_file``) and the extra rows
    that join every split's training rows, checked (:func:`check_partition`)."""
    splits = plan_splits(labels, config, Path(config.output))
    kept, sources, dropped = keep_new_extra(training_file, extra_files) if extra_files else ([], [], {})
    part = Partition(splits, kept, sources, dropped)
    check_partition(part, len(labels), training_file)
    return part
