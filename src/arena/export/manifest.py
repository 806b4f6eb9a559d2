"""``manifest.json``: what was built, from what, with which versions, and how it was checked."""

from __future__ import annotations

import datetime as _dt
import importlib.metadata as md
import json
from pathlib import Path
from typing import Any

from arena.io import atomic_write_text, sha256_file

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


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
    from arena.errors import ModelError

    recorded = manifest.get("files", {})
    for name in names:
        if name in recorded and sha256_file(folder / name) != recorded[name]:
            raise ModelError(f"{folder / name} does not match the sha256 in {folder / MANIFEST}: "
                             "the file changed or is corrupt; export again")
