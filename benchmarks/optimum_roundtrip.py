"""Round trip with optimum, both directions, on real rows: an arena export folder loads in optimum's
``ORTModelForSequenceClassification`` and gives arena's logits; a folder ``optimum-cli export onnx`` wrote from the
same checkpoint is scored by arena as a foreign export and agrees with arena's torch backend.

Three steps in two virtual environments, because optimum-onnx pins transformers < 4.58 and arena runs
transformers 5:

  arena half (arena's .venv)
      python benchmarks/optimum_roundtrip.py arena --export EXPORT --work DIR
      encodes real rows with arena's encoder (settings from EXPORT's manifest), scores them with arena's ONNX
      backend and writes DIR/rows.npz (padded ids, masks, logits) and DIR/texts.json (raw texts and the ids
      arena's tokenizer gives them).
  foreign half (arena's .venv)
      python benchmarks/optimum_roundtrip.py foreign --checkpoint CKPT --foreign OPTIMUM_DIR --work DIR
      scores real rows from optimum's folder (with the checkpoint's arena.json beside it, so the encoder settings
      match) and from the checkpoint with the torch backend; writes DIR/foreign.json.
  optimum half (a venv with optimum-onnx[onnxruntime])
      python benchmarks/optimum_roundtrip.py optimum --export EXPORT --work DIR
      loads EXPORT with ORTModelForSequenceClassification and AutoTokenizer (no arena import), runs the same ids,
      compares logits and token ids, adds DIR/foreign.json when there is one, prints the versions, a table and one
      final JSON line; exit 1 on a mismatch.

``benchmarks/optimum_roundtrip.sh`` builds the venv and the tiny model and runs both; ``tests/test_optimum.py`` runs
the optimum half where that venv exists.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TRAIN_CSV = ROOT.parent / "shared" / "data" / "arena" / "lmsys_kaggle" / "train_sample.csv"
BATCH = 16
LOGIT_TOL = 1e-4  # arena's fp32 parity limit


def arena_half(export: Path, work: Path, rows: int = 64) -> dict:
    """Score ``rows`` real rows with arena; write what the optimum half needs."""
    from arena.data import read_train
    from arena.serving.loading import open_model

    loaded = open_model(export, backend="onnx", precision="fp32")
    records = read_train(TRAIN_CSV)[:rows]
    encoded = loaded.encoder.encode(records)
    pad = loaded.encoder.tokenizer.pad_token_id or 0
    arrays: dict[str, np.ndarray] = {}
    for k, start in enumerate(range(0, len(records), BATCH)):
        chunk = encoded.ids[start:start + BATCH]
        width = max(len(x) for x in chunk)
        ids = np.full((len(chunk), width), pad, dtype=np.int64)
        mask = np.zeros_like(ids)
        for i, row in enumerate(chunk):
            ids[i, :len(row)], mask[i, :len(row)] = row, 1
        arrays[f"ids_{k}"], arrays[f"mask_{k}"], arrays[f"logits_{k}"] = ids, mask, loaded.runner(ids, mask)
    work.mkdir(parents=True, exist_ok=True)
    np.savez(work / "rows.npz", **arrays)
    texts = ["\n".join(turns) for r in records[:24] for turns in (r.prompt, r.response_a, r.response_b)]
    tokenizer = loaded.encoder.tokenizer
    token_ids = [tokenizer(t)["input_ids"] for t in texts]  # whole texts: arena never asks a tokenizer to truncate
    (work / "texts.json").write_text(json.dumps({"texts": texts, "ids": token_ids}))
    return {"rows": len(records), "backend": loaded.description}


def foreign_half(checkpoint: Path, foreign: Path, work: Path, rows: int = 64) -> dict:
    """Score optimum's folder as a foreign export and the checkpoint with torch; write DIR/foreign.json."""
    import shutil

    import pandas as pd

    from arena.infer.cli import run_infer

    frame = pd.read_csv(TRAIN_CSV).iloc[:rows][["id", "prompt", "response_a", "response_b"]]
    frame.to_csv(work / "rows.csv", index=False)
    shutil.copy2(checkpoint / "arena.json", foreign / "arena.json")
    summary = run_infer(work / "rows.csv", foreign, work / "foreign.csv", tta=True)
    run_infer(work / "rows.csv", checkpoint, work / "torch.csv", backend="torch", tta=True)
    columns = ["winner_model_a", "winner_model_b", "winner_tie"]
    ours, theirs = (pd.read_csv(work / f"{n}.csv")[columns].to_numpy() for n in ("torch", "foreign"))
    result = {"backend": summary["backend"], "rows": int(summary["rows"]),
              "max_abs_prob_diff": float(np.abs(ours - theirs).max()), "tolerance": LOGIT_TOL}
    result["passed"] = bool(result["max_abs_prob_diff"] <= LOGIT_TOL and "foreign ONNX export" in result["backend"])
    (work / "foreign.json").write_text(json.dumps(result))
    return result


def optimum_half(export: Path, work: Path) -> dict:
    """Load the arena export with optimum and compare; never imports arena."""
    import importlib.metadata as md

    import torch
    from optimum.onnxruntime import ORTModelForSequenceClassification
    from transformers import AutoTokenizer, pipeline

    model = ORTModelForSequenceClassification.from_pretrained(export)
    tokenizer = AutoTokenizer.from_pretrained(export)
    data = np.load(work / "rows.npz")
    diffs, agree, rows = [], 0, 0
    for k in range(len([n for n in data.files if n.startswith("ids_")])):
        ids, mask, ours = data[f"ids_{k}"], data[f"mask_{k}"], data[f"logits_{k}"]
        theirs = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits.numpy()
        diffs.append(float(np.abs(theirs - ours).max()))
        agree += int((theirs.argmax(1) == ours.argmax(1)).sum())
        rows += len(ids)
    texts = json.loads((work / "texts.json").read_text())
    same = sum(tokenizer(t)["input_ids"] == ids
               for t, ids in zip(texts["texts"], texts["ids"], strict=True))
    label = pipeline("text-classification", model=model, tokenizer=tokenizer)(texts["texts"][0][:500])[0]["label"]
    versions = {p: _version(md, p) for p in ("optimum", "optimum-onnx", "transformers", "tokenizers", "onnxruntime",
                                             "torch", "numpy")}
    result = {"versions": {"python": sys.version.split()[0], **versions}, "file": model.path.name,
              "id2label": {str(k): v for k, v in model.config.id2label.items()}, "rows": rows,
              "max_abs_logit_diff": max(diffs), "argmax_agreement": agree / rows, "tolerance": LOGIT_TOL,
              "tokenizer_texts": len(texts["texts"]), "tokenizer_texts_identical": same, "pipeline_label": label}
    result["passed"] = bool(result["max_abs_logit_diff"] <= LOGIT_TOL and same == len(texts["texts"])
                            and result["file"] == "model.onnx" and label.startswith("winner_"))
    if (work / "foreign.json").is_file():  # the other direction, measured by the foreign half
        result["optimum_to_arena"] = json.loads((work / "foreign.json").read_text())
        result["passed"] = result["passed"] and result["optimum_to_arena"]["passed"]
    return result


def _version(md, package: str) -> str | None:
    try:
        return md.version(package)
    except md.PackageNotFoundError:
        return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("half", choices=("arena", "foreign", "optimum"))
    parser.add_argument("--export", type=Path, help="an arena export folder (arena and optimum halves)")
    parser.add_argument("--checkpoint", type=Path, help="the arena checkpoint (foreign half)")
    parser.add_argument("--foreign", type=Path, help="what optimum-cli export onnx wrote (foreign half)")
    parser.add_argument("--work", type=Path, required=True, help="where the halves exchange rows")
    parser.add_argument("--rows", type=int, default=64)
    args = parser.parse_args()
    if args.half == "arena":
        print(json.dumps(arena_half(args.export, args.work, args.rows)))
        return 0
    if args.half == "foreign":
        print(json.dumps(foreign_half(args.checkpoint, args.foreign, args.work, args.rows)))
        return 0
    result = optimum_half(args.export, args.work)
    print("| optimum round trip | |\n|---|---|")
    for key, value in result["versions"].items():
        print(f"| {key} | {value} |")
    for key in ("file", "rows", "max_abs_logit_diff", "argmax_agreement", "tokenizer_texts_identical",
                "pipeline_label"):
        print(f"| arena -> optimum: {key} | {result[key]} |")
    for key, value in result.get("optimum_to_arena", {}).items():
        print(f"| optimum -> arena: {key} | {value} |")
    print(f"| passed | {result['passed']} |")
    print(json.dumps(result))
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
