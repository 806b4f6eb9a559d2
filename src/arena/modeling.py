"""Loading tokenizers and 3-way classifiers safely, and the checkpoint folder every command accepts.

A checkpoint folder is a Hugging Face sequence-classification folder (``config.json``, ``model.safetensors``,
tokenizer files) plus ``arena.json``: the encoder settings, the temperature and how the model was made. A plain
Hugging Face folder without ``arena.json`` is accepted too, with the default encoder settings.

Safety: weights load from safetensors only (a pickle-only folder is refused, since unpickling runs code), and
``trust_remote_code`` is never set.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from arena import LABELS
from arena.encode import EncoderConfig
from arena.errors import ConfigError, ModelError

log = logging.getLogger(__name__)

ARENA_META = "arena.json"
FORMAT_VERSION = 1
PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.ckpt", "tf_model.h5")
SAFE_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")


@dataclass
class CheckpointMeta:
    """What ``arena.json`` records beside the Hugging Face files."""

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    temperature: float = 1.0
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    head: dict[str, Any] | None = None
    """None: the Hugging Face sequence-classification head. Else how the head is built (:mod:`arena.hybrid`)."""

    def to_dict(self) -> dict[str, Any]:
        out = {"format_version": FORMAT_VERSION, "encoder": self.encoder.to_dict(),
               "temperature": self.temperature, "source": self.source, **self.extra}
        if self.head is not None:
            out["head"] = self.head
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CheckpointMeta:
        extra = {k: v for k, v in data.items()
                 if k not in ("format_version", "encoder", "temperature", "source", "head")}
        return cls(EncoderConfig.from_dict(data.get("encoder", {})), float(data.get("temperature", 1.0)),
                   str(data.get("source", "")), extra, data.get("head"))


def read_meta(folder: str | Path) -> CheckpointMeta:
    path = Path(folder) / ARENA_META
    if not path.is_file():
        return CheckpointMeta()
    try:
        return CheckpointMeta.from_dict(json.loads(path.read_text()))
    except (ValueError, TypeError) as exc:
        raise ModelError(f"{path} is not valid arena metadata: {exc}") from None


def write_meta(folder: str | Path, meta: CheckpointMeta) -> None:
    from arena.io import atomic_write_text

    atomic_write_text(Path(folder) / ARENA_META, json.dumps(meta.to_dict(), indent=2))


def is_local(name_or_path: str | Path) -> bool:
    text = str(name_or_path)
    return Path(text).exists() or text.startswith((".", "/", "~")) or os.sep in text and text.count("/") > 1


def check_model_folder(folder: str | Path, *, need_weights: bool = True) -> Path:
    """Raise :class:`ModelError` unless ``folder`` is a loadable, safe Hugging Face model folder."""
    folder = Path(folder)
    if not folder.exists():
        raise ModelError(f"model folder {folder} does not exist")
    if not folder.is_dir():
        raise ModelError(f"{folder} is a file; pass the checkpoint folder that holds config.json")
    if not (folder / "config.json").is_file():
        folds = sorted(p.name for p in folder.glob("fold_*") if (p / "config.json").is_file())
        if folds:
            raise ModelError(f"{folder} is a k-fold training output; pass one fold's checkpoint, e.g. "
                             f"{folder / folds[0]} (fold ensembles are not built in yet)")
        raise ModelError(f"{folder} has no config.json: not a Hugging Face / arena checkpoint folder")
    if need_weights and not any((folder / w).is_file() for w in SAFE_WEIGHTS):
        pickled = [w for w in PICKLE_WEIGHTS if (folder / w).is_file()]
        if pickled:
            raise ModelError(
                f"{folder} holds only pickle weights ({', '.join(pickled)}). arena loads safetensors only, because "
                "unpickling an untrusted file can run arbitrary code. Convert it where you trust it: "
                "AutoModelForSequenceClassification.from_pretrained(folder).save_pretrained(folder, "
                "safe_serialization=True)"
            )
        raise ModelError(f"{folder} has no model.safetensors: the checkpoint is incomplete")
    return folder


def _offline_hint(name: str, exc: Exception) -> ModelError:
    return ModelError(
        f"could not load {name!r}: it is not a local folder and it could not be fetched from the Hugging Face hub "
        f"({type(exc).__name__}). Loading by name needs the hub; without network, download it elsewhere "
        f"(e.g. `hf download {name} --local-dir DIR`) and pass --model DIR."
    )


def load_model_config(name_or_path: str | Path) -> Any:
    """The model's ``AutoConfig`` (a checked local folder or a hub name), without loading weights."""
    from transformers import AutoConfig

    name = str(name_or_path)
    if is_local(name):
        check_model_folder(name)
    try:
        return AutoConfig.from_pretrained(name, trust_remote_code=False)
    except OSError as exc:
        raise _offline_hint(name, exc) from None


def load_tokenizer(name_or_path: str | Path) -> Any:
    """The tokenizer of a local folder or hub name, checked (:func:`check_tokenizer`): a folder without its
    tokenizer files must not turn every word into ``[UNK]`` (transformers builds an empty vocabulary from
    ``config.json`` alone), and an export's tokenizer files must match its manifest."""
    from transformers import AutoTokenizer

    name = str(name_or_path)
    if is_local(name) and not Path(name).exists():
        raise ModelError(f"tokenizer folder {name} does not exist")
    if is_local(name) and not Path(name).is_dir():
        raise ModelError(f"{name} is a file; pass the folder that holds the tokenizer files")
    if is_local(name):
        verify_tokenizer_files(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=False)
    except (OSError, ValueError, TypeError) as exc:
        if is_local(name):
            detail = " ".join(str(exc).split())[:300]
            raise ModelError(f"{name} does not hold a tokenizer that transformers can load ({detail}); pass the "
                             "folder with the tokenizer files") from None
        raise _offline_hint(name, exc) from None
    vocab_size = None
    if is_local(name) and (Path(name) / "config.json").is_file():
        try:
            vocab_size = json.loads((Path(name) / "config.json").read_text()).get("vocab_size")
        except ValueError:
            vocab_size = None
    check_tokenizer(tokenizer, name, vocab_size)
    return tokenizer


MIN_VOCABULARY = 100
"""Fewer tokens than this is no real vocabulary: what transformers builds when the tokenizer files are missing."""
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "spm.model", "vocab.txt", "vocab.json", "merges.txt", "tokenizer.model", "spiece.model",
                   "sentencepiece.bpe.model")


def check_tokenizer(tokenizer: Any, source: str | Path, vocab_size: int | None) -> None:
    """Raise :class:`ModelError` unless ``tokenizer`` has a real vocabulary that fits the model's embedding
    (``vocab_size`` rows; None when unknown): ids beyond it would index past the embedding, and a near-empty
    vocabulary maps every word to ``[UNK]`` while still giving plausible-looking probabilities."""
    size = len(tokenizer)
    if size < MIN_VOCABULARY:
        raise ModelError(f"{source} has no usable tokenizer (a vocabulary of {size} tokens): its tokenizer files "
                         f"({', '.join(TOKENIZER_FILES[:5])}, ...) are missing. Copy them from the tokenizer the "
                         "model was trained with (or pass --tokenizer), or train/export again")
    if vocab_size is not None and size > int(vocab_size):
        raise ModelError(f"{source}: the tokenizer has {size} tokens but the model's embedding has {vocab_size} "
                         "rows (config.json vocab_size); the tokenizer belongs to another model. Pass the tokenizer "
                         "the model was trained with")


def verify_tokenizer_files(folder: str | Path) -> None:
    """In an export folder (one with ``manifest.json``), the tokenizer files and ``config.json`` must be those
    the manifest recorded: present, unchanged, and at least one tokenizer file among them."""
    from arena.io import sha256_file

    folder = Path(folder)
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except OSError:
        return
    except ValueError as exc:
        raise ModelError(f"{folder / 'manifest.json'} is not valid JSON ({exc}); export again") from None
    recorded = manifest.get("files", {}) if isinstance(manifest, dict) else {}
    names = [n for n in (*TOKENIZER_FILES, "config.json") if n in recorded or (folder / n).is_file()]
    if not any(n in recorded for n in TOKENIZER_FILES):
        raise ModelError(f"{folder} is an export without tokenizer files in its manifest; export again with "
                         "this version of arena-export")
    for name in names:
        if name not in recorded:
            raise ModelError(f"{folder / name} is not in {folder / 'manifest.json'}: it was added after the "
                             "export; remove it or export again")
        if not (folder / name).is_file():
            raise ModelError(f"{folder / name} is missing (the manifest lists it); export again")
        if sha256_file(folder / name) != recorded[name]:
            raise ModelError(f"{folder / name} does not match the sha256 in {folder / 'manifest.json'}: the file "
                             "changed or is corrupt; export again")


def label_maps() -> tuple[dict[int, str], dict[str, int]]:
    id2label = dict(enumerate(LABELS))
    return id2label, {v: k for k, v in id2label.items()}


def load_classifier(name_or_path: str | Path, *, random_init_from: str | Path | None = None,
                    require_three_labels: bool = False) -> Any:
    """A ``AutoModelForSequenceClassification`` with a 3-way head.

    ``name_or_path`` is a local folder (checked by :func:`check_model_folder`) or a hub name; ``random_init_from``
    builds randomly initialised weights from a ``config.json`` instead (for speed and export work).
    ``require_three_labels`` rejects a model whose head is not already 3-way (export, inference).
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification

    id2label, label2id = label_maps()
    if random_init_from is not None:
        config = AutoConfig.from_pretrained(str(random_init_from), num_labels=3, id2label=id2label,
                                            label2id=label2id)
        log.warning("building %s with RANDOM weights from %s", config.model_type, random_init_from)
        return AutoModelForSequenceClassification.from_config(config)
    name = str(name_or_path)
    if is_local(name):
        config = load_model_config(name)
        head = read_meta(name).head
        if head is not None:
            from arena.hybrid import KIND, load_hybrid

            if head.get("kind") != KIND:
                raise ModelError(f"{name}: unknown head kind {head.get('kind')!r} in {ARENA_META}")
            return load_hybrid(name, head)
        if require_three_labels and config.num_labels != 3:
            raise ModelError(f"{name} has a {config.num_labels}-label head; arena needs 3 labels (a, b, tie)")
    kwargs: dict[str, Any] = dict(use_safetensors=True, trust_remote_code=False)
    if not require_three_labels:
        kwargs.update(num_labels=3, id2label=id2label, label2id=label2id, ignore_mismatched_sizes=True)
    try:
        return AutoModelForSequenceClassification.from_pretrained(name, **kwargs)
    except OSError as exc:
        if is_local(name):
            raise ModelError(f"cannot load the model in {name}: {exc}") from None
        raise _offline_hint(name, exc) from None
    except Exception as exc:  # a truncated or corrupt safetensors file raises the library's own error types
        if is_local(name):
            raise ModelError(f"cannot load the weights in {name} ({type(exc).__name__}: {exc}); the checkpoint "
                             "may be truncated or corrupt") from None
        raise


def max_supported_length(config: Any) -> int | None:
    """The longest sequence the architecture accepts, or None when relative positions allow any length."""
    absolute = getattr(config, "position_biased_input", True) or not getattr(config, "relative_attention", False)
    limit = getattr(config, "max_position_embeddings", None)
    return int(limit) if absolute and limit else None


def check_max_length(config: Any, max_length: int) -> None:
    limit = max_supported_length(config)
    if limit is not None and max_length > limit:
        raise ConfigError(
            f"--max-length {max_length} is beyond what this {config.model_type} model supports ({limit} positions)"
        )


def save_checkpoint(model: Any, tokenizer: Any, folder: str | Path, meta: CheckpointMeta) -> None:
    """Write a checkpoint folder: safetensors weights, tokenizer, ``arena.json`` (with the head's spec)."""
    from dataclasses import replace

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    spec = getattr(model, "spec", None)
    meta = replace(meta, head=spec() if callable(spec) else None)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    write_meta(folder, meta)
