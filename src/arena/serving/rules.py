"""Post-processing rules for degenerate rows, each an option of arena-infer (``--rules``), none on by default.

* ``identical-tie``: when both responses are identical, move ``tie_weight`` of the probability mass to tie.
* ``empty-loses``: when exactly one response is empty, move half of its win probability to the other side.

``benchmarks/quality.py`` measures each on out-of-fold predictions of the real sample (``benchmarks/RESULTS.md``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from arena.data import Record
from arena.errors import ConfigError

RULES = ("identical-tie", "empty-loses")


def parse_rules(text: str | None) -> tuple[str, ...]:
    if not text or text == "none":
        return ()
    rules = tuple(r.strip() for r in text.split(",") if r.strip())
    unknown = [r for r in rules if r not in RULES]
    if unknown:
        raise ConfigError(f"unknown --rules {', '.join(unknown)}; choose from {', '.join(RULES)}")
    return rules


def _empty(turns: Sequence[str]) -> bool:
    return not "".join(turns).strip()


def apply_rules(probs: np.ndarray, records: Sequence[Record], rules: Sequence[str],
                tie_weight: float = 0.5) -> np.ndarray:
    """The probabilities with the rules applied, rows renormalised; ``probs`` itself is not changed."""
    if not rules:
        return probs
    out = np.array(probs, dtype=np.float64, copy=True)
    for i, r in enumerate(records):
        if "identical-tie" in rules and r.response_a == r.response_b:
            out[i] = (1 - tie_weight) * out[i] + tie_weight * np.array([0.0, 0.0, 1.0])
        if "empty-loses" in rules:
            a_empty, b_empty = _empty(r.response_a), _empty(r.response_b)
            if a_empty != b_empty:
                loser, winner = (0, 1) if a_empty else (1, 0)
                out[i, winner] += 0.5 * out[i, loser]
                out[i, loser] *= 0.5
    return out / out.sum(axis=1, keepdims=True)
