"""The resumable state of one training split: where the run is, and how it is saved and restored.

``state/`` beside the checkpoint holds the weights (a LoRA model's trainable tensors only), the optimizer,
scheduler and gradient-scaler state, every RNG and :class:`TrainState` (the position in the epoch, the evaluation
history). It is written atomically (:func:`arena.io.atomic_dir`), so a crash keeps the previous state, and restoring
it makes a resumed run end with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from arena.errors import TrainingError
from arena.io import atomic_dir
from arena.models.lora import is_lora, trainable_state
from arena.train.runtime import DistInfo

STATE_DIR = "state"


@dataclass
class TrainState:
    """Where a split's training stands; everything in it is saved with the weights."""

    global_step: int = 0
    epoch: int = 0
    batch_pos: int = 0
    """The next batch of ``epoch`` to train on."""
    best: dict[str, Any] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    stale_evals: int = 0
    loss_sum: float = 0.0
    loss_count: int = 0
    """Training loss summed over the steps since the last evaluation (synced from the device when logged)."""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainState:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def save_state(folder: Path, model: torch.nn.Module, optimizer, scheduler, scaler, state: TrainState,
               dist: DistInfo) -> None:
    """Write the resumable state of ``model`` (unwrapped) into ``folder/state`` atomically. Rank 0 alone writes,
    every rank's RNG included (gathered); a sharded model's weights and optimizer state are gathered whole first.
    Every rank must call it."""
    from safetensors.torch import save_file

    from arena.train.fsdp import full_state, is_sharded

    if is_sharded(model):
        weights, optim = full_state(model, optimizer)
    else:
        weights, optim = (trainable_state(model), optimizer.state_dict()) if dist.main else ({}, {})
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    ranks = [rng]
    if dist.world > 1:  # every rank's RNG is sent to rank 0, which writes one file per rank: no other rank writes
        ranks = [None] * dist.world
        torch.distributed.all_gather_object(ranks, rng)
    if dist.main:
        for stale in folder.glob(f".{STATE_DIR}.*.partial"):  # left by a run killed while saving
            shutil.rmtree(stale, ignore_errors=True)
        with atomic_dir(folder / STATE_DIR, overwrite=True) as tmp:
            for rank, each in enumerate(ranks if dist.world > 1 else ()):
                torch.save(each, tmp / f"rng_rank{rank}.pt")
            save_file({k: v.detach().cpu().contiguous() for k, v in weights.items()}, str(tmp / "model.safetensors"))
            torch.save({"optimizer": optim, "scheduler": scheduler.state_dict(),
                        "scaler": scaler.state_dict(), "rng": rng}, tmp / "optim.pt")
            (tmp / "trainer_state.json").write_text(json.dumps(asdict(state), indent=1))
    if dist.world > 1:
        torch.distributed.barrier()


def load_state(folder: Path, model: torch.nn.Module, optimizer, scheduler, scaler,
               dist: DistInfo) -> TrainState | None:
    """Restore what :func:`save_state` wrote into ``model`` (unwrapped) and the rest; None if nothing was saved. A
    sharded model takes the whole tensors and shards them again."""
    from safetensors.torch import load_file

    from arena.train.fsdp import is_sharded, load_full_state

    state_dir = folder / STATE_DIR
    if not (state_dir / "trainer_state.json").is_file():
        return None
    tensors = load_file(str(state_dir / "model.safetensors"))
    blob = torch.load(state_dir / "optim.pt", weights_only=True, map_location="cpu")
    if is_sharded(model):
        load_full_state(model, optimizer, tensors, blob["optimizer"])
    elif is_lora(model):  # the adapter and head only; the frozen base was loaded from its own files
        missing = sorted(set(trainable_state(model)) - set(tensors))
        if missing:
            raise TrainingError(f"{state_dir} does not hold this LoRA model's trainable tensors (missing "
                                f"{missing[:3]}); it was saved by a different run: start a new --output")
        model.load_state_dict(tensors, strict=False)
    else:
        model.load_state_dict(tensors)
    if not is_sharded(model):
        optimizer.load_state_dict(blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    if blob.get("scaler"):
        scaler.load_state_dict(blob["scaler"])
    rng = blob["rng"]
    rank_file = state_dir / f"rng_rank{dist.rank}.pt"
    if dist.world > 1 and rank_file.is_file():
        rng = torch.load(rank_file, weights_only=True)
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])
    return TrainState.from_dict(json.loads((state_dir / "trainer_state.json").read_text()))
