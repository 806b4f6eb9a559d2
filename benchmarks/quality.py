"""Out-of-fold quality on the real 1,500-row sample, every method on the same 5 folds (issues 3 and 8).

Usage (after the `arena-train --folds 5 --seed 42 ...` runs listed in benchmarks/RESULTS.md):

    .venv/bin/python benchmarks/quality.py --cv runs/minilm-cv --hybrid runs/minilm-hybrid-cv \
        --data ../shared/data/arena/lmsys_kaggle

Everything fitted on predictions (temperature, stacker, the L2 strength of the regressions is fixed at 0.1) is
fitted without the fold it is scored on (nested), so no row is scored by a model, temperature or stacker that saw its
label. The fine-tuned models themselves select their best evaluation on the fold they are scored on (the usual
k-fold practice; with at most three evaluations per fold the optimism is small but not zero).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from arena.data import SWAP_CLASSES, Record, labels_of, read_train, resolve_csv, swap_ab
from arena.features import FEATURE_NAMES, LogisticRegression, cross_validated_baseline, feature_matrix
from arena.metrics import accuracy, class_prior, fit_temperature, log_loss, softmax
from arena.models.hybrid import Z_CLIP
from arena.serving.loading import open_model
from arena.serving.rules import apply_rules
from arena.serving.scoring import ScoreConfig, Scorer
from arena.serving.tta import combine_swap
from arena.train.folds import stratified_folds

RULES = ("identical-tie", "empty-loses")


def nested_temperature(logits: np.ndarray, y: np.ndarray, folds: np.ndarray) -> np.ndarray:
    out = np.zeros_like(logits, dtype=np.float64)
    for k in np.unique(folds):
        t = fit_temperature(logits[folds != k], y[folds != k])
        out[folds == k] = softmax(logits[folds == k], t)
    return out


def nested_stack(x: np.ndarray, y: np.ndarray, folds: np.ndarray, l2: float,
                 clip: float | None = None) -> np.ndarray:
    out = np.zeros((len(y), 3))
    for k in np.unique(folds):
        fitted = LogisticRegression(l2, clip=clip).fit(x[folds != k], y[folds != k])
        out[folds == k] = fitted.predict_proba(x[folds == k])
    return out


def nested_symmetric_lr(x: np.ndarray, x_swapped: np.ndarray, y: np.ndarray, folds: np.ndarray, l2: float,
                        clip: float | None = None) -> np.ndarray:
    """The feature regression fitted on the training rows and their A/B-swapped copies (labels a <-> b), as the
    hybrid head's starting point is under --swap-augment."""
    out = np.zeros((len(y), 3))
    for k in np.unique(folds):
        tr, va = folds != k, folds == k
        fitted = LogisticRegression(l2, clip=clip).fit(np.vstack([x[tr], x_swapped[tr]]),
                                                       np.concatenate([y[tr], SWAP_CLASSES[y[tr]]]))
        out[va] = fitted.predict_proba(x[va])
    return out


def cv_predictions(cv: Path, records: list[Record], folds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold logits from ``oof.csv`` and the same rows scored with A and B swapped by their fold's model."""
    cfg = json.loads((cv / "train_config.json").read_text())
    if cfg["folds"] != len(np.unique(folds)) or cfg["seed"] != 42:
        raise SystemExit(f"{cv} was trained on other folds ({cfg['folds']} folds, seed {cfg['seed']})")
    index = {r.id: i for i, r in enumerate(records)}
    oof = pd.read_csv(cv / "oof.csv", dtype={"id": str})
    logits = np.zeros((len(records), 3))
    logits[[index[i] for i in oof["id"]]] = oof[["logit_a", "logit_b", "logit_tie"]].to_numpy()
    swapped = np.zeros_like(logits)
    for k in range(cfg["folds"]):
        loaded = open_model(cv / f"fold_{k}", backend="torch")
        scorer = Scorer(loaded.runner, loaded.encoder, ScoreConfig())
        rows = np.flatnonzero(folds == k)
        swapped[rows] = scorer.logits(loaded.encoder.encode([records[i] for i in rows], swap=True))
    return logits, swapped


def model_rows(name: str, logits: np.ndarray, swapped: np.ndarray, y: np.ndarray, folds: np.ndarray,
               records: list[Record]) -> dict[str, np.ndarray]:
    plain = softmax(logits)
    tta = combine_swap(plain, softmax(swapped))
    calibrated = nested_temperature(np.log(np.clip(tta, 1e-12, 1)), y, folds)
    return {
        name: plain,
        f"{name} + swap TTA": tta,
        f"{name} + swap TTA + temperature (nested)": calibrated,
        f"{name} + swap TTA + temperature + rules": apply_rules(calibrated, records, RULES),
    }


def selection_report(cv: Path) -> list[str]:
    """Out-of-fold log loss under fixed rules (the starting point, the last evaluation) next to the per-fold best,
    from ``metrics.json``: how much of a k-fold score comes from picking the evaluation on the scored fold."""
    splits = json.loads((cv / "metrics.json").read_text())["splits"]
    sizes = np.array([s.get("validation_rows", 1) for s in splits], dtype=float)  # older runs: equal folds
    rules = {"first evaluation": 0, "last evaluation": -1}
    lines = [f"{cv.name}: per fold " + "; ".join(
        f"{s['name']} " + ", ".join(f"{h['step']}:{h['log_loss']:.4f}" for h in s["history"])
        + f" (kept {s['best']['step']})" for s in splits)]
    for name, i in rules.items():
        ll = np.average([s["history"][i]["log_loss"] for s in splits], weights=sizes)
        lines.append(f"{cv.name}: always the {name}: OOF log loss {ll:.4f}")
    best = np.average([s["best"]["log_loss"] for s in splits], weights=sizes)
    lines.append(f"{cv.name}: best evaluation per fold (what oof.csv holds): {best:.4f}")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cv", type=Path, required=True, help="k-fold run with the plain classification head")
    ap.add_argument("--hybrid", action="append", default=[],
                    help="k-fold run with --head hybrid (repeatable: NAME=PATH or PATH)")
    ap.add_argument("--data", default=None)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    cfg = json.loads((args.cv / "train_config.json").read_text())
    records = read_train(resolve_csv(args.data, "train.csv"))
    if cfg.get("max_rows"):
        records = records[: cfg["max_rows"]]
    y = labels_of(records)
    folds = stratified_folds(y, cfg["folds"], cfg["seed"])

    prior = np.zeros((len(y), 3))
    for k in np.unique(folds):
        prior[folds == k] = class_prior(y[folds != k])
    feats = feature_matrix(records)
    length_lr = cross_validated_baseline(records, folds, l2=0.1)
    rows: dict[str, np.ndarray] = {
        "uniform (1/3 each)": np.full((len(y), 3), 1 / 3),
        "class prior": prior,
        "length-feature logistic regression (baseline)": length_lr,
        "length LR + rules": apply_rules(length_lr, records, RULES),
        "feature LR, + |A-B| features": cross_validated_baseline(records, folds, l2=0.1, columns=FEATURE_NAMES),
        "feature LR, + |A-B|, z clipped to +-10 (the hybrid head's start)": nested_stack(
            feats, y, folds, 0.1, clip=Z_CLIP),
        "feature LR, + |A-B|, clipped, fitted on rows + A/B-swapped copies (start under --swap-augment)":
            nested_symmetric_lr(feats, feature_matrix([swap_ab(r) for r in records]), y, folds, 0.1, clip=Z_CLIP),
    }
    logits, swapped = cv_predictions(args.cv, records, folds)
    rows.update(model_rows("MiniLM fine-tune", logits, swapped, y, folds, records))
    tta_logits = np.log(np.clip(rows["MiniLM fine-tune + swap TTA"], 1e-12, 1))
    rows["late fusion: all features + MiniLM TTA logits (nested LR)"] = nested_stack(
        np.hstack([feats, tta_logits]), y, folds, 0.1)
    notes: list[str] = []
    for spec in args.hybrid:
        name, _, path = spec.rpartition("=")
        h_logits, h_swapped = cv_predictions(Path(path), records, folds)
        rows.update(model_rows(name or "MiniLM hybrid head", h_logits, h_swapped, y, folds, records))
        notes += selection_report(Path(path))

    lines = ["| method | OOF log loss | accuracy | vs length LR |", "|---|---|---|---|"]
    base = log_loss(length_lr, y)
    result = {}
    for name, p in rows.items():
        assert np.all(np.isfinite(p)) and np.allclose(p.sum(1), 1.0)
        ll, acc = log_loss(p, y), accuracy(p, y)
        result[name] = {"log_loss": ll, "accuracy": acc}
        lines.append(f"| {name} | {ll:.4f} | {acc:.3f} | {ll - base:+.4f} |")
    ident = sum(r.response_a == r.response_b for r in records)
    empty = sum((not "".join(r.response_a).strip()) != (not "".join(r.response_b).strip()) for r in records)
    table = "\n".join(lines)
    print(table)
    print(f"\nrows with identical responses: {ident}; rows with exactly one empty response: {empty}")
    print("\n".join(notes))
    print(json.dumps(result))
    if args.out:
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
