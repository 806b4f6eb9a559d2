"""A training run's record, written once when it starts and checked by every ``--resume``.

``train_config.json`` holds the run's :class:`~arena.train.config.TrainConfig` (as resolved: head, LoRA rank, encoder
features) and ``train_data.json`` a fingerprint of what it trains on: the training file (sha256, row count, sha256 of
the row ids and of the rows themselves), the ``--soft-labels`` file and every ``--extra`` file (sha256). A resume
compares the command with both and refuses, in one line naming each setting ``old -> new``, any difference that
changes the result; only :data:`MAY_DIFFER` may. A resume never rewrites the record, so it always says what the whole
run was trained with.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from arena.artifacts import TRAIN_CONFIG, TRAIN_DATA
from arena.data import Record
from arena.errors import ConfigError
from arena.io import atomic_write_text, sha256_file
from arena.train.config import TrainConfig

log = logging.getLogger(__name__)

MAY_DIFFER = frozenset({"output", "resume", "resume_or_start", "overwrite", "keep_state", "save_steps", "compile",
                        "attention", "data", "soft_labels", "extra"})
"""Settings a resume may change: where and how often state is kept, how the same steps are run (compile; the
attention's kernels, which compute the same function), and the paths of the inputs (their content is compared through
the data fingerprint instead)."""
ENCODER_FLAGS = {"max_length": "--max-length", "strategy": "--strategy", "shares": "--shares",
                 "head_fraction": "--head-fraction"}


def _rows_digest(records: list[Record]) -> tuple[str, str]:
    """sha256 of the row ids, and of the rows (id, label, turns), in order."""
    ids, rows = hashlib.sha256(), hashlib.sha256()
    for r in records:
        ids.update(str(r.id).encode() + b"\n")
        rows.update(json.dumps([str(r.id), r.label, r.prompt, r.response_a, r.response_b]).encode() + b"\n")
    return ids.hexdigest(), rows.hexdigest()


def data_fingerprint(path: str | Path, records: list[Record], config: TrainConfig) -> dict[str, Any]:
    """What ``train_data.json`` records: the training file (all its rows, read before ``--max-rows``) and the
    teacher and extra files."""
    ids, rows = _rows_digest(records)
    return {"data": {"file": str(path), "sha256": sha256_file(path), "rows": len(records), "ids_sha256": ids,
                     "rows_sha256": rows},
            "soft_labels": None if config.soft_labels is None else
            {"file": str(config.soft_labels), "sha256": sha256_file(config.soft_labels)},
            "extra": [{"file": str(p), "sha256": _file_or_folder_sha(p)} for p in config.extra]}


def _file_or_folder_sha(path: str) -> str:
    from arena.data import resolve_csv

    return sha256_file(resolve_csv(path, "train.csv"))


def write_record(out: Path, config: TrainConfig, fingerprint: dict[str, Any]) -> None:
    """Record a new run (never called on a resume that found a record)."""
    atomic_write_text(out / TRAIN_CONFIG, json.dumps(config.to_dict(), indent=2))
    atomic_write_text(out / TRAIN_DATA, json.dumps(fingerprint, indent=2))


def read_record(out: Path) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The recorded configuration and data fingerprint of the run in ``out`` (None where absent or unreadable)."""
    found = []
    for name in (TRAIN_CONFIG, TRAIN_DATA):
        try:
            data = json.loads((out / name).read_text())
        except (OSError, ValueError):
            data = None
        found.append(data if isinstance(data, dict) else None)
    return found[0], found[1]


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def _same_path(a: Any, b: Any) -> bool:
    """Equal, or two spellings of one existing path (a resume from another working folder)."""
    if a == b:
        return True
    if not (isinstance(a, str) and isinstance(b, str)):
        return False
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()


def config_differences(recorded: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """``--flag old -> new`` for every result-changing setting of ``now`` that differs from ``recorded``."""
    defaults = TrainConfig().to_dict()  # a setting added after the run was recorded: the run had its default
    out = []
    for key in sorted(set(recorded) | set(now)):
        if key in MAY_DIFFER or key == "encoder":
            continue
        old, new = recorded.get(key, defaults.get(key)), now.get(key)
        if key in ("model", "tokenizer") and _same_path(old, new):
            continue
        if old != new:
            out.append(f"{_flag(key)} {old} -> {new}")
    old_enc, new_enc = recorded.get("encoder") or {}, now.get("encoder") or {}
    for key in sorted(set(old_enc) | set(new_enc)):
        if old_enc.get(key) != new_enc.get(key):
            out.append(f"{ENCODER_FLAGS.get(key, 'encoder ' + key)} {old_enc.get(key)} -> {new_enc.get(key)}")
    return out


def data_differences(recorded: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """What differs between two data fingerprints, in the words of the options that name the files."""
    out = []
    old, new = recorded.get("data") or {}, now["data"]
    if old.get("sha256") != new["sha256"] and old.get("rows_sha256") != new["rows_sha256"]:
        what = ("other row ids" if old.get("ids_sha256") != new["ids_sha256"] else "the same ids with other content")
        out.append(f"--data {old.get('file')} -> {new['file']}: {old.get('rows')} -> {new['rows']} rows, {what} "
                   f"(sha256 {str(old.get('sha256'))[:12]} -> {new['sha256'][:12]})")
    old_soft, new_soft = recorded.get("soft_labels"), now["soft_labels"]
    if (old_soft or {}).get("sha256") != (new_soft or {}).get("sha256"):
        out.append(f"--soft-labels {(old_soft or {}).get('file')} -> {(new_soft or {}).get('file')} (other content)")
    old_extra = [e.get("sha256") for e in recorded.get("extra") or []]
    if old_extra != [e["sha256"] for e in now["extra"]]:
        out.append(f"--extra {[e.get('file') for e in recorded.get('extra') or []]} -> "
                   f"{[e['file'] for e in now['extra']]} (other files or content)")
    return out


def check_resume(out: Path, config: TrainConfig, fingerprint: dict[str, Any]) -> dict[str, Any] | None:
    """On ``--resume``: the recorded configuration (to keep writing into checkpoints) when the command matches it;
    None when ``out`` holds no record yet (the run was killed before writing it: it starts, and records, afresh).

    Raises :class:`ConfigError` naming every result-changing difference in settings or data."""
    recorded, recorded_data = read_record(out)
    if recorded is None:
        return None
    differences = config_differences(recorded, json.loads(json.dumps(config.to_dict())))  # tuples as JSON has them
    if recorded_data is None:
        log.warning("%s has no %s (a run started by an older arena): its data cannot be compared with this command's",
                    out, TRAIN_DATA)
    else:
        differences += data_differences(recorded_data, fingerprint)
    if differences:
        raise ConfigError(f"--resume: the run in {out} was started with other settings or data: "
                          f"{'; '.join(differences)}. Resume with what {TRAIN_CONFIG} records, or train with the new "
                          "settings into a new --output (or --overwrite)")
    return recorded
