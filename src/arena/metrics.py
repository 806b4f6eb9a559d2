"""Log loss, accuracy and the baselines every score is shown beside (uniform ln 3, class prior)."""

from __future__ import annotations

import math

import numpy as np

UNIFORM_LOG_LOSS = math.log(3.0)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def log_loss(probs: np.ndarray, labels: np.ndarray, eps: float = 1e-15) -> float:
    """Kaggle's multi-class log loss: rows renormalised, probabilities clipped to [eps, 1 - eps]."""
    p = np.clip(np.asarray(probs, dtype=np.float64), eps, 1 - eps)
    p = p / p.sum(axis=1, keepdims=True)
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) == 0:
        return float("nan")
    return float(-np.mean(np.log(p[np.arange(len(labels)), labels])))


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(probs, axis=1) == labels)) if len(labels) else float("nan")


def class_prior(labels: np.ndarray, n_classes: int = 3) -> np.ndarray:
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=n_classes).astype(np.float64)
    return (counts + 1.0) / (counts.sum() + n_classes)  # Laplace smoothing: no class gets probability 0


def baselines(train_labels: np.ndarray, val_labels: np.ndarray) -> dict[str, float]:
    """Log loss on ``val_labels`` of predicting 1/3 each, and of predicting the training class prior."""
    prior = class_prior(train_labels)
    return {
        "uniform_log_loss": UNIFORM_LOG_LOSS,
        "prior_log_loss": log_loss(np.tile(prior, (len(val_labels), 1)), val_labels),
    }


def fit_temperature(logits: np.ndarray, labels: np.ndarray, lo: float = 0.05, hi: float = 20.0) -> float:
    """The temperature T minimising log loss of softmax(logits / T) (golden-section search on log T)."""
    a, b = math.log(lo), math.log(hi)
    g = (math.sqrt(5) - 1) / 2

    def loss(log_t: float) -> float:
        return log_loss(softmax(logits, math.exp(log_t)), labels)

    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = loss(c), loss(d)
    for _ in range(60):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = loss(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = loss(d)
    return float(math.exp((a + b) / 2))
