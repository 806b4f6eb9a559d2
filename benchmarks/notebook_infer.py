"""The starter notebook's inference, as one process: the yardstick ``benchmarks/whole_process.py`` times.

    python benchmarks/notebook_infer.py test.csv --model runs/cpu/xsmall --out submission.csv

PyTorch fp32 eager on the CPU, rows in file order, batches of 16 padded to the batch's longest row, tokenization
inside the loop on the model's thread (the scorer's ``notebook`` policy, the loop arena-bench calls the notebook
loop), then softmax and a CSV written with pandas. torch uses its default thread count, as the notebook did.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("test_csv", type=Path)
    ap.add_argument("--model", type=Path, required=True, help="arena-train checkpoint")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    import pandas as pd
    import torch

    from arena.data import read_test
    from arena.encode import ArenaEncoder
    from arena.models.hybrid import is_hybrid
    from arena.models.modeling import load_classifier, load_tokenizer, read_meta
    from arena.serving.scoring import ScoreConfig, Scorer

    model = load_classifier(args.model, require_three_labels=True).eval()
    hybrid = is_hybrid(model)  # a hybrid head also takes the rows' hand-crafted features
    settings = replace(read_meta(args.model).encoder, features=hybrid)
    encoder = ArenaEncoder(load_tokenizer(args.model), settings)
    records = read_test(args.test_csv)

    class Eager:  # the notebook's model call, nothing of arena's backends (threads: torch's default)
        device, needs_features = "cpu", hybrid

        def __call__(self, ids, mask, features=None):
            extra = {} if features is None else {"features": torch.from_numpy(features)}
            with torch.inference_mode():
                out = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), **extra)
            return out.logits.float().numpy()

    scorer = Scorer(Eager(), encoder, ScoreConfig(policy="notebook", batch_size=16))
    probs = scorer.score(records)
    scorer.close()
    frame = pd.DataFrame(probs, columns=["winner_model_a", "winner_model_b", "winner_tie"])
    frame.insert(0, "id", [r.id for r in records])
    frame.to_csv(args.out, index=False)


if __name__ == "__main__":
    main()
