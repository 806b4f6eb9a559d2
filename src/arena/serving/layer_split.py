"""One model across several GPUs, layer by layer: ``arena-infer --devices cuda:0,cuda:1 --split layers``.

``--devices`` normally runs one copy of the model per GPU, each in its own process (:mod:`arena.serving.sharded`):
twice the speed, but every GPU must hold the whole model. A decoder that no single GPU holds (Gemma-2-9B in fp16 is
18.5 GB; a T4 has 15 GB) is split by layers instead: accelerate plans which decoder layers go to which GPU
(``infer_auto_device_map`` on the model built on the meta device from its ``config.json``: no weight is read, no
memory taken), with the model's own ``_no_split_modules`` so no decoder layer is cut in two, within each GPU's free
memory less :data:`HEADROOM`; transformers then loads every layer's weights straight onto its GPU, and a batch
passes through the GPUs in turn. One copy, one process: the split buys memory, not speed (one GPU works at a time).

``--split auto`` (the default) splits only when one GPU cannot hold the model: the estimate (:func:`estimate_bytes`,
the weights in the precision they load in, 4/8-bit included) is compared with each GPU's memory less the headroom.
That comparison reads the GPUs' total memory, which opens no CUDA context, so the parent process of the one-copy-
per-GPU mode still holds nothing on the GPUs; the plan itself reads their free memory. Only decoder checkpoints
(the torch backend) split; an export or an encoder always runs one copy per device.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from arena.errors import ConfigError

log = logging.getLogger(__name__)

SPLITS = ("auto", "copies", "layers")
"""``--split``: ``copies`` one copy of the model per device (one process each), ``layers`` one copy split by layers
across the GPUs, ``auto`` layers only where one GPU cannot hold the model."""
HEADROOM = 0.2
"""Share of each GPU's memory kept free of weights: activations of a batch (a 1,024-token batch of a 9B decoder
needs a few hundred MB per GPU), the CUDA context, cuBLAS workspaces and the allocator's fragmentation."""
GIB = 2**30


@dataclass(frozen=True)
class LayerPlan:
    """Where each part of the model goes: ``device_map`` (module name -> GPU index, accelerate's format, what
    ``from_pretrained(device_map=...)`` takes), the GPUs by name, and what the summary line says."""

    device_map: dict[str, int]
    devices: tuple[str, ...]
    model_bytes: int
    budget: dict[str, int]
    """Bytes of weights each GPU may take (its free memory less the headroom)."""
    used: dict[str, int]
    """Bytes of weights the plan puts on each GPU."""
    layers: dict[str, tuple[int, ...]]
    """Transformer layer indices on each GPU."""
    others: dict[str, tuple[str, ...]]
    """The other parts (embeddings, final norm, score head) on each GPU, by module name."""

    def line(self) -> str:
        """``layer split of 6.1 GiB of weights: cuda:0 layers 0-20 + model.embed_tokens (3.0 of 11.2 GiB); ...``."""
        parts = []
        for device in self.devices:
            held = [_ranges(self.layers[device])] if self.layers.get(device) else []
            held += list(self.others.get(device, ()))
            parts.append(f"{device} {' + '.join(held) or 'nothing'} ({self.used.get(device, 0) / GIB:.1f} of "
                         f"{self.budget[device] / GIB:.1f} GiB)")
        return f"layer split of {self.model_bytes / GIB:.1f} GiB of weights: " + "; ".join(parts)


def _ranges(indices: Sequence[int]) -> str:
    """``(0, 1, 2, 5)`` -> ``layers 0-2, 5``."""
    out: list[str] = []
    start = prev = None
    for i in [*sorted(indices), None]:
        if start is not None and (i is None or i != prev + 1):
            out.append(f"{start}-{prev}" if prev != start else f"{start}")
            start = None
        if i is not None and start is None:
            start = i
        prev = i
    return "layers " + ", ".join(out)


def weights_dtype(precision: str, devices: Sequence[str]) -> Any:
    """The dtype the weights load in: fp32/fp16/bf16 as asked; ``auto``, 4-bit and 8-bit (whose unquantised parts
    and compute use it): the GPUs' half precision (:func:`arena.machine.gpu.half_precision`)."""
    from arena.machine.gpu import half_precision
    from arena.serving.backends.torch import DTYPES, torch_dtype

    return torch_dtype(precision if precision in DTYPES else half_precision(devices))


def meta_model(config: Any, dtype: Any) -> Any:
    """The 3-label classifier of ``config`` on the meta device: every tensor's shape and dtype, no memory."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForSequenceClassification

    if getattr(config, "num_labels", None) != 3:  # a base's config: arena's classifier has 3 labels
        config = copy.deepcopy(config)
        config.num_labels = 3
    with init_empty_weights(), _quiet():
        return AutoModelForSequenceClassification.from_config(config, dtype=dtype)


def _quiet() -> contextlib.AbstractContextManager:
    """accelerate warns that a classifier's weights are 'not tied' (it has no output embedding to tie)."""
    return _LoggerLevel("accelerate.utils.modeling", logging.ERROR)


class _LoggerLevel(contextlib.ContextDecorator):
    def __init__(self, name: str, level: int) -> None:
        self.logger, self.level, self.before = logging.getLogger(name), level, 0

    def __enter__(self) -> _LoggerLevel:
        self.before = self.logger.level
        self.logger.setLevel(self.level)
        return self

    def __exit__(self, *exc: object) -> None:
        self.logger.setLevel(self.before)


def quantized_dtypes(model: Any, precision: str) -> dict[str, Any]:
    """``special_dtypes`` for accelerate's sizes: bitsandbytes stores the weight of every ``nn.Linear`` inside the
    transformer layers in 4 or 8 bits (the score head and embeddings stay in the compute dtype)."""
    import torch
    from accelerate.utils import CustomDtype

    from arena.models.modeling import transformer_layers
    from arena.serving.backends.torch import QUANTIZED

    if precision not in QUANTIZED:
        return {}
    small = CustomDtype.INT4 if QUANTIZED[precision] == 4 else torch.int8
    return {f"{layer}.{name}.weight": small for layer, module in transformer_layers(model)
            for name, sub in module.named_modules() if isinstance(sub, torch.nn.Linear)}


def estimate_bytes(config: Any, precision: str, devices: Sequence[str]) -> int:
    """Bytes the model's weights take on the GPUs in ``precision`` (4/8-bit included), from its config alone."""
    from accelerate.utils import compute_module_sizes

    dtype = weights_dtype(precision, devices)
    model = meta_model(config, dtype)
    return int(compute_module_sizes(model, dtype=dtype, special_dtypes=quantized_dtypes(model, precision))[""])


def plan_layers(config: Any, devices: Sequence[str], precision: str,
                budget: dict[str, int] | None = None) -> LayerPlan:
    """accelerate's balanced plan of the model across ``devices`` (``cuda:N`` names), each GPU taking at most its
    ``budget`` of bytes (default: its free memory less :data:`HEADROOM`). Raises :class:`ConfigError` when the GPUs
    together cannot hold it, naming the sizes and what to change."""
    from accelerate import infer_auto_device_map
    from accelerate.utils import compute_module_sizes, get_balanced_memory

    from arena.machine.gpu import device_index, gpu_memory
    from arena.models.modeling import transformer_layers

    if budget is None:
        budget = {d: int(gpu_memory(d)[0] * (1 - HEADROOM)) for d in devices}
    dtype = weights_dtype(precision, devices)
    model = meta_model(config, dtype)
    special = quantized_dtypes(model, precision)
    no_split = sorted({type(m).__name__ for _, m in transformer_layers(model)})
    sizes = compute_module_sizes(model, dtype=dtype, special_dtypes=special)
    total = int(sizes[""])
    index = {device_index(d): d for d in devices}
    with _quiet():
        memory = get_balanced_memory(model, max_memory={i: budget[d] for i, d in index.items()},
                                     no_split_module_classes=no_split, dtype=dtype, special_dtypes=special)
        device_map = infer_auto_device_map(model, max_memory=memory, no_split_module_classes=no_split, dtype=dtype,
                                           special_dtypes=special)
    if any(where not in index for where in device_map.values()):  # "disk": what no GPU could take
        raise ConfigError(
            f"the model needs {total / GIB:.1f} GiB of weights in {precision}; {', '.join(devices)} can take "
            f"{sum(budget.values()) / GIB:.1f} GiB together ({', '.join(f'{d} {budget[d] / GIB:.1f}' for d in devices)}"
            f" GiB: free memory less {HEADROOM:.0%} headroom). Load it smaller (--precision 4bit or 8bit) or add GPUs "
            "to --devices")
    return _describe(device_map, index, total, budget, model, sizes)


def _describe(device_map: dict[str, Any], index: dict[int, str], total: int, budget: dict[str, int], model: Any,
              sizes: dict[str, int]) -> LayerPlan:
    """The plan's summary: transformer layer indices and other parts per GPU, and the bytes on each."""
    from arena.models.modeling import transformer_layers

    layer_names = [name for name, _ in transformer_layers(model)]
    layers: dict[str, list[int]] = {}
    others: dict[str, list[str]] = {}
    used: dict[str, int] = {}
    for key, where in device_map.items():
        device = index[where]
        used[device] = used.get(device, 0) + int(sizes[key])
        inside = [i for i, name in enumerate(layer_names) if key in ("", name) or name.startswith(key + ".")]
        if inside:
            layers.setdefault(device, []).extend(inside)
        else:
            others.setdefault(device, []).append(key)
    return LayerPlan({k: int(v) for k, v in device_map.items()}, tuple(index.values()), total, dict(budget), used,
                     {d: tuple(v) for d, v in layers.items()}, {d: tuple(v) for d, v in others.items()})


def choose_split(folders: Sequence[str | Path], devices: Sequence[str] | None, *, backend: str = "auto",
                 precision: str = "auto", split: str = "auto", compile: bool = False) -> LayerPlan | None:
    """What ``--split`` makes of a request for ``folders`` (the ``--model`` folders), decided before any model is
    loaded: None (one copy per device of ``--devices``, or one device) or the layer plan of the one folder.
    ``--split layers`` on something that cannot be split is one :class:`ConfigError` naming why; ``--split auto``
    then quietly keeps one copy per device."""
    if split not in SPLITS:
        raise ConfigError(f"--split must be one of {', '.join(SPLITS)}; got {split!r}")
    if split == "copies":
        return None
    asked = split == "layers"
    why = _why_not(folders, devices, backend)
    if why:
        if asked:
            raise ConfigError(f"--split layers: {why}")
        return None
    from arena.machine.gpu import gpu_total_memory
    from arena.models.modeling import load_model_config

    gpus, folder = list(devices or ()), folders[0]
    config = load_model_config(folder)
    if not asked:
        size = estimate_bytes(config, precision, gpus)
        room = min(gpu_total_memory(d) for d in gpus) * (1 - HEADROOM)
        if size <= room:
            return None
        log.info("%s needs %.1f GiB of weights in %s, more than one GPU holds with %.0f%% headroom (%.1f GiB): "
                 "splitting it by layers", folder, size / GIB, precision, HEADROOM * 100, room / GIB)
    if compile:
        raise ConfigError("--compile does not apply to a model split by layers (accelerate's hooks move the "
                          "activations between GPUs); drop --compile, or use --split copies if one GPU holds it")
    plan = plan_layers(config, gpus, precision)
    log.info("%s", plan.line())
    return plan


def _why_not(folders: Sequence[str | Path], devices: Sequence[str] | None, backend: str) -> str | None:
    """Why this request cannot be split by layers, or None."""
    from arena.models.modeling import is_decoder, load_model_config
    from arena.serving.folder import read_folder

    if devices is None or len(devices) < 2:
        return "it splits one model across several GPUs; list them with --devices (e.g. --devices cuda:0,cuda:1)"
    if not all(d.startswith("cuda") for d in devices):
        return f"it places layers on GPUs; --devices {','.join(devices)} lists a CPU"
    if len(set(devices)) < len(devices):
        return f"--devices {','.join(devices)} names a GPU twice; list each GPU once"
    if backend not in ("auto", "torch"):
        return f"only the torch backend splits a model; --backend {backend} runs one copy per device"
    if len(folders) != 1:
        return "a blend is several models; split one checkpoint at a time"
    source = read_folder(folders[0])
    if source.members:
        return "a fold ensemble is several models; split one checkpoint at a time"
    if source.manifest is not None or not source.has_weights:
        return f"{source.path} is not a training checkpoint (model.safetensors or a LoRA adapter); an export runs " \
               "one copy per device"
    if not is_decoder(load_model_config(source.path)):
        return f"{source.path} holds an encoder ({source.model_type}); encoders fit one GPU: one copy per device"
    return None
