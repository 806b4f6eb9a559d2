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

A fold ensemble is complete or it is refused (:func:`fold_set`, :func:`check_complete`): a k-fold output with a fold
folder missing, or a fold whose training did not finish, would otherwise be scored as fewer models than the run
says, and look like a whole result. ``--allow-partial`` uses the finished folds and every output says "k of N
folds".
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from arena import LABELS
from arena.artifacts import MANIFEST, TRAIN_CONFIG, TRAIN_DONE, TRAIN_RUNNING, read_manifest
from arena.errors import ConfigError, ModelError

log = logging.getLogger(__name__)

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


@dataclass(frozen=True)
class FoldSet:
    """The folds of a fold ensemble (a k-fold training output or its export) and how complete it is.

    ``members``: the folds that can be scored, in fold order (finished ones only); ``expected``: how many folds the
    run had (its ``train_config.json`` or the export's manifest); ``missing``: folds that are not there (never
    written, deleted, or left out of a partial export); ``unfinished``: folds that are there but whose training did
    not finish (they are not among ``members``)."""

    folder: Path
    members: list[Path]
    expected: int
    missing: list[str]
    unfinished: list[str]
    export: bool = False

    @property
    def complete(self) -> bool:
        return not self.missing and not self.unfinished and len(self.members) == self.expected

    def describe(self) -> str:
        """``k of N folds``: what every output of a command that used this ensemble says."""
        return f"{len(self.members)} of {self.expected} folds"

    def problems(self) -> str:
        what = "not in the export" if self.export else "missing"
        late = "exported from a run that had not finished" if self.export else "did not finish"
        parts = [f"{', '.join(self.missing)} {what}"] if self.missing else []
        parts += [f"{', '.join(self.unfinished)} {late}"] if self.unfinished else []
        return "; ".join(parts) or "complete"

    def to_dict(self) -> dict[str, Any]:
        """The manifest's ``folds`` section of an export of this ensemble."""
        return {"expected": self.expected, "members": [m.name for m in self.members], "missing": self.missing,
                "unfinished": self.unfinished, "complete": self.complete, "describe": self.describe()}


def fold_set(folder: str | Path, manifest: dict[str, Any] | None = None) -> FoldSet | None:
    """The completeness rule of fold ensembles, in one place; None when ``folder`` is not an ensemble.

    A training output's fold ``fold_k/`` is finished when it holds a checkpoint and ``train_done.json`` (or the
    whole run finished: ``metrics.json`` and no ``train_running.json``); the number of folds comes from
    ``train_config.json``. An export's members are those its manifest lists; one whose own manifest says it came
    from an unfinished run counts as unfinished; the number of folds comes from the manifest's ``folds`` section
    (an export made with ``--allow-partial``) or the copied ``train_config.json``. ``manifest``: the folder's,
    when the caller has read it (so it is read once)."""
    folder = Path(folder)
    if manifest is not None or (folder / MANIFEST).is_file():
        return _export_folds(folder, manifest)
    if (folder / "config.json").is_file() or not folder.is_dir():
        return None
    present = sorted((p for p in folder.glob("fold_*") if p.is_dir() and p.name[5:].isdigit()),
                     key=lambda p: int(p.name[5:]))
    if not present:
        return None
    run_done = (folder / "metrics.json").is_file() and not (folder / TRAIN_RUNNING).is_file()
    unfinished = [p.name for p in present
                  if not (p / "config.json").is_file() or not (run_done or (p / TRAIN_DONE).is_file())]
    expected = _recorded_folds(folder) or int(present[-1].name[5:]) + 1
    return _fold_set(folder, present, expected, unfinished, export=False)


def _export_folds(folder: Path, manifest: dict[str, Any] | None = None) -> FoldSet | None:
    try:
        body = manifest if manifest is not None else read_manifest(folder) or {}
    except ConfigError:
        return None  # a broken manifest is reported by the single-model loader
    if body.get("kind") != ENSEMBLE_KIND:
        return None
    present = [folder / m["folder"] for m in body.get("members", [])]
    absent = [str(m) for m in present if not m.is_dir()]
    if absent or not present:
        raise ModelError(f"{folder} is an ensemble export but its member folders are missing: "
                         f"{', '.join(absent) or 'none listed'}; export it again")
    unfinished = []
    for member in present:
        try:
            if (read_manifest(member) or {}).get("source_training") == "unfinished":
                unfinished.append(member.name)
        except ConfigError as exc:
            raise ModelError(f"{folder}: member {member.name} has no readable {MANIFEST} ({exc}); export it "
                             "again") from None
    recorded = (body.get("folds") or {}).get("expected")
    expected = int(recorded) if isinstance(recorded, int) else _recorded_folds(folder) or len(present)
    return _fold_set(folder, present, expected, unfinished, export=True)


def _fold_set(folder: Path, present: list[Path], expected: int, unfinished: list[str], *, export: bool) -> FoldSet:
    names = {p.name for p in present}
    missing = [f"fold_{k}" for k in range(expected) if f"fold_{k}" not in names]
    members = [p for p in present if p.name not in unfinished]
    return FoldSet(folder, members, max(expected, len(present)), missing, unfinished, export)


def _recorded_folds(folder: Path) -> int | None:
    """The fold count ``train_config.json`` records for a whole k-fold run (None: absent, or one ``--fold``)."""
    try:
        config = json.loads((folder / TRAIN_CONFIG).read_text())
    except (OSError, ValueError):
        return None
    folds = config.get("folds") if isinstance(config, dict) and config.get("fold") is None else None
    return folds if isinstance(folds, int) and folds > 0 else None


def check_complete(folder: str | Path, *, allow_partial: bool) -> FoldSet | None:
    """``folder``'s :class:`FoldSet` (None for a single model), after refusing an incomplete ensemble unless
    ``allow_partial``; even then at least one finished fold is needed. Raises :class:`ModelError` naming the
    folds that are missing or unfinished and what to do; logs a warning when a partial ensemble is allowed."""
    folds = fold_set(folder)
    if folds is None or folds.complete:
        return folds
    fix = ("export it again from the finished training output" if folds.export else
           f"finish the run (arena-train --resume --output {folder})")
    if not folds.members:
        raise ModelError(f"{folder} is a {folds.expected}-fold ensemble with no finished fold ({folds.problems()}); "
                         f"{fix}")
    if not allow_partial:
        raise ModelError(f"{folder} is an incomplete {folds.expected}-fold ensemble ({folds.problems()}): {fix}, or "
                         f"pass --allow-partial to use the {folds.describe()} that are complete")
    log.warning("%s: --allow-partial: using %s (%s)", folder, folds.describe(), folds.problems())
    return folds


def member_folders(folder: Path, manifest: dict[str, Any] | None = None) -> list[Path] | None:
    """The folders to score when ``folder`` is an ensemble (a k-fold training output or an ensemble export): its
    finished folds, in fold order; None for a single model. Whether a partial ensemble may be used at all is
    :func:`check_complete`'s decision, taken at the command's edge before anything is loaded."""
    folds = fold_set(folder, manifest)
    return None if folds is None else folds.members


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
        verb = "has" if len(lacking) == 1 else "have"
        return np.full(len(folders), 1.0 / len(folders)), f"equal weights ({', '.join(lacking)} {verb} no oof.csv)"
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
