"""Where and how a training process runs: device, DistributedDataParallel rank, mixed precision."""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass

import torch

from arena.errors import ConfigError


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
    """The autocast dtype, or None for fp32. ``auto``: the GPU's half precision (bf16 from sm80 on, fp16 on a T4:
    :func:`arena.machine.gpu.half_precision`); fp32 on CPU. ``bf16`` on a GPU without it is refused."""
    from arena.machine.gpu import check_bf16, half_precision
    from arena.serving.backends.torch import torch_dtype

    if precision == "auto":
        return torch_dtype(half_precision(str(device))) if device.type == "cuda" else None
    if precision not in ("fp32", "bf16", "fp16"):
        raise ConfigError(f"--precision must be auto, fp32, bf16 or fp16; got {precision!r}")
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("--precision fp16 needs a GPU; use bf16 or fp32 on CPU")
    check_bf16(precision, str(device))
    return None if precision == "fp32" else torch_dtype(precision)


def gradient_sync(model: torch.nn.Module, sync: bool) -> contextlib.AbstractContextManager:
    """Around one micro-batch's backward: with ``sync`` False (gradient accumulation) the ranks do not reduce
    gradients yet: DistributedDataParallel's ``no_sync``, FSDP's ``set_requires_gradient_sync(False)``."""
    if sync:
        return contextlib.nullcontext()
    if hasattr(model, "no_sync"):
        return model.no_sync()
    if hasattr(model, "set_requires_gradient_sync"):
        return _fsdp_no_sync(model)
    return contextlib.nullcontext()


@contextlib.contextmanager
def _fsdp_no_sync(model: torch.nn.Module):
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)



def weights_digest(model: torch.nn.Module) -> str:
    """sha256 over every parameter and buffer (a LoRA model: its trainable tensors), in name order: two models agree
    iff their digests do."""
    from arena.models.lora import trainable_state

    return state_digest(trainable_state(model))


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 over the tensors of a state dict in name order (:func:`weights_digest` of the model that holds it)."""
    h = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        h.update(name.encode())
        t = tensor.detach().cpu().contiguous()
        h.update((t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy().tobytes())
    return h.hexdigest()
