"""Foreign ONNX exports: a folder with an ONNX model but no arena manifest, as ``optimum-cli export onnx`` lays it
out (``model.onnx``, ``config.json``, tokenizer files).

arena can score such a folder and derive a full arena export from it, but it did not build it, so nothing vouches
for it the way a manifest does: no parity record, no file hashes, and the encoder settings are arena's defaults (or
an ``arena.json`` placed beside the model). :func:`inspect_foreign` checks what can be checked before any row is
scored and refuses a misfit with one :class:`~arena.errors.ModelError`:

* inputs and outputs against arena's one tensor spec (:func:`arena.artifacts.check_graph_io`): ``input_ids`` and
  ``attention_mask`` (int64, dynamic batch x sequence) are required. ``token_type_ids`` is accepted and fed as
  zeros: arena encodes prompt and responses as one segment and ``arena-train`` never passes segment ids, so zeros
  are exactly what the same weights see in arena's own torch backend. Any other input (``position_ids``, ...) is
  refused, since arena has nothing to put there;
* output: ``logits`` with 3 columns, and ``config.json`` naming 3 labels in arena's order (a, b, tie) when its
  labels carry arena's names;
* a tokenizer in the folder, since the encoder must tokenize as the model was trained.

Shared by loading (``arena-infer``) and the exporter (``arena-export``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from arena import LABELS
from arena.artifacts import (
    ARENA_META,
    FEATURES,
    MANIFEST,
    TOKEN_TYPE_IDS,
    TOKENIZER_FILES,
    check_graph_io,
    graph_labels,
)
from arena.encode import EncoderConfig
from arena.errors import ModelError
from arena.models.modeling import SAFE_WEIGHTS, max_supported_length, read_meta

STANDARD_NAME = "model.onnx"
"""The file optimum writes and loads by default; preferred when a folder holds several ONNX files."""


@dataclass(frozen=True)
class ForeignExport:
    """What :func:`inspect_foreign` found: the model file and how arena will feed it."""

    folder: Path
    onnx: Path
    inputs: tuple[str, ...]
    num_labels: int
    model_type: str | None
    max_positions: int | None
    """The longest sequence the architecture accepts (None: relative positions only)."""
    encoder: EncoderConfig
    temperature: float
    encoder_source: str
    """Where the encoder settings came from: ``arena.json`` or ``defaults``."""
    producer: str
    opset: int | None = None
    config: dict[str, Any] = field(default_factory=dict, repr=False)
    """``config.json`` as read (hidden size and heads for ONNX Runtime's optimizer)."""

    @property
    def zero_token_types(self) -> bool:
        return TOKEN_TYPE_IDS in self.inputs

    def describe(self) -> str:
        """The note every summary carries for a foreign model."""
        fed = "; token_type_ids fed as zeros" if self.zero_token_types else ""
        return (f"foreign ONNX export {self.onnx.name} (no arena manifest: no parity record, files unverified; "
                f"encoder settings from {self.encoder_source}{fed})")

    def to_dict(self) -> dict[str, Any]:
        """The manifest's record of where an arena export derived from a foreign one came from."""
        from arena.io import sha256_file

        return {"kind": "foreign_onnx", "folder": str(self.folder.resolve()), "file": self.onnx.name,
                "sha256": sha256_file(self.onnx), "producer": self.producer, "inputs": list(self.inputs),
                "token_type_ids": "fed as zeros" if self.zero_token_types else "none",
                "encoder_settings": self.encoder_source}


def is_foreign_export(folder: str | Path) -> bool:
    """A folder holding an ONNX model, no arena manifest and no PyTorch weights."""
    folder = Path(folder)
    return (folder.is_dir() and not (folder / MANIFEST).is_file()
            and not any((folder / w).is_file() for w in SAFE_WEIGHTS) and any(folder.glob("*.onnx")))


def find_model_file(folder: Path) -> Path:
    """``model.onnx`` (optimum's standard name), else the folder's only ONNX file."""
    if (folder / STANDARD_NAME).is_file():
        return folder / STANDARD_NAME
    found = sorted(folder.glob("*.onnx"))
    if len(found) == 1:
        return found[0]
    raise ModelError(f"{folder} holds several ONNX files ({', '.join(p.name for p in found)}) and no "
                     f"{STANDARD_NAME}; rename the full-precision one to {STANDARD_NAME}")


def inspect_foreign(folder: str | Path) -> ForeignExport:
    """Check a foreign export folder fits arena (see the module docstring); raise :class:`ModelError` if not."""
    import onnx

    from arena.artifacts import check_onnx_file

    folder = Path(folder)
    path = find_model_file(folder)
    check_onnx_file(path)
    config = _read_config(folder)
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise ModelError(f"{folder} has no tokenizer files ({', '.join(TOKENIZER_FILES[:2])}, ...): copy in the "
                         "tokenizer the model was trained with (optimum-cli export onnx saves it beside the model)")
    graph = onnx.load(str(path), load_external_data=False)
    inputs = check_graph_io(path, graph.graph, check_labels=False)  # the label count is named by _check_labels
    num_labels = _check_labels(folder, config, graph_labels(graph.graph))
    meta = read_meta(folder)
    max_positions = max_supported_length(SimpleNamespace(**config))
    encoder, source = meta.encoder, ARENA_META if (folder / ARENA_META).is_file() else "defaults"
    if max_positions is not None and encoder.max_length > max_positions:
        encoder = replace(encoder, max_length=max_positions)
        source += f", max length capped at the model's {max_positions} positions"
    encoder = replace(encoder, features=FEATURES in inputs)
    producer = " ".join(p for p in (graph.producer_name, graph.producer_version) if p) or "unknown"
    opset = next((int(o.version) for o in graph.opset_import if o.domain in ("", "ai.onnx")), None)
    return ForeignExport(folder, path, inputs, num_labels, config.get("model_type"), max_positions, encoder,
                         meta.temperature, source, producer, opset, config)


def _read_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    if not path.is_file():
        raise ModelError(f"{folder} has an ONNX model but no config.json; arena reads the labels and the model's "
                         "length limit from it (optimum-cli export onnx writes it)")
    try:
        config = json.loads(path.read_text())
    except ValueError as exc:
        raise ModelError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise ModelError(f"{path} is not a model configuration (a JSON object)")
    return config


def _check_labels(folder: Path, config: dict[str, Any], graph_labels: int | None) -> int:
    id2label = config.get("id2label") or {}
    n = len(id2label) if id2label else int(config.get("num_labels", graph_labels or 2))
    for where, count in ((f"{folder / 'config.json'}", n), (f"{folder}'s ONNX graph", graph_labels)):
        if count is not None and count != 3:
            raise ModelError(f"{where} gives {count} labels; arena scores 3 (model_a wins, model_b wins, tie)")
    names = [str(id2label.get(str(i), id2label.get(i, ""))) for i in range(3)]
    if set(names) == set(LABELS) and tuple(names) != LABELS:
        raise ModelError(f"{folder / 'config.json'} orders the labels {', '.join(names)}; arena's columns are "
                         f"{', '.join(LABELS)} in that order, so its probabilities would land in the wrong columns")
    return n
