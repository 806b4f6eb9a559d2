"""PyTorch backend: eager fp32, or fp16/bf16 under autocast (the numerics training uses: the weights stay fp32 and
autocast decides per op, so normalisation and softmax keep fp32); optional torch.compile (dynamic shapes)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch

from arena.backends.base import Limits
from arena.errors import ConfigError
from arena.hybrid import forward_logits, is_hybrid
from arena.modeling import load_classifier, max_supported_length

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class TorchBackend:
    name = "torch"

    def __init__(self, folder: str | Path | None = None, *, model: torch.nn.Module | None = None,
                 device: str = "auto", precision: str = "auto", compile: bool = False,
                 threads: int | None = None) -> None:
        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        if threads or self.device == "cpu":
            from arena.cpu import allowed_cores

            torch.set_num_threads(threads or allowed_cores())  # all the cores this process may use, no more
        self.threads = torch.get_num_threads()
        if precision == "auto":
            precision = "fp16" if self.device.startswith("cuda") else "fp32"
        if precision not in DTYPES:
            raise ConfigError(f"--precision must be one of auto, {', '.join(DTYPES)}")
        if precision == "fp16" and not self.device.startswith("cuda"):
            raise ConfigError("fp16 inference needs a GPU; use fp32 or bf16 on the CPU")
        self.precision = precision
        self.compiled = compile
        if model is None:
            model = load_classifier(folder, require_three_labels=True)
        self.model = model.eval().to(self.device)
        self._autocast = DTYPES[precision] if precision != "fp32" else None
        self.forward = torch.compile(self.model, dynamic=True) if compile else self.model
        self.needs_features = is_hybrid(self.model)
        self.limits = Limits(max_length=max_supported_length(self.model.config))

    @property
    def description(self) -> str:
        threads = f", {self.threads} threads" if self.device == "cpu" else ""
        return f"torch ({self.precision}, {self.device}{threads}{', compiled' if self.compiled else ''})"

    @torch.inference_mode()
    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray,
                 features: np.ndarray | None = None) -> np.ndarray:
        ids = torch.from_numpy(np.ascontiguousarray(input_ids)).to(self.device, non_blocking=True)
        mask = torch.from_numpy(np.ascontiguousarray(attention_mask)).to(self.device, non_blocking=True)
        feats = None
        if self.needs_features:
            if features is None:
                raise ConfigError("this is a hybrid model: it needs the rows' features as a third input")
            feats = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)).to(self.device)
        ctx = (torch.autocast(torch.device(self.device).type, dtype=self._autocast) if self._autocast is not None
               else contextlib.nullcontext())
        with ctx:
            logits = forward_logits(self.forward, ids, mask, feats)
        return logits.float().cpu().numpy()
