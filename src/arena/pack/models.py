"""``models/``: the model folders arena-infer takes, copied (never moved) and verified, with paths made relative.

Every kind arena-infer scores is packed as it is: a checkpoint, an export (its manifest hashes checked
before the copy), a fold ensemble (``fold_*/`` or an ensemble export), a LoRA checkpoint (its base model packed
beside it, once for all the folds or models that share it). Each copied file is hashed at the source and at the
copy; a difference stops the pack. A LoRA checkpoint names its base by absolute path at training time: the copy's
``arena.json`` (and peft's ``adapter_config.json``) name the packed base relative to the checkpoint instead, so
the bundle runs wherever Kaggle mounts it.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from arena.artifacts import ARENA_META, read_manifest, verify_files
from arena.cli.options import existing_folder
from arena.errors import ConfigError, ModelError
from arena.io import atomic_write_text, sha256_file

SKIPPED = ("state", ".*.tmp", ".*.partial", ".*.old", "__pycache__")
"""What a pack leaves out of a model folder: arena-train's resumable state (optimizer moments: twice the model,
never read by inference) and the temporary files of interrupted atomic writes."""
ADAPTER_CONFIG = "adapter_config.json"
LORA_KIND = "lora"


@dataclass(frozen=True)
class PackedModel:
    """One model given to arena-pack: where it is and the folder name it gets under ``models/``."""

    source: Path
    name: str
    kind: str


KIND_NAMES = {"checkpoint": "checkpoint", "lora": "LoRA checkpoint", "export": "export",
              "foreign": "foreign export"}


def model_kind(folder: Path) -> str:
    """What arena-infer will see in ``folder`` (the folder read as arena-infer reads it,
    :func:`arena.serving.folder.read_folder`); raises :class:`ModelError` when it is no model arena-infer scores."""
    from arena.serving.folder import ENSEMBLE, read_folder

    read = read_folder(folder)
    if read.kind == ENSEMBLE:
        return "ensemble export" if read.manifest is not None else "fold ensemble"
    return KIND_NAMES[read.kind]


def plan_models(models: list[Path]) -> list[PackedModel]:
    """Check every model and give each a distinct folder name under ``models/`` (its own name, then -2, -3...)."""
    if not models:
        raise ConfigError("give at least one MODEL: an arena-train checkpoint, an arena-export folder or a fold "
                          "ensemble")
    planned: list[PackedModel] = []
    taken: set[str] = set()
    for model in models:
        existing_folder("MODEL", model, "an arena-train checkpoint, an arena-export folder or a fold ensemble")
        kind = model_kind(Path(model))
        base = Path(model).resolve().name or "model"
        name, n = base, 1
        while name in taken:
            n += 1
            name = f"{base}-{n}"
        taken.add(name)
        planned.append(PackedModel(Path(model), name, kind))
    for base in sorted({b for m in planned for b in lora_bases(m.source).values()}):
        if not Path(base).is_dir():
            raise ConfigError(f"a LoRA checkpoint in the models names its base {base}, which is not a folder here; "
                              "the Kaggle notebook has no internet, so the base must be packed: download it and "
                              "train against the local copy, or write a merged checkpoint (arena-train --merge)")
    return planned


def lora_base(folder: Path) -> str | None:
    """The base a LoRA checkpoint in ``folder`` names (``arena.json``'s head), or None for another model."""
    try:
        meta = json.loads((folder / ARENA_META).read_text())
    except (OSError, ValueError):
        return None
    head = meta.get("head") if isinstance(meta, dict) else None
    if isinstance(head, dict) and head.get("kind") == LORA_KIND and head.get("base"):
        return str(head["base"])
    return None


def lora_bases(folder: Path) -> dict[Path, str]:
    """Every LoRA checkpoint under ``folder`` (itself or its folds) -> the base it names."""
    found = {}
    for meta in sorted(Path(folder).rglob(ARENA_META)):
        base = lora_base(meta.parent)
        if base is not None:
            found[meta.parent] = base
    return found


def _skipped(relative: Path) -> bool:
    return any(fnmatch.fnmatchcase(part, pattern) for part in relative.parts for pattern in SKIPPED)


def copy_verified(source: Path, dest: Path) -> dict[str, str]:
    """Copy every file of ``source`` (less :data:`SKIPPED`) into ``dest``; return relative path -> sha256.

    An export's files are first checked against its manifest (a corrupt export is refused, not packed); every
    file's copy is hashed and compared with its source."""
    manifest = read_manifest(source)
    if manifest is not None and isinstance(manifest.get("files"), dict):
        verify_files(source, manifest, sorted(manifest["files"]))
    hashes: dict[str, str] = {}
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(source)
        if path.is_dir() or _skipped(relative):
            continue
        target = dest / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        digest = sha256_file(path)
        shutil.copy2(path, target)
        if sha256_file(target) != digest:
            raise ModelError(f"the copy of {path} differs from the file (disk full or changing under the pack?); "
                             "nothing was packed")
        hashes[str(relative)] = digest
    return hashes


def pack_models(planned: list[PackedModel], models_dir: Path) -> dict[str, dict]:
    """Copy every model (and each distinct LoRA base once) under ``models_dir``; return name -> what was packed."""
    bases: dict[str, str] = {}
    packed: dict[str, dict] = {}
    for model in planned:
        copied = copy_verified(model.source, models_dir / model.name)
        packed[model.name] = {"kind": model.kind, "source": str(model.source.resolve()), "files": len(copied)}
        for checkpoint, base in lora_bases(model.source).items():
            key = str(Path(base).resolve())
            if key not in bases:
                bases[key] = _base_name(Path(key), set(bases.values()) | {m.name for m in planned})
                copy_verified(Path(key), models_dir / bases[key])
                packed[bases[key]] = {"kind": "LoRA base", "source": key}
            copy = models_dir / model.name / checkpoint.relative_to(model.source)
            relink_lora_base(copy, models_dir / bases[key])
    return packed


def _base_name(base: Path, taken: set[str]) -> str:
    name, n = f"base-{base.name}", 1
    while name in taken:
        n += 1
        name = f"base-{base.name}-{n}"
    return name


def relink_lora_base(checkpoint: Path, base: Path) -> str:
    """Point the copied LoRA ``checkpoint`` at the packed ``base`` by a path relative to the checkpoint (what
    :func:`arena.models.lora.load_lora` resolves against the checkpoint folder); return that path."""
    relative = os.path.relpath(base, checkpoint)
    meta = json.loads((checkpoint / ARENA_META).read_text())
    meta["head"]["base"] = relative
    atomic_write_text(checkpoint / ARENA_META, json.dumps(meta, indent=2))
    adapter = checkpoint / ADAPTER_CONFIG
    if adapter.is_file():
        config = json.loads(adapter.read_text())
        config["base_model_name_or_path"] = relative
        atomic_write_text(adapter, json.dumps(config, indent=2))
    return relative


def model_bytes(models: list[Path]) -> int:
    """What the models (and their LoRA bases) will take in the bundle, before anything is copied."""
    roots = {Path(m).resolve() for m in models}
    roots |= {Path(b).resolve() for m in models for b in lora_bases(Path(m)).values()}
    return sum(p.stat().st_size for root in roots for p in root.rglob("*")
               if p.is_file() and not _skipped(p.relative_to(root)))

