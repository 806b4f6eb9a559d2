"""The training run: read, validate and encode the rows once, train every split, write the out-of-fold results.

A function you can call from a test, driven by :class:`~arena.train.config.TrainConfig`; one split is trained by
:func:`arena.train.trainer.train_split`. What a run does, per split (hold-out, one fold, or every fold):

* encodes rows once with :class:`~arena.encode.ArenaEncoder` (the same encoder inference uses);
* trains with AdamW and a linear or cosine schedule on length-grouped batches (deterministic in seed and epoch),
  mixed precision on GPU, gradient accumulation and clipping;
* evaluates log loss and accuracy on the validation rows next to the uniform and class-prior baselines, keeps the
  checkpoint with the best log loss, stops early if asked;
* saves its full state (weights, optimizer, scheduler, RNG, position in the epoch) so ``resume=True`` continues an
  interrupted run and ends with the same weights as an uninterrupted one (checked on CPU by the tests);
* under ``torchrun`` it uses PyTorch's DistributedDataParallel (gloo on CPU, NCCL on GPU), or with ``fsdp`` shards
  the model across the ranks (:mod:`arena.train.fsdp`); each rank takes every ``world``-th batch and rank 0 writes
  the files.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from arena import LABELS
from arena.cli.safety import check_train_config_output, finish_train_output, start_train_output
from arena.data import SWAP_CLASSES, Record, labels_of, read_train, resolve_csv, swap_ab
from arena.encode import ArenaEncoder
from arena.errors import ConfigError
from arena.io import atomic_open, atomic_write_text
from arena.metrics import accuracy, baselines, fit_temperature, log_loss, softmax
from arena.models.hybrid import init_from_logistic_regression, is_hybrid
from arena.models.modeling import (
    CheckpointMeta,
    check_max_length,
    check_tokenizer,
    load_tokenizer,
    merge_lora_checkpoint,
    save_checkpoint,
)
from arena.train.config import HEADS, TrainConfig
from arena.train.model_options import model_config_of, resolve_model_options
from arena.train.partition import Partition, partition_rows
from arena.train.record import check_resume, data_fingerprint, read_record, write_record
from arena.train.runtime import pick_device, resolve_precision
from arena.train.targets import (
    Extra,
    check_soft_coverage,
    extra_targets,
    read_extra_files,
    read_soft_labels,
    training_targets,
)
from arena.train.trainer import DONE_FILE, ExtraRows, build_model, train_split

__all__ = ["DONE_FILE", "TrainConfig", "run_training"]

log = logging.getLogger(__name__)


def _write_oof(path: Path, records: list[Record], index: np.ndarray, logits: np.ndarray, labels: np.ndarray,
               temperature: float) -> None:
    import pandas as pd

    probs = softmax(logits, temperature)
    frame = pd.DataFrame({"id": [records[i].id for i in index]})
    for j, col in enumerate(LABELS):
        frame[col] = probs[:, j]
    for j, col in enumerate(("logit_a", "logit_b", "logit_tie")):
        frame[col] = logits[:, j]
    frame["label"] = labels[index]
    with atomic_open(path, "w", encoding="utf-8", newline="") as fh:
        frame.to_csv(fh, index=False)


def check_options(config: TrainConfig) -> TrainConfig:
    """Raise :class:`ConfigError` for options that cannot work together; the config the run uses."""
    if config.folds is not None and config.fold is not None and not 0 <= config.fold < config.folds:
        raise ConfigError(f"--fold {config.fold} is out of range for --folds {config.folds} (0..{config.folds - 1})")
    if config.fold is not None and config.folds is None:
        raise ConfigError("--fold needs --folds")
    if config.random_init and not config.tokenizer:
        raise ConfigError("--random-init builds weights from a config.json and needs --tokenizer")
    if config.head not in HEADS:
        raise ConfigError(f"--head must be one of {', '.join(HEADS)}; got {config.head!r}")
    if config.batch_size < 1 or config.grad_accum < 1 or config.epochs <= 0:
        raise ConfigError("--batch-size and --grad-accum must be >= 1 and --epochs > 0")
    from arena.train.fsdp import check_launch

    check_launch(config.fsdp)
    return config


def save_untrained(config: TrainConfig, inputs: RunInputs, tokenizer: Any) -> dict[str, Any]:
    """``--max-steps 0``: the initial weights as a checkpoint (a hybrid head started from the feature regression);
    the summary the command prints."""
    records, labels = inputs.records, inputs.labels
    torch.manual_seed(config.seed)
    model = build_model(config, pad_token_id=tokenizer.pad_token_id)
    if is_hybrid(model):
        from arena.features import feature_matrix

        feats, y = feature_matrix(records), labels
        if config.swap_augment:
            feats = np.concatenate([feats, feature_matrix([swap_ab(r) for r in records])])
            y = np.concatenate([labels, SWAP_CLASSES[labels]])
        init_from_logistic_regression(model, feats, y)
    start_train_output(config.output, overwrite=config.overwrite)
    write_record(Path(config.output), config, inputs.fingerprint)
    save_checkpoint(model, tokenizer, config.output, CheckpointMeta(
        encoder=config.encoder, source=str(config.model), extra={"train_config": config.to_dict(),
                                                                 "trained": False}))
    if config.merge:
        merge_lora_checkpoint(config.output)
    finish_train_output(config.output)
    log.info("--max-steps 0: saved the untrained model to %s", config.output)
    return {"trained": False, "steps": 0, "rows": len(records), "output": str(config.output)}


def summarise_run(config: TrainConfig, records: list[Record], labels: np.ndarray, results: list, out: Path
                  ) -> dict[str, Any]:
    """Fit the temperature on every out-of-fold row, write it into each checkpoint, write ``oof.csv``; the run's
    summary (``metrics.json``)."""
    index = np.concatenate([r.val_index for r in results])
    logits = np.concatenate([r.val_logits for r in results])
    y = labels[index]
    temperature = fit_temperature(logits, y) if config.calibrate and len(y) >= 30 else 1.0
    for r in results:  # every fold's checkpoint carries the temperature fitted on all out-of-fold rows
        if (r.output / "config.json").is_file():
            from arena.models.modeling import read_meta, write_meta

            m = read_meta(r.output)
            write_meta(r.output, replace(m, temperature=temperature))
            if config.merge:  # the best adapter -> a plain checkpoint (the temperature travels with arena.json)
                merge_lora_checkpoint(r.output)
    _write_oof(out / "oof.csv", records, index, logits, labels, temperature)
    probs = softmax(logits)
    train_for_prior = labels[np.setdiff1d(np.arange(len(labels)), index)] if config.folds is None else labels
    summary = {
        "rows": len(records),
        "validation_rows": int(len(index)),
        "splits": [{"name": r.name, "output": str(r.output), "steps": r.steps, "validation_rows": len(r.val_index),
                    "padding_efficiency": round(r.padding_efficiency, 4), "attention": r.attention,
                    "best": asdict(r.best) if r.best else None,
                    "history": [asdict(h) for h in r.history]} for r in results],
        "oof_log_loss": log_loss(probs, y),
        "oof_accuracy": accuracy(probs, y),
        "oof_log_loss_calibrated": log_loss(softmax(logits, temperature), y),
        "temperature": temperature,
        "attention": "; ".join(dict.fromkeys(r.attention for r in results if r.attention)),
        **baselines(train_for_prior, y),
    }
    return summary


@dataclass
class RunInputs:
    """What a run trains on, read and checked before any work: the rows of the training file (``training_file``:
    all of them; ``records``: the first ``--max-rows``), their labels and soft targets, the extra rows, the
    partition into splits, and the data fingerprint recorded with the run."""

    path: Path
    training_file: list[Record]
    records: list[Record]
    labels: np.ndarray
    targets: np.ndarray | None
    soft_found: int
    extra: Extra | None
    partition: Partition
    fingerprint: dict[str, Any]


def read_inputs(config: TrainConfig, path: Path) -> RunInputs:
    """Read the training, teacher and extra files, partition the rows (:mod:`arena.train.partition`) and check
    that the soft labels fit the data; raises :class:`ConfigError` / :class:`DataError` before any work."""
    training_file = read_train(path)
    records = training_file if config.max_rows is None else training_file[: config.max_rows]
    labels = labels_of(records)
    soft = read_soft_labels(config.soft_labels) if config.soft_labels else None
    targets, found = training_targets(records, labels, soft, config.soft_weight)
    part = partition_rows(config, labels, training_file, read_extra_files(config.extra, soft))
    extra = extra_targets(part.extra, part.extra_sources, soft) if config.extra and soft is not None else None
    if soft is not None:
        check_soft_coverage(str(config.soft_labels), found, len(records), soft, part.extra)
        log.info("soft labels for %d of %d labelled rows (weight %.2f)%s", found, len(records), config.soft_weight,
                 f"; {len(extra.records)} pseudo-labelled extra rows" if extra else "")
    return RunInputs(path, training_file, records, labels, targets, found, extra, part,
                     data_fingerprint(path, training_file, config))


def _data_file(out: Path, recorded: dict[str, Any] | None, path: Path) -> str:
    """The training file a checkpoint names: the one the run was started with (a resume may name a copy)."""
    if recorded is None:
        return str(path)
    return str(((read_record(out)[1] or {}).get("data") or {}).get("file", path))


def run_training(config: TrainConfig, on_step: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Read, validate, encode and train every requested split; return the summary written to ``metrics.json``
    (for ``--max-steps 0``, what was saved; under torchrun, an empty dict on ranks other than 0)."""
    path = resolve_csv(config.data, "train.csv")
    check_train_config_output(config, path)  # no one else's files, no finished run, no input in --output
    config = check_options(config)  # fail before any compute on whatever the options get wrong
    inputs = read_inputs(config, path)
    model_config = model_config_of(config.model, config.random_init)
    config = resolve_model_options(config, model_config)  # head (auto: hybrid / hf for decoders), LoRA, 4/8-bit
    if config.head == "hybrid" and not config.encoder.features:  # the hybrid head's third input
        config = replace(config, encoder=replace(config.encoder, features=True))
    check_max_length(model_config, config.encoder.max_length)
    tokenizer = load_tokenizer(config.tokenizer or config.model, tokenizer_option="--tokenizer")
    check_tokenizer(tokenizer, config.tokenizer or config.model, getattr(model_config, "vocab_size", None),
                    tokenizer_option="--tokenizer")
    out = Path(config.output)
    recorded = check_resume(out, config, inputs.fingerprint) if config.resume else None
    if config.max_steps == 0:  # no training: write the initial weights as a checkpoint (speed and export work)
        return save_untrained(config, inputs, tokenizer)
    resolve_precision(config.precision, pick_device())

    encoder = ArenaEncoder(tokenizer, config.encoder)
    t0 = time.perf_counter()
    encoded = encoder.encode(inputs.records)
    swapped = encoder.encode(inputs.records, swap=True) if config.swap_augment else None
    extra = inputs.extra
    extra_rows = None if extra is None else ExtraRows(
        encoder.encode(extra.records), encoder.encode(extra.records, swap=True) if config.swap_augment else None,
        extra.targets)
    encode_s = time.perf_counter() - t0
    log.info("encoded %d rows in %.1f s (%d exact fallbacks)", len(inputs.records), encode_s, encoded.fallbacks)

    meta = CheckpointMeta(encoder=config.encoder, source=str(config.model),
                          extra={"train_config": recorded or config.to_dict(), "data": _data_file(out, recorded, path)})
    start_train_output(out, overwrite=config.overwrite)  # marked unfinished until metrics.json is written
    out.mkdir(parents=True, exist_ok=True)
    if recorded is None:  # a resume keeps the record of the run it continues
        write_record(out, config, inputs.fingerprint)

    results = [
        train_split(config, name=s.name, out_dir=s.output, tokenizer=tokenizer, encoded=encoded,
                    labels=inputs.labels, train_idx=s.train_index, val_idx=s.val_index, swapped=swapped, meta=meta,
                    on_step=on_step, targets=inputs.targets, extra=extra_rows)
        for s in inputs.partition.splits
    ]
    if int(os.environ.get("RANK", "0")) != 0:
        return {}

    summary = summarise_run(config, inputs.records, inputs.labels, results, out)
    summary["encode_seconds"] = encode_s
    summary["soft_label_rows"] = inputs.soft_found
    if config.extra:
        summary["extra_rows"] = inputs.partition.summary(list(config.extra))
    atomic_write_text(out / "metrics.json", json.dumps(summary, indent=2))
    finish_train_output(out)
    return summary
