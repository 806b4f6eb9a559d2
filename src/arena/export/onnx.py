"""PyTorch -> ONNX with dynamic batch and sequence axes.

The TorchScript exporter (``dynamo=False``) is the default: with transformers 5 it traces DeBERTa-v3 correctly and
the graph runs at sequence lengths shorter and longer than the traced one (the parity check proves it per export).
``torch.onnx.export`` switched its default to the dynamo exporter in torch 2.9, so the choice is always explicit.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from arena.artifacts import LOGITS as OUTPUT_NAME
from arena.artifacts import dynamic_axes, export_inputs
from arena.errors import ModelError
from arena.export.config import DEFAULT_OPSET, EXPORTERS

TWO_GB = 2 * 1024**3


class _LogitsOnly(torch.nn.Module):
    """Wrap a sequence classifier so the graph has exactly (input_ids, attention_mask) -> logits."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


class _HybridLogits(torch.nn.Module):
    """A hybrid model's graph: (input_ids, attention_mask, features) -> logits."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask, features=features).logits


def export_onnx(model: torch.nn.Module, path: str | Path, *, opset: int = DEFAULT_OPSET,
                exporter: str = "torchscript", sample_length: int = 64) -> dict[str, Any]:
    """Export ``model`` (eval mode, fp32, CPU) to ``path``; return what the manifest records about it."""
    if exporter not in EXPORTERS:
        raise ModelError(f"--exporter must be one of {', '.join(EXPORTERS)}")
    if opset < 17:
        raise ModelError(f"--opset {opset} is too old; LayerNormalization needs opset 17 or newer")
    from arena.models.hybrid import is_hybrid

    path = Path(path)
    model = model.float().eval().cpu()
    hybrid = is_hybrid(model)
    # A new Module is in training mode, and the exporter restores that mode afterwards, which would switch the
    # caller's model (and its dropout) to training: keep everything in eval mode.
    wrapped = (_HybridLogits(model) if hybrid else _LogitsOnly(model)).eval()
    ids = torch.randint(5, 1000, (2, sample_length), dtype=torch.int64)
    mask = torch.ones_like(ids)
    mask[1, sample_length // 2:] = 0
    specs = export_inputs(hybrid)  # the one tensor spec: names, order and dynamic axes
    names = [spec.name for spec in specs]
    args: tuple[torch.Tensor, ...] = (ids, mask, torch.rand(2, model.n_features) * 5) if hybrid else (ids, mask)
    axes = dynamic_axes(specs)
    n_params = sum(p.numel() for p in model.parameters())
    big = n_params * 4 >= TWO_GB
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python scalars in DeBERTa's relative positions
        if exporter == "torchscript":
            torch.onnx.export(
                wrapped, args, str(path), dynamo=False, opset_version=opset,
                input_names=names, output_names=[OUTPUT_NAME], dynamic_axes=axes, do_constant_folding=True,
            )
        else:
            bounds = {"batch": (1, 4096), "sequence": (2, 8192)}
            dims = {name: torch.export.Dim(name, min=lo, max=hi) for name, (lo, hi) in bounds.items()}
            shapes = {spec.name: {axis: dims[dim] for axis, dim in spec.dynamic_axes.items()} for spec in specs}
            program = torch.onnx.export(
                wrapped, args, dynamo=True, opset_version=opset, input_names=names,
                output_names=[OUTPUT_NAME], dynamic_shapes=shapes,
            )
            program.save(str(path), external_data=big)
    model.eval()
    info: dict[str, Any] = {"exporter": exporter, "opset": opset, "inputs": names, "output": OUTPUT_NAME,
                            "parameters": int(n_params), "external_data": big}
    if hybrid:
        info["features"] = list(model.feature_names)
    return info
