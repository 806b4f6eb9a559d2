"""Seeded, stratified validation splits: k-fold and hold-out."""

from __future__ import annotations

import numpy as np

from arena.errors import ConfigError


def stratified_folds(labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Fold number (0..k-1) of every row; each class is spread evenly over the folds."""
    if k < 2:
        raise ConfigError(f"--folds must be at least 2, got {k}")
    labels = np.asarray(labels)
    if len(labels) < k:
        raise ConfigError(f"{len(labels)} rows cannot be split into {k} folds")
    rng = np.random.default_rng(seed)
    fold = np.empty(len(labels), dtype=np.int64)
    offset = 0
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        rng.shuffle(idx)
        fold[idx] = (np.arange(len(idx)) + offset) % k  # continue the round-robin so fold sizes stay balanced
        offset += len(idx)
    return fold


def holdout_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, validation indices), stratified; about ``val_fraction`` of each class is held out."""
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"--val-fraction must be between 0 and 1, got {val_fraction}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    val = []
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        rng.shuffle(idx)
        val.append(idx[: max(1, int(round(len(idx) * val_fraction)))])
    val_idx = np.sort(np.concatenate(val))
    train_idx = np.setdiff1d(np.arange(len(labels)), val_idx)
    if len(train_idx) == 0:
        raise ConfigError("the hold-out split leaves no training rows; lower --val-fraction or add rows")
    return train_idx, val_idx
