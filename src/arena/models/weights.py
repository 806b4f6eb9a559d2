"""What a model folder's weight files are, read without loading a tensor: their tensor names and shapes (from the
safetensors headers) and their sha256.

Two checks rest on this. A LoRA adapter records a fingerprint of the base it was trained on
(:func:`arena.models.lora.base_fingerprint`, from :func:`tensor_layout`) so that it is never applied to another
base; an export records the sha256 of its source checkpoint's weights (:func:`weights_sha256`) so that
``arena-bench --model A --export E`` can tell whether E was made from A.

A safetensors file starts with an 8-byte little-endian header length and a JSON header naming every tensor's dtype,
shape and byte range: reading it costs kilobytes, even for a 9B model's shards.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from arena.errors import ModelError

SAFETENSORS_INDEX = "model.safetensors.index.json"
WEIGHTS = "model.safetensors"
MAX_HEADER_BYTES = 100 << 20
"""A header beyond this is a corrupt file (a 9B model's shard headers are tens of kilobytes)."""


def read_safetensors_header(path: str | Path) -> dict[str, dict]:
    """The tensors of one safetensors file: name -> {dtype, shape, data_offsets}. Raises :class:`ModelError` for a
    file that is not safetensors (truncated, or something else under the name)."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            prefix = fh.read(8)
            size = struct.unpack("<Q", prefix)[0] if len(prefix) == 8 else -1
            if not 0 < size <= MAX_HEADER_BYTES:
                raise ValueError(f"header length {size}")
            header = json.loads(fh.read(size))
    except (OSError, ValueError, struct.error) as exc:
        raise ModelError(f"{path} is not a readable safetensors file ({exc}); the weights may be truncated") from None
    if not isinstance(header, dict):
        raise ModelError(f"{path} is not a readable safetensors file (its header is not a mapping)")
    header.pop("__metadata__", None)
    return header


def model_weight_files(folder: str | Path) -> list[Path]:
    """The safetensors files that hold a Hugging Face model's weights: the shards its index names, else
    ``model.safetensors``; empty when the folder has neither (a hub snapshot holding only ``config.json``)."""
    folder = Path(folder)
    index = folder / SAFETENSORS_INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text()).get("weight_map") or {}
        except (OSError, ValueError, AttributeError) as exc:
            raise ModelError(f"{index} is not a readable safetensors index: {exc}") from None
        return [folder / name for name in sorted(set(weight_map.values()))]
    return [folder / WEIGHTS] if (folder / WEIGHTS).is_file() else []


def tensor_layout(folder: str | Path) -> dict[str, list[int]]:
    """Every tensor of the model in ``folder``: name -> shape, from the headers of its weight files (a re-sharded
    or re-typed copy of the same model has the same layout; another architecture or size has not)."""
    layout: dict[str, list[int]] = {}
    for path in model_weight_files(folder):
        if not path.is_file():
            raise ModelError(f"{path} is missing (its {SAFETENSORS_INDEX} lists it)")
        layout.update({name: list(entry.get("shape", [])) for name, entry in read_safetensors_header(path).items()})
    return layout


def weights_sha256(folder: str | Path) -> dict[str, str]:
    """sha256 of every safetensors file directly in ``folder`` (a checkpoint's weights: model shards, a LoRA
    adapter, a hybrid head), by file name. Reads every byte: call it once per command."""
    from arena.io import sha256_file

    return {p.name: sha256_file(p) for p in sorted(Path(folder).glob("*.safetensors")) if p.is_file()}
