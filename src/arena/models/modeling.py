"""Loading tokenizers and 3-way classifiers safely, and the checkpoint folder every command accepts.

A checkpoint folder is a Hugging Face sequence-classification folder (``config.json``, ``model.safetensors``,
tokenizer files) plus ``arena.json``: the encoder settings, the temperature and how the model was made. A plain
Hugging Face folder without ``arena.json`` is accepted too, with the default encoder settings.

A LoRA checkpoint (:mod:`arena.models.lora`) holds the adapter alone (``adapter_config.json``,
``adapter_model.safetensors``) beside the base's ``config.json``, and names its base model in ``arena.json``;
:func:`load_classifier` loads the base and applies the adapter (merged into the weights unless the base is
quantised).

Decoders (Gemma-2, Llama, Mistral, Qwen-2) load through the same ``AutoModelForSequenceClassification``: their
head reads the last real token, found by the pad id, so the config's ``pad_token_id`` must be the tokenizer's
(:func:`check_pad_token`).

Safety: weights load from safetensors only (a pickle-only folder is refused, since unpickling runs code), and
``trust_remote_code`` is never set.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from arena.artifacts import (
    ARENA_META,
    CONFIG,
    FORMAT_VERSION,
    MANIFEST,
    SPECIAL_TOKENS_MAP,
    TOKENIZER_FILES,
    TOKENIZER_JSON,
    read_manifest,
)
from arena.encode import EncoderConfig
from arena.errors import ConfigError, ModelError
from arena.models.hub import is_local, label_maps, offline_hint

log = logging.getLogger(__name__)

PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.ckpt", "tf_model.h5",
                  "adapter_model.bin")
SAFE_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors")
DECODER_MAX_LENGTH = 1024
"""Default tokens per row for decoders (the top LMSYS solutions trained at 1,024-1,800); encoders keep 512."""


@dataclass
class CheckpointMeta:
    """What ``arena.json`` records beside the Hugging Face files."""

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    temperature: float = 1.0
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    head: dict[str, Any] | None = None
    """None: the Hugging Face sequence-classification head. Else how the head is built (:mod:`arena.models.hybrid`)."""

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
            raise ModelError(f"{folder} is a k-fold training output: arena-export and arena-infer take it as a "
                             f"fold ensemble; here pass one fold's checkpoint, e.g. {folder / folds[0]}")
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


def load_model_config(name_or_path: str | Path) -> Any:
    """The model's ``AutoConfig`` (a checked local folder or a hub name), without loading weights."""
    from transformers import AutoConfig

    name = str(name_or_path)
    if is_local(name):
        check_model_folder(name)
    try:
        return AutoConfig.from_pretrained(name, trust_remote_code=False)
    except OSError as exc:
        raise offline_hint(name, exc) from None


def load_tokenizer(name_or_path: str | Path, *, manifest: dict[str, Any] | None | str = "read",
                   tokenizer_option: str | None = None) -> Any:
    """The tokenizer of a local folder or hub name, checked (:func:`check_tokenizer`): a folder without its
    tokenizer files must not turn every word into ``[UNK]`` (transformers builds an empty vocabulary from
    ``config.json`` alone), and an export's tokenizer files must match its manifest.
    An export folder with a ``tokenizer.json`` gets a :class:`arena.encode.JsonTokenizer` (the ``tokenizers``
    library alone: serving an export imports neither transformers nor torch); anything else, transformers'
    ``AutoTokenizer`` (checkpoints, foreign folders, hub names, exports written before exports carried one).
    A tokenizer without a pad token (decoders) gets one (:func:`arena.encode.ensure_pad_token`), padding right.
    Every call returns a tokenizer of its own, which the caller may change; the checks run on every call, but a
    local folder's tokenizer is built once per process while its files stay the same (:func:`_cached_tokenizer`).
    ``manifest``: the folder's manifest when the caller has read it (None: it has none), so it is read once.
    ``tokenizer_option``: the command's option that names another tokenizer (``--tokenizer``), offered in the error
    only where the command has one."""
    from arena.encode import ensure_pad_token

    name = str(name_or_path)
    local = is_local(name)
    if local and not Path(name).exists():
        raise ModelError(f"tokenizer folder {name} does not exist")
    if local and not Path(name).is_dir():
        raise ModelError(f"{name} is a file; pass the folder that holds the tokenizer files")
    recorded = (read_manifest(Path(name)) if manifest == "read" else manifest) if local else None
    if local:
        verify_tokenizer_files(name, recorded)
    tokenizer = _cached_tokenizer(name, local, recorded is not None and (Path(name) / TOKENIZER_JSON).is_file())
    vocab_size = None
    if local and (Path(name) / CONFIG).is_file():
        try:
            vocab_size = json.loads((Path(name) / CONFIG).read_text()).get("vocab_size")
        except ValueError:
            vocab_size = None
    check_tokenizer(tokenizer, name, vocab_size, tokenizer_option=tokenizer_option)
    ensure_pad_token(tokenizer)
    return tokenizer


TOKENIZER_CACHE_SIZE = 8
"""How many built tokenizers :func:`_cached_tokenizer` keeps per process (the least recently used goes first)."""
_TOKENIZERS: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
_TOKENIZERS_LOCK = threading.Lock()
_SHARED_ATTRIBUTES = ("_vocab", "_merges")
"""What a transformers tokenizer keeps of the vocabulary it was built from, which nothing reads or changes after
``__init__``: its copies share it instead of copying 128,000 pieces (0.4 s for DeBERTa-v3)."""


def _cached_tokenizer(name: str, local: bool, json_form: bool) -> Any:
    """A tokenizer of its own for ``name``: a :class:`arena.encode.JsonTokenizer` of its ``tokenizer.json``
    (``json_form``: an export folder) or transformers' (:func:`_auto_tokenizer`).

    Building a transformers tokenizer from SentencePiece files converts them to a Rust tokenizer each time (0.7 s
    for DeBERTa-v3 on an idle core, over 2 s on a loaded one), so a local folder's tokenizer is built once per
    process and each call gets a copy (:func:`_copy_tokenizer`, about a millisecond): an ensemble of folds sharing a
    tokenizer, or arena-train then arena-export in one process, loads it once. The cache is keyed by the folder's
    resolved path, the form and the sha256 of every tokenizer file and ``config.json`` in it, so a changed file is
    read again. Hub names, and tokenizers without a Rust backend (they cannot be copied cheaply), are built on
    every call."""
    from arena.encode import JsonTokenizer
    from arena.io import sha256_file

    def build() -> Any:
        return JsonTokenizer.from_folder(name) if json_form else _auto_tokenizer(name, local)

    if not local:
        return build()
    folder = Path(name).resolve()
    key = (json_form, str(folder),
           tuple((n, sha256_file(folder / n)) for n in (*TOKENIZER_FILES, CONFIG) if (folder / n).is_file()))
    with _TOKENIZERS_LOCK:
        built = _TOKENIZERS.get(key)
        if built is not None:
            _TOKENIZERS.move_to_end(key)
    if built is None:
        built = build()
        if not isinstance(built, JsonTokenizer) and not hasattr(getattr(built, "_tokenizer", None), "to_str"):
            return built
        with _TOKENIZERS_LOCK:
            _TOKENIZERS[key] = built
            while len(_TOKENIZERS) > TOKENIZER_CACHE_SIZE:
                _TOKENIZERS.popitem(last=False)
    return _copy_tokenizer(built)


def _copy_tokenizer(tokenizer: Any) -> Any:
    """A copy of ``tokenizer`` (a :class:`arena.encode.JsonTokenizer` or a transformers tokenizer with a Rust
    backend) that changes nothing in the original when it is changed: special tokens, padding side, the backend's
    padding, truncation and added tokens (:func:`arena.encode.copy_backend`). Only what nothing changes after
    loading is shared: the backend's vocabulary model and :data:`_SHARED_ATTRIBUTES`."""
    from arena.encode import JsonTokenizer, copy_backend

    if isinstance(tokenizer, JsonTokenizer):
        twin = copy.copy(tokenizer)
        twin.backend = copy_backend(tokenizer.backend)
        return twin
    backend = tokenizer._tokenizer
    memo: dict[int, Any] = {id(backend): copy_backend(backend)}
    for attribute in _SHARED_ATTRIBUTES:
        if hasattr(tokenizer, attribute):
            memo[id(getattr(tokenizer, attribute))] = getattr(tokenizer, attribute)
    return copy.deepcopy(tokenizer, memo)


def _auto_tokenizer(name: str, local: bool) -> Any:
    """transformers' tokenizer for ``name``; :class:`ModelError` saying what is wrong when it cannot load."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name, trust_remote_code=False)
    except (OSError, ValueError, TypeError) as exc:
        if local:
            detail = " ".join(str(exc).split())[:300]
            raise ModelError(f"{name} does not hold a tokenizer that transformers can load ({detail}); pass the "
                             "folder with the tokenizer files") from None
        raise offline_hint(name, exc) from None


def write_serving_tokenizer(tokenizer: Any, folder: Path) -> None:
    """Make an export folder's tokenizer files serve without transformers, as ``tokenizer`` (transformers', the one
    the export was checked with) encodes. ``tokenizer.json`` is written from ``tokenizer``'s own Rust backend where
    the folder lacks one (a source with only ``spm.model`` or ``tokenizer.model``) or holds another (a file
    transformers changes as it loads it); padding and truncation settings do not count, the encoder turns them off.
    Where the special tokens read from the files (:func:`arena.encode.json_special_tokens`) are not transformers'
    (a folder that leaves them to the tokenizer class's defaults), ``special_tokens_map.json`` is written with
    transformers' ones. Raises :class:`ModelError` when they still differ. A tokenizer without a Rust backend
    (Python only) leaves the folder as it is: the export is then served with transformers."""
    from tokenizers import Tokenizer

    from arena.encode import SPECIAL_TOKENS, JsonTokenizer, ensure_pad_token, without_padding
    from arena.io import atomic_write_text

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not hasattr(backend, "to_str"):
        log.warning("%s: the tokenizer has no tokenizer.json form; arena-infer will load it with transformers",
                    folder)
        return
    runtime = without_padding(Tokenizer.from_str(backend.to_str()))
    path = folder / TOKENIZER_JSON
    if not path.is_file() or without_padding(Tokenizer.from_file(str(path))).to_str() != runtime.to_str():
        runtime.save(str(path))
    wanted = {name: getattr(tokenizer, f"{name}_token_id") for name in SPECIAL_TOKENS}

    def served() -> dict[str, int | None]:
        adapter = JsonTokenizer.from_folder(folder)
        with contextlib.suppress(ConfigError):  # no pad candidate in the files: its pad id stays None, not wanted
            ensure_pad_token(adapter)
        return {name: getattr(adapter, f"{name}_token_id") for name in SPECIAL_TOKENS}

    if served() == wanted:
        return
    map_path = folder / SPECIAL_TOKENS_MAP
    tokens = json.loads(map_path.read_text(encoding="utf-8")) if map_path.is_file() else {}
    tokens.update({f"{name}_token": str(getattr(tokenizer, f"{name}_token")) for name in SPECIAL_TOKENS
                   if getattr(tokenizer, f"{name}_token") is not None})
    atomic_write_text(map_path, json.dumps(tokens, indent=2, ensure_ascii=False) + "\n")
    got = served()
    if got != wanted:
        raise ModelError(f"{folder}: the special token ids read without transformers ({got}) are not "
                         f"transformers' ({wanted}); this tokenizer cannot be exported for serving")


MIN_VOCABULARY = 100
"""Fewer tokens than this is no real vocabulary: what transformers builds when the tokenizer files are missing."""


def check_tokenizer(tokenizer: Any, source: str | Path, vocab_size: int | None, *,
                    tokenizer_option: str | None = None) -> None:
    """Raise :class:`ModelError` unless ``tokenizer`` has a real vocabulary that fits the model's embedding
    (``vocab_size`` rows; None when unknown): ids beyond it would index past the embedding, and a near-empty
    vocabulary maps every word to ``[UNK]`` while still giving plausible-looking probabilities. The error offers
    ``tokenizer_option`` (e.g. ``--tokenizer``) only when the command has it; else it says what to copy where."""
    size = len(tokenizer)
    if size < MIN_VOCABULARY:
        fix = (f"pass {tokenizer_option} with the tokenizer the model was trained with, or copy its files into "
               f"{source}" if tokenizer_option else
               f"copy them into {source} from the tokenizer the model was trained with (the base model's folder, "
               "or the checkpoint arena-train wrote)")
        raise ModelError(f"{source} has no usable tokenizer (a vocabulary of {size} tokens): its tokenizer files "
                         f"({', '.join(TOKENIZER_FILES[:5])}, ...) are missing. To fix it, {fix}")
    if vocab_size is not None and size > int(vocab_size):
        raise ModelError(f"{source}: the tokenizer has {size} tokens but the model's embedding has {vocab_size} "
                         "rows (config.json vocab_size); the tokenizer belongs to another model. Pass the tokenizer "
                         "the model was trained with")


def verify_tokenizer_files(folder: str | Path, manifest: dict[str, Any] | None) -> None:
    """In an export folder (one with a manifest), the tokenizer files and ``config.json`` must be those
    the manifest recorded: present, unchanged, and at least one tokenizer file among them."""
    from arena.io import sha256_file

    folder = Path(folder)
    if manifest is None:
        return
    recorded = manifest.get("files", {}) if isinstance(manifest, dict) else {}
    names = [n for n in (*TOKENIZER_FILES, CONFIG) if n in recorded or (folder / n).is_file()]
    if not any(n in recorded for n in TOKENIZER_FILES):
        raise ModelError(f"{folder} is an export without tokenizer files in its manifest; export again with "
                         "this version of arena-export")
    for name in names:
        if name not in recorded:
            raise ModelError(f"{folder / name} is not in {folder / MANIFEST}: it was added after the "
                             "export; remove it or export again")
        if not (folder / name).is_file():
            raise ModelError(f"{folder / name} is missing (the manifest lists it); export again")
        if sha256_file(folder / name) != recorded[name]:
            raise ModelError(f"{folder / name} does not match the sha256 in {folder / MANIFEST}: the file "
                             "changed or is corrupt; export again")


def is_decoder(config: Any) -> bool:
    """A causal language model family (Gemma, Llama, Mistral, Qwen, ...) rather than a bidirectional encoder: its
    classifier pools the last real token instead of [CLS]."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    kind = getattr(config, "model_type", None)
    return kind in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and kind not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def default_max_length(config: Any) -> int:
    """Tokens per row when none is asked for: 1,024 for decoders, 512 for encoders, within the model's limit."""
    wanted = DECODER_MAX_LENGTH if is_decoder(config) else 512
    limit = max_supported_length(config)
    return min(wanted, limit) if limit else wanted


def check_pad_token(config: Any, pad_id: int, where: str | Path) -> None:
    """A decoder classifier pools the rightmost token that is not ``config.pad_token_id``; rows are padded with the
    tokenizer's pad id. If the two differ, every padded row is read at a padding position: refuse that."""
    if is_decoder(config) and config.pad_token_id != pad_id:
        raise ModelError(
            f"{where}: the model's pad_token_id ({config.pad_token_id}) is not the tokenizer's pad id ({pad_id}); "
            "a decoder classifier finds the last real token by the pad id, so they must agree. Set "
            f'"pad_token_id": {pad_id} in its config.json (arena-train does this)')


HEAD_KINDS: dict[str, str] = {"hybrid": "arena.models.hybrid:load_hybrid", "lora": "arena.models.lora:load_lora"}
"""Head kinds a checkpoint's ``arena.json`` may name, each with its loader ``(folder, spec) -> nn.Module``.
A head module registers here by name (imported lazily), so it never needs to import this module."""


def head_loader(folder: str | Path, kind: Any) -> Any:
    import importlib

    if kind not in HEAD_KINDS:
        raise ModelError(f"{folder}: unknown head kind {kind!r} in {ARENA_META} (known: {', '.join(HEAD_KINDS)})")
    module, _, func = HEAD_KINDS[kind].partition(":")
    return getattr(importlib.import_module(module), func)


def load_classifier(name_or_path: str | Path, *, random_init_from: str | Path | None = None,
                    require_three_labels: bool = False, pad_token_id: int | None = None, dtype: Any = None,
                    quantization: Any = None, device_map: Any = None) -> Any:
    """A ``AutoModelForSequenceClassification`` with a 3-way head (or a registered head kind: hybrid, LoRA).

    ``name_or_path`` is a local folder (checked by :func:`check_model_folder`) or a hub name; ``random_init_from``
    builds randomly initialised weights from a ``config.json`` instead (for speed and export work).
    ``require_three_labels`` rejects a model whose head is not already 3-way (export, inference).
    ``pad_token_id`` sets the config's pad id (a decoder's head finds the last real token by it); ``dtype`` the
    weights' dtype (default: as saved); ``quantization`` a transformers quantisation config (bitsandbytes 4/8-bit,
    GPU only) placed by ``device_map``. A LoRA checkpoint loads its base with these and applies the adapter.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification

    id2label, label2id = label_maps()
    if random_init_from is not None:
        extra = {} if pad_token_id is None else {"pad_token_id": pad_token_id}
        config = AutoConfig.from_pretrained(str(random_init_from), num_labels=3, id2label=id2label,
                                            label2id=label2id, **extra)
        log.warning("building %s with RANDOM weights from %s", config.model_type, random_init_from)
        return _ready(AutoModelForSequenceClassification.from_config(config, dtype=dtype))
    name = str(name_or_path)
    options = dict(pad_token_id=pad_token_id, dtype=dtype, quantization=quantization, device_map=device_map)
    if is_local(name):
        config = load_model_config(name)
        head = read_meta(name).head
        if head is None and (Path(name) / "adapter_config.json").is_file():
            head = {"kind": "lora"}  # a peft adapter folder without arena.json: its adapter_config names the base
        if head is not None and head.get("kind") == "lora":
            from functools import partial

            options["pad_token_id"] = pad_token_id if pad_token_id is not None else config.pad_token_id
            return head_loader(name, "lora")(name, head, load_base=partial(_from_pretrained, **options))
        if head is not None:
            return head_loader(name, head.get("kind"))(name, head)
        if require_three_labels and config.num_labels != 3:
            raise ModelError(f"{name} has a {config.num_labels}-label head; arena needs 3 labels (a, b, tie)")
    return _from_pretrained(name, require_three_labels=require_three_labels, **options)


def _from_pretrained(name: str, *, require_three_labels: bool = False, pad_token_id: int | None = None,
                     dtype: Any = None, quantization: Any = None, device_map: Any = None) -> Any:
    from transformers import AutoModelForSequenceClassification

    kwargs: dict[str, Any] = dict(use_safetensors=True, trust_remote_code=False)
    if not require_three_labels:
        id2label, label2id = label_maps()
        kwargs.update(num_labels=3, id2label=id2label, label2id=label2id, ignore_mismatched_sizes=True)
    if pad_token_id is not None:
        kwargs["pad_token_id"] = pad_token_id
    if dtype is not None:
        kwargs["dtype"] = dtype
    if quantization is not None:
        kwargs["quantization_config"] = quantization
    if device_map is not None:  # bitsandbytes placement, or a layer split across GPUs
        kwargs["device_map"] = device_map
    try:
        return _ready(AutoModelForSequenceClassification.from_pretrained(name, **kwargs))
    except OSError as exc:
        if is_local(name):
            raise ModelError(f"cannot load the model in {name}: {exc}") from None
        raise offline_hint(name, exc) from None
    except Exception as exc:  # a truncated or corrupt safetensors file raises the library's own error types
        if is_local(name):
            raise ModelError(f"cannot load the weights in {name} ({type(exc).__name__}: {exc}); the checkpoint "
                             "may be truncated or corrupt") from None
        raise


def layer_classes(model: Any) -> set[str]:
    """Class names of a model's transformer layers: the units a layer split keeps whole on one GPU and FSDP shards
    one by one. The model's own ``_no_split_modules`` (of any Hugging Face model inside it: a hybrid head's
    encoder), else every ``GradientCheckpointingLayer`` subclass it holds (DeBERTa-v2 declares none)."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    named = {name for m in model.modules() for name in (getattr(m, "_no_split_modules", None) or ())}
    return named or {type(m).__name__ for m in model.modules() if isinstance(m, GradientCheckpointingLayer)}


def transformer_layers(model: Any) -> list[tuple[str, Any]]:
    """(name, module) of every transformer layer (:func:`layer_classes`) in ``model``, outermost first."""
    classes = layer_classes(model)
    return [(name, m) for name, m in model.named_modules() if name and type(m).__name__ in classes]


def _ready(model: Any) -> Any:
    """A classifier scores whole rows once: no key/value cache (it would also be traced into an ONNX graph)."""
    if is_decoder(model.config):
        model.config.use_cache = False
    return model


def require_bitsandbytes(flag: str) -> None:
    """bitsandbytes' 4-bit and 8-bit kernels run on CUDA: say so, in one line, where there is none."""
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(f"{flag} needs an NVIDIA GPU (bitsandbytes' 4-bit and 8-bit kernels run on CUDA) and none "
                          "is present; use bf16 or fp32 weights here")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ConfigError(f"{flag} needs bitsandbytes: pip install 'arena-toolkit[gpu]' (or pip install "
                          "bitsandbytes)") from None


def quantization_config(bits: int, compute_dtype: Any) -> Any:
    """bitsandbytes settings for frozen weights: 4-bit NF4 with double quantisation (QLoRA), or 8-bit LLM.int8()."""
    from transformers import BitsAndBytesConfig

    if bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    if bits != 4:
        raise ConfigError(f"bitsandbytes quantises to 4 or 8 bits, not {bits}")
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype)


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


def save_checkpoint(model: Any, tokenizer: Any, folder: str | Path, meta: CheckpointMeta,
                    state_dict: dict[str, Any] | None = None) -> None:
    """Write a checkpoint folder: safetensors weights (a LoRA model: the adapter alone), tokenizer, ``arena.json``
    (with the head's spec). ``state_dict``: the whole weights to write instead of the model's own (a sharded model
    holds only its part: :mod:`arena.train.fsdp` gathers them)."""
    from dataclasses import replace

    from arena.models.lora import is_lora, save_lora

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if is_lora(model):
        meta = replace(meta, head=save_lora(model, folder))
    else:
        spec = getattr(model, "spec", None)
        meta = replace(meta, head=spec() if callable(spec) else None)
        model.save_pretrained(folder, safe_serialization=True, **({} if state_dict is None else
                                                                  {"state_dict": state_dict}))
    tokenizer.save_pretrained(folder)
    write_meta(folder, meta)


def merge_lora_checkpoint(folder: str | Path) -> None:
    """Turn a LoRA checkpoint into a plain one in place: base + adapter merged, saved as ``model.safetensors``;
    ``arena.json`` keeps the adapter's spec under ``merged_from``. The adapter files are removed last, so a crash
    leaves a folder that still loads."""
    from dataclasses import replace

    from arena.models.lora import ADAPTER_FILES

    folder = Path(folder)
    meta = read_meta(folder)
    if (meta.head or {}).get("kind") != "lora":
        raise ModelError(f"{folder} is not a LoRA checkpoint; nothing to merge")
    model = load_classifier(folder)
    save_checkpoint(model, load_tokenizer(folder), folder, replace(meta, extra={**meta.extra, "merged_from":
                                                                                 meta.head}))
    for name in ADAPTER_FILES:
        (folder / name).unlink(missing_ok=True)
