"""What decides a training run: :class:`TrainConfig`, written to ``train_config.json`` beside the checkpoint."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from arena.encode import EncoderConfig

HEADS = ("hf", "hybrid")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run; written to ``train_config.json`` beside the checkpoint."""

    data: str | None = None
    model: str = "microsoft/deberta-v3-small"
    output: str = "runs/model"
    tokenizer: str | None = None
    random_init: bool = False
    """Treat ``model`` as a config.json and start from random weights (speed tests, from-scratch training)."""
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    batch_size: int = 8
    grad_accum: int = 1
    epochs: float = 3.0
    lr: float = 2e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    scheduler: str = "linear"
    precision: str = "auto"
    seed: int = 42
    max_rows: int | None = None
    val_fraction: float = 0.2
    folds: int | None = None
    fold: int | None = None
    eval_steps: int | None = None
    """Evaluate every this many optimizer steps (and at the end of every epoch)."""
    save_steps: int | None = None
    """Save the resumable state every this many optimizer steps (and at every evaluation)."""
    early_stopping: int | None = None
    """Stop after this many evaluations without a better validation log loss."""
    swap_augment: bool = True
    """Train on every row twice, as given and with A and B exchanged (labels a <-> b). Part of the default recipe:
    on the real sample it is worth more than the encoder (benchmarks/RESULTS.md)."""
    head: str = "hybrid"
    """``hybrid`` (the default recipe): pooled encoder output plus the hand-crafted features (:mod:`arena.hybrid`),
    the feature path started from their logistic regression. ``hf``: the model's own sequence-classification head."""
    head_lr: float = 2e-4
    """Learning rate of the hybrid head's own layers (the encoder uses ``lr``)."""
    max_grad_norm: float = 1.0
    calibrate: bool = True
    """Fit a temperature on the validation (out-of-fold) logits and save it with the model."""
    compile: bool = False
    resume: bool = False
    overwrite: bool = False
    """Delete an earlier run in ``output`` and start again (:mod:`arena.safety` says which folders qualify)."""
    keep_state: bool = False
    soft_labels: str | None = None
    """Teacher probabilities keyed by id (:mod:`arena.train.targets`): the training targets mix them in."""
    soft_weight: float = 1.0
    """Share of the teacher in a labelled row's target (0: hard labels only, 1: teacher only)."""
    extra: str | None = None
    """Unlabelled pairs that train on their ``soft_labels`` only (never in a validation fold)."""
    max_steps: int | None = None
    """Stop after this many optimizer steps in total (quick runs, tests)."""

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["encoder"] = self.encoder.to_dict()
        return out
