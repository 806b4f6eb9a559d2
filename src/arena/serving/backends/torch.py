"""PyTorch backend: eager fp32, or fp16/bf16 under autocast (the numerics training uses: the weights stay fp32 and
autocast decides per op, so normalisation and softmax keep fp32); optional torch.compile (dynamic shapes).

On a GPU ``auto`` is the card's half precision (:func:`arena.machine.gpu.half_precision`): bf16 from sm80 on, fp16
on a T4 (sm75), where ``bf16`` is refused (:func:`arena.machine.gpu.check_bf16`).

Decoder LLMs (and LoRA checkpoints on them) load their weights in the precision asked for, since a 7-9B model in
fp32 does not fit a 16 GB T4, or in 4-bit / 8-bit through bitsandbytes (``4bit``, ``8bit``; CUDA only), and run
under autocast in the card's half precision. Attention is SDPA where transformers has it for the family
(Gemma-2 runs eager: its attention soft-capping has no SDPA path). A decoder too large for one GPU is split by
layers across several (``device_map``: :mod:`arena.serving.layer_split`).

bf16 on a CPU with AMX computes DeBERTa's relative-position bias in an exact form without torch's slow bf16 gather
(:mod:`arena.models.relpos`; the description says "relative-position gather rewritten").

``--attention`` (:mod:`arena.models.attention`) picks a model's attention; with disentangled-flash's (``flash``, or
``auto``'s choice on a CUDA GPU) the backend also runs packed, unpadded batches (:meth:`TorchBackend.run_packed`),
which the executor then plans instead of padded rectangles.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from arena.encode import pad_batch
from arena.errors import ConfigError
from arena.models.modeling import is_decoder, load_classifier, load_model_config, max_supported_length
from arena.serving.backends.contract import BackendSpec, Limits, OpenOptions, Variant

if TYPE_CHECKING:
    import torch

DTYPES = ("fp32", "fp16", "bf16")
"""Autocast precisions (the weights stay as saved; a decoder's are loaded in this dtype)."""
QUANTIZED = {"4bit": 4, "8bit": 8}
"""bitsandbytes weight precisions: decoder LLMs on an NVIDIA GPU only."""
PRECISIONS = (*DTYPES, *QUANTIZED)


def torch_dtype(name: str) -> torch.dtype:
    """``fp32`` / ``fp16`` / ``bf16`` as a torch dtype (the one table; training's autocast reads it too)."""
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]


class TorchBackend:
    name = "torch"

    def __init__(self, folder: str | Path | None = None, *, model: torch.nn.Module | None = None,
                 device: str = "auto", precision: str = "auto", compile: bool = False,
                 threads: int | None = None, attention: str | None = None,
                 device_map: dict[str, Any] | None = None) -> None:
        """``attention``: ``--attention`` (:data:`arena.models.attention_choices.ATTENTIONS`); None: ``auto`` for a
        model read from ``folder``, and a model handed in (training's evaluation, the export's reference) as it is.
        ``device_map``: a layer split of the folder's model across GPUs (module name -> GPU index, from
        :func:`arena.serving.layer_split.plan_layers`); ``device`` is then the GPU that takes the inputs (the one
        holding the embeddings)."""
        import torch

        from arena.machine.gpu import check_bf16, half_precision
        from arena.models.hybrid import is_hybrid

        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        if threads or (self.device == "cpu" and model is None):
            # serving a folder: all the cores this process may use, no more. A model handed in (training's
            # evaluation, the export's reference) leaves the process's setting alone: changing it mid-run would
            # change the numerics of the training steps after it (resume must be bit-identical).
            from arena.machine.cpu import allowed_cores

            torch.set_num_threads(threads or allowed_cores())
        self.threads = torch.get_num_threads()
        if precision == "auto":
            precision = half_precision(self.device) if self.device.startswith("cuda") else "fp32"
        if precision not in PRECISIONS:
            raise ConfigError(f"--precision must be one of auto, {', '.join(PRECISIONS)}")
        if precision == "fp16" and not self.device.startswith("cuda"):
            raise ConfigError("fp16 inference needs a GPU; use fp32 or bf16 on the CPU")
        check_bf16(precision, self.device)
        self.precision = precision
        self.compiled = compile
        if model is None:
            model = _load(folder, precision, self.device, device_map)
        self.model = model.eval()
        if not placed(model):
            self.model.to(self.device)
        self._autocast = _compute_dtype(precision, self.device) if precision != "fp32" else None
        if attention is None and folder is not None:
            attention = "auto"
        from arena.machine.cpu import has_amx
        from arena.models.attention import attention_in_use, set_attention  # torch: imported when a model loads
        from arena.models.relpos import rewritable_modules

        self.attention = (attention_in_use(self.model) if attention is None else
                          set_attention(self.model, attention, device=self.device, compiled=compile))
        self.forward = torch.compile(self.model, dynamic=True) if compile else self.model
        # bf16 on an AMX CPU (where it was measured: 1.55x): DeBERTa's relative-position bias in the rewrite's
        # exact ``rows`` form, since torch's bf16 gather with the expanded index was most of the model's time there
        # (arena.models.relpos). Not for a compiled model: a method swapped per call would recompile it.
        self.rewrites_relpos = (self.device == "cpu" and self._autocast is not None and not compile
                                and not hasattr(self.model, "_orig_mod") and has_amx()
                                and bool(rewritable_modules(self.model)))
        self.needs_features = is_hybrid(self.model)
        self.limits = Limits(max_length=max_supported_length(self.model.config))

    @property
    def description(self) -> str:
        threads = f", {self.threads} threads" if self.device == "cpu" else ""
        spread = sorted({str(d) for d in (getattr(self.model, "hf_device_map", None) or {}).values()})
        where = f"layers split across cuda:{', cuda:'.join(spread)}" if len(spread) > 1 else self.device
        return (f"torch ({self.precision}, {where}{threads}, {self.attention_label} attention"
                f"{', relative-position gather rewritten' if self.rewrites_relpos else ''}"
                f"{', compiled' if self.compiled else ''})")

    @property
    def attention_label(self) -> str:
        """Which attention runs (and, for ``auto``, why): what summaries report. Final after the first batch."""
        return self.attention.label

    @property
    def packs(self) -> bool:
        """Whether :meth:`run_packed` takes packed batches now (disentangled-flash's attention is in the model)."""
        return self.attention.packs

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray,
                 features: np.ndarray | None = None) -> np.ndarray:
        import torch

        # FSDP gathers a sharded model's weights into buffers it reuses in training: made under inference_mode
        # they could not be written again (training's evaluation under --fsdp), so no_grad there
        with torch.no_grad() if _sharded(self.model) else torch.inference_mode():
            ids, mask = self._tensor(input_ids), self._tensor(attention_mask)
            feats = self._features(features)
            with self._autocast_context():
                if self.attention.check_first:
                    logits = self.attention.check(lambda _flash: self._padded(ids, mask, feats))
                else:
                    logits = self._padded(ids, mask, feats)
            return logits.float().cpu().numpy()

    def run_packed(self, input_ids: np.ndarray, cu_seqlens: np.ndarray,
                   features: np.ndarray | None = None) -> np.ndarray:
        """Logits of a packed batch (the contract: :class:`~arena.serving.backends.contract.PackingBackend`). A
        pack planned before ``auto`` fell back to eager runs padded."""
        import torch

        rows = np.split(np.asarray(input_ids), np.asarray(cu_seqlens)[1:-1])
        if not self.attention.packs:
            return self(*pad_batch(rows, 0), features)  # padding is masked: any pad id gives the same logits

        def run(flash: bool) -> torch.Tensor:
            if flash:
                from arena.models.attention import packed_logits

                return packed_logits(self.model, ids, cu_seqlens, feats)
            padded, mask = pad_batch(rows, 0)
            return self._padded(self._tensor(padded), self._tensor(mask), feats)

        with torch.inference_mode():
            ids, feats = self._tensor(input_ids), self._features(features)
            with self._autocast_context():
                logits = self.attention.check(run) if self.attention.check_first else run(True)
            self.attention.after_packed(tuple(len(r) for r in rows))
            return logits.float().cpu().numpy()

    def _padded(self, ids: torch.Tensor, mask: torch.Tensor, feats: torch.Tensor | None) -> torch.Tensor:
        from arena.models.hybrid import forward_logits
        from arena.models.relpos import relpos_rewrite

        self.attention.prepare_padded(int(ids.shape[1]))
        with relpos_rewrite(self.model) if self.rewrites_relpos else contextlib.nullcontext():
            return forward_logits(self.forward, ids, mask, feats)

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        import torch

        return torch.from_numpy(np.ascontiguousarray(array)).to(self.device, non_blocking=True)

    def _features(self, features: np.ndarray | None) -> torch.Tensor | None:
        if not self.needs_features:
            return None
        if features is None:
            raise ConfigError("this is a hybrid model: it needs the rows' features as a third input")
        return self._tensor(np.asarray(features, dtype=np.float32))

    def _autocast_context(self) -> Any:
        import torch

        return (torch.autocast(torch.device(self.device).type, dtype=self._autocast) if self._autocast is not None
                else contextlib.nullcontext())


def _compute_dtype(precision: str, device: str) -> torch.dtype:
    """The autocast dtype: the precision asked for, or for 4/8-bit weights the card's half precision."""
    from arena.machine.gpu import half_precision

    return torch_dtype(precision if precision in DTYPES else half_precision(device))


def placed(model: torch.nn.Module) -> bool:
    """The model's weights were put on their devices as they loaded and must not be moved as one: bitsandbytes
    weights, a layer split across GPUs (accelerate's ``hf_device_map``), or a model sharded by FSDP (training's
    evaluation under ``--fsdp``)."""
    if getattr(model, "is_quantized", False) or len(set((getattr(model, "hf_device_map", None) or {}).values())) > 1:
        return True
    return _sharded(model)


def _sharded(model: torch.nn.Module) -> bool:
    """``model`` was sharded by FSDP's ``fully_shard`` (:mod:`arena.train.fsdp`)."""
    import torch

    if not torch.distributed.is_available():  # a PyTorch build without torch.distributed has no FSDP either
        return False
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def _load(folder: str | Path | None, precision: str, device: str,
          device_map: dict[str, Any] | None = None) -> torch.nn.Module:
    """The classifier in ``folder``: an encoder as saved (fp32; autocast does the rest), a decoder's weights in the
    precision asked for (fp16/bf16, or bitsandbytes 4/8-bit on ``device``), on the GPUs of ``device_map`` when it
    is split by layers."""
    if not is_decoder(load_model_config(folder)):
        if precision in QUANTIZED:
            raise ConfigError(f"--precision {precision} (bitsandbytes) is for decoder LLMs; this encoder runs in fp32, "
                              "fp16 or bf16 here, or int8 through arena-export --int8")
        if device_map is not None:
            raise ConfigError("a layer split is for decoder LLMs; this encoder fits one device (use --devices "
                              "without --split layers: one copy per device)")
        return load_classifier(folder, require_three_labels=True)
    if precision in QUANTIZED:
        from arena.models.modeling import quantization_config, require_bitsandbytes

        require_bitsandbytes(f"--precision {precision}")
        compute = _compute_dtype(precision, device)
        return load_classifier(folder, require_three_labels=True, dtype=compute, device_map=device_map or
                               {"": device}, quantization=quantization_config(QUANTIZED[precision], compute))
    return load_classifier(folder, require_three_labels=True, dtype=torch_dtype(precision), device_map=device_map)


# ----------------------------------------------------------------------------------------------- declaration

CPU_SPEED = {"fp32": 0.70, "bf16": 1.22}
"""Model-only rows/s vs ONNX Runtime fp32, DeBERTa-v3-xsmall at 512 tokens, 2-core AMD EPYC Zen 4
(``benchmarks/RESULTS.md``, "The fastest CPU path"). bf16 on a CPU is never chosen unasked: no parity check
admits it."""


def _variants(folder: Any, devices: Sequence[str] = ("auto",)) -> list[Variant]:
    """fp32 / bf16 on the CPU; fp16 / bf16 / fp32 on a GPU, the card's half precision first and the default (bf16
    from sm80 on, fp16 on a T4, where bf16 is listed with why it cannot run); 4-bit / 8-bit weights for a decoder on
    a GPU."""
    if not folder.has_weights:
        return []
    from arena.machine.gpu import torch_gpus

    gpu = None if torch_gpus() else "needs a CUDA GPU visible to PyTorch"
    decoder = folder.model_type is not None and _is_decoder_type(folder)
    half, no_bf16 = _card_precision(devices) if gpu is None else ("fp16", None)
    out = [Variant("torch", "fp32", "cpu", speed=CPU_SPEED["fp32"], default=True),
           Variant("torch", "bf16", "cpu", speed=CPU_SPEED["bf16"], checked=False)]
    halves = ("bf16", "fp16") if half == "bf16" else ("fp16", "bf16")  # equal speed: the card's own first
    out += [Variant("torch", p, "cuda", speed=1.0, checked=p != "fp32", default=p == half,
                    why_not=gpu or (no_bf16 if p == "bf16" else None))
            for p in (*halves, "fp32")]
    for p in QUANTIZED:
        why = gpu or (None if decoder else "bitsandbytes weights are for decoder LLMs")
        out.append(Variant("torch", p, "cuda", speed=1.0, checked=False, why_not=why))
    return out


def _card_precision(devices: Sequence[str]) -> tuple[str, str | None]:
    """(the GPUs' half precision, why bf16 cannot run on them or None). bf16 and fp16 on a GPU are both the
    numerics training runs under (autocast), so both may be picked unasked; the card's own is the default."""
    from arena.machine.gpu import half_precision, no_bf16

    gpus = [d for d in devices if d != "cpu"] or ["cuda"]
    return half_precision(gpus), no_bf16(gpus)


def _is_decoder_type(folder: Any) -> bool:
    try:
        return is_decoder(load_model_config(folder.path))
    except Exception:  # noqa: BLE001 - an unreadable config is reported when the model loads
        return False


def _open(folder: Any, variant: Variant, options: OpenOptions) -> TorchBackend:
    device = options.device if options.device != "auto" else variant.device
    return TorchBackend(folder.path, device=device, precision=variant.precision, compile=options.compile,
                        threads=options.threads, attention=options.attention, device_map=options.device_map)


def check_request(precision: str, device: str) -> None:
    """What can be refused before a model is read: a GPU PyTorch cannot see; fp16 and bitsandbytes need an NVIDIA
    GPU; bf16 runs on the CPU and on GPUs from sm80 (not on a T4)."""
    from arena.machine.gpu import check_bf16

    if device.startswith("cuda"):
        from arena.machine.gpu import torch_gpus

        if not torch_gpus():
            raise ConfigError(f"--device {device}: no CUDA GPU is available to PyTorch on this machine; use "
                              "--device cpu (or auto)")
    check_bf16(precision, device)
    if precision == "auto" or device == "cpu" and precision in ("fp32", "bf16"):
        return
    if precision == "fp16" and device == "cpu":
        raise ConfigError("--precision fp16 with the torch backend needs a CUDA GPU; use fp32 or bf16 on the CPU")
    if precision in QUANTIZED:
        from arena.models.modeling import require_bitsandbytes

        require_bitsandbytes(f"--precision {precision}")
    if precision == "fp16":
        from arena.machine.gpu import torch_gpus

        if not torch_gpus():
            raise ConfigError("--precision fp16 with the torch backend needs a CUDA GPU and this machine has none; "
                              "use fp32 or bf16")


SPEC = BackendSpec(
    name="torch", precisions=PRECISIONS, devices=("cpu", "cuda"), reads="checkpoint", variants=_variants,
    open=_open, check_request=check_request,
    absent=lambda folder: f"{folder.path} has no model.safetensors for the torch backend (an export folder holds "
                          "ONNX models: use --backend onnx or openvino, or pass the checkpoint)",
    summary="PyTorch eager (or torch.compile), fp32/bf16 on CPU, fp16/bf16 autocast on GPU, 4/8-bit decoders",
    runtime="torch",
)
