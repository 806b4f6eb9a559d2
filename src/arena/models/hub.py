"""Names and folders: is a model reference a local folder or a hub name, and what to say when a hub name cannot be
fetched. Shared by :mod:`arena.models.modeling` and the head modules (:mod:`arena.models.hybrid`), which must not
import each
other."""

from __future__ import annotations

import os
from pathlib import Path

from arena import LABELS
from arena.errors import ModelError


def is_local(name_or_path: str | Path) -> bool:
    text = str(name_or_path)
    return Path(text).exists() or text.startswith((".", "/", "~")) or os.sep in text and text.count("/") > 1


def offline_hint(name: str, exc: Exception) -> ModelError:
    return ModelError(
        f"could not load {name!r}: it is not a local folder and it could not be fetched from the Hugging Face hub "
        f"({type(exc).__name__}). Loading by name needs the hub; without network, download it elsewhere "
        f"(e.g. `hf download {name} --local-dir DIR`) and pass --model DIR."
    )


def label_maps() -> tuple[dict[int, str], dict[str, int]]:
    id2label = dict(enumerate(LABELS))
    return id2label, {v: k for k, v in id2label.items()}
