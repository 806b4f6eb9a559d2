"""Hand-crafted features known to carry signal on this task, and the length-feature logistic regression baseline.

With 1,500 training rows the encoder alone barely beats the class prior (``../shared/reference/TASK.md``); length
and structure of the two answers carry most of the signal. The features are symmetric by construction: swapping A
and B swaps the per-response columns and negates the differences, so A/B swap augmentation and TTA stay valid.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from arena.data import Record

_REFUSAL = re.compile(r"\b(i can(?:no|')t|i am (?:not able|unable)|i'm (?:not able|unable)|as an ai|i apologi[sz]e|"
                      r"i'm sorry|i am sorry|cannot (?:assist|help|provide|fulfill))\b", re.IGNORECASE)
_LIST = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s", re.MULTILINE)
_HEADER = re.compile(r"^\s*#{1,6}\s", re.MULTILINE)
_BOLD = re.compile(r"\*\*[^*\n]+\*\*")

PER_RESPONSE = ("log_chars", "log_words", "log_lines", "headers", "list_items", "code_blocks", "bold", "refusal",
                "empty")
BASELINE_FEATURES = (*(f"a_{n}" for n in PER_RESPONSE), *(f"b_{n}" for n in PER_RESPONSE),
                     *(f"diff_{n}" for n in PER_RESPONSE), "identical", "log_prompt_chars", "turns")
"""The columns of the length-feature logistic-regression baseline (the first columns of :data:`FEATURE_NAMES`)."""
FEATURE_NAMES = (*BASELINE_FEATURES, *(f"absdiff_{n}" for n in PER_RESPONSE))
"""Every feature. ``absdiff_*`` are |a - b|: a tie depends on how *alike* the answers are, which a linear model
cannot read from the signed differences (swapping A and B flips their sign but must not change P(tie))."""


def _response_features(turns: Sequence[str]) -> list[float]:
    text = "\n".join(turns)
    return [
        np.log1p(len(text)), np.log1p(len(text.split())), np.log1p(text.count("\n")),
        float(len(_HEADER.findall(text))), float(len(_LIST.findall(text))), float(text.count("```") // 2),
        float(len(_BOLD.findall(text))), float(bool(_REFUSAL.search(text[:400]))), float(not text.strip()),
    ]


def row_features(record: Record) -> np.ndarray:
    a, b = _response_features(record.response_a), _response_features(record.response_b)
    diff = [x - y for x, y in zip(a, b, strict=True)]
    extra = [float(record.response_a == record.response_b), np.log1p(sum(len(t) for t in record.prompt)),
             float(len(record.prompt))]
    return np.array([*a, *b, *diff, *extra, *(abs(d) for d in diff)], dtype=np.float32)


def feature_matrix(records: Sequence[Record]) -> np.ndarray:
    """(rows, len(FEATURE_NAMES)) float32."""
    if not records:
        return np.zeros((0, len(FEATURE_NAMES)), dtype=np.float32)
    return np.stack([row_features(r) for r in records])


class LogisticRegression:
    """Multinomial logistic regression with L2, fitted by L-BFGS on standardised features (numpy in, numpy out)."""

    def __init__(self, l2: float = 1e-2, max_iter: int = 200, clip: float | None = None) -> None:
        """``clip``: limit the standardised features to +-clip (the hybrid head's starting point does)."""
        self.l2, self.max_iter, self.clip = l2, max_iter, clip

    def standardise(self, x: np.ndarray) -> np.ndarray:
        z = (x - self.mean) / self.std
        return z if self.clip is None else np.clip(z, -self.clip, self.clip)

    def fit(self, x: np.ndarray, y: np.ndarray) -> LogisticRegression:
        import torch

        self.mean = x.mean(axis=0)
        std = x.std(axis=0)
        # A feature constant on the training rows (e.g. no row with one empty answer in this fold) gets scale 1,
        # not ~0: else one unseen value becomes a z-score of a million at inference.
        self.std = np.where(std < 1e-6, 1.0, std)
        xt = torch.from_numpy(self.standardise(x).astype(np.float64))
        yt = torch.from_numpy(np.asarray(y, dtype=np.int64))
        w = torch.zeros(x.shape[1], 3, dtype=torch.float64, requires_grad=True)
        b = torch.zeros(3, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([w, b], max_iter=self.max_iter, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(xt @ w + b, yt) + self.l2 * (w**2).sum() / 2
            loss.backward()
            return loss

        opt.step(closure)
        self.w, self.b = w.detach().numpy(), b.detach().numpy()
        return self

    def decision_function(self, x: np.ndarray) -> np.ndarray:
        return self.standardise(x) @ self.w + self.b

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        from arena.metrics import softmax

        return softmax(self.decision_function(x))


def cross_validated_baseline(records: Sequence[Record], folds: np.ndarray, l2: float = 1e-2, *,
                             columns: Sequence[str] = BASELINE_FEATURES) -> np.ndarray:
    """Out-of-fold probabilities of the feature logistic regression (by default the length-feature baseline's
    columns), on the given fold assignment."""
    from arena.data import labels_of

    keep = [FEATURE_NAMES.index(c) for c in columns]
    x, y = feature_matrix(records)[:, keep], labels_of(records)
    out = np.zeros((len(records), 3))
    for k in np.unique(folds):
        train, val = folds != k, folds == k
        out[val] = LogisticRegression(l2).fit(x[train], y[train]).predict_proba(x[val])
    return out
