"""One bundle folder, ready to upload as a Kaggle Dataset: ``wheels/``, ``models/``, ``dataset-metadata.json``,
``submit.ipynb``, ``submit.py`` and ``pack.json`` (what was packed, for which target, every file's sha256).

Everything a user can get wrong is checked first (:func:`check_pack_request`), before any file is written. The
bundle is then built under a temporary name beside ``--out`` and moved into place only when complete, so a failed
pack (a pip error, a bundle over the size limit) leaves nothing behind and an earlier bundle intact.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from arena.artifacts import PACK_FILE, PACK_KIND
from arena.errors import ConfigError
from arena.io import atomic_dir, atomic_write_text, sha256_file
from arena.pack import models as packed_models
from arena.pack import notebook, wheels
from arena.pack.target import Target

KAGGLE_DATASET_LIMIT_GB = 200.0
"""Kaggle's size limit for one dataset (kaggle.com/docs/datasets, "Technical specifications"), in GB (10^9 bytes)."""
METADATA = "dataset-metadata.json"
LICENSES = ("CC0-1.0", "CC-BY-SA-4.0", "GPL-2.0", "ODbL-1.0", "CC-BY-NC-SA-4.0", "other", "unknown")
"""The licence names the Kaggle API accepts in ``dataset-metadata.json``."""
_DATASET_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*/[a-z0-9][a-z0-9-]{2,49}$")


@dataclass(frozen=True)
class PackConfig:
    """What ``arena-pack`` was asked for; written into ``pack.json`` beside the bundle's files."""

    models: list[Path]
    out: Path
    dataset_id: str
    target: Target
    title: str = ""
    license: str = "CC0-1.0"
    infer_options: list[str] = field(default_factory=list)
    extras: tuple[str, ...] = ()
    with_torch: bool = False
    sources: list[str] = field(default_factory=list)
    overwrite: bool = False
    max_size_gb: float = KAGGLE_DATASET_LIMIT_GB


def dataset_id_for(given: str | None, out: Path) -> str:
    """``--dataset-id`` as given, else ``$KAGGLE_USERNAME/<out folder's name>``; checked against Kaggle's form."""
    if given is None:
        user = os.environ.get("KAGGLE_USERNAME")
        if not user:
            raise ConfigError("pass --dataset-id USER/SLUG (your Kaggle user name and the dataset's slug), or set "
                              "KAGGLE_USERNAME to use the --out folder's name as the slug")
        given = f"{user}/{re.sub(r'[^a-z0-9-]+', '-', out.resolve().name.lower()).strip('-')}"
    if not _DATASET_ID.match(given):
        raise ConfigError(f"--dataset-id {given!r} is not USER/SLUG with a slug of 3-50 lowercase letters, digits "
                          "and hyphens (e.g. alice/arena-deberta-bundle)")
    return given


def check_pack_request(config: PackConfig) -> list[packed_models.PackedModel]:
    """Every check that needs no download: models, output folder, licence, title, size of the models."""
    from arena.cli.safety import check_pack_out

    if config.license not in LICENSES:
        raise ConfigError(f"--license must be one of {', '.join(LICENSES)}; got {config.license!r}")
    if config.title and not 6 <= len(config.title) <= 50:
        raise ConfigError(f"--title must be 6 to 50 characters (Kaggle's rule); got {len(config.title)}")
    if config.max_size_gb <= 0:
        raise ConfigError(f"--max-size-gb must be greater than 0; got {config.max_size_gb:g}")
    planned = packed_models.plan_models(config.models)
    sources = [m.source for m in planned]
    bases = [Path(b) for m in sources for b in packed_models.lora_bases(m).values()]
    check_pack_out(config.out, models=[*sources, *bases], overwrite=config.overwrite)
    size = packed_models.model_bytes(sources)
    if size > config.max_size_gb * 1e9:
        raise ConfigError(f"the models alone take {size / 1e9:.2f} GB, over the dataset limit of "
                          f"{config.max_size_gb:g} GB; pack fewer models or smaller exports (int8, fp16)")
    return planned


def _metadata(config: PackConfig) -> dict[str, Any]:
    slug = config.dataset_id.split("/", 1)[1]
    title = config.title or f"arena bundle {slug}"[:50]
    return {"title": title if len(title) >= 6 else f"{title} bundle", "id": config.dataset_id,
            "licenses": [{"name": config.license}],
            "subtitle": "arena-pack: wheels, models and an offline submission notebook"[:80]}


def bundle_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file of the bundle, the models' own manifests included, by relative path."""
    return {str(p.relative_to(folder)): sha256_file(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and p != folder / PACK_FILE}


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def write_bundle(config: PackConfig) -> dict[str, Any]:
    """Build the bundle; return the summary (sizes in bytes, what was packed, where)."""
    planned = check_pack_request(config)
    with atomic_dir(config.out, overwrite=config.overwrite) as tmp:
        wheel_dir = tmp / "wheels"
        wheel_dir.mkdir()
        arena_wheel = wheels.build_arena_wheel(wheel_dir)
        needed = wheels.missing_requirements(wheels.wheel_requirements(arena_wheel), config.target,
                                             extras=config.extras, with_torch=config.with_torch)
        pins = wheels.resolve(needed, config.target, sources=config.sources, with_torch=config.with_torch)
        wheels.download(pins, wheel_dir, config.target, sources=config.sources)
        packed = packed_models.pack_models(planned, tmp / "models")
        atomic_write_text(tmp / METADATA, json.dumps(_metadata(config), indent=2) + "\n")
        atomic_write_text(tmp / "submit.ipynb", notebook.render_notebook(config.infer_options))
        atomic_write_text(tmp / "submit.py", notebook.render_script(config.infer_options))
        sizes = {"wheels": folder_bytes(wheel_dir), "models": folder_bytes(tmp / "models"),
                 "total": folder_bytes(tmp)}
        if sizes["total"] > config.max_size_gb * 1e9:
            raise ConfigError(f"the bundle takes {sizes['total'] / 1e9:.2f} GB (wheels {sizes['wheels'] / 1e9:.2f}, "
                              f"models {sizes['models'] / 1e9:.2f}), over the dataset limit of "
                              f"{config.max_size_gb:g} GB; nothing was written")
        record = _record(config, planned, packed, arena_wheel.name, pins, sizes)
        record["files"] = bundle_hashes(tmp)
        atomic_write_text(tmp / PACK_FILE, json.dumps(record, indent=2) + "\n")
    return {k: v for k, v in record.items() if k != "files"} | {"out": str(config.out),
                                                               "files": len(record["files"])}


def _record(config: PackConfig, planned: list, packed: dict, arena_wheel: str, pins: list,
            sizes: dict[str, int]) -> dict[str, Any]:
    from arena import __version__

    return {"kind": PACK_KIND, "arena_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "target": {"name": config.target.name, "python": config.target.python,
                       "platform": config.target.platform},
            "dataset_id": config.dataset_id, "infer_models": [m.name for m in planned], "models": packed,
            "infer_options": config.infer_options, "arena_wheel": arena_wheel,
            "wheels": [f"{p.name}=={p.version}" for p in pins], "with_torch": config.with_torch,
            "extras": list(config.extras), "bytes": sizes}
