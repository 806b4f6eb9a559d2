"""LoRA adapters (peft) on a sequence classifier: added for training, saved alone, loaded applied or merged.

Training (:func:`apply_lora`): LoRA matrices on every linear projection of the transformer blocks (``all-linear``:
q, k, v, o, gate, up, down for Llama-style decoders), the classification head (``score`` for decoders;
``classifier`` and ``pooler`` for encoders) trained fully, everything else frozen. The trainable tensors are kept
in fp32 even where the frozen base is held in bf16/fp16 or 4/8-bit, so AdamW and the fp16 gradient scaler see fp32.

On disk (:func:`save_lora`): ``adapter_config.json`` and ``adapter_model.safetensors`` (the LoRA matrices and the
head: megabytes, not gigabytes), the base's ``config.json`` (three labels, the pad id) and, in ``arena.json``, a
``head`` entry ``{"kind": "lora", "base": ...}``. The base weights are not copied: :func:`load_lora` loads them
from ``base`` (a hub name, or a folder resolved to an absolute path at training time; the environment variable
``ARENA_BASE_MODEL`` overrides it where the base lives elsewhere, e.g. as a Kaggle dataset), applies the adapter
and merges it into the weights (the same function with one matmul fewer per layer), except on a quantised base,
where it stays applied.

An adapter applied to another base than its own still loads in peft whenever the module names agree (a Llama
adapter on a Qwen2 base of the same width), and then scores nonsense without a word. So training records the base's
fingerprint in the ``head`` entry (:func:`base_fingerprint`: model type, width, depth, vocabulary and a sha256
over the backbone's tensor names and shapes, read from the safetensors headers, never the weights' bytes), and
every load compares it with the base it is about to use (:func:`check_base`); a checkpoint written before the
fingerprint existed loads with a warning. ``arena-train --merge`` turns the adapter folder into a plain checkpoint
(:func:`arena.models.modeling.merge_lora_checkpoint`).

This module never imports :mod:`arena.models.modeling` (which dispatches to it by name); the base model is loaded by the
``load_base`` callable the caller passes in.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from arena.errors import ConfigError, ModelError
from arena.models.hub import is_local

log = logging.getLogger(__name__)

KIND = "lora"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_FILES = (ADAPTER_CONFIG, ADAPTER_WEIGHTS)
HEAD_MODULES = ("score", "classifier", "pooler")
"""Classification-head modules trained fully (``modules_to_save``) where the model has them."""
BASE_ENV = "ARENA_BASE_MODEL"
ALL_LINEAR = "all-linear"
FINGERPRINT = "base_fingerprint"
"""The key of the base's fingerprint in the ``head`` entry of ``arena.json``."""
FINGERPRINT_FIELDS = ("model_type", "hidden_size", "num_hidden_layers", "vocab_size", "backbone_tensors",
                      "backbone_sha256")
"""What must agree between the base an adapter was trained on and the one it is applied to."""
OUTPUT_HEADS = ("lm_head", *HEAD_MODULES)
"""Top-level modules outside the fingerprinted backbone: the adapter carries its own trained head, so a causal-LM
copy of a base and a sequence-classification copy of it (``lm_head`` vs ``score``) are the same base."""


@dataclass(frozen=True)
class LoraSettings:
    """LoRA's shape: rank ``r``, scale ``alpha / r``, dropout on the adapter input, and the target modules
    (``all-linear`` or a comma list of module names such as ``q_proj,v_proj``)."""

    r: int
    alpha: float
    dropout: float = 0.05
    targets: str = ALL_LINEAR

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ConfigError(f"--lora-r must be at least 1, got {self.r}")
        if self.alpha <= 0 or not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"--lora-alpha must be positive and --lora-dropout within [0, 1); got {self.alpha}, "
                              f"{self.dropout}")

    def peft_config(self, model: nn.Module) -> Any:
        from peft import LoraConfig, TaskType

        targets: Any = ALL_LINEAR if self.targets == ALL_LINEAR else \
            [t.strip() for t in self.targets.split(",") if t.strip()]
        heads = [name for name in HEAD_MODULES if getattr(model, name, None) is not None]
        return LoraConfig(task_type=TaskType.SEQ_CLS, r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout,
                          target_modules=targets, modules_to_save=heads)


def require_peft() -> None:
    try:
        import peft  # noqa: F401
    except ImportError:
        raise ConfigError("LoRA needs the peft package (an arena-toolkit dependency): pip install peft") \
            from None


def base_reference(name_or_path: str) -> str:
    """How a checkpoint names its base: a local folder as an absolute path, a hub name as it is."""
    return str(Path(name_or_path).resolve()) if is_local(name_or_path) and Path(name_or_path).exists() \
        else str(name_or_path)


def base_folder(base: str) -> Path | None:
    """The local folder holding ``base``: the folder itself, or a hub name's snapshot in the Hugging Face cache;
    None when a hub name is not cached yet."""
    if is_local(base):
        return Path(base) if Path(base).is_dir() else None
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(base, "config.json")
    except Exception:  # a name the hub client refuses: nothing cached under it
        return None
    return Path(found).parent if isinstance(found, str) else None


def base_fingerprint(base: str) -> dict[str, Any] | None:
    """What identifies a base model without reading its weights: model type, architectures, hidden size, layer
    count, vocabulary size (from ``config.json``), and the number and a sha256 of the backbone's tensor names and
    shapes (from the safetensors headers; ``None`` where the weights are not on disk). None when ``base`` is not
    on this machine at all."""
    from arena.models.weights import tensor_layout

    folder = base_folder(base)
    if folder is None or not (folder / "config.json").is_file():
        return None
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"{folder / 'config.json'} is not readable JSON: {exc}") from None
    text = config.get("text_config") or {}  # multimodal configs keep the language model's sizes there
    layout = {name: shape for name, shape in tensor_layout(folder).items()
              if name.split(".", 1)[0] not in OUTPUT_HEADS}
    digest = hashlib.sha256("\n".join(f"{name}:{'x'.join(map(str, shape))}" for name, shape
                                      in sorted(layout.items())).encode()).hexdigest() if layout else None
    return {"model_type": config.get("model_type"), "architectures": config.get("architectures"),
            **{k: config.get(k, text.get(k)) for k in ("hidden_size", "num_hidden_layers", "vocab_size")},
            "backbone_tensors": len(layout) or None, "backbone_sha256": digest}


def fingerprint_differences(recorded: dict[str, Any], found: dict[str, Any]) -> list[str]:
    """``field: recorded vs found`` for every fingerprint field both sides know and that differs."""
    diffs = []
    for key in FINGERPRINT_FIELDS:
        a, b = recorded.get(key), found.get(key)
        if a is not None and b is not None and a != b:
            shown = (a[:12], b[:12]) if key == "backbone_sha256" else (a, b)
            diffs.append(f"{key} {shown[0]} vs {shown[1]}")
    return diffs


def _describe(fingerprint: dict[str, Any]) -> str:
    return (f"{fingerprint.get('model_type')}, hidden {fingerprint.get('hidden_size')}, "
            f"{fingerprint.get('num_hidden_layers')} layers, vocabulary {fingerprint.get('vocab_size')}")


def check_base(folder: str | Path, head: dict[str, Any], base: str, *, where: str) -> bool:
    """Raise :class:`ModelError` unless ``base`` (named by ``where``: ``ARENA_BASE_MODEL`` or the recorded base)
    is the base the adapter in ``folder`` was trained on. Returns False when it could not be checked (a checkpoint
    written before fingerprints, or a hub base not on this machine yet): the caller may check again after loading;
    a checkpoint without a fingerprint is warned about here."""
    recorded = head.get(FINGERPRINT)
    if not recorded:
        log.warning("%s: this LoRA checkpoint was written before arena recorded its base's fingerprint, so nothing "
                    "checks that %s is the base it was trained on; train it again to record one", folder, base)
        return True
    found = base_fingerprint(base)
    if found is None:
        return False
    diffs = fingerprint_differences(recorded, found)
    if diffs:
        trained_on = head.get("base") or "its base"
        raise ModelError(f"{folder}: the LoRA adapter was trained on {trained_on} ({_describe(recorded)}), but "
                         f"{where} ({base}) is another model ({_describe(found)}): {'; '.join(diffs)}. Point "
                         f"{BASE_ENV} at the base the adapter was trained on")
    return True


def apply_lora(model: nn.Module, settings: LoraSettings, *, base: str, quantized: bool = False,
               gradient_checkpointing: bool = False) -> nn.Module:
    """Wrap ``model`` (a sequence classifier) in peft's LoRA model for training; returns the ``PeftModel``."""
    require_peft()
    from peft import get_peft_model, prepare_model_for_kbit_training

    if quantized:  # norms and embeddings to fp32, input gradients on: the QLoRA recipe
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
    try:
        wrapped = get_peft_model(model, settings.peft_config(model))
    except ValueError as exc:  # e.g. a --lora-targets name the model does not have
        raise ConfigError(f"--lora-targets {settings.targets!r} does not fit this {model.config.model_type} model: "
                          f"{exc}") from None
    for p in wrapped.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()
    wrapped.peft_config["default"].base_model_name_or_path = base_reference(base)
    wrapped.arena_base_fingerprint = base_fingerprint(base)  # recorded by spec() in every checkpoint saved
    return wrapped


def unwrap(model: nn.Module) -> nn.Module:
    raw = getattr(model, "module", model)  # DistributedDataParallel
    return getattr(raw, "_orig_mod", raw)  # torch.compile


def is_lora(model: nn.Module) -> bool:
    raw = unwrap(model)
    return hasattr(raw, "get_base_model") and hasattr(raw, "peft_config")


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """What training changes: for a LoRA model only the trainable tensors (adapter and head), for any other model
    its whole state dict. This is what resumable state and weight digests hold (a frozen 9B base is neither saved
    every few hundred steps nor hashed)."""
    raw = unwrap(model)
    if not is_lora(raw):
        return raw.state_dict()
    names = {n for n, p in raw.named_parameters() if p.requires_grad}
    return {k: v for k, v in raw.state_dict().items() if k in names}


def spec(model: nn.Module) -> dict[str, Any]:
    """The ``head`` entry of ``arena.json`` for a LoRA checkpoint, with the base's fingerprint taken when the
    adapter was added (:func:`apply_lora`)."""
    raw = unwrap(model)
    cfg = raw.peft_config["default"]
    targets = cfg.target_modules  # resolved by peft to every matching module: record their kinds
    kinds = sorted({t.rsplit(".", 1)[-1] for t in targets}) if isinstance(targets, set | list | tuple) else targets
    return {"kind": KIND, "base": cfg.base_model_name_or_path, "r": int(cfg.r), "alpha": float(cfg.lora_alpha),
            "dropout": float(cfg.lora_dropout), "targets": kinds,
            "modules_to_save": sorted(set(cfg.modules_to_save or [])), "files": list(ADAPTER_FILES),
            FINGERPRINT: getattr(raw, "arena_base_fingerprint", None)}


def save_lora(model: nn.Module, folder: Path) -> dict[str, Any]:
    """Write the adapter alone and the base's config.json into ``folder``; return the ``head`` spec."""
    raw = unwrap(model)
    raw.save_pretrained(str(folder), safe_serialization=True)
    config = raw.get_base_model().config.to_dict()
    config.pop("quantization_config", None)  # how the base was held in training, not part of the checkpoint
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    return spec(raw)


def adapter_base(folder: Path, head: dict[str, Any]) -> tuple[str, str]:
    """The base the adapter in ``folder`` is to be applied to, and what named it (``ARENA_BASE_MODEL`` or the
    checkpoint's record). Raises :class:`ModelError` when an adapter file is missing, no base is named, or a local
    base is not there."""
    for name in ADAPTER_FILES:
        if not (folder / name).is_file():
            raise ModelError(f"{folder} is a LoRA checkpoint but {name} is missing")
    where = BASE_ENV if os.environ.get(BASE_ENV) else "its recorded base"
    base = os.environ.get(BASE_ENV) or head.get("base") or \
        json.loads((folder / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    if not base:
        raise ModelError(f"{folder}: the LoRA checkpoint does not name its base model; set {BASE_ENV}=NAME_OR_DIR")
    if not Path(base).is_absolute() and (folder / base).is_dir():  # arena-pack: the base packed beside it
        base = str((folder / base).resolve())
    if is_local(base) and not Path(base).is_dir():
        raise ModelError(f"{folder}: its base model {base} is not there. Point {BASE_ENV} at a copy of it (a folder "
                         "or a hub name), or write a merged checkpoint (arena-train --merge)")
    return str(base), where


def check_adapter(folder: str | Path, head: dict[str, Any]) -> None:
    """What a command checks before it loads anything (a blend may load other models for minutes first): the
    adapter's files, its base, and the base's fingerprint where the checkpoint records one (one without it is
    warned about when it loads)."""
    folder = Path(folder)
    base, where = adapter_base(folder, head)
    if head.get(FINGERPRINT):
        check_base(folder, head, base, where=where)


def load_lora(folder: str | Path, head: dict[str, Any], *, load_base: Callable[[str], nn.Module],
              merge: bool | None = None) -> nn.Module:
    """The base model with the adapter in ``folder`` applied; merged into the weights unless the base is quantised
    (``merge`` None) or ``merge`` says otherwise. Raises :class:`ModelError` naming what is missing, or what differs
    when the base is not the one the adapter was trained on (:func:`check_base`, before the base is loaded, or
    after a hub base is downloaded)."""
    require_peft()
    from peft import PeftModel

    folder = Path(folder)
    base, where = adapter_base(folder, head)
    checked = check_base(folder, head, base, where=where)
    model = load_base(base)
    if not checked and not check_base(folder, head, base, where=where):
        log.warning("%s: the base %s is not on disk where its fingerprint can be read; it was not checked against "
                    "the one the adapter was trained on", folder, base)
    try:
        model = PeftModel.from_pretrained(model, str(folder), is_trainable=False)
    except Exception as exc:
        raise ModelError(f"cannot apply the LoRA adapter in {folder} to {base} ({type(exc).__name__}: {exc})") \
            from None
    if merge is None:
        merge = not getattr(model.get_base_model(), "is_quantized", False)
    return model.merge_and_unload() if merge else model
