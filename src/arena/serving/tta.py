"""A/B swap test-time augmentation: score each row again with the responses exchanged, map back, average."""

from __future__ import annotations

import numpy as np

from arena.data import swap_probs


def combine_swap(probs: np.ndarray, swapped_probs: np.ndarray) -> np.ndarray:
    """Average the original probabilities with the swapped run's, columns a <-> b mapped back (tie stays)."""
    return (probs + swap_probs(swapped_probs)) / 2.0
