"""Ensembles: several models score the same rows and their probabilities are combined.

Two kinds, both what the top LMSYS solutions submitted:

* **fold ensembles**: an ``arena-train --folds K`` output (``fold_k/`` checkpoints) or its ``arena-export``
  (one folder, one parity-checked export per fold, one manifest with ``"kind": "ensemble"``); equal weights;
* **blends** of different models (``arena-infer --model A --model B``): every member keeps its own encoder
  settings and temperature; weights given, or fitted on the members' out-of-fold predictions (``oof.csv``).

How to combine (``COMBINE``): ``probs``, the weighted mean of the members' probabilities, or ``geometric``, the
weighted mean of their log-probabilities, renormalised. Averaging tempered logits is the same thing as
``geometric`` (each member's log-softmax differs from its tempered logits by a per-row constant, which the final
softmax removes), so it is not a third choice. The default, ``probs``, measured 1.0491 against 1.0496 for the geometric
mean on 300 held-out real rows (no real difference; the simpler one kept: ``benchmarks/RESULTS.md``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from arena import LABELS
from arena.artifacts import MANIFEST, read_manifest
from arena.errors import ConfigError, ModelError

COMBINE = ("probs", "geometric")
DEFAULT_COMBINE = "probs"
ENSEMBLE_KIND = "ensemble"


def combine(probs: Sequence[np.ndarray], weights: Sequence[float] | None = None,
            method: str = DEFAULT_COMBINE) -> np.ndarray:
    """Combine the members' probabilities (each rows x 3, rows in the same order) into one rows x 3 array."""
    if method not in COMBINE:
        raise ConfigError(f"--combine must be one of {', '.join(COMBINE)}; got {method!r}")
    if not probs:
        raise ValueError("no member probabilities to combine")
    w = np.asarray(weights if weights is not None else [1.0] * len(probs), dtype=np.float64)
    if len(w) != len(probs) or np.any(w < 0) or w.sum() <= 0:
        raise ConfigError(f"--weights needs {len(probs)} non-negative numbers with a positive sum; got {w.tolist()}")
    w = w / w.sum()
    stack = np.stack([np.asarray(p, dtype=np.float64) for p in probs])
    if method == "probs":
        out = np.tensordot(w, stack, axes=1)
    else:
        z = np.tensordot(w, np.log(np.clip(stack, 1e-12, 1.0)), axes=1)
        z -= z.max(axis=1, keepdims=True)
        out = np.exp(z)
    return out / out.sum(axis=1, keepdims=True)


def fit_weights(probs: Sequence[np.ndarray], labels: np.ndarray, method: str = DEFAULT_COMBINE, *,
                steps: int = 400, lr: float = 0.5) -> np.ndarray:
    """Blend weights (non-negative, summing to 1) that minimise the log loss of :func:`combine` on labelled rows.

    Weights are a softmax of free parameters, fitted by gradient descent with numerical gradients (a handful of
    members: cheap and exact enough); the start is equal weights, so the fit never ends worse than them.
    """
    from arena.metrics import log_loss

    k = len(probs)
    if k == 1:
        return np.ones(1)

    def loss(theta: np.ndarray) -> float:
        w = np.exp(theta - theta.max())
        return log_loss(combine(probs, w / w.sum(), method), labels)

    theta = np.zeros(k)
    best, best_loss = theta.copy(), loss(theta)
    for _ in range(steps):
        grad = np.array([(loss(theta + e) - loss(theta - e)) / 2e-4 for e in np.eye(k) * 1e-4])
        theta = theta - lr * grad
        current = loss(theta)
        if current < best_loss - 1e-9:
            best, best_loss = theta.copy(), current
    w = np.exp(best - best.max())
    return w / w.sum()


def member_folders(folder: Path) -> list[Path] | None:
    """The member folders when ``folder`` is an ensemble (a k-fold training output or an ensemble export), in
    fold order; None for a single model."""
    folder = Path(folder)
    if (folder / MANIFEST).is_file():
        try:
            body = read_manifest(folder) or {}
        except ConfigError:
            return None  # a broken manifest is reported by the single-model loader
        if body.get("kind") != ENSEMBLE_KIND:
            return None
        members = [folder / m["folder"] for m in body.get("members", [])]
        missing = [str(m) for m in members if not m.is_dir()]
        if missing or not members:
            raise ModelError(f"{folder} is an ensemble export but its member folders are missing: "
                             f"{', '.join(missing) or 'none listed'}; export it again")
        return members
    if (folder / "config.json").is_file() or not folder.is_dir():
        return None
    folds = sorted((p for p in folder.glob("fold_*") if (p / "config.json").is_file()),
                   key=lambda p: int(p.name.partition("_")[2] or 0) if p.name.partition("_")[2].isdigit() else 0)
    return folds or None


def read_oof(folder: Path) -> tuple[list[str], np.ndarray, np.ndarray] | None:
    """(ids, probabilities, labels) of ``folder/oof.csv`` (written by arena-train, copied by arena-export), or
    None when the folder has none."""
    path = Path(folder) / "oof.csv"
    if not path.is_file():
        return None
    import pandas as pd

    frame = pd.read_csv(path, dtype={"id": str})
    missing = [c for c in ("id", *LABELS, "label") if c not in frame.columns]
    if missing:
        raise ModelError(f"{path} lacks the columns {', '.join(missing)}; it is not an arena oof.csv")
    return frame["id"].tolist(), frame[list(LABELS)].to_numpy(np.float64), frame["label"].to_numpy(np.int64)


def fit_blend_weights(folders: Sequence[Path], method: str = DEFAULT_COMBINE) -> tuple[np.ndarray, str]:
    """Weights for a blend of ``folders`` fitted on the rows all their ``oof.csv`` files share, and a sentence
    saying how they were found (equal weights, with the reason, when there is nothing to fit on)."""
    oofs = [read_oof(f) for f in folders]
    if any(o is None for o in oofs):
        lacking = [str(f) for f, o in zip(folders, oofs, strict=True) if o is None]
        return np.full(len(folders), 1.0 / len(folders)), f"equal weights ({', '.join(lacking)} has no oof.csv)"
    common = set(oofs[0][0])
    for o in oofs[1:]:
        common &= set(o[0])
    if len(common) < 30:
        return np.full(len(folders), 1.0 / len(folders)), f"equal weights (only {len(common)} out-of-fold rows shared)"
    ids = sorted(common)
    aligned = []
    for o_ids, probs, labels in oofs:
        pos = {i: k for k, i in enumerate(o_ids)}
        idx = np.array([pos[i] for i in ids])
        aligned.append((probs[idx], labels[idx]))
    labels = aligned[0][1]
    if any(not np.array_equal(a[1], labels) for a in aligned[1:]):
        raise ModelError("the members' oof.csv files disagree on the labels of shared ids: not the same data")
    w = fit_weights([a[0] for a in aligned], labels, method)
    return w, f"fitted on {len(ids)} shared out-of-fold rows"
