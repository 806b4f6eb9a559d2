"""The export folder format, in one place: what ``arena-export`` writes and every reader checks.

* the graph's tensors: one description of every input and output (:data:`INPUT_SPECS`, :data:`OUTPUT_SPECS`: names,
  dtypes, dynamic axes) that the exporter traces with, the manifest records, the foreign-folder and pre-parity
  checks compare a graph with (:func:`check_graph_io`) and the ONNX Runtime / OpenVINO backends feed
  (:func:`feed_arrays`);
* ``manifest.json``: what was built, from what, with which versions, how it was checked, and the sha256 of every
  file (:func:`write_manifest`, :func:`read_manifest`, :func:`verify_files`);
* ONNX files that are safe to open (:func:`check_onnx_file`);
* the model files beside them (``config.json``, tokenizer, ``arena.json``), written so that transformers 4 reads
  them too (:func:`copy_model_files`): optimum's ``ORTModelForSequenceClassification`` loads the folder as it is;
* TensorRT engine identity: optimisation profiles (:class:`Profile`), the key and file name of an engine, the
  choice of an engine built for this GPU / TensorRT / ONNX file (:func:`select_engine`, naming the rebuild command
  when there is none) and its bytes checked against the manifest before they are deserialised (:func:`read_engine`).

The exporter writes this format and the backends read it; neither imports the other.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib.metadata as md
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from arena import LABELS
from arena.errors import BackendUnavailable, ConfigError, ModelError, TensorSpecError
from arena.io import atomic_write_text, sha256_file

MANIFEST = "manifest.json"
INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"
TOKEN_INPUTS = (INPUT_IDS, ATTENTION_MASK)
FEATURES = "features"
"""A hybrid model's third input: float32 (batch, n_features)."""
LOGITS = "logits"
TOKEN_TYPE_IDS = "token_type_ids"
"""An input some other exporters (optimum, for BERT-like models) keep; arena feeds zeros there, as arena-train
never passes segment ids (and never exports this input itself)."""
FORMAT_VERSION = 1
TOKENIZER_JSON = "tokenizer.json"
"""The ``tokenizers`` library's own file: all arena-infer needs to encode an export's rows without transformers."""
TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"
TOKENIZER_FILES = (TOKENIZER_JSON, TOKENIZER_CONFIG, SPECIAL_TOKENS_MAP, "added_tokens.json",
                   "spm.model", "vocab.txt", "vocab.json", "merges.txt", "tokenizer.model", "spiece.model",
                   "sentencepiece.bpe.model", "chat_template.jinja", "chat_template.json")
"""Every file a Hugging Face tokenizer may be saved as (DeBERTa-v3's ``spm.model``, T5's ``spiece.model``,
Llama/Mistral's ``tokenizer.model``, BPE's ``vocab.json`` + ``merges.txt``, ...): the one list of them."""
CONFIG = "config.json"
ARENA_META = "arena.json"
"""arena's own settings beside a model (encoder settings, temperature, head, base of a LoRA adapter)."""
MODEL_FILES = (*TOKENIZER_FILES, CONFIG, ARENA_META)
"""What an export folder holds beside its models so that it is self-contained: inference encodes from it."""
TRAIN_CONFIG = "train_config.json"
"""arena-train's record of a run's settings, at the top of its output (a k-fold run's ``folds`` among them)."""
TRAIN_DONE = "train_done.json"
"""Written by arena-train into a split's folder (a fold's ``fold_k/``) when that split finished."""
TRAIN_RUNNING = "train_running.json"
"""Marks an arena-train output from the run's start until it finishes (interrupted runs keep it)."""
SUBMISSION_HEADER = ("id", *LABELS)
"""The columns of every Kaggle submission arena writes (``id`` and :data:`arena.LABELS`)."""
PACK_FILE = "pack.json"
"""An ``arena-pack`` bundle's own record: what was packed, for which target, and every file's sha256."""
PACK_KIND = "arena-pack"
TRAIN_DATA = "train_data.json"
"""The data fingerprint of an arena-train run (file hashes, row ids), compared on --resume."""
TRAIN_RECORD = (TRAIN_CONFIG, TRAIN_DATA, TRAIN_RUNNING, TRAIN_DONE)
"""An ``arena-train`` output's own record: the run's configuration, its data fingerprint, the marker of a run that
has not finished, and a split's completion. Only a folder holding one is arena-train's to replace or resume
(:mod:`arena.cli.safety`)."""


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for pkg in ("arena-toolkit", "torch", "transformers", "onnx", "onnxruntime", "onnxruntime-gpu", "tensorrt"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def file_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` except the manifest itself, by relative path."""
    return {str(p.relative_to(folder)): sha256_file(p)
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST}


def write_manifest(folder: Path, body: dict[str, Any]) -> dict[str, Any]:
    manifest = {"format_version": FORMAT_VERSION,
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "versions": versions(), **body, "files": file_hashes(folder)}
    atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=2))
    return manifest


def verify_files(folder: Path, manifest: dict[str, Any], names: list[str]) -> None:
    """Raise if any of ``names`` differs from the hash the manifest recorded (a corrupt or swapped file)."""
    recorded = manifest.get("files", {})
    for name in names:
        if name in recorded and sha256_file(folder / name) != recorded[name]:
            raise ModelError(f"{folder / name} does not match the sha256 in {folder / MANIFEST}: "
                             "the file changed or is corrupt; export again")


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The folder's manifest, or None when it has none (a training checkpoint)."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from None


def manifest_sha256(manifest: dict[str, Any]) -> str:
    """An export's identity: the sha256 of its manifest as read (keys sorted), which records the sha256 of every
    file and how each was built and checked, so any change to the export's files changes it. Keys what arena learns
    about an export on a machine (:mod:`arena.serving.calibration`) without hashing gigabytes of weights."""
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()


def copy_model_files(src: Path, dst: Path) -> list[str]:
    """Copy the :data:`MODEL_FILES` that ``src`` has into ``dst``; return their names.

    transformers 5 saves ``extra_special_tokens`` in ``tokenizer_config.json`` as a list, where transformers 4
    (which optimum-onnx pins) expects a mapping of named tokens and fails to load the tokenizer. Both versions read
    ``additional_special_tokens`` as that same list, so the copy says it that way.
    """
    import shutil

    copied = []
    for name in MODEL_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
            copied.append(name)
    config_path = dst / TOKENIZER_CONFIG
    if config_path.is_file():
        config = json.loads(config_path.read_text())
        if isinstance(config.get("extra_special_tokens"), list):
            named = list(config.pop("additional_special_tokens", None) or [])
            extra = config.pop("extra_special_tokens")
            config["additional_special_tokens"] = named + [t for t in extra if t not in named]
            atomic_write_text(config_path, json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    return copied


def openvino_passed(manifest: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """The OpenVINO precisions whose parity check passed at export (the manifest's ``openvino`` section):
    precision -> entry (``file``, ``parity``, ...). Nothing else may be run or chosen."""
    section = (manifest or {}).get("openvino") or {}
    return {name: entry for name, entry in (section.get("precisions") or {}).items()
            if (entry.get("parity") or {}).get("passed")}


# ---------------------------------------------------------------------------------------------------- tensor spec


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output as arena traces, records, checks and feeds it.

    ``dims``: per axis a name (a dynamic axis, named so in arena's own graphs), an int (a fixed size) or None (fixed
    per model: a hybrid model's feature count). ``fed``: ``rows`` (encoded from the rows) or ``zeros`` (a foreign
    graph's segment ids: one segment, as arena-train feeds). ``exported``: arena-export writes it into its graphs.
    """

    name: str
    dtype: str
    dims: tuple[str | int | None, ...]
    required: bool = True
    fed: str = "rows"
    exported: bool = True

    @property
    def dynamic_axes(self) -> dict[int, str]:
        return {i: d for i, d in enumerate(self.dims) if isinstance(d, str)}

    def manifest_entry(self, size: int | None = None, **extra: Any) -> dict[str, Any]:
        """How the manifest records the tensor (``size`` fills a per-model axis, else it is named after the
        tensor)."""
        dims = [self.name if d is None and size is None else size if d is None else d for d in self.dims]
        entry: dict[str, Any] = {"name": self.name, "dtype": self.dtype, "dims": dims}
        if self.fed != "rows":
            entry["fed"] = self.fed
        return {**entry, **extra}


INPUT_SPECS = (
    TensorSpec(INPUT_IDS, "int64", ("batch", "sequence")),
    TensorSpec(ATTENTION_MASK, "int64", ("batch", "sequence")),
    TensorSpec(FEATURES, "float32", ("batch", None), required=False),
    TensorSpec(TOKEN_TYPE_IDS, "int64", ("batch", "sequence"), required=False, fed="zeros", exported=False),
)
"""Every input arena can fill, in feed order."""
OUTPUT_SPECS = (TensorSpec(LOGITS, "float32", ("batch", len(LABELS))),)
"""What arena reads back: (batch, 3) logits in :data:`arena.LABELS` order."""
_ONNX_TYPES = {"int64": 7, "float32": 1, "float16": 10}  # onnx.TensorProto element types
_NUMPY_TYPES = {"int64": np.int64, "float32": np.float32}


def tensor_spec(name: str) -> TensorSpec:
    return next(s for s in (*INPUT_SPECS, *OUTPUT_SPECS) if s.name == name)


def export_inputs(hybrid: bool) -> tuple[TensorSpec, ...]:
    """The inputs of a graph arena-export traces: the token inputs, and ``features`` for a hybrid model."""
    return tuple(s for s in INPUT_SPECS if s.exported and (s.required or hybrid))


def dynamic_axes(specs: tuple[TensorSpec, ...]) -> dict[str, dict[int, str]]:
    """``torch.onnx.export``'s ``dynamic_axes`` for ``specs`` and the outputs."""
    return {s.name: s.dynamic_axes for s in (*specs, *OUTPUT_SPECS)}


def io_manifest(inputs: list[str] | tuple[str, ...], columns: list[str] | None = None) -> dict[str, Any]:
    """The manifest's ``inputs`` / ``outputs`` for a graph taking ``inputs`` (a hybrid model's feature
    ``columns`` fill the features axis and are recorded with it)."""
    entries = []
    for spec in INPUT_SPECS:
        if spec.name in inputs:
            extra = {"columns": list(columns)} if spec.name == FEATURES and columns is not None else {}
            entries.append(spec.manifest_entry(len(columns) if columns is not None else None, **extra))
    return {"inputs": entries, "outputs": [s.manifest_entry() for s in OUTPUT_SPECS]}


def feed_arrays(input_names: Any, input_ids: Any, attention_mask: Any, features: Any = None) -> dict[str, Any]:
    """The feed of a graph whose inputs are ``input_names``: each spec'd input it takes, as the spec says (rows
    as given, segment ids as zeros); raises :class:`ConfigError` when a hybrid graph gets no features. Arrays are
    passed through as given (the caller casts with :func:`numpy_dtype` where its runtime needs it)."""
    given = {INPUT_IDS: input_ids, ATTENTION_MASK: attention_mask, FEATURES: features}
    feeds: dict[str, Any] = {}
    for spec in INPUT_SPECS:
        if spec.name not in input_names:
            continue
        if spec.fed == "zeros":
            feeds[spec.name] = np.zeros(tuple(input_ids.shape), dtype=np.int64)
        elif given[spec.name] is None:
            raise ConfigError(f"the graph takes {spec.name} (a hybrid model): it needs the rows' features as a "
                              "third input")
        else:
            feeds[spec.name] = given[spec.name]
    return feeds


def numpy_dtype(name: str) -> Any:
    """The numpy dtype the spec gives input ``name``."""
    return _NUMPY_TYPES[tensor_spec(name).dtype]


def check_graph_io(path: str | Path, graph: Any, *, expected: tuple[str, ...] | list[str] | None = None,
                   check_labels: bool = True) -> tuple[str, ...]:
    """Compare an ONNX graph's inputs and outputs with the spec before any number is compared (what optimum's
    ``validate_model_outputs`` does first): names arena can fill and all required ones (exactly ``expected``
    when given: a derived model must take what its source takes), each input's dtype and rank, every axis the
    spec makes dynamic left dynamic (a graph traced at one length fails at every other), and a float (batch, 3)
    ``logits`` output. Raises :class:`TensorSpecError`; returns the graph's input names in graph order."""
    weights = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in weights]
    names = tuple(i.name for i in inputs)
    known = {s.name: s for s in INPUT_SPECS}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise TensorSpecError(f"{path} requires input {', '.join(unknown)}, which arena cannot fill; it feeds "
                              f"{INPUT_IDS}, {ATTENTION_MASK}, {FEATURES} (hybrid models) and zeros for "
                              f"{TOKEN_TYPE_IDS}")
    missing = [s.name for s in INPUT_SPECS if s.required and s.name not in names]
    if missing:
        raise TensorSpecError(f"{path} takes inputs {', '.join(names)}; arena feeds {INPUT_IDS} and "
                              f"{ATTENTION_MASK} (missing: {', '.join(missing)})")
    if expected is not None and sorted(names) != sorted(expected):
        raise TensorSpecError(f"{path} takes inputs {', '.join(names)}, its source {', '.join(expected)}")
    for value in inputs:
        _check_tensor(path, "input", value, known[value.name])
    outputs = {o.name: o for o in graph.output}
    if LOGITS not in outputs:
        raise TensorSpecError(f"{path} has outputs {', '.join(outputs)}; arena reads a {LOGITS!r} output "
                              "(a sequence-classification export)")
    _check_tensor(path, "output", outputs[LOGITS], OUTPUT_SPECS[0], check_fixed=check_labels)
    return names


def graph_labels(graph: Any) -> int | None:
    """The number of label columns a graph's ``logits`` declares (None when that axis is not fixed)."""
    dims = next(o for o in graph.output if o.name == LOGITS).type.tensor_type.shape.dim
    return dims[1].dim_value or None if len(dims) == 2 else None


def _check_tensor(path: str | Path, role: str, value: Any, spec: TensorSpec, *, check_fixed: bool = True) -> None:
    tensor = value.type.tensor_type
    allowed = {_ONNX_TYPES[spec.dtype]} | ({_ONNX_TYPES["float16"]} if spec.dtype == "float32" and role == "output"
                                           else set())
    dims = list(tensor.shape.dim)
    if tensor.elem_type not in allowed or len(dims) != len(spec.dims):
        raise TensorSpecError(f"{path}: {role} {spec.name} must be {spec.dtype} with {len(spec.dims)} axes "
                              f"({', '.join(str(d) for d in spec.dims)}) as arena feeds and reads it; the graph "
                              f"declares element type {tensor.elem_type} with {len(dims)} axes")
    for axis, (want, got) in enumerate(zip(spec.dims, dims, strict=True)):
        if isinstance(want, str) and got.HasField("dim_value"):
            raise TensorSpecError(f"{path}: {role} {spec.name} axis {axis} ({want}) is fixed at {got.dim_value}; "
                                  f"arena needs it dynamic (export with dynamic axes)")
        if check_fixed and isinstance(want, int) and got.HasField("dim_value") and got.dim_value != want:
            raise TensorSpecError(f"{path}: {role} {spec.name} axis {axis} has {got.dim_value} entries, arena "
                                  f"reads {want}")


# ------------------------------------------------------------------------------------------------------ ONNX files


def check_onnx_file(path: str | Path) -> None:
    """Refuse a corrupt ONNX file, or one whose external data points outside its folder.

    Reads the protobuf wire format itself (:func:`external_data_locations`), so serving an export never imports the
    ``onnx`` package (1.3-1.5 s of a 3 s start, issue 25)."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path} does not exist")
    root = path.parent.resolve()
    for tensor, location in external_data_locations(path):
        target = (root / location).resolve()
        if root != target and root not in target.parents:
            raise ModelError(f"{path}: tensor {tensor!r} keeps its data at {location!r}, outside the model folder; "
                             "refusing to read it")


def external_data_files(path: str | Path) -> list[str]:
    """The external-data files the ONNX model at ``path`` names, relative to its folder, each once."""
    names: list[str] = []
    for _, location in external_data_locations(path):
        if location not in names:
            names.append(location)
    return names


# Where ONNX (onnx.proto, IR 10) nests TensorProtos, by field number; a message type maps each field that holds a
# message to that field's type. Everything else (raw_data included) is skipped by its length, never read.
_ONNX_MESSAGES: dict[str, dict[int, str]] = {
    "model": {7: "graph", 20: "training", 25: "function"},
    "training": {1: "graph", 2: "graph"},
    "function": {7: "node"},
    "graph": {1: "node", 5: "tensor", 15: "sparse"},
    "node": {5: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"},
    "sparse": {1: "tensor", 2: "tensor"},
    "tensor": {13: "entry"},
    "entry": {},
}
_TENSOR_NAME, _TENSOR_EXTERNAL, _ENTRY_KEY, _ENTRY_VALUE = 8, 13, 1, 2


def external_data_locations(path: str | Path) -> list[tuple[str, str]]:
    """(tensor name, location) of every external-data reference in the ONNX file at ``path`` (initializers,
    Constant attributes, sparse tensors, subgraphs, functions, training graphs), read from the protobuf wire format
    through a memory map: only message headers are touched, so a multi-GB file costs milliseconds.
    Raises :class:`ModelError` for a file that is not a readable ONNX model (truncated, or not protobuf)."""
    import mmap

    path = Path(path)
    found: list[tuple[str, str]] = []
    with open(path, "rb") as fh:
        if path.stat().st_size == 0:
            raise ModelError(f"{path} is not a readable ONNX file: it is empty")
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            data = memoryview(mm)
            try:
                fields = _walk(data, 0, len(data), "model", found)
            except ValueError as exc:
                raise ModelError(f"{path} is not a readable ONNX file ({exc}): it may be truncated") from None
            finally:
                data.release()
    if 7 not in fields:
        raise ModelError(f"{path} is not a readable ONNX file: it holds no graph")
    return found


def _varint(data: memoryview, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise ValueError("a varint runs past its message")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _walk(data: memoryview, pos: int, end: int, kind: str, found: list[tuple[str, str]]) -> set[int]:
    """Walk one message of ``kind`` in ``data[pos:end]``; record external-data entries; return its field numbers."""
    nested, seen = _ONNX_MESSAGES[kind], set()
    name, entries = "", []
    while pos < end:
        tag, pos = _varint(data, pos, end)
        field, wire = tag >> 3, tag & 7
        if field == 0:
            raise ValueError("field number 0")
        seen.add(field)
        if wire == 0:
            _, pos = _varint(data, pos, end)
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        elif wire == 2:
            size, pos = _varint(data, pos, end)
            stop = pos + size
            if stop > end:
                raise ValueError("a field runs past the end of the file")
            if field in nested:
                if nested[field] == "entry":
                    entries.append(_entry(data, pos, stop))
                else:
                    _walk(data, pos, stop, nested[field], found)
            elif kind == "tensor" and field == _TENSOR_NAME:
                name = bytes(data[pos:stop]).decode("utf-8", "replace")
            pos = stop
        else:
            raise ValueError(f"wire type {wire}")
        if pos > end:
            raise ValueError("a field runs past the end of the file")
    found.extend((name, value) for key, value in entries if key == "location")
    return seen


def _entry(data: memoryview, pos: int, end: int) -> tuple[str, str]:
    """A StringStringEntryProto's (key, value)."""
    text = {_ENTRY_KEY: "", _ENTRY_VALUE: ""}
    while pos < end:
        tag, pos = _varint(data, pos, end)
        if tag & 7 != 2:
            raise ValueError("an external-data entry that is not a string")
        size, pos = _varint(data, pos, end)
        if pos + size > end:
            raise ValueError("an external-data entry runs past its message")
        text[tag >> 3] = bytes(data[pos:pos + size]).decode("utf-8", "replace")
        pos += size
    return text[_ENTRY_KEY], text[_ENTRY_VALUE]


# ------------------------------------------------------------------------------------------ TensorRT engines


@dataclass(frozen=True)
class Profile:
    """One optimisation profile: shapes (batch, sequence) at min / opt / max."""

    seq_min: int
    seq_opt: int
    seq_max: int
    batch_min: int
    batch_opt: int
    batch_max: int

    def fits(self, batch: int, seq: int) -> bool:
        return self.seq_min <= seq <= self.seq_max and self.batch_min <= batch <= self.batch_max

    def shapes(self) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
        return (self.batch_min, self.seq_min), (self.batch_opt, self.seq_opt), (self.batch_max, self.seq_max)

    def input_shapes(self, n_features: int = 0) -> dict[str, tuple[tuple[int, ...], ...]]:
        """min / opt / max shape of every engine input: the token inputs are (batch, sequence); a hybrid model's
        ``features`` input is (batch, n_features), its batch range the same as the tokens'."""
        out: dict[str, tuple[tuple[int, ...], ...]] = {name: self.shapes() for name in TOKEN_INPUTS}
        if n_features:
            out[FEATURES] = tuple((b, n_features) for b in (self.batch_min, self.batch_opt, self.batch_max))
        return out


def pick_profile(profiles: list[Profile], batch: int, seq: int) -> int:
    """Index of the first profile whose ranges hold (batch, seq); the smallest such bucket comes first."""
    for i, p in enumerate(profiles):
        if p.fits(batch, seq):
            return i
    raise ConfigError(f"no TensorRT profile holds a batch of {batch} x {seq} tokens; rebuild with a wider plan")


def slug(text: str) -> str:
    """A file-name-safe form of a GPU name or version."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def engine_key(onnx_sha256: str, gpu_name: str, compute_capability: str, trt_version: str, precision: str,
               profiles: list[Profile]) -> str:
    """Identity of an engine: it only runs where all of these match."""
    blob = json.dumps({"onnx": onnx_sha256, "gpu": gpu_name, "cc": compute_capability, "trt": trt_version,
                       "precision": precision, "profiles": [asdict(p) for p in profiles]}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def engine_filename(gpu_name: str, trt_version: str, precision: str, key: str) -> str:
    return f"model.{precision}.{slug(gpu_name)}.trt{trt_version}.{key[:12]}.engine"


def engine_mismatches(entry: dict[str, Any], *, gpu_name: str, compute_capability: str,
                      trt_version: str) -> list[str]:
    """What differs between the machine an engine was built on and this one (empty: it may run here).

    An engine is GPU code compiled for one GPU model and one TensorRT version: a user who builds on an H100 and
    scores on Kaggle's T4 must rebuild there."""
    wanted = {"gpu_name": gpu_name, "compute_capability": compute_capability, "tensorrt_version": trt_version}
    return [f"{k}: engine {entry.get(k)!r} vs here {v!r}" for k, v in wanted.items() if entry.get(k) != v]


def rebuild_command(manifest: dict[str, Any] | None, folder: str | Path = "DIR") -> str:
    """The command that rebuilds a folder's engines on this machine."""
    source = (manifest or {}).get("source_checkpoint") or "CHECKPOINT"
    return f"arena-export {source} --out {folder} --fp16 --trt --overwrite"


def check_engine(entry: dict[str, Any], *, gpu_name: str, compute_capability: str, trt_version: str,
                 rebuild: str = "arena-export CHECKPOINT --out DIR --fp16 --trt") -> None:
    """Raise :class:`BackendUnavailable` naming what differs between the engine's build and this machine."""
    diffs = engine_mismatches(entry, gpu_name=gpu_name, compute_capability=compute_capability,
                              trt_version=trt_version)
    if diffs:
        raise BackendUnavailable(
            "the TensorRT engine was built for another setup (" + "; ".join(diffs) + "). Rebuild it here with "
            f"`{rebuild}`, or use --backend onnx/torch."
        )


def select_engine(manifest: dict[str, Any], *, gpu_name: str, compute_capability: str, trt_version: str,
                  folder: str | Path = "DIR") -> dict[str, Any]:
    """The first engine of the manifest that was built for this GPU and TensorRT version from the ONNX file the
    folder holds now; :class:`BackendUnavailable` naming what differs, and the rebuild command, when none was."""
    section = manifest.get("tensorrt") or {}
    engines = section.get("engines") or []
    rebuild = rebuild_command(manifest, folder)
    if not engines:
        raise BackendUnavailable(f"{folder} has no TensorRT engine; build one with `{rebuild}`")
    files = manifest.get("files", {})
    reasons = []
    for entry in engines:
        diffs = engine_mismatches(entry, gpu_name=gpu_name, compute_capability=compute_capability,
                                  trt_version=trt_version)
        onnx_file = entry.get("onnx_file")
        if onnx_file is not None and files.get(onnx_file) != entry.get("onnx_sha256"):
            diffs.append(f"it was built from another {onnx_file} than the one in the folder")
        if not diffs:
            return entry
        reasons.append(f"{entry.get('file')}: " + "; ".join(diffs))
    raise BackendUnavailable("no TensorRT engine in the folder was built for this machine (" + " | ".join(reasons)
                             + f"). Rebuild it here with `{rebuild}`, or use --backend onnx/torch.")


def read_engine(folder: str | Path, manifest: dict[str, Any], entry: dict[str, Any]) -> bytes:
    """The engine file's bytes, after checking them against the sha256 the manifest recorded.

    A serialized engine is GPU code that TensorRT loads as it is: a file that changed since the export (corrupt,
    truncated, swapped) is refused before it reaches ``deserialize_cuda_engine``."""
    path = Path(folder) / entry["file"]
    recorded = manifest.get("files", {}).get(entry["file"])
    if recorded is None:
        raise ModelError(f"{Path(folder) / MANIFEST} records no sha256 for {entry['file']}; refusing to load an "
                         "engine arena-export did not write")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelError(f"cannot read the TensorRT engine {path}: {exc}") from None
    if hashlib.sha256(data).hexdigest() != recorded:
        raise ModelError(f"{path} does not match the sha256 in {Path(folder) / MANIFEST}: the engine changed or is "
                         f"corrupt; rebuild it with `{rebuild_command(manifest, folder)}`")
    return data
