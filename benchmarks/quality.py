"""Out-of-fold quality on the real 1,500-row sample, every method on the same 5 folds (issues 3 and 8).

Usage (after `arena-train --folds 5 --seed 42 ... --output runs/minilm-cv`):

    .venv/bin/python benchmarks/quality.py --cv runs/minilm-cv --data ../shared/data/arena/lmsys_kaggle

Everything fitted on predictions is fitted without the fold it is scored on (nested), so no row is scored by a
model, temperature or stacker that saw its label.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from arena.data import labels_of, read_train, resolve_csv
from arena.features import LogisticRegression, cross_validated_baseline, feature_matrix
from arena.infer.loading import open_model
from arena.infer.pipeline import ScoreConfig, Scorer
from arena.infer.rules import apply_rules
from arena.metrics import accuracy, class_prior, fit_temperature, log_loss, softmax
from arena.train.folds import stratified_folds


def nested_temperature(logits: np.ndarray, y: np.ndarray, folds: np.ndarray) -> np.ndarray:
    out = np.zeros_like(logits, dtype=np.float64)
    for k in np.unique(folds):
        t = fit_temperature(logits[folds != k], y[folds != k])
        out[folds == k] = softmax(logits[folds == k], t)
    return out


def nested_stack(x: np.ndarray, y: np.ndarray, folds: np.ndarray, l2: float) -> np.ndarray:
    out = np.zeros((len(y), 3))
    for k in np.unique(folds):
        out[folds == k] = LogisticRegression(l2).fit(x[folds != k], y[folds != k]).predict_proba(x[folds == k])
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cv", type=Path, required=True)
    ap.add_argument("--data", default=None)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    cfg = json.loads((args.cv / "train_config.json").read_text())
    records = read_train(resolve_csv(args.data, "train.csv"))
    if cfg.get("max_rows"):
        records = records[: cfg["max_rows"]]
    y = labels_of(records)
    folds = stratified_folds(y, cfg["folds"], cfg["seed"])
    index = {r.id: i for i, r in enumerate(records)}
    oof = pd.read_csv(args.cv / "oof.csv", dtype={"id": str})
    logits = np.zeros((len(records), 3))
    logits[[index[i] for i in oof["id"]]] = oof[["logit_a", "logit_b", "logit_tie"]].to_numpy()

    # swap TTA: score each fold's validation rows with A and B exchanged, using that fold's checkpoint
    swapped = np.zeros_like(logits)
    for k in range(cfg["folds"]):
        loaded = open_model(args.cv / f"fold_{k}", backend="torch")
        scorer = Scorer(loaded.runner, loaded.encoder, ScoreConfig())
        rows = np.flatnonzero(folds == k)
        enc = loaded.encoder.encode([records[i] for i in rows], swap=True)
        swapped[rows] = scorer.logits(enc)

    prior = np.zeros((len(y), 3))
    for k in np.unique(folds):
        prior[folds == k] = class_prior(y[folds != k])
    feats = feature_matrix(records)
    length_lr = cross_validated_baseline(records, folds, l2=0.1)
    plain = softmax(logits)
    tta = (plain + softmax(swapped)[:, [1, 0, 2]]) / 2
    tta_logits = np.log(np.clip(tta, 1e-12, 1))
    rows = {
        "uniform (1/3 each)": np.full((len(y), 3), 1 / 3),
        "class prior": prior,
        "length-feature logistic regression": length_lr,
        "MiniLM fine-tune": plain,
        "MiniLM + swap TTA": tta,
        "MiniLM + swap TTA + temperature (nested)": nested_temperature(tta_logits, y, folds),
        "late fusion: features + MiniLM TTA logits (nested LR)": nested_stack(np.hstack([feats, tta_logits]), y,
                                                                              folds, 0.1),
    }
    both = ("identical-tie", "empty-loses")
    rows["MiniLM + swap TTA + rules"] = apply_rules(tta, records, both)
    rows["late fusion + rules"] = apply_rules(rows["late fusion: features + MiniLM TTA logits (nested LR)"],
                                              records, both)
    rows["length LR + rules"] = apply_rules(length_lr, records, both)
    lines = ["| method | OOF log loss | accuracy | vs length LR |", "|---|---|---|---|"]
    base = log_loss(length_lr, y)
    result = {}
    for name, p in rows.items():
        ll, acc = log_loss(p, y), accuracy(p, y)
        result[name] = {"log_loss": ll, "accuracy": acc}
        lines.append(f"| {name} | {ll:.4f} | {acc:.3f} | {ll - base:+.4f} |")
    ident = sum(r.response_a == r.response_b for r in records)
    empty = sum((not "".join(r.response_a).strip()) != (not "".join(r.response_b).strip()) for r in records)
    table = "\n".join(lines)
    print(table)
    print(f"\nrows with identical responses: {ident}; rows with exactly one empty response: {empty}")
    print(json.dumps(result))
    if args.out:
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
