"""May this command write here? The rules that keep every CLI from destroying a user's files.

* An output is never one of the command's inputs: an output file is not the CSV it reads, an output folder neither
  is nor holds the checkpoint, tokenizer or CSV the command reads, and nothing is written inside an input folder.
* A command replaces only what it wrote itself: ``arena-export --overwrite`` only an earlier export (its manifest
  lists every file in the folder) or an empty folder; ``arena-infer`` only an earlier submission;
  ``arena-report`` / ``arena-bench`` only their own earlier report files; ``arena-train --overwrite`` /
  ``--resume`` only an earlier ``arena-train`` output: a folder holding arena-train's own run record
  (:data:`arena.artifacts.TRAIN_RECORD`) and nothing arena-train does not write. A plain Hugging Face model folder
  holds the same file names but no record, and is never replaced. ``--resume`` needs a run to resume (a typo in
  ``--output`` is not a new run) unless ``--resume-or-start`` says to start one.
* A training run marks its output folder with :data:`RUNNING` from its start until it finishes, so a checkpoint
  left by an interrupted run is known as such and loading it warns (:func:`warn_if_unfinished`).

Every refusal is a :class:`~arena.errors.ConfigError` whose message names the option to change; the checks read
the file system only, so a refused command has touched nothing.
"""

from __future__ import annotations

import datetime as _dt
import fnmatch
import json
import logging
import os
import shutil
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from arena.artifacts import (
    ARENA_META,
    MANIFEST,
    PACK_FILE,
    PACK_KIND,
    SUBMISSION_HEADER,
    TOKENIZER_FILES,
    TRAIN_CONFIG,
    TRAIN_DATA,
    TRAIN_DONE,
    TRAIN_RUNNING,
)
from arena.errors import ConfigError

log = logging.getLogger(__name__)

RUNNING = TRAIN_RUNNING
DONE = TRAIN_DONE
COMPRESSED_SUFFIXES = (".gz", ".bz2", ".xz", ".zip", ".zst", ".tgz", ".parquet")

# What arena-train writes into --output (Hugging Face weights and tokenizer files, arena's own files, resumable
# state, k-fold subfolders, temporary files of atomic writes). A folder holding anything else is not its output.
TRAIN_NAMES = (
    "config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json",
    "model-*-of-*.safetensors", "hybrid_head.safetensors", ARENA_META, TRAIN_CONFIG, TRAIN_DATA, DONE, RUNNING,
    "metrics.json", "oof.csv", "val_logits.npy", "state", "fold_*", ".*.tmp", ".*.partial", ".*.old",
    *TOKENIZER_FILES, "adapter_config.json", "adapter_model.safetensors",
)
ADAPTER_CARD = "README.md"
"""The model card peft writes beside a LoRA adapter: arena-train's only in a LoRA run's checkpoint (the adapter is
there, or ``arena.json`` says it was merged from one)."""


def _real(path: str | Path) -> Path:
    return Path(path).expanduser().resolve()


def _within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _listing(names: Iterable[str], limit: int = 4) -> str:
    names = sorted(names)
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def check_not_input(out: str | Path, flag: str, inputs: Mapping[str, str | Path | None], *,
                    folder: bool) -> None:
    """Refuse an output that is an input, lies inside an input folder, or (a folder output) holds an input."""
    target = _real(out)
    for what, given in inputs.items():
        if given is None or not Path(given).exists():
            continue  # a hub name, or a path whose absence the command reports itself
        source = _real(given)
        if target == source:
            raise ConfigError(f"{flag} {out} is the {what} this command reads; choose another {flag}")
        if source.is_dir() and _within(target, source):
            raise ConfigError(f"{flag} {out} is inside the {what} {given}; write outside it (choose another {flag})")
        if folder and _within(source, target):
            raise ConfigError(f"{flag} {out} holds the {what} {given}, which this command reads; "
                              f"choose a folder that does not contain it")


def check_writable(path: str | Path, flag: str, *, in_parent: bool) -> None:
    """Refuse an output that cannot be created. ``in_parent``: the command creates files beside ``path`` (atomic
    renames), so ``path``'s parent must be writable; else ``path`` itself when it is an existing folder."""
    probe = _real(path)
    if in_parent or not probe.is_dir():
        probe = probe.parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"{flag} {path}: {probe} is a file, so nothing can be created under it; "
                          f"choose another {flag}")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {path}: no permission to write in {probe}; choose a folder you can write to")


def _entries(folder: Path) -> list[Path]:
    return sorted(folder.iterdir()) if folder.is_dir() else []


# --------------------------------------------------------------------------------------------------- export


def export_foreign_files(folder: str | Path) -> list[str]:
    """Files in ``folder`` that no earlier ``arena-export`` wrote: those its manifest does not list (every file
    when there is no readable manifest)."""
    folder = Path(folder)
    present = {str(p.relative_to(folder)) for p in folder.rglob("*") if not p.is_dir()}
    manifest = _read_json(folder / MANIFEST)
    files = manifest.get("files") if manifest is not None and "artifacts" in manifest else None
    if not isinstance(files, dict):
        return sorted(present)
    return sorted(present - set(files) - {MANIFEST})


def is_arena_export(folder: str | Path) -> bool:
    """Whether ``folder`` is an earlier ``arena-export`` output: a manifest listing every file in the folder."""
    return (Path(folder) / MANIFEST).is_file() and not export_foreign_files(folder)


def check_export_out(out: str | Path, *, checkpoint: str | Path, data: str | Path | None, overwrite: bool,
                     what: str = "checkpoint") -> None:
    """``arena-export --out``: a new or empty folder, or with ``--overwrite`` an earlier export; never the source
    folder (``checkpoint``: a checkpoint, k-fold run or foreign ONNX export, named ``what`` in the message), a folder
    inside it or holding it, nor a folder holding files arena-export did not write. Every source kind comes here
    (:func:`arena.export.precheck.check_export_request`)."""
    check_folder_out(out, inputs={what: checkpoint, "parity data file": data}, overwrite=overwrite,
                     command="arena-export", product="export", foreign_files=export_foreign_files)


def check_folder_out(out: str | Path, *, inputs: Mapping[str, str | Path | None], overwrite: bool, command: str,
                     product: str, foreign_files: Callable[[Path], list[str]]) -> None:
    """The one rule for a command that writes a whole folder (an export, a bundle): ``out`` is a new or empty
    folder, or with ``--overwrite`` one this command wrote before (``foreign_files`` lists what it did not write:
    any is a refusal); never one of ``inputs``, a folder inside one or holding one."""
    out = Path(out)
    check_not_input(out, "--out", inputs, folder=True)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; --out takes the folder to write the {product} into")
    if out.is_dir() and _entries(out):
        if not overwrite:
            raise ConfigError(f"--out {out} already exists and is not empty; choose a new folder, or pass --overwrite "
                              f"to replace an earlier {command} {product}")
        foreign = foreign_files(out)
        if foreign:
            raise ConfigError(f"--out {out} holds files {command} did not write ({_listing(foreign)}); "
                              f"--overwrite replaces only an earlier {product}: choose a new folder")
    check_writable(out, "--out", in_parent=True)


# --------------------------------------------------------------------------------------------------- pack


def bundle_foreign_files(folder: str | Path) -> list[str]:
    """Files in ``folder`` that no earlier ``arena-pack`` wrote: those its ``pack.json`` does not list (every file
    when there is none)."""
    folder = Path(folder)
    present = {str(p.relative_to(folder)) for p in folder.rglob("*") if not p.is_dir()}
    record = _read_json(folder / PACK_FILE)
    files = record.get("files") if record is not None and record.get("kind") == PACK_KIND else None
    if not isinstance(files, dict):
        return sorted(present)
    return sorted(present - set(files) - {PACK_FILE})


def check_pack_out(out: str | Path, *, models: Iterable[str | Path], overwrite: bool) -> None:
    """``arena-pack --out``: a new or empty folder, or with ``--overwrite`` an earlier bundle; never a model
    folder, a folder inside one or a folder holding one, nor a folder with files arena-pack did not write."""
    inputs = {f"model folder {i + 1}" if i else "model folder": m for i, m in enumerate(models)}
    check_folder_out(out, inputs=inputs, overwrite=overwrite, command="arena-pack", product="bundle",
                     foreign_files=bundle_foreign_files)


# --------------------------------------------------------------------------------------------------- files


def check_submission_out(out: str | Path, *, test_csv: str | Path, model: str | Path) -> None:
    """``arena-infer --out``: a new file or an earlier submission; never the input CSV nor inside the model."""
    out = Path(out)
    if out.name.lower().endswith(COMPRESSED_SUFFIXES):
        raise ConfigError(f"--out {out}: arena-infer writes a plain CSV; name it .csv (e.g. submission.csv)")
    check_not_input(out, "--out", {"input CSV": test_csv, "model folder": model}, folder=False)
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; --out takes the submission file, e.g. {out / 'submission.csv'}")
    if out.exists() and out.stat().st_size > 0 and not _is_submission(out):
        raise ConfigError(f"--out {out} exists and is not a submission arena-infer wrote (its first line is not "
                          f"{','.join(SUBMISSION_HEADER)}); choose another --out or remove the file yourself")
    check_writable(out, "--out", in_parent=True)


def _is_submission(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.readline().strip() == ",".join(SUBMISSION_HEADER)
    except OSError:
        return False


def check_report_out(out: str | Path, *, names: Iterable[str], owner: str, kind: str,
                     inputs: Mapping[str, str | Path | None]) -> list[str]:
    """``arena-report`` / ``arena-bench --out``: a folder where each of ``names`` (the files the command writes) is
    new or was written by an earlier run of the same command (``owner``, a JSON file whose ``kind`` is ``kind``).
    Returns the names an earlier run left, so that what this run does not write again can be removed."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; --out takes the folder to write the report files into")
    names = list(names)
    for name in names:
        check_not_input(out / name, "--out", inputs, folder=False)
    check_not_input(out, "--out", inputs, folder=False)
    existing = [n for n in names if (out / n).exists()]
    if existing and not _owned(out / owner, kind):
        raise ConfigError(f"--out {out} already holds {_listing(existing)}, not written by {kind}; "
                          "choose a new or empty folder")
    if any((out / n).is_dir() for n in existing):
        raise ConfigError(f"--out {out}: {_listing(n for n in existing if (out / n).is_dir())} is a folder; "
                          "choose a new or empty folder")
    check_writable(out, "--out", in_parent=False)
    return existing


def _owned(owner: Path, kind: str) -> bool:
    try:
        data = json.loads(owner.read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(data, dict):
        return False
    legacy = {"arena-report": ("rows", "class_counts"), "arena-bench": ("cells", "machine")}.get(kind, ())
    return data.get("kind") == kind or bool(legacy) and all(k in data for k in legacy)


def remove_stale(out: str | Path, earlier: Iterable[str], written: Iterable[str]) -> list[str]:
    """Delete the files an earlier run of the command left in ``out`` that this run did not write again."""
    stale = sorted(set(earlier) - set(written))
    for name in stale:
        (Path(out) / name).unlink(missing_ok=True)
    return stale


# --------------------------------------------------------------------------------------------------- training


def _lora_checkpoint(folder: Path) -> bool:
    """Whether ``folder`` is a LoRA run's checkpoint: the adapter is there, or arena.json says it was merged."""
    meta = _read_json(folder / ARENA_META) or {}
    return (folder / "adapter_config.json").is_file() or (meta.get("head") or {}).get("kind") == "lora" or \
        "merged_from" in meta


def train_foreign_files(folder: Path) -> list[str]:
    """Entries of ``folder`` (and of its ``fold_*`` subfolders) that arena-train does not write."""
    foreign = []
    names = (*TRAIN_NAMES, ADAPTER_CARD) if _lora_checkpoint(folder) else TRAIN_NAMES
    for entry in _entries(folder):
        if not any(fnmatch.fnmatchcase(entry.name, pattern) for pattern in names):
            foreign.append(entry.name)
        elif entry.name.startswith("fold_") and not entry.is_dir():
            foreign.append(entry.name)
        elif entry.name.startswith("fold_"):
            foreign += [f"{entry.name}/{name}" for name in train_foreign_files(entry)]
    return foreign


def train_record(folder: str | Path) -> str | None:
    """The file by which arena-train marked ``folder`` as its own output, or None: its configuration, the marker
    of a run under way, a split's completion record, or (checkpoints of ``--max-steps 0`` before the record
    existed) an ``arena.json`` holding the run's configuration. Each must be the JSON arena-train writes, not
    merely a file of that name."""
    folder = Path(folder)
    config = _read_json(folder / TRAIN_CONFIG)
    if config is not None and {"model", "output", "encoder"} <= set(config):
        return TRAIN_CONFIG
    running = _read_json(folder / RUNNING)
    if running is not None and {"started", "command"} <= set(running):
        return RUNNING
    done = _read_json(folder / DONE)
    if done is not None and "weights_sha256" in done:
        return DONE
    if isinstance((_read_json(folder / ARENA_META) or {}).get("train_config"), dict):
        return ARENA_META
    return None


def check_train_output(output: str | Path, *, resume: bool, overwrite: bool,
                       inputs: Mapping[str, str | Path | None], resume_or_start: bool = False) -> None:
    """``arena-train --output``: new or empty; an earlier arena-train run only with ``--resume`` (unfinished) or
    ``--overwrite`` (start again); never a folder arena-train did not write (no run record, or other files), and
    with ``--resume`` never a folder with nothing to resume unless ``resume_or_start``."""
    out = Path(output)
    if resume and overwrite:
        raise ConfigError("--resume continues the run in --output and --overwrite starts it again; pass one of them")
    check_not_input(out, "--output", inputs, folder=True)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--output {out} is a file; --output takes the checkpoint folder to write")
    check_writable(out, "--output", in_parent=False)
    if not _entries(out):
        if resume and not resume_or_start:
            state = "does not exist" if not out.exists() else "is empty"
            raise ConfigError(f"--resume: --output {out} {state}, so there is no run to resume (a typo?). Pass "
                              "the folder of the interrupted run, or --resume-or-start to start a new run there")
        return
    _check_train_owner(out, resume=resume, overwrite=overwrite)


def _check_train_owner(out: Path, *, resume: bool, overwrite: bool) -> None:
    """A non-empty ``--output``: arena-train's own earlier run, in the state ``--resume`` / ``--overwrite`` need."""
    foreign = train_foreign_files(out)
    if foreign:
        raise ConfigError(f"--output {out} holds files arena-train did not write ({_listing(foreign)}); "
                          "choose a new or empty folder")
    if train_record(out) is None:
        raise ConfigError(f"--output {out} holds a model or files that arena-train did not write (no "
                          f"{TRAIN_CONFIG}, {RUNNING} or {DONE} of an arena-train run: "
                          f"{_listing(p.name for p in _entries(out))}); arena-train replaces or resumes only its own "
                          "runs: choose a new or empty --output")
    running = (out / RUNNING).is_file()
    untrained = (_read_json(out / ARENA_META) or {}).get("trained") is False  # a --max-steps 0 checkpoint
    finished = not running and ((out / DONE).is_file() or (out / "metrics.json").is_file() or untrained)
    if resume and finished:
        raise ConfigError(f"--output {out} holds a finished run: nothing to resume. Pass --overwrite to train it "
                          "again from the start, or choose a new --output")
    if not resume and not overwrite:
        state = ("an unfinished run (interrupted or still running)" if running else
                 "a finished run" if finished else "an earlier arena-train run")
        raise ConfigError(f"--output {out} already holds {state}; pass --resume to continue an unfinished run or "
                          "--overwrite to delete it and train from the start, or choose a new --output")


def _main_rank() -> bool:
    """Under torchrun only rank 0 checks and prepares the output folder (the other ranks would see its marker)."""
    return int(os.environ.get("RANK", "0")) == 0


def check_train_config_output(config: Any, data: str | Path) -> None:
    """:func:`check_train_output` for a :class:`~arena.train.loop.TrainConfig` reading ``data`` (rank 0 only)."""
    if _main_rank():
        check_train_output(config.output, resume=config.resume, overwrite=config.overwrite,
                           resume_or_start=config.resume_or_start,
                           inputs={"training data": data, "model": config.model, "tokenizer": config.tokenizer})


def start_train_output(output: str | Path, *, overwrite: bool) -> None:
    """Call after :func:`check_train_output`: with ``overwrite`` delete the earlier run (every entry is one
    arena-train wrote), then mark the folder as holding an unfinished run until :func:`finish_train_output`.
    Rank 0 only under torchrun."""
    if not _main_rank():
        return
    out = Path(output)
    if overwrite:
        for entry in _entries(out):
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    out.mkdir(parents=True, exist_ok=True)
    marker = {"started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "pid": os.getpid(),
              "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])}
    from arena.io import atomic_write_text

    atomic_write_text(out / RUNNING, json.dumps(marker, indent=2))


def finish_train_output(output: str | Path) -> None:
    if _main_rank():
        (Path(output) / RUNNING).unlink(missing_ok=True)


def interrupted_train_note(output: str | Path) -> str:
    """What an interrupted arena-train (Ctrl-C) kept in ``output``, in one sentence for the ``error:`` line."""
    out = Path(output)
    marker = _read_json(out / RUNNING) or {}
    if marker.get("pid") != os.getpid():
        return f"nothing was written to {out}"
    saved = []
    for folder in [out, *sorted(p for p in out.glob("fold_*") if p.is_dir())]:
        name = "" if folder == out else f"{folder.name}: "
        if (folder / DONE).is_file():
            saved.append(f"{name}finished")
            continue
        state = _read_json(folder / "state" / "trainer_state.json")
        if state is not None:
            saved.append(f"{name}state saved at step {state.get('global_step')}")
    if not saved:
        return (f"the run in {out} had saved no resumable state yet; the same command with --resume starts it "
                "again from the beginning")
    return (f"the run in {out} is kept unfinished ({', '.join(saved)}; state is saved atomically, so it is whole); "
            "continue it with the same command and --resume")


def unfinished_reason(folder: str | Path) -> str | None:
    """Why the model in ``folder`` may be half-trained, or None when nothing says so."""
    folder = Path(folder)
    for where in (folder, folder.parent):  # a fold's checkpoint sits in fold_k/ below the run's folder
        if (where / RUNNING).is_file():
            return f"{where / RUNNING} says the training run that wrote it did not finish (interrupted or running)"
    manifest = _read_json(folder / MANIFEST)
    if manifest is not None:
        if manifest.get("source_training") == "unfinished":
            return "it was exported from a checkpoint whose training run had not finished"
        return None
    meta = _read_json(folder / ARENA_META) or {}
    if "train_config" in meta and meta.get("trained") is not False and not (folder / DONE).is_file():
        return f"it has no {DONE}, so its training run may not have finished"
    return None


def warn_if_unfinished(folder: str | Path) -> bool:
    """Log a warning (stderr) when the checkpoint or export in ``folder`` comes from an unfinished training run."""
    reason = unfinished_reason(folder)
    if reason is not None:
        log.warning("%s may hold a half-trained model: %s. Resume it with arena-train --resume, or train again.",
                    folder, reason)
    return reason is not None


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
