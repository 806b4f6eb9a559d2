"""``arena-train --fsdp``: full fine-tuning of a model that does not fit one GPU, sharded across torchrun's processes
with PyTorch's ``fully_shard`` (FSDP2)::

    torchrun --nproc-per-node 2 -m arena.train.cli --model DIR --lora-r 0 --fsdp --output runs/big

Every transformer layer (:func:`arena.models.modeling.transformer_layers`) becomes one FSDP unit, then the root
(embeddings, head): each rank holds 1/N of every weight, gradient and AdamW state, and gathers one layer's weights at
a time for its forward and backward. Like DistributedDataParallel, each rank trains on every N-th batch. The weights
stay fp32 and autocast computes in the GPU's half precision, as without FSDP (fp16: the sharded gradient scaler).

What is written is whole, and written once: the checkpoint and the resumable state are gathered into full tensors
on rank 0 (a collective every rank joins) and rank 0 alone writes them; the other ranks write nothing. A resume
loads the full tensors on every rank and shards them again.

Each rank reads the whole model into CPU memory and shards it from there, layer by layer, onto its GPU (the whole
model never sits on one GPU, but the host must hold one copy per rank: loading on rank 0 alone and broadcasting is
not built). LoRA and 4/8-bit bases are not sharded: they train a few MB of adapter and run under plain torchrun
(DDP). Verified on two gloo CPU processes (``tests/test_fsdp.py``, against the same run under DDP); NCCL on GPUs is
**not run yet**.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from arena.errors import ConfigError

TORCHRUN_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
"""What torchrun sets in every process it starts; ``--fsdp`` needs all of them."""
LAUNCH = "torchrun --nproc-per-node N -m arena.train.cli ... --fsdp"


def check_launch(fsdp: bool, env: dict[str, str] | None = None) -> None:
    """``--fsdp`` outside torchrun (or with one process: nothing to shard across) is one :class:`ConfigError`."""
    if not fsdp:
        return
    env = dict(os.environ) if env is None else env
    missing = [name for name in TORCHRUN_ENV if not env.get(name)]
    if missing:
        raise ConfigError(f"--fsdp shards the model across torchrun's processes, and this process was not started by "
                          f"torchrun ({', '.join(missing)} not set): launch it as {LAUNCH}")
    if int(env["WORLD_SIZE"]) < 2:
        raise ConfigError(f"--fsdp with WORLD_SIZE {env['WORLD_SIZE']}: one process has nothing to shard across; "
                          "use --nproc-per-node 2 or more, or train without --fsdp")


def check_combination(*, lora_r: int, quantized: bool, compile: bool) -> None:
    """What ``--fsdp`` does not shard: LoRA adapters and 4/8-bit bases (DDP trains those), torch.compile."""
    if lora_r:
        raise ConfigError(f"--fsdp shards full fine-tuning (--lora-r 0); LoRA (--lora-r {lora_r}, the default for "
                          "decoders) trains a few MB of adapter: run it under torchrun without --fsdp (DDP)")
    if quantized:
        raise ConfigError("--fsdp shards fp32 weights; 4/8-bit bases (--load-in-4bit/8bit) are frozen and go with "
                          "LoRA under torchrun without --fsdp")
    if compile:
        raise ConfigError("--fsdp with --compile is not supported (the two were never run together here); drop "
                          "--compile")


def shard(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``fully_shard`` every transformer layer, then the root; ``model`` (on the CPU) is changed in place and
    returned, each rank's shards on ``device``. The mesh is the whole process group."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from arena.models.modeling import transformer_layers

    mesh = init_device_mesh(device.type, (torch.distributed.get_world_size(),))
    layers = transformer_layers(model)
    if not layers:
        raise ConfigError(f"--fsdp: no transformer layers found in this {type(model).__name__} to shard one by one")
    for _, layer in layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def is_sharded(model: torch.nn.Module) -> bool:
    """``model`` was sharded by :func:`shard` (its weights are DTensors: no rank holds them whole)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def _options(cpu: bool = True) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=cpu)


def full_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The whole state dict on the CPU on rank 0 ({} on the others). Every rank must call it (it gathers)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_options())


def full_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict[str, Any], dict[str, Any]]:
    """(weights, optimizer state) whole on the CPU on rank 0 ({} on the others), the optimizer's keyed by parameter
    name. Every rank must call it."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    return get_state_dict(model, optimizer, options=_options())


def load_full_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, weights: dict[str, torch.Tensor],
                    optim: dict[str, Any]) -> None:
    """Shard what :func:`full_state` gathered back into ``model`` and ``optimizer`` (every rank passes the same
    whole tensors, read from the state folder)."""
    from torch.distributed.checkpoint.state_dict import set_state_dict

    set_state_dict(model, optimizer, model_state_dict=weights, optim_state_dict=optim,
                   options=_options(cpu=False))


def grad_scaler(device: torch.device, enabled: bool) -> torch.amp.GradScaler:
    """fp16's loss scaler for sharded gradients (it agrees on inf/NaN across ranks)."""
    from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

    return ShardedGradScaler(device.type, enabled=enabled)
