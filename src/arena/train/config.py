"""What decides a training run: :class:`TrainConfig`, written to ``train_config.json`` beside the checkpoint."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from arena.encode import EncoderConfig

HEADS = ("auto", "hf", "hybrid")


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
    head: str = "auto"
    """``hybrid`` (the default recipe for encoders): pooled encoder output plus the hand-crafted features
    (:mod:`arena.models.hybrid`), the feature path started from their logistic regression. ``hf``: the model's own
    sequence-classification head (decoders: last-token pooling). ``auto``: hybrid for encoders, hf for decoders."""
    head_lr: float = 2e-4
    """Learning rate of the hybrid head's own layers (the encoder uses ``lr``)."""
    max_grad_norm: float = 1.0
    calibrate: bool = True
    """Fit a temperature on the validation (out-of-fold) logits and save it with the model."""
    compile: bool = False
    attention: str = "auto"
    """``--attention`` (:mod:`arena.models.attention`): ``flash`` trains DeBERTa-v2/v3 through disentangled-flash's
    differentiable attention; ``auto`` uses it on a CUDA GPU when it matches eager on the first batch. What ran is
    recorded in ``train_done.json`` and ``metrics.json``."""
    resume: bool = False
    """Continue the unfinished run in ``output``, which must exist with the same settings and data
    (:mod:`arena.train.record`)."""
    resume_or_start: bool = False
    """With ``resume``: start a new run when ``output`` holds nothing to resume (no folder, or an empty one)."""
    overwrite: bool = False
    """Delete an earlier run in ``output`` and start again (:mod:`arena.cli.safety` says which folders qualify)."""
    keep_state: bool = False
    soft_labels: str | None = None
    """Teacher probabilities keyed by id (:mod:`arena.train.targets`): the training targets mix them in."""
    soft_weight: float = 1.0
    """Share of the teacher in a labelled row's target (0: hard labels only, 1: teacher only)."""
    extra: tuple[str, ...] = ()
    """Files of unlabelled pairs that train on their ``soft_labels`` only (never in a validation fold; rows of the
    training file are dropped: :mod:`arena.train.partition`). A single path is taken as a one-file tuple."""
    max_steps: int | None = None
    """Stop after this many optimizer steps in total (quick runs, tests)."""
    lora_r: int | None = None
    """LoRA rank (:mod:`arena.models.lora`); 0: full fine-tuning; None: 16 for decoders, full fine-tuning for
    encoders."""
    lora_alpha: float | None = None
    """LoRA scale numerator (the update is scaled by alpha / r); None: 2 x r (the 1st place used r 64, alpha 128)."""
    lora_dropout: float = 0.05
    lora_targets: str = "all-linear"
    """Modules that get LoRA matrices: ``all-linear`` (every projection in the blocks) or a comma list of names."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: about a third more compute for far less activation memory."""
    load_in_4bit: bool = False
    """Hold the frozen base in 4-bit NF4 (bitsandbytes, QLoRA; needs a CUDA GPU and LoRA)."""
    load_in_8bit: bool = False
    """Hold the frozen base in 8-bit (bitsandbytes; needs a CUDA GPU and LoRA)."""
    merge: bool = False
    """After training, merge the LoRA adapter into the base and write a plain checkpoint instead of the adapter."""
    fsdp: bool = False
    """Shard full fine-tuning across torchrun's processes with ``fully_shard`` (:mod:`arena.train.fsdp`): for a model
    whose weights, gradients and AdamW state do not fit one GPU."""

    def __post_init__(self) -> None:
        extra = self.extra
        if extra is None or isinstance(extra, str) or hasattr(extra, "__fspath__"):
            extra = () if extra is None else (str(extra),)
        object.__setattr__(self, "extra", tuple(str(p) for p in extra))

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["encoder"] = self.encoder.to_dict()
        out["extra"] = list(self.extra)
        return out
