"""Machine-local caches of what a backend derives from a model file: OpenVINO's compiled blobs, ONNX Runtime's
optimised graph. Each lives in its own folder under :func:`arena.io.user_cache_dir` (or where its environment
variable points; ``off``/``none``/``0``/empty switches it off), one entry folder per model file and setting.

Entries are made and pruned only by arena: each carries a marker file, and pruning removes only marked folders, so a
cache variable pointed at a folder that holds anything else never costs the user a file. Never inside a model
folder (it may be a read-only Kaggle dataset, and its manifest hashes every file in it).
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

MARKER = ".arena-cache-entry"
"""The file that marks a folder as an entry arena made (and may remove)."""
OFF = ("", "off", "none", "0")


def cache_root(kind: str, env: str) -> Path | None:
    """``$env`` (None when it says off), else ``<user cache dir>/<kind>``."""
    value = os.environ.get(env)
    if value is not None:
        return None if value.strip().lower() in OFF else Path(value).expanduser()
    from arena.io import user_cache_dir

    return user_cache_dir() / kind


def cache_entry(root: Path | None, key: str, *, keep: int, what: str) -> Path | None:
    """The entry folder ``root/key``, made, marked and marked as just used, after pruning ``root`` to the ``keep``
    most recently used entries; None (with a warning naming ``what``) when there is no root or it is not writable."""
    if root is None:
        return None
    folder = root / key
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / MARKER).touch()
        os.utime(folder)
        prune(root, keep)
    except OSError as exc:
        log.warning("%s cache %s is not writable (%s); running without it", what, root, exc)
        return None
    return folder


def prune(root: Path, keep: int) -> list[Path]:
    """Remove all but the ``keep`` most recently used entries arena made in ``root`` (folders with the marker);
    returns what was removed. Anything else in ``root`` is left alone."""
    entries = sorted((p for p in root.iterdir() if p.is_dir() and (p / MARKER).is_file()),
                     key=lambda p: p.stat().st_mtime, reverse=True)
    for old in entries[keep:]:
        shutil.rmtree(old, ignore_errors=True)
    return entries[keep:]
