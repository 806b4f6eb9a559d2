"""The starter notebook's inference, as one process: the yardstick ``benchmarks/whole_process.py`` times.

    python benchmarks/notebook_infer.py test.csv --model runs/cpu/xsmall --out submission.csv

PyTorch fp32 eager on the CPU, rows in file order, batches of 16 padded to the batch's longest row, tokenization
inside the loop (``arena.bench.runner.notebook_loop``, the loop the benchmarks already call the notebook loop), then
softmax and a CSV written with pandas. torch uses its default thread count, as the notebook did.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("test_csv", type=Path)
    ap.add_argument("--model", type=Path, required=True, help="arena-train checkpoint")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    import pandas as pd
    import torch

    from arena.bench.runner import notebook_loop
    from arena.data import read_test
    from arena.encode import ArenaEncoder
    from arena.metrics import softmax
    from arena.modeling import load_classifier, load_tokenizer, read_meta

    model = load_classifier(args.model, require_three_labels=True).eval()
    encoder = ArenaEncoder(load_tokenizer(args.model), read_meta(args.model).encoder)
    records = read_test(args.test_csv)

    def runner(ids, mask, features=None):
        with torch.inference_mode():
            out = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
        return out.logits.float().numpy()

    probs = softmax(notebook_loop(runner, encoder, records, 16))
    frame = pd.DataFrame(probs, columns=["winner_model_a", "winner_model_b", "winner_tie"])
    frame.insert(0, "id", [r.id for r in records])
    frame.to_csv(args.out, index=False)


if __name__ == "__main__":
    main()
