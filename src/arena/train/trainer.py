"""Training one split (hold-out, or one fold): a small trainer you can read top to bottom.

:func:`train_split` is the whole story: :func:`prepare_rows` (originals, plus A/B-swapped copies with
``swap_augment``), :func:`build_trainer` (model, optimizer, schedule, scaler, resumed state), then
:func:`run_epochs`, which calls :func:`forward_backward` and :func:`optimizer_step` per batch, :func:`evaluate` at
the evaluation points and :func:`save_state` at the save points, and :func:`finish`. Evaluation scores the
validation rows through :class:`~arena.serving.executor.BatchExecutor`, the executor inference uses.

The loss stays on the device between log points (``LOG_EVERY`` steps and every evaluation): reading it is a
CPU-GPU synchronisation, so it is read only there, and a non-finite loss is caught there.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from arena.artifacts import TRAIN_DONE
from arena.data import SWAP_CLASSES
from arena.encode import Encoded, pad_batch
from arena.errors import ConfigError, TrainingError
from arena.io import atomic_open, atomic_write_text
from arena.metrics import accuracy, baselines, log_loss, softmax
from arena.models.attention import ModelAttention, set_attention
from arena.models.hybrid import forward_logits, init_from_logistic_regression, is_hybrid
from arena.models.modeling import CheckpointMeta, save_checkpoint
from arena.serving.backends.torch import TorchBackend
from arena.serving.batching import default_max_tokens, length_grouped_batches, padding_stats
from arena.serving.executor import BatchExecutor
from arena.train.config import TrainConfig
from arena.train.model_options import build_classifier, enable_gradient_checkpointing, is_quantized
from arena.train.runtime import (
    DistInfo,
    autocast,
    gradient_sync,
    init_distributed,
    pick_device,
    resolve_precision,
    state_digest,
    weights_digest,
)
from arena.train.state import STATE_DIR, TrainState, load_state, save_state

log = logging.getLogger(__name__)

DONE_FILE = TRAIN_DONE
LOG_EVERY = 10
"""Optimizer steps between reads of the loss (each read synchronises with the GPU)."""
PRECISION_NAMES = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


@dataclass
class EvalResult:
    step: int
    epoch: float
    train_loss: float
    log_loss: float
    accuracy: float
    uniform_log_loss: float
    prior_log_loss: float
    lr: float
    rows_per_s: float


@dataclass
class SplitResult:
    name: str
    output: Path
    best: EvalResult | None
    history: list[EvalResult]
    val_index: np.ndarray
    val_logits: np.ndarray
    padding_efficiency: float
    steps: int
    attention: str = ""
    """Which attention trained it (:mod:`arena.models.attention`), as ``train_done.json`` records."""


@dataclass
class TrainRows:
    """The rows one split trains on: token ids, hard labels (-1 for pseudo-labelled rows), target distributions
    (None: train on the hard labels), features (hybrid head) and lengths."""

    ids: list[np.ndarray]
    labels: np.ndarray
    features: np.ndarray | None
    lengths: np.ndarray
    targets: np.ndarray | None = None

    def target(self, batch: np.ndarray) -> np.ndarray:
        """What the loss compares a batch's logits with: class indices, or distributions (soft labels)."""
        return self.labels[batch] if self.targets is None else self.targets[batch]


@dataclass
class ExtraRows:
    """Pseudo-labelled rows (``--extra``): training rows of every split with teacher targets, never validation."""

    encoded: Encoded
    swapped: Encoded | None
    targets: np.ndarray


def prepare_rows(encoded: Encoded, labels: np.ndarray, index: np.ndarray, swapped: Encoded | None,
                 targets: np.ndarray | None = None, extra: ExtraRows | None = None) -> TrainRows:
    """Rows ``index`` as given, plus (``swapped`` given) the same rows with A and B exchanged (labels and target
    columns a <-> b), plus the ``extra`` rows (and their swapped copies) with their teacher targets."""
    parts = [(encoded, index, labels[index], None if targets is None else targets[index])]
    if swapped is not None:
        parts.append((swapped, index, SWAP_CLASSES[labels[index]],
                      None if targets is None else targets[index][:, SWAP_CLASSES]))
    if extra is not None:
        every = np.arange(len(extra.encoded))
        parts.append((extra.encoded, every, np.full(len(every), -1), extra.targets))
        if extra.swapped is not None:
            parts.append((extra.swapped, every, np.full(len(every), -1), extra.targets[:, SWAP_CLASSES]))
    soft = targets is not None or extra is not None
    ids = [enc.ids[i] for enc, idx, _, _ in parts for i in idx]
    feats = [enc.feature_rows(idx) for enc, idx, _, _ in parts]
    y = np.concatenate([lab for _, _, lab, _ in parts]).astype(np.int64)
    dist = (np.concatenate([t if t is not None else np.eye(3, dtype=np.float32)[lab] for _, _, lab, t in parts])
            .astype(np.float32) if soft else None)
    lengths = np.fromiter((len(r) for r in ids), dtype=np.int64, count=len(ids))
    return TrainRows(ids, y, None if feats[0] is None else np.concatenate(feats), lengths, dist)


def build_model(config: TrainConfig, *, pad_token_id: int | None = None, device: torch.device | None = None,
                dtype: torch.dtype | None = None) -> torch.nn.Module:
    """The model to fine-tune: the hybrid head on the bare encoder, or the Hugging Face classifier (with LoRA,
    gradient checkpointing and 4/8-bit base weights as ``config`` says: :mod:`arena.train.model_options`)."""
    if config.head == "hybrid":
        from arena.models.hybrid import build_hybrid

        model = build_hybrid(config.model, random_init_from=config.model if config.random_init else None)
        if config.gradient_checkpointing:
            enable_gradient_checkpointing(model)
        return model
    return build_classifier(config, pad_token_id=pad_token_id, device=device, dtype=dtype)


def param_groups(model: torch.nn.Module, weight_decay: float, lr: float,
                 head_lr: float | None = None) -> list[dict[str, Any]]:
    """AdamW groups: no decay on biases and norms; a hybrid model's head parameters at ``head_lr``."""
    head_ids = {id(p) for p in model.head_parameters()} if head_lr is not None else set()
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        head = id(p) in head_ids
        decay = not (p.ndim < 2 or "norm" in name.lower() or name.endswith(".bias"))
        groups.setdefault((head, decay), []).append(p)
    return [{"params": ps, "weight_decay": weight_decay if decay else 0.0,
             "lr": head_lr if head else lr} for (head, decay), ps in sorted(groups.items())]


def make_scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer, total_steps: int) -> Any:
    from transformers import get_scheduler

    if config.scheduler not in ("linear", "cosine", "constant"):
        raise ConfigError(f"--scheduler must be linear, cosine or constant; got {config.scheduler!r}")
    name = "constant_with_warmup" if config.scheduler == "constant" else config.scheduler
    return get_scheduler(name, optimizer, num_warmup_steps=int(config.warmup_ratio * total_steps),
                         num_training_steps=total_steps)


# ----------------------------------------------------------------------------------------------- the step


def forward_backward(model: torch.nn.Module, ids: np.ndarray, mask: np.ndarray, features: np.ndarray | None,
                     target: np.ndarray, *, device: torch.device, dtype: torch.dtype | None,
                     scaler: torch.amp.GradScaler, grad_accum: int = 1) -> torch.Tensor:
    """One batch forward and backward (gradients accumulate); returns the unscaled loss, still on the device.

    ``target``: class indices (int), or one distribution per row (float, rows x 3: soft labels), for which the
    loss is the cross-entropy against the distribution (the hard-label loss when the distributions are one-hot).
    """
    feats = None if features is None else torch.from_numpy(features).to(device)
    with autocast(device, dtype):
        logits = forward_logits(model, torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device), feats)
        loss = torch.nn.functional.cross_entropy(logits.float(), torch.from_numpy(target).to(device))
    scaler.scale(loss / grad_accum).backward()
    return loss.detach()


def optimizer_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                   scheduler: Any | None, max_grad_norm: float) -> None:
    """Unscale, clip, step (skipped by the scaler on inf/NaN gradients in fp16), advance the schedule."""
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    scaler.step(optimizer)
    scaler.update()
    if scheduler is not None:
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)


# ----------------------------------------------------------------------------------------------- the trainer


@dataclass
class Trainer:
    config: TrainConfig
    name: str
    out_dir: Path
    device: torch.device
    dist: DistInfo
    dtype: torch.dtype | None
    raw: torch.nn.Module
    """The model itself (what is saved); ``model`` may wrap it in DistributedDataParallel. Under ``--fsdp`` both are
    the sharded model (:mod:`arena.train.fsdp`)."""
    model: torch.nn.Module
    forward_model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    rows: TrainRows
    val: Encoded
    val_labels: np.ndarray
    baseline: dict[str, float]
    eval_tokens: int
    pad_id: int
    meta: CheckpointMeta
    tokenizer: Any
    steps_per_epoch: int
    total_steps: int
    state: TrainState = field(default_factory=TrainState)
    best_logits: np.ndarray | None = None
    loss_acc: torch.Tensor | None = None
    """Loss summed on the device since the last read (:func:`read_loss`)."""
    rows_seen: int = 0
    t_start: float = field(default_factory=time.perf_counter)
    bar: Any = None
    attention: str = ""
    """Which attention runs (:attr:`arena.models.attention.ModelAttention.label`)."""

    def say(self, text: str) -> None:
        if self.dist.main:
            self.bar.write(text) if self.bar is not None else log.info(text)


def build_trainer(config: TrainConfig, *, name: str, out_dir: Path, tokenizer: Any, rows: TrainRows,
                  val: Encoded, val_labels: np.ndarray, meta: CheckpointMeta) -> Trainer:
    """Model, optimizer, schedule and scaler for one split, restored from ``out_dir/state`` with ``resume``."""
    device = pick_device()
    dist = init_distributed(device)
    dtype = resolve_precision(config.precision, device)
    torch.manual_seed(config.seed)
    raw = build_model(config, pad_token_id=tokenizer.pad_token_id, device=device, dtype=dtype)
    hybrid = is_hybrid(raw)
    if hybrid:
        if rows.features is None:
            raise ConfigError("the hybrid head needs features: encode with EncoderConfig(features=True)")
        hard = rows.labels >= 0  # pseudo-labelled rows have no hard label to fit the starting regression on
        start = init_from_logistic_regression(raw, rows.features[hard], rows.labels[hard])
        if dist.main:
            log.info("%s: hybrid head starts from the feature logistic regression (train log loss %.4f)", name, start)
    if config.fsdp:  # from the CPU, layer by layer: the whole model never sits on one GPU
        from arena.train.fsdp import shard

        shard(raw, device)  # before the optimizer, which must hold the sharded parameters
    elif not is_quantized(raw):  # bitsandbytes weights were placed on the device as they loaded
        raw.to(device)
    raw.train()
    attention = apply_attention(config, raw, rows, device=device, dtype=dtype, pad_id=tokenizer.pad_token_id or 0)
    # fused on a GPU; on the CPU multi-tensor (foreach) ops instead of a Python loop over the tensors, which give its
    # weights bit for bit in less time (one step over a 128,100 x 32 embedding, DeBERTa-v3's vocabulary at the test
    # models' width, and 40 small tensors: 35 -> 14 ms on 2 idle cores, 145 -> 98 ms on loaded ones); FSDP2's
    # sharded parameters take foreach too (tests/test_fsdp.py)
    optimizer = torch.optim.AdamW(param_groups(raw, config.weight_decay, config.lr, config.head_lr if hybrid else None),
                                  lr=config.lr, **({"fused": True} if device.type == "cuda" else {"foreach": True}))
    batches = len(length_grouped_batches(rows.lengths, config.batch_size, config.seed)) // dist.world
    steps_per_epoch = max(1, batches // config.grad_accum)
    total_steps = max(1, int(math.ceil(steps_per_epoch * config.epochs)))
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    scheduler = make_scheduler(config, optimizer, total_steps)
    scaler = _scaler(config, device, enabled=dtype == torch.float16)
    model = torch.nn.parallel.DistributedDataParallel(raw) if dist.world > 1 and not config.fsdp else raw
    max_len = int(val.lengths.max()) if len(val) else 8
    trainer = Trainer(
        config, name, out_dir, device, dist, dtype, raw, model, compiled(model) if config.compile else model,
        optimizer, scheduler, scaler, rows, val, val_labels, baselines(rows.labels[rows.labels >= 0], val_labels),
        max(default_max_tokens(device.type, max_len, raw.config.model_type), config.batch_size * 8),
        tokenizer.pad_token_id or 0, meta, tokenizer, steps_per_epoch, total_steps, attention=attention.label)
    if config.resume:
        loaded = load_state(out_dir, raw, optimizer, scheduler, scaler, dist)
        if loaded is not None:
            trainer.state = loaded
            if (out_dir / "val_logits.npy").is_file() and loaded.best is not None:
                trainer.best_logits = np.load(out_dir / "val_logits.npy")
            trainer.say(f"[{name}] resuming at step {loaded.global_step} (epoch {loaded.epoch}, "
                        f"batch {loaded.batch_pos})")
    return trainer


def apply_attention(config: TrainConfig, raw: torch.nn.Module, rows: TrainRows, *, device: torch.device,
                    dtype: torch.dtype | None, pad_id: int) -> ModelAttention:
    """``--attention`` on the model to train, before the optimizer sees its parameters (flash's modules hold their
    own copies of the weights). ``auto``'s check runs once, on the first batch of the first epoch (the same rows on
    every rank), in eval mode and the run's precision."""
    attention = set_attention(raw, config.attention, device=device.type, inference=False, compiled=config.compile)
    if attention.check_first:
        first = length_grouped_batches(rows.lengths, config.batch_size, config.seed)[0]
        ids, mask = (torch.from_numpy(a).to(device) for a in pad_batch([rows.ids[i] for i in first], pad_id))
        feats = None if rows.features is None else torch.from_numpy(rows.features[first]).to(device)
        raw.eval()
        with torch.no_grad(), autocast(device, dtype):
            attention.check(lambda _flash: forward_logits(raw, ids, mask, feats))
        raw.train()
    if attention.swap is not None and config.gradient_checkpointing:
        attention.swap.backbone.encoder.gradient_checkpointing = True
    log.info("attention: %s", attention.label)
    return attention


def _scaler(config: TrainConfig, device: torch.device, *, enabled: bool) -> torch.amp.GradScaler:
    if config.fsdp:
        from arena.train.fsdp import grad_scaler

        return grad_scaler(device, enabled)
    return torch.amp.GradScaler(device.type, enabled=enabled)


def gathered_weights(t: Trainer) -> dict[str, torch.Tensor] | None:
    """Under ``--fsdp`` the whole weights on rank 0 ({} elsewhere), gathered by every rank together; else None
    (the model holds them whole)."""
    from arena.train.fsdp import full_weights, is_sharded

    return full_weights(t.raw) if is_sharded(t.raw) else None


def compiled(model: torch.nn.Module) -> torch.nn.Module:
    """``--compile``: one ``torch.compile`` with dynamic shapes. Length-grouped batches change their sequence length
    (and the last one its batch size) from batch to batch, so a static compile is followed by a recompile on the
    second shape anyway (issue 23); marking the shapes dynamic from the start compiles once."""
    return torch.compile(model, dynamic=True)


def read_loss(t: Trainer) -> None:
    """Add the device-side loss sum to the state (one CPU-GPU sync); raise on a non-finite loss."""
    if t.loss_acc is None:
        return
    total = float(t.loss_acc)
    t.loss_acc = None
    if not math.isfinite(total):
        raise TrainingError(
            f"{t.name}: the loss became {total} by step {t.state.global_step} (it is read every {LOG_EVERY} steps and "
            "at each evaluation). Try a lower --lr, --precision fp32 (or bf16 instead of fp16), or a smaller "
            "--max-grad-norm.")
    t.state.loss_sum += total


@torch.no_grad()
def predict_logits(model: torch.nn.Module, encoded: Encoded, index: np.ndarray, pad_id: int,
                   device: torch.device, dtype: torch.dtype | None, max_tokens: int) -> np.ndarray:
    """Logits (float32, len(index) x 3) for the rows ``index`` of ``encoded``, in that order, through the batch
    executor (length-sorted batches under ``max_tokens``); the model's train/eval mode is restored after."""
    was_training = model.training
    rows = Encoded([encoded.ids[i] for i in index], features=encoded.feature_rows(index))
    backend = TorchBackend(model=model, device=str(device), precision=PRECISION_NAMES[dtype])
    out = BatchExecutor(backend, pad_id=pad_id, max_length=max(int(rows.lengths.max(initial=1)), 1),
                        batch_size=256, max_tokens=max_tokens)(rows)
    model.train(was_training)
    return out


def evaluate(t: Trainer) -> EvalResult:
    """Score the validation rows, record the result, and save the checkpoint when it is the best so far."""
    read_loss(t)
    logits = predict_logits(t.raw, t.val, np.arange(len(t.val)), t.pad_id, t.device, t.dtype, t.eval_tokens)
    probs = softmax(logits)
    st = t.state
    res = EvalResult(
        step=st.global_step, epoch=round(st.global_step / t.steps_per_epoch, 4),
        train_loss=st.loss_sum / max(st.loss_count, 1), log_loss=log_loss(probs, t.val_labels),
        accuracy=accuracy(probs, t.val_labels), uniform_log_loss=t.baseline["uniform_log_loss"],
        prior_log_loss=t.baseline["prior_log_loss"], lr=t.scheduler.get_last_lr()[0],
        rows_per_s=t.rows_seen * t.dist.world / max(time.perf_counter() - t.t_start, 1e-9))
    st.loss_sum, st.loss_count = 0.0, 0
    st.history.append(asdict(res))
    t.say(f"[{t.name}] step {res.step} epoch {res.epoch:.2f}: val log loss {res.log_loss:.4f} "
          f"(uniform {res.uniform_log_loss:.4f}, prior {res.prior_log_loss:.4f}), accuracy {res.accuracy:.3f}, "
          f"train loss {res.train_loss:.4f}")
    if st.best is None or res.log_loss < st.best["log_loss"]:
        st.best, st.stale_evals, t.best_logits = asdict(res), 0, logits
        whole = gathered_weights(t)  # --fsdp: every rank joins, rank 0 receives
        if t.dist.main:
            save_checkpoint(t.raw, t.tokenizer, t.out_dir, t.meta, state_dict=whole)
            with atomic_open(t.out_dir / "val_logits.npy", "wb") as fh:
                np.save(fh, logits)
    else:
        st.stale_evals += 1
    return res


def train_epoch(t: Trainer, on_step: Callable[[int], None] | None) -> bool:
    """Train from the saved position to the end of the current epoch; True when the run is over."""
    cfg, st, epoch = t.config, t.state, t.state.epoch
    batches = length_grouped_batches(t.rows.lengths, cfg.batch_size, cfg.seed + epoch)
    usable = len(batches) // t.dist.world * t.dist.world
    batches = batches[t.dist.rank:usable:t.dist.world]
    for pos in range(st.batch_pos, len(batches)):
        batch = batches[pos]
        ids, mask = pad_batch([t.rows.ids[i] for i in batch], t.pad_id)
        sync = (pos + 1) % cfg.grad_accum == 0 or pos + 1 == len(batches)
        with gradient_sync(t.model, sync or t.dist.world == 1):
            loss = forward_backward(t.forward_model, ids, mask, None if t.rows.features is None
                                    else t.rows.features[batch], t.rows.target(batch), device=t.device,
                                    dtype=t.dtype, scaler=t.scaler, grad_accum=cfg.grad_accum)
        t.loss_acc = loss if t.loss_acc is None else t.loss_acc + loss
        st.loss_count += 1
        t.rows_seen += len(batch)
        st.batch_pos = pos + 1
        if sync and after_step(t, epoch_end=pos + 1 == len(batches), on_step=on_step):
            return True
    st.epoch, st.batch_pos = epoch + 1, 0  # (the last batch's step already did this; an empty epoch did not)
    return False


def after_step(t: Trainer, *, epoch_end: bool, on_step: Callable[[int], None] | None) -> bool:
    """Optimizer step, then evaluate / save / stop as the configuration says; True when the run is over."""
    cfg, st = t.config, t.state
    optimizer_step(t.model, t.optimizer, t.scaler, t.scheduler, cfg.max_grad_norm)
    st.global_step += 1
    step, last = st.global_step, st.global_step >= t.total_steps
    t.bar.update(1)
    if step % LOG_EVERY == 0:
        read_loss(t)
        t.bar.set_postfix(loss=f"{st.loss_sum / max(st.loss_count, 1):.4f}",
                          lr=f"{t.scheduler.get_last_lr()[0]:.2e}",
                          rows_s=f"{t.rows_seen * t.dist.world / max(time.perf_counter() - t.t_start, 1e-9):.1f}")
    evaluated = stop = False
    if (cfg.eval_steps and step % cfg.eval_steps == 0) or last or epoch_end:
        evaluate(t)
        evaluated = True
        if cfg.early_stopping and st.stale_evals >= cfg.early_stopping:
            t.say(f"[{t.name}] early stop: {st.stale_evals} evaluations without improvement")
            stop = True
    if epoch_end:
        st.epoch, st.batch_pos = st.epoch + 1, 0
    if evaluated or (cfg.save_steps and step % cfg.save_steps == 0) or stop or last:
        read_loss(t)
        save_state(t.out_dir, t.raw, t.optimizer, t.scheduler, t.scaler, st, t.dist)
    if on_step is not None:
        on_step(step)
    return last or stop


def finish(t: Trainer, padding_efficiency: float) -> None:
    """Write ``train_done.json`` (with every rank's weight digest under DDP; under FSDP the digest of the gathered
    weights) and drop the resumable state."""
    digests = None
    whole = gathered_weights(t)
    if t.dist.world > 1 and whole is None:
        digests = [None] * t.dist.world
        torch.distributed.all_gather_object(digests, weights_digest(t.raw))
    if t.dist.main:
        digest = state_digest(whole) if whole is not None else weights_digest(t.raw)
        summary: dict[str, Any] = {"name": t.name, "steps": t.state.global_step,
                                   "padding_efficiency": padding_efficiency, "weights_sha256": digest,
                                   "world_size": t.dist.world, "fsdp": whole is not None, "best": t.state.best,
                                   "history": t.state.history, "attention": t.attention}
        if digests is not None:
            summary["rank_weights_sha256"] = digests
            summary["ranks_agree"] = len(set(digests)) == 1
        atomic_write_text(t.out_dir / DONE_FILE, json.dumps(summary, indent=2))
        if not t.config.keep_state:
            shutil.rmtree(t.out_dir / STATE_DIR, ignore_errors=True)
    if t.dist.world > 1:
        torch.distributed.barrier()


def finished_split(name: str, out_dir: Path, val_idx: np.ndarray) -> SplitResult:
    """A split an interrupted run had finished (a k-fold run resumed in a later fold): its result as recorded in
    ``train_done.json`` and ``val_logits.npy``, not trained again."""
    done = json.loads((out_dir / DONE_FILE).read_text())
    if "history" not in done or not (out_dir / "val_logits.npy").is_file():
        raise ConfigError(f"{out_dir} was finished by an older arena that did not record its results; train the "
                          "run again with --overwrite")
    logits = np.load(out_dir / "val_logits.npy")
    if len(logits) != len(val_idx):
        raise ConfigError(f"{out_dir}/val_logits.npy has {len(logits)} rows, this split validates on {len(val_idx)}; "
                          "the run's data changed: train it again with --overwrite")
    history = [EvalResult(**h) for h in done["history"]]
    best = EvalResult(**done["best"]) if done.get("best") else None
    log.info("[%s] finished before the interruption (step %d): kept as it is", name, done["steps"])
    return SplitResult(name, out_dir, best, history, val_idx, logits, done["padding_efficiency"], done["steps"],
                       done.get("attention", ""))


def train_split(config: TrainConfig, *, name: str, out_dir: Path, tokenizer: Any, encoded: Encoded,
                labels: np.ndarray, train_idx: np.ndarray, val_idx: np.ndarray, swapped: Encoded | None = None,
                meta: CheckpointMeta, on_step: Callable[[int], None] | None = None,
                targets: np.ndarray | None = None, extra: ExtraRows | None = None) -> SplitResult:
    """Train one model on ``train_idx`` and select it on ``val_idx``; write the checkpoint into ``out_dir``.

    ``on_step(global_step)`` is called after every optimizer step (tests use it to interrupt a run).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    if config.resume and (out_dir / DONE_FILE).is_file():
        return finished_split(name, out_dir, val_idx)
    rows = prepare_rows(encoded, labels, train_idx, swapped, targets, extra)
    val = Encoded([encoded.ids[i] for i in val_idx], features=encoded.feature_rows(val_idx))
    t = build_trainer(config, name=name, out_dir=out_dir, tokenizer=tokenizer, rows=rows, val=val,
                      val_labels=labels[val_idx], meta=meta)
    efficiency = padding_stats(length_grouped_batches(rows.lengths, config.batch_size, config.seed),
                               rows.lengths).efficiency
    from tqdm.auto import tqdm

    t.bar = tqdm(total=t.total_steps, initial=t.state.global_step, desc=f"train {name}", unit="step",
                 disable=None if t.dist.main else True, dynamic_ncols=True)
    if is_hybrid(t.raw) and t.state.global_step == 0 and not t.state.history:
        evaluate(t)  # the starting point (the feature regression) is a candidate for selection too
    while t.state.epoch < int(math.ceil(config.epochs)):
        if train_epoch(t, on_step):
            break
    t.bar.close()
    finish(t, efficiency)
    best = EvalResult(**t.state.best) if t.state.best else None
    logits = t.best_logits if t.best_logits is not None else np.zeros((len(val_idx), 3), dtype=np.float32)
    return SplitResult(name, out_dir, best, [EvalResult(**h) for h in t.state.history], val_idx, logits,
                       efficiency, t.state.global_step, t.attention)
