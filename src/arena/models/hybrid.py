"""The hybrid head: the encoder's pooled text representation and the hand-crafted features in one classifier.

::

    z      = clip((features - mean) / std, -10, 10)         mean, std: buffers fitted on the training rows
    logits = feature_linear(z) + head([dropout(pooled), gelu(feature_mlp(z))])

* ``pooled`` is the attention-masked mean of the encoder's last hidden state (any encoder; sentence-transformers
  checkpoints such as MiniLM were trained for it).
* :func:`init_from_logistic_regression` sets ``feature_linear`` (and ``mean``/``std``) to the logistic regression
  fitted on the training rows' features, and ``head`` starts at zero: before fine-tuning the network predicts
  exactly what that regression predicts, and training adds what the text and the feature interactions carry.
  Model selection on validation log loss (which evaluates the starting point too) keeps whichever is better.
* The features are a third model input (``features``, float32, ``(batch, len(FEATURE_NAMES))``), computed by
  :class:`arena.encode.ArenaEncoder` when its config has ``features=True``; ONNX and TensorRT graphs take the raw
  features and standardise them inside.

On disk a hybrid checkpoint is the encoder as a Hugging Face base-model folder (``config.json``,
``model.safetensors``), the head in ``hybrid_head.safetensors``, and ``arena.json`` with ``head`` describing it
(kind, feature names, sizes). :func:`arena.models.modeling.load_classifier` dispatches on that entry.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

HEAD_FILE = "hybrid_head.safetensors"
Z_CLIP = 10.0
KIND = "hybrid"


class HybridOutput:
    """What ``forward`` returns: ``.logits`` like a Hugging Face ``SequenceClassifierOutput``."""

    __slots__ = ("logits",)

    def __init__(self, logits: torch.Tensor) -> None:
        self.logits = logits


def _require_features(features: torch.Tensor | None) -> None:
    if features is None:
        raise ValueError("this hybrid model needs a third input, `features` (arena.features.FEATURE_NAMES); "
                         "encode with EncoderConfig(features=True)")


class HybridClassifier(nn.Module):
    def __init__(self, backbone: nn.Module, feature_names: tuple[str, ...] | list[str], *, hidden: int = 64,
                 dropout: float = 0.1) -> None:
        super().__init__()
        if getattr(backbone, "pooler", None) is not None:
            # BERT-style encoders carry a [CLS] pooler the mean pooling never uses: parameters without gradients
            # would break DistributedDataParallel and cost compute
            backbone.pooler = None
        self.backbone = backbone
        self.config = backbone.config
        self.feature_names = tuple(feature_names)
        self.hidden = hidden
        n = len(self.feature_names)
        self.register_buffer("feature_mean", torch.zeros(n))
        self.register_buffer("feature_std", torch.ones(n))
        self.feature_linear = nn.Linear(n, 3)
        self.feature_mlp = nn.Linear(n, hidden)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.config.hidden_size + hidden, 3)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    def head_parameters(self) -> list[nn.Parameter]:
        """The parameters outside the encoder (trained with their own, higher learning rate)."""
        return [p for name, p in self.named_parameters() if not name.startswith("backbone.")]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                features: torch.Tensor | None = None, **_: Any) -> HybridOutput:
        _require_features(features)
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return HybridOutput(self.head_logits(pooled, features))

    def head_logits(self, pooled: torch.Tensor, features: torch.Tensor | None) -> torch.Tensor:
        """Logits from the rows' mean-pooled encoder output and their features: the head alone, shared by the padded
        forward and the packed one (:func:`arena.models.attention.packed_logits`)."""
        _require_features(features)
        # clipped z-scores: one extreme row (a response with 500 headers) cannot blow up the logits
        z = ((features.to(self.feature_mean.dtype) - self.feature_mean) / self.feature_std).clamp(-Z_CLIP, Z_CLIP)
        z = z.to(pooled.dtype)
        extra = nn.functional.gelu(self.feature_mlp(z))
        return self.feature_linear(z) + self.head(torch.cat([self.dropout(pooled), extra], dim=-1))

    # -- persistence ----------------------------------------------------------------------------------------------

    def spec(self) -> dict[str, Any]:
        """The ``head`` entry of ``arena.json``."""
        return {"kind": KIND, "file": HEAD_FILE, "features": list(self.feature_names), "hidden": self.hidden,
                "pooling": "mean", "encoder_hidden_size": int(self.config.hidden_size)}

    def head_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()
                if not k.startswith("backbone.")}

    def save_pretrained(self, folder: str | Path, safe_serialization: bool = True,
                        state_dict: dict[str, torch.Tensor] | None = None, **kwargs: Any) -> None:
        """The encoder as a Hugging Face folder, the head beside it. ``state_dict``: the whole weights to write
        instead of this module's own (a sharded model's, gathered)."""
        from safetensors.torch import save_file

        if state_dict is None:
            self.backbone.save_pretrained(folder, safe_serialization=True, **kwargs)
            save_file(self.head_state(), str(Path(folder) / HEAD_FILE))
            return
        backbone = {k.removeprefix("backbone."): v for k, v in state_dict.items() if k.startswith("backbone.")}
        self.backbone.save_pretrained(folder, safe_serialization=True, state_dict=backbone, **kwargs)
        save_file({k: v.detach().cpu().contiguous() for k, v in state_dict.items() if not k.startswith("backbone.")},
                  str(Path(folder) / HEAD_FILE))


def init_from_logistic_regression(model: HybridClassifier, features: np.ndarray, labels: np.ndarray,
                                  l2: float = 0.1) -> float:
    """Fit :class:`arena.features.LogisticRegression` on the training rows and copy it into the feature path.

    Returns the regression's training log loss (logged by the trainer as the starting point).
    """
    from arena.features import LogisticRegression
    from arena.metrics import log_loss

    lr = LogisticRegression(l2, clip=Z_CLIP).fit(features.astype(np.float64), labels)
    with torch.no_grad():
        model.feature_mean.copy_(torch.from_numpy(lr.mean.astype(np.float32)))
        model.feature_std.copy_(torch.from_numpy(lr.std.astype(np.float32)))
        model.feature_linear.weight.copy_(torch.from_numpy(lr.w.T.astype(np.float32)))
        model.feature_linear.bias.copy_(torch.from_numpy(lr.b.astype(np.float32)))
    return log_loss(lr.predict_proba(features), labels)


def build_hybrid(name_or_path: str, *, random_init_from: str | None = None, hidden: int = 64,
                 dropout: float = 0.1) -> HybridClassifier:
    """A new hybrid model on a pretrained encoder (or random weights from a config.json)."""
    from transformers import AutoConfig, AutoModel

    from arena.features import FEATURE_NAMES
    from arena.models.hub import is_local, label_maps, offline_hint

    id2label, label2id = label_maps()
    if random_init_from is not None:
        config = AutoConfig.from_pretrained(str(random_init_from))
        backbone = AutoModel.from_config(config)
    else:
        try:
            backbone = AutoModel.from_pretrained(name_or_path, use_safetensors=True, trust_remote_code=False)
        except OSError as exc:
            if is_local(name_or_path):
                from arena.errors import ModelError

                raise ModelError(f"cannot load the encoder in {name_or_path}: {exc}") from None
            raise offline_hint(name_or_path, exc) from None
    backbone.config.num_labels = 3
    backbone.config.id2label, backbone.config.label2id = id2label, label2id
    return HybridClassifier(backbone, FEATURE_NAMES, hidden=hidden, dropout=dropout)


def load_hybrid(folder: str | Path, spec: dict[str, Any]) -> HybridClassifier:
    """Load a saved hybrid checkpoint; refuse one whose features differ from this version's."""
    from safetensors.torch import load_file
    from transformers import AutoModel

    from arena.errors import ModelError
    from arena.features import FEATURE_NAMES

    folder = Path(folder)
    names = tuple(spec.get("features", ()))
    if names != FEATURE_NAMES:
        missing = sorted(set(FEATURE_NAMES) ^ set(names))
        raise ModelError(f"{folder} was trained with a different feature set than this arena version computes "
                         f"(differences: {', '.join(missing) or 'column order'}); retrain it or use the arena "
                         "version it was made with")
    head_path = folder / spec.get("file", HEAD_FILE)
    if not head_path.is_file():
        raise ModelError(f"{folder} is a hybrid checkpoint but {head_path.name} is missing")
    try:
        backbone = AutoModel.from_pretrained(str(folder), use_safetensors=True, trust_remote_code=False)
        state = load_file(str(head_path))
    except Exception as exc:
        raise ModelError(f"cannot load the hybrid model in {folder} ({type(exc).__name__}: {exc}); the checkpoint "
                         "may be truncated or corrupt") from None
    model = HybridClassifier(backbone, names, hidden=int(spec.get("hidden", 64)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("backbone.")]
    if missing or unexpected:
        raise ModelError(f"{head_path} does not match the hybrid head (missing {missing}, unexpected {unexpected})")
    return model


def forward_logits(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   features: torch.Tensor | None = None) -> torch.Tensor:
    """Logits of a plain Hugging Face classifier or a hybrid one (which also takes ``features``)."""
    if features is None:
        return model(input_ids=input_ids, attention_mask=attention_mask).logits
    return model(input_ids=input_ids, attention_mask=attention_mask, features=features).logits


def is_hybrid(model: nn.Module) -> bool:
    raw = getattr(model, "module", model)  # DistributedDataParallel
    raw = getattr(raw, "_orig_mod", raw)  # torch.compile
    return isinstance(raw, HybridClassifier)
