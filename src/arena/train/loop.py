"""The training loop: a function you can call from a test, driven by :class:`TrainConfig`.

What it does, per split (hold-out, one fold, or every fold):

* encodes rows once with :class:`~arena.encode.ArenaEncoder` (the same encoder inference uses);
* trains with AdamW and a linear or cosine schedule on length-grouped batches (deterministic in seed and epoch),
  mixed precision on GPU, gradient accumulation and clipping;
* evaluates log loss and accuracy on the validation rows next to the uniform and class-prior baselines, keeps the
  checkpoint with the best log loss, stops early if asked;
* saves its full state (weights, optimizer, scheduler, RNG, position in the epoch) so ``resume=True`` continues an
  interrupted run and ends with the same weights as an uninterrupted one (checked on CPU by the tests);
* under ``torchrun`` it uses PyTorch's DistributedDataParallel (gloo on CPU, NCCL on GPU); each rank takes every
  ``world``-th batch and rank 0 writes the files.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from arena import LABELS
from arena.batching import default_max_tokens, length_grouped_batches, padding_stats, token_budget_batches
from arena.data import SWAP_CLASSES, Record, labels_of, read_train, resolve_csv, swap_ab
from arena.encode import ArenaEncoder, Encoded, EncoderConfig, pad_batch
from arena.errors import ConfigError, TrainingError
from arena.hybrid import forward_logits, init_from_logistic_regression, is_hybrid
from arena.io import atomic_dir, atomic_open, atomic_write_text
from arena.metrics import accuracy, baselines, fit_temperature, log_loss, softmax
from arena.modeling import (
    CheckpointMeta,
    check_max_length,
    check_tokenizer,
    load_classifier,
    load_model_config,
    load_tokenizer,
    save_checkpoint,
)
from arena.safety import check_train_config_output, finish_train_output, start_train_output
from arena.train.folds import holdout_split, stratified_folds

log = logging.getLogger(__name__)

STATE_DIR = "state"
DONE_FILE = "train_done.json"


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run; written to ``train_config.json`` beside the checkpoint."""

    data: str | None = None
    model: str = "microsoft/deberta-v3-small"
    output: str = "runs/model"
    tokenizer: str | None = None
    random_init: bool = False
    """Treat ``model`` as a config.json and start from random weights (speed tests, from-scratch training)."""
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    batch_size: int = 8
    grad_accum: int = 1
    epochs: float = 3.0
    lr: float = 2e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    scheduler: str = "linear"
    precision: str = "auto"
    seed: int = 42
    max_rows: int | None = None
    val_fraction: float = 0.2
    folds: int | None = None
    fold: int | None = None
    eval_steps: int | None = None
    """Evaluate every this many optimizer steps (and at the end of every epoch)."""
    save_steps: int | None = None
    """Save the resumable state every this many optimizer steps (and at every evaluation)."""
    early_stopping: int | None = None
    """Stop after this many evaluations without a better validation log loss."""
    swap_augment: bool = True
    """Train on every row twice, as given and with A and B exchanged (labels a <-> b). Part of the default recipe:
    on the real sample it is worth more than the encoder (benchmarks/RESULTS.md)."""
    head: str = "hybrid"
    """``hybrid`` (the default recipe): pooled encoder output plus the hand-crafted features (:mod:`arena.hybrid`),
    the feature path started from their logistic regression. ``hf``: the model's own sequence-classification head."""
    head_lr: float = 2e-4
    """Learning rate of the hybrid head's own layers (the encoder uses ``lr``)."""
    max_grad_norm: float = 1.0
    calibrate: bool = True
    """Fit a temperature on the validation (out-of-fold) logits and save it with the model."""
    compile: bool = False
    resume: bool = False
    overwrite: bool = False
    """Delete an earlier run in ``output`` and start again (:mod:`arena.safety` says which folders qualify)."""
    keep_state: bool = False
    max_steps: int | None = None
    """Stop after this many optimizer steps in total (quick runs, tests)."""

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["encoder"] = self.encoder.to_dict()
        return out


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


# --------------------------------------------------------------------------------------------------- setup


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def pick_device(dist: DistInfo | None = None) -> torch.device:
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for fp32. ``auto``: bf16 where supported, else fp16 on GPU; fp32 on CPU."""
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    table = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    if precision not in table:
        raise ConfigError(f"--precision must be auto, fp32, bf16 or fp16; got {precision!r}")
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("--precision fp16 needs a GPU; use bf16 or fp32 on CPU")
    return table[precision]


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _param_groups(model: torch.nn.Module, weight_decay: float, lr: float,
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


HEADS = ("hf", "hybrid")


def build_model(config: TrainConfig) -> torch.nn.Module:
    """The model to fine-tune: the Hugging Face classifier, or the hybrid head on the bare encoder."""
    random_from = config.model if config.random_init else None
    if config.head == "hybrid":
        from arena.hybrid import build_hybrid

        return build_hybrid(config.model, random_init_from=random_from)
    return load_classifier(config.model, random_init_from=random_from)


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 over every parameter and buffer, in name order: two models agree iff their digests do."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------------------------------- evaluation


@torch.no_grad()
def predict_logits(model: torch.nn.Module, encoded: Encoded, index: np.ndarray, pad_id: int,
                   device: torch.device, dtype: torch.dtype | None, max_tokens: int) -> np.ndarray:
    """Logits (float32, len(index) x 3) for the rows ``index`` of ``encoded``, in that order."""
    was_training = model.training
    model.eval()
    out = np.zeros((len(index), 3), dtype=np.float32)
    lengths = encoded.lengths[index]
    for batch in token_budget_batches(lengths, max_tokens):
        ids, mask = pad_batch([encoded.ids[index[i]] for i in batch], pad_id)
        feats = encoded.feature_rows(index[batch])
        with _autocast(device, dtype):
            logits = forward_logits(model, torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device),
                                    None if feats is None else torch.from_numpy(feats).to(device))
        out[batch] = logits.float().cpu().numpy()
    model.train(was_training)
    return out


# --------------------------------------------------------------------------------------------------- state


def _save_state(folder: Path, model, optimizer, scheduler, scaler, state: dict[str, Any], dist: DistInfo) -> None:
    """Write the resumable state atomically (:func:`arena.io.atomic_dir`): a crash keeps the previous state."""
    from safetensors.torch import save_file

    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    if dist.world > 1:  # every rank's RNG goes into its own file; rank 0 writes the rest
        target = folder / STATE_DIR / f"rng_rank{dist.rank}.pt"
        torch.distributed.barrier()
        with atomic_open(target, "wb") as fh:
            torch.save(rng, fh)
        torch.distributed.barrier()
    if not dist.main:
        if dist.world > 1:
            torch.distributed.barrier()
        return
    for stale in folder.glob(f".{STATE_DIR}.*.partial"):  # left by a run killed while saving
        shutil.rmtree(stale, ignore_errors=True)
    with atomic_dir(folder / STATE_DIR, overwrite=True) as tmp:
        if dist.world > 1:
            for f in (folder / STATE_DIR).glob("rng_rank*.pt"):
                shutil.copy2(f, tmp / f.name)
        raw = model.module if hasattr(model, "module") else model
        save_file({k: v.detach().cpu().contiguous() for k, v in raw.state_dict().items()},
                  str(tmp / "model.safetensors"))
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict() if scaler is not None else None, "rng": rng}, tmp / "optim.pt")
        (tmp / "trainer_state.json").write_text(json.dumps(state, indent=1))
    if dist.world > 1:
        torch.distributed.barrier()


def _load_state(folder: Path, model, optimizer, scheduler, scaler, dist: DistInfo) -> dict[str, Any] | None:
    from safetensors.torch import load_file

    state_dir = folder / STATE_DIR
    if not (state_dir / "trainer_state.json").is_file():
        return None
    raw = model.module if hasattr(model, "module") else model
    raw.load_state_dict(load_file(str(state_dir / "model.safetensors")))
    blob = torch.load(state_dir / "optim.pt", weights_only=True, map_location="cpu")
    optimizer.load_state_dict(blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    if scaler is not None and blob.get("scaler"):
        scaler.load_state_dict(blob["scaler"])
    rng = blob["rng"]
    rank_file = state_dir / f"rng_rank{dist.rank}.pt"
    if dist.world > 1 and rank_file.is_file():
        rng = torch.load(rank_file, weights_only=True)
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])
    return json.loads((state_dir / "trainer_state.json").read_text())


# --------------------------------------------------------------------------------------------------- one split


def train_split(
    config: TrainConfig,
    *,
    name: str,
    out_dir: Path,
    tokenizer: Any,
    encoded: Encoded,
    labels: np.ndarray,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    swapped: Encoded | None = None,
    meta: CheckpointMeta,
    on_step: Callable[[int], None] | None = None,
) -> SplitResult:
    """Train one model on ``train_idx`` and select it on ``val_idx``; write the checkpoint into ``out_dir``.

    ``on_step(global_step)`` is called after every optimizer step (tests use it to interrupt a run).
    """
    device = pick_device()
    dist = init_distributed(device)
    dtype = resolve_precision(config.precision, device)
    out_dir.mkdir(parents=True, exist_ok=True)
    if (out_dir / DONE_FILE).is_file() and config.resume:
        raise ConfigError(f"{out_dir} already holds a finished run; nothing to resume (use a new --output)")

    # Training rows: the originals, plus A/B-swapped copies with --swap-augment (labels a <-> b).
    train_rows = [encoded.ids[i] for i in train_idx]
    train_labels = labels[train_idx]
    train_feats = encoded.feature_rows(train_idx)
    if swapped is not None:
        train_rows += [swapped.ids[i] for i in train_idx]
        train_labels = np.concatenate([train_labels, SWAP_CLASSES[labels[train_idx]]])
        if train_feats is not None:
            train_feats = np.concatenate([train_feats, swapped.feature_rows(train_idx)])
    train_lengths = np.fromiter((len(r) for r in train_rows), dtype=np.int64, count=len(train_rows))
    pad_id = tokenizer.pad_token_id or 0

    torch.manual_seed(config.seed)
    model = build_model(config)
    hybrid = is_hybrid(model)
    if hybrid:
        if train_feats is None:
            raise ConfigError("the hybrid head needs features: encode with EncoderConfig(features=True)")
        start = init_from_logistic_regression(model, train_feats, train_labels)
        if dist.main:
            log.info("%s: hybrid head starts from the feature logistic regression (train log loss %.4f)",
                     name, start)
    model.to(device)
    model.train()
    fused = device.type == "cuda"
    optimizer = torch.optim.AdamW(_param_groups(model, config.weight_decay, config.lr,
                                                config.head_lr if hybrid else None), lr=config.lr, fused=fused)
    batches_per_epoch = len(length_grouped_batches(train_lengths, config.batch_size, config.seed)) // dist.world
    steps_per_epoch = max(1, batches_per_epoch // config.grad_accum)
    total_steps = max(1, int(math.ceil(steps_per_epoch * config.epochs)))
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    from transformers import get_scheduler

    if config.scheduler not in ("linear", "cosine", "constant"):
        raise ConfigError(f"--scheduler must be linear, cosine or constant; got {config.scheduler!r}")
    sched_name = "constant_with_warmup" if config.scheduler == "constant" else config.scheduler
    scheduler = get_scheduler(sched_name, optimizer, num_warmup_steps=int(config.warmup_ratio * total_steps),
                              num_training_steps=total_steps)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    if dist.world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model)
    forward_model = torch.compile(model) if config.compile else model

    state = {"global_step": 0, "epoch": 0, "batch_pos": 0, "best": None, "history": [], "stale_evals": 0,
             "loss_sum": 0.0, "loss_count": 0}
    if config.resume:
        loaded = _load_state(out_dir, model, optimizer, scheduler, scaler, dist)
        if loaded is not None:
            state = loaded
            if dist.main:
                log.info("%s: resuming at step %d (epoch %d, batch %d)", name, state["global_step"],
                         state["epoch"], state["batch_pos"])

    val_labels = labels[val_idx]
    base = baselines(train_labels, val_labels)
    model_type = getattr(getattr(model, "module", model).config, "model_type", None)
    eval_tokens = max(default_max_tokens(device.type, encoded_max(encoded), model_type), config.batch_size * 8)
    best_logits = np.zeros((len(val_idx), 3), dtype=np.float32)
    if state["best"] is not None and (out_dir / "val_logits.npy").is_file():
        best_logits = np.load(out_dir / "val_logits.npy")
    history = [EvalResult(**h) for h in state["history"]]
    best = EvalResult(**state["best"]) if state["best"] else None
    eff = padding_stats(length_grouped_batches(train_lengths, config.batch_size, config.seed),
                        train_lengths).efficiency

    from tqdm.auto import tqdm

    bar = tqdm(total=total_steps, initial=state["global_step"], desc=f"train {name}", unit="step",
               disable=None if dist.main else True, dynamic_ncols=True)
    t_start, rows_seen = time.perf_counter(), 0
    stop = False

    def evaluate() -> None:
        nonlocal best, best_logits
        raw = model.module if hasattr(model, "module") else model
        logits = predict_logits(raw, encoded, val_idx, pad_id, device, dtype, eval_tokens)
        probs = softmax(logits)
        elapsed = max(time.perf_counter() - t_start, 1e-9)
        res = EvalResult(
            step=state["global_step"], epoch=round(state["global_step"] / steps_per_epoch, 4),
            train_loss=state["loss_sum"] / max(state["loss_count"], 1),
            log_loss=log_loss(probs, val_labels), accuracy=accuracy(probs, val_labels),
            uniform_log_loss=base["uniform_log_loss"], prior_log_loss=base["prior_log_loss"],
            lr=scheduler.get_last_lr()[0], rows_per_s=rows_seen * dist.world / elapsed,
        )
        state["loss_sum"], state["loss_count"] = 0.0, 0
        history.append(res)
        if dist.main:
            bar.write(f"[{name}] step {res.step} epoch {res.epoch:.2f}: val log loss {res.log_loss:.4f} "
                      f"(uniform {res.uniform_log_loss:.4f}, prior {res.prior_log_loss:.4f}), "
                      f"accuracy {res.accuracy:.3f}, train loss {res.train_loss:.4f}")
        if best is None or res.log_loss < best.log_loss:
            best, best_logits = res, logits
            state["stale_evals"] = 0
            if dist.main:
                save_checkpoint(raw, tokenizer, out_dir, meta)
                with atomic_open(out_dir / "val_logits.npy", "wb") as fh:
                    np.save(fh, best_logits)
        else:
            state["stale_evals"] += 1
        state["history"] = [asdict(h) for h in history]
        state["best"] = asdict(best)

    if hybrid and state["global_step"] == 0 and not history:
        evaluate()  # the starting point (the feature regression) is a candidate for selection too
    epoch_count = int(math.ceil(config.epochs))
    while state["epoch"] < epoch_count and not stop:
        epoch = state["epoch"]
        batches = length_grouped_batches(train_lengths, config.batch_size, config.seed + epoch)
        usable = len(batches) // dist.world * dist.world
        batches = batches[dist.rank:usable:dist.world]
        for pos in range(state["batch_pos"], len(batches)):
            batch = batches[pos]
            ids, mask = pad_batch([train_rows[i] for i in batch], pad_id)
            target = torch.from_numpy(train_labels[batch]).to(device)
            feats = None if train_feats is None else torch.from_numpy(train_feats[batch]).to(device)
            sync = (pos + 1) % config.grad_accum == 0 or pos + 1 == len(batches)
            ctx = model.no_sync() if dist.world > 1 and not sync else contextlib.nullcontext()
            with ctx, _autocast(device, dtype):
                logits = forward_logits(forward_model, torch.from_numpy(ids).to(device),
                                        torch.from_numpy(mask).to(device), feats)
                loss = torch.nn.functional.cross_entropy(logits.float(), target)
            if not torch.isfinite(loss):
                raise TrainingError(
                    f"{name}: the loss became {loss.item()} at step {state['global_step'] + 1}. Try a lower --lr, "
                    "--precision fp32 (or bf16 instead of fp16), or a smaller --max-grad-norm."
                )
            scaled = loss / config.grad_accum
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
            state["loss_sum"] += float(loss.item())
            state["loss_count"] += 1
            rows_seen += len(batch)
            state["batch_pos"] = pos + 1
            if not sync:
                continue
            if scaler is not None:
                scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state["global_step"] += 1
            step = state["global_step"]
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}",
                            rows_s=f"{rows_seen * dist.world / max(time.perf_counter() - t_start, 1e-9):.1f}")
            last = step >= total_steps
            epoch_end = pos + 1 == len(batches)
            if (config.eval_steps and step % config.eval_steps == 0) or last or epoch_end:
                evaluate()
                if config.early_stopping and state["stale_evals"] >= config.early_stopping:
                    if dist.main:
                        bar.write(f"[{name}] early stop: {state['stale_evals']} evaluations without improvement")
                    stop = True
            if epoch_end:
                state["epoch"], state["batch_pos"] = epoch + 1, 0
            saved = bool(history) and history[-1].step == step
            if saved or (config.save_steps and step % config.save_steps == 0) or stop or last:
                _save_state(out_dir, model, optimizer, scheduler, scaler, state, dist)
            if on_step is not None:
                on_step(step)
            if last or stop:
                stop = True
                break
        else:
            state["epoch"], state["batch_pos"] = epoch + 1, 0
    bar.close()

    digests = None
    raw = model.module if hasattr(model, "module") else model
    if dist.world > 1:
        mine = weights_digest(raw)
        digests = [None] * dist.world
        torch.distributed.all_gather_object(digests, mine)
    if dist.main:
        summary = {"name": name, "steps": state["global_step"], "padding_efficiency": eff,
                   "weights_sha256": weights_digest(raw), "world_size": dist.world}
        if digests is not None:
            summary["rank_weights_sha256"] = digests
            summary["ranks_agree"] = len(set(digests)) == 1
        atomic_write_text(out_dir / DONE_FILE, json.dumps(summary, indent=2))
        if not config.keep_state:
            shutil.rmtree(out_dir / STATE_DIR, ignore_errors=True)
    if dist.world > 1:
        torch.distributed.barrier()
    return SplitResult(name, out_dir, best, history, val_idx, best_logits, eff, state["global_step"])


def encoded_max(encoded: Encoded) -> int:
    return int(encoded.lengths.max()) if len(encoded) else 8


# --------------------------------------------------------------------------------------------------- whole run


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


def run_training(config: TrainConfig, on_step: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Read, validate, encode and train every requested split; return the summary written to ``metrics.json``."""
    from transformers import AutoConfig

    path = resolve_csv(config.data, "train.csv")
    check_train_config_output(config, path)  # no one else's files, no finished run, no input in --output
    records = read_train(path)
    if config.max_rows is not None:
        records = records[: config.max_rows]
    labels = labels_of(records)
    # Fail before any compute on whatever the options get wrong.
    if config.folds is not None and config.fold is not None and not 0 <= config.fold < config.folds:
        raise ConfigError(f"--fold {config.fold} is out of range for --folds {config.folds} (0..{config.folds - 1})")
    if config.fold is not None and config.folds is None:
        raise ConfigError("--fold needs --folds")
    if config.random_init and not config.tokenizer:
        raise ConfigError("--random-init builds weights from a config.json and needs --tokenizer")
    if config.head not in HEADS:
        raise ConfigError(f"--head must be one of {', '.join(HEADS)}; got {config.head!r}")
    if config.head == "hybrid" and not config.encoder.features:  # the hybrid head's third input
        config = replace(config, encoder=replace(config.encoder, features=True))
    if config.batch_size < 1 or config.grad_accum < 1 or config.epochs <= 0:
        raise ConfigError("--batch-size and --grad-accum must be >= 1 and --epochs > 0")
    model_config = (AutoConfig.from_pretrained(config.model) if config.random_init
                    else load_model_config(config.model))
    check_max_length(model_config, config.encoder.max_length)
    tokenizer = load_tokenizer(config.tokenizer or config.model)
    check_tokenizer(tokenizer, config.tokenizer or config.model, getattr(model_config, "vocab_size", None))
    if config.max_steps == 0:  # no training: write the initial weights as a checkpoint (speed and export work)
        torch.manual_seed(config.seed)
        model = build_model(config)
        if is_hybrid(model):
            from arena.features import feature_matrix

            feats, y = feature_matrix(records), labels
            if config.swap_augment:
                feats = np.concatenate([feats, feature_matrix([swap_ab(r) for r in records])])
                y = np.concatenate([labels, SWAP_CLASSES[labels]])
            init_from_logistic_regression(model, feats, y)
        start_train_output(config.output, overwrite=config.overwrite)
        save_checkpoint(model, tokenizer, config.output, CheckpointMeta(
            encoder=config.encoder, source=str(config.model), extra={"train_config": config.to_dict(),
                                                                     "trained": False}))
        finish_train_output(config.output)
        log.info("--max-steps 0: saved the untrained model to %s", config.output)
        return {}
    resolve_precision(config.precision, pick_device())

    encoder = ArenaEncoder(tokenizer, config.encoder)
    t0 = time.perf_counter()
    encoded = encoder.encode(records)
    swapped = encoder.encode(records, swap=True) if config.swap_augment else None
    encode_s = time.perf_counter() - t0
    log.info("encoded %d rows in %.1f s (%d exact fallbacks)", len(records), encode_s, encoded.fallbacks)

    out = Path(config.output)
    if config.folds is None:
        train_idx, val_idx = holdout_split(labels, config.val_fraction, config.seed)
        splits = [("holdout", out, train_idx, val_idx)]
    else:
        fold_of = stratified_folds(labels, config.folds, config.seed)
        which = [config.fold] if config.fold is not None else list(range(config.folds))
        single = config.fold is not None
        splits = [(f"fold{k}", out if single else out / f"fold_{k}", np.flatnonzero(fold_of != k),
                   np.flatnonzero(fold_of == k)) for k in which]
    meta = CheckpointMeta(encoder=config.encoder, source=str(config.model),
                          extra={"train_config": config.to_dict(), "data": str(path)})
    start_train_output(out, overwrite=config.overwrite)  # marked unfinished until metrics.json is written
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "train_config.json", json.dumps(config.to_dict(), indent=2))

    results = [
        train_split(config, name=n, out_dir=d, tokenizer=tokenizer, encoded=encoded, labels=labels,
                    train_idx=tr, val_idx=va, swapped=swapped, meta=meta, on_step=on_step)
        for n, d, tr, va in splits
    ]
    if int(os.environ.get("RANK", "0")) != 0:
        return {}

    index = np.concatenate([r.val_index for r in results])
    logits = np.concatenate([r.val_logits for r in results])
    y = labels[index]
    temperature = fit_temperature(logits, y) if config.calibrate and len(y) >= 30 else 1.0
    for r in results:  # every fold's checkpoint carries the temperature fitted on all out-of-fold rows
        if (r.output / "config.json").is_file():
            from arena.modeling import read_meta, write_meta

            m = read_meta(r.output)
            write_meta(r.output, replace(m, temperature=temperature))
    _write_oof(out / "oof.csv", records, index, logits, labels, temperature)
    probs = softmax(logits)
    train_for_prior = labels[np.setdiff1d(np.arange(len(labels)), index)] if config.folds is None else labels
    summary = {
        "rows": len(records),
        "validation_rows": int(len(index)),
        "splits": [{"name": r.name, "output": str(r.output), "steps": r.steps, "validation_rows": len(r.val_index),
                    "padding_efficiency": round(r.padding_efficiency, 4),
                    "best": asdict(r.best) if r.best else None,
                    "history": [asdict(h) for h in r.history]} for r in results],
        "oof_log_loss": log_loss(probs, y),
        "oof_accuracy": accuracy(probs, y),
        "oof_log_loss_calibrated": log_loss(softmax(logits, temperature), y),
        "temperature": temperature,
        **baselines(train_for_prior, y),
        "encode_seconds": encode_s,
    }
    atomic_write_text(out / "metrics.json", json.dumps(summary, indent=2))
    finish_train_output(out)
    return summary
