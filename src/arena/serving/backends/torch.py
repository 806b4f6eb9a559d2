"""PyTorch backend: eager fp32, or fp16/bf16 under autocast (the numerics training uses: the weights stay fp32 and
autocast decides per op, so normalisation and softmax keep fp32); optional torch.compile (dynamic shapes).

Decoder LLMs (and LoRA checkpoints on them) load their weights in the precision asked for, since a 7-9B model in
fp32 does not fit a 16 GB T4, or in 4-bit / 8-bit through bitsandbytes (``4bit``, ``8bit``; CUDA only), and run
under autocast in fp16 (bf16 where the GPU has it). Attention is SDPA where transformers has it for the family
(Gemma-2 runs eager: its attention soft-capping has no SDPA path).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch

from arena.errors import ConfigError
from arena.models.hybrid import forward_logits, is_hybrid
from arena.models.modeling import is_decoder, load_classifier, load_model_config, max_supported_length
from arena.serving.backends.contract import Limits

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
QUANTIZED = {"4bit": 4, "8bit": 8}


class TorchBackend:
    name = "torch"

    def __init__(self, folder: str | Path | None = None, *, model: torch.nn.Module | None = None,
                 device: str = "auto", precision: str = "auto", compile: bool = False,
                 threads: int | None = None) -> None:
        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        if threads or (self.device == "cpu" and model is None):
            # serving a folder: all the cores this process may use, no more. A model handed in (training's
            # evaluation, the export's reference) leaves the process's setting alone: changing it mid-run would
            # change the numerics of the training steps after it (resume must be bit-identical).
            from arena.machine.cpu import allowed_cores

            torch.set_num_threads(threads or allowed_cores())
        self.threads = torch.get_num_threads()
        if precision == "auto":
            precision = "fp16" if self.device.startswith("cuda") else "fp32"
        if precision not in DTYPES and precision not in QUANTIZED:
            raise ConfigError(f"--precision must be one of auto, {', '.join([*DTYPES, *QUANTIZED])}")
        if precision == "fp16" and not self.device.startswith("cuda"):
            raise ConfigError("fp16 inference needs a GPU; use fp32 or bf16 on the CPU")
        self.precision = precision
        self.compiled = compile
        if model is None:
            model = _load(folder, precision, self.device)
        self.model = model.eval()
        if not getattr(model, "is_quantized", False):  # bitsandbytes weights are placed as they load
            self.model.to(self.device)
        self._autocast = _compute_dtype(precision, self.device) if precision != "fp32" else None
        self.forward = torch.compile(self.model, dynamic=True) if compile else self.model
        self.needs_features = is_hybrid(self.model)
        self.limits = Limits(max_length=max_supported_length(self.model.config))

    @property
    def description(self) -> str:
        attention = getattr(self.model.config, "_attn_implementation", None) if is_decoder(self.model.config) \
            else None
        threads = f", {self.threads} threads" if self.device == "cpu" else ""
        return (f"torch ({self.precision}, {self.device}{threads}{f', {attention} attention' if attention else ''}"
                f"{', compiled' if self.compiled else ''})")

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


def _compute_dtype(precision: str, device: str) -> torch.dtype:
    if precision in DTYPES:
        return DTYPES[precision]
    return torch.bfloat16 if device.startswith("cuda") and torch.cuda.is_bf16_supported() else torch.float16


def _load(folder: str | Path | None, precision: str, device: str) -> torch.nn.Module:
    """The classifier in ``folder``: an encoder as saved (fp32; autocast does the rest), a decoder's weights in the
    precision asked for (fp16/bf16, or bitsandbytes 4/8-bit on ``device``)."""
    if not is_decoder(load_model_config(folder)):
        if precision in QUANTIZED:
            raise ConfigError(f"--precision {precision} (bitsandbytes) is for decoder LLMs; this encoder runs in fp32, "
                              "fp16 or bf16 here, or int8 through arena-export --int8")
        return load_classifier(folder, require_three_labels=True)
    if precision in QUANTIZED:
        from arena.models.modeling import quantization_config, require_bitsandbytes

        require_bitsandbytes(f"--precision {precision}")
        compute = _compute_dtype(precision, device)
        return load_classifier(folder, require_three_labels=True, dtype=compute, device_map={"": device},
                               quantization=quantization_config(QUANTIZED[precision], compute))
    return load_classifier(folder, require_three_labels=True, dtype=DTYPES[precision])
