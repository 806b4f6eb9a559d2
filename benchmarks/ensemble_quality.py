"""Fold ensemble vs single folds, probability vs geometric mean, and a distilled student, on held-out real rows.

    python benchmarks/ensemble_quality.py --model MINILM_DIR --out runs/ensq

1. The 1,500 real rows are split once (seed 7, stratified): 20% held out, 80% to train on. Nothing below ever
   trains or selects on the held-out rows.
2. ``arena-train --folds 5`` (the default recipe) on the 80%; every fold and the 5-fold ensemble (both ways of
   combining) score the held-out rows.
3. Students on the same 80% (arena-train's own 20% validation split for selection): hard labels vs the ensemble's
   out-of-fold probabilities as soft labels (``--soft-labels cv/oof.csv``), each scored on the held-out rows.

Writes ``table.md`` and ``results.json`` into ``--out``. The split CSVs are written there too (runs/ is not
committed).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "arena" / "lmsys_kaggle" / "train_sample.csv"
RECIPE = ["--max-length", "256", "--epochs", "1", "--batch-size", "16", "--lr", "5e-5"]


def train(args: list[str], log: Path) -> float:
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        subprocess.run([sys.executable, "-m", "arena.train.cli", *args], check=True, stdout=fh, stderr=fh)
    return time.perf_counter() - t0


def score(folders: list[Path], holdout: Path, combine: str = "probs") -> np.ndarray:
    from arena.data import read_records
    from arena.serving.loading import open_models
    from arena.serving.scoring import ScoreConfig, scorer_for

    records = read_records(holdout, labelled=True)
    scorer = scorer_for(open_models(folders, combine=combine), ScoreConfig(), combine=combine)
    try:
        return scorer.score(records)
    finally:
        scorer.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", default="runs/ensq")
    ap.add_argument("--folds", type=int, default=5)
    a = ap.parse_args()
    from arena.data import labels_of, read_train
    from arena.metrics import log_loss
    from arena.train.folds import holdout_split

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    frame = pd.read_csv(DATA)
    labels = labels_of(read_train(DATA))
    train_idx, hold_idx = holdout_split(labels, 0.2, 7)
    frame.iloc[np.sort(train_idx)].to_csv(out / "train.csv", index=False)
    frame.iloc[np.sort(hold_idx)].to_csv(out / "holdout.csv", index=False)
    y = labels_of(read_train(out / "holdout.csv"))
    times = {"cv": train(["--data", str(out / "train.csv"), "--model", a.model, *RECIPE, "--folds", str(a.folds),
                          "--output", str(out / "cv")], out / "cv.log")}
    folds = sorted((out / "cv").glob("fold_*"))
    rows = {f"fold {f.name[-1]} alone": log_loss(score([f], out / "holdout.csv"), y) for f in folds}
    mean_single = float(np.mean(list(rows.values())))
    rows["mean of the single folds"] = mean_single
    rows["5-fold ensemble, mean of probabilities"] = log_loss(score([out / "cv"], out / "holdout.csv"), y)
    rows["5-fold ensemble, geometric mean"] = log_loss(score([out / "cv"], out / "holdout.csv", "geometric"), y)
    for name, extra in (("hard", []), ("soft", ["--soft-labels", str(out / "cv" / "oof.csv")])):
        times[name] = train(["--data", str(out / "train.csv"), "--model", a.model, *RECIPE, *extra,
                             "--output", str(out / f"student_{name}")], out / f"student_{name}.log")
        rows[f"single model, {name} labels (student)"] = log_loss(score([out / f"student_{name}"],
                                                                         out / "holdout.csv"), y)
    rows["uniform"] = float(np.log(3))
    lines = ["| held-out rows (300 real, never trained or selected on) | log loss |", "|---|---|"]
    lines += [f"| {k} | {v:.4f} |" for k, v in rows.items()]
    (out / "table.md").write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(json.dumps({"log_loss": rows, "train_seconds": times,
                                                  "holdout_rows": int(len(y)), "recipe": RECIPE}, indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
