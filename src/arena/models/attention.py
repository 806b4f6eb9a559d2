"""Which attention a model runs on the torch backend (``--attention``): applied once (the choices and their up-front
checks are declared in :mod:`arena.models.attention_choices`, which the CLI reads without importing torch).

* ``eager``: transformers' own attention; for DeBERTa-v2/v3 the only one transformers has.
* ``sdpa``: PyTorch's ``scaled_dot_product_attention`` where transformers implements it for the architecture (BERT /
  MiniLM, the decoders). transformers declares none for DeBERTa-v2/v3 (``sdpa_supported`` asks it): the
  content-to-position and position-to-content terms are no additive mask SDPA takes.
* ``flash``: disentangled-flash (the optional extra ``arena-toolkit[flash]``): exact DeBERTa-v2/v3 disentangled
  attention (C2P/P2C) in fused Triton kernels on a CUDA GPU, without the [B, H, L, L] score matrix; on a CPU (and on a
  GPU where its kernels do not apply: head sizes other than 32, 64, 128) its PyTorch path, which is how the CPU tests
  run it. It takes packed, unpadded batches (``cu_seqlens``, :func:`packed_logits`), which the batch executor plans
  (:mod:`arena.serving.executor`), so no compute goes to padding.
* ``auto``: flash for a DeBERTa-v2/v3 model on a CUDA GPU where the package imports, its Triton kernels apply and its
  probabilities on the first batch match eager's on the same batch (:data:`AUTO_MAX_PROB_DIFF`); otherwise the
  attention the model was loaded with (eager for DeBERTa). A failed check is logged and named in the summary.

The swap replaces each layer's self-attention module by disentangled-flash's (weights copied, parameter names kept: a
checkpoint trained with flash loads with eager and back). Until ``auto``'s first-batch check has run, the eager modules
are kept, so it can fall back without reloading the model.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from itertools import pairwise
from typing import Any

import numpy as np
import torch
from torch import nn

from arena.models.attention_choices import FLASH_INSTALL, FLASH_MODEL_TYPES, check_attention, flash_missing
from arena.models.lora import is_lora, unwrap

log = logging.getLogger(__name__)

AUTO_MAX_PROB_DIFF = 2e-2
"""``auto``'s first-batch check: flash's probabilities within this of eager's, on every row of the same batch in the
run's precision. It is the export gate's fp16 limit (``arena.export.parity.Tolerance.fp16``): fp16 rounding moves
probabilities by about that much, a wrong kernel by far more."""
PACKED_LENGTH_CACHE = 64
"""disentangled-flash's PyTorch path keeps an L x L position index per distinct row length it met in a pack; past this
many lengths the caches are dropped (and rebuilt as needed), so memory stays bounded."""


def transformers_model(model: nn.Module) -> nn.Module:
    """The Hugging Face model inside ``model`` (a hybrid head's backbone, or the model itself)."""
    from arena.models.hybrid import HybridClassifier

    raw = unwrap(model)
    return raw.backbone if isinstance(raw, HybridClassifier) else raw


def loaded_attention(model: nn.Module) -> str:
    """The attention transformers runs for ``model`` as loaded (``eager``, ``sdpa``, ...)."""
    return getattr(transformers_model(model).config, "_attn_implementation", None) or "eager"


def _backbone(model: nn.Module) -> nn.Module:
    """The DeBERTa backbone (embeddings + encoder) of a classifier or hybrid model."""
    inner = transformers_model(model)
    return getattr(inner, "base_model", inner)


def _flash_encoder_class() -> type | None:
    if flash_missing() is not None:
        return None
    from disentangled_flash import DebertaV2OptimizedEncoder

    return DebertaV2OptimizedEncoder


def _in_autocast_dtype(method: Callable[..., Any]) -> Callable[..., Any]:
    """Hand disentangled-flash's inference kernels their input in the autocast dtype: they take the dtype flags from
    the hidden states, which autocast leaves in fp32 while the projected queries and keys are fp16/bf16."""

    @functools.wraps(method)
    def call(hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        kind = hidden_states.device.type
        if torch.is_autocast_enabled(kind):
            hidden_states = hidden_states.to(torch.get_autocast_dtype(kind))
        return method(hidden_states, *args, **kwargs)

    return call


class FlashSwap:
    """disentangled-flash's attention installed in a DeBERTa backbone; the eager modules are kept until :meth:`keep`.

    ``kernels``: ``triton`` (fused kernels, CUDA) or ``torch`` (its PyTorch path). ``inference``: the cached inference
    encoder (padded batches need each length prepared: :meth:`activate`) or the differentiable training one.
    """

    def __init__(self, backbone: nn.Module, *, kernels: str, inference: bool) -> None:
        from disentangled_flash import enable_deberta_inference, enable_deberta_training

        self.backbone, self.kernels, self.inference = backbone, kernels, inference
        self._eager = (backbone.encoder, [layer.attention.self for layer in backbone.encoder.layer])
        (enable_deberta_inference if inference else enable_deberta_training)(backbone, backend=kernels)
        self.installed = isinstance(backbone.encoder, _flash_encoder_class())
        """False when the library kept transformers' encoder (its Triton kernels do not apply to this model)."""
        self._flash = (backbone.encoder, [layer.attention.self for layer in backbone.encoder.layer])
        if inference and self.installed:
            for module in self._flash[1]:
                module.requires_grad_(False)  # serving: its fused weights are built inside inference_mode
                module.forward_prepared = _in_autocast_dtype(module.forward_prepared)
                module.forward_packed = _in_autocast_dtype(module.forward_packed)
        self.active = self.installed
        self._lengths: set[int] = set()
        self._packed_lengths: set[int] = set()

    def use(self, flash: bool) -> None:
        """Put flash's modules (or the eager ones) into the model."""
        encoder, modules = self._flash if flash else self._eager
        for layer, module in zip(encoder.layer, modules, strict=True):
            layer.attention.self = module
        self.backbone.encoder = encoder
        self.active = flash
        self._lengths.clear()

    def keep(self) -> None:
        """Drop the modules not in use (the check is done)."""
        if self.active:
            self._eager = None
        else:
            self._flash = None

    def activate(self, length: int) -> None:
        """Before a padded batch of ``length`` tokens through the inference encoder: prepare the position plans once
        (every multiple of 8 up to the first length seen at once: the executor pads to them, longest batch first)
        and select this length's."""
        if not (self.active and self.inference):
            return
        encoder = self.backbone.encoder
        if length not in self._lengths:
            self._lengths |= set(range(8, length + 1, 8)) | {length}
            encoder.prepare_for_inference(sorted(self._lengths))
        encoder.activate_shape(length)

    def after_packed(self, lengths: tuple[int, ...]) -> None:
        """Keep the PyTorch path's per-length caches bounded (:data:`PACKED_LENGTH_CACHE`)."""
        if self.kernels != "torch" or not self.inference:
            return
        self._packed_lengths.update(lengths)
        if len(self._packed_lengths) > PACKED_LENGTH_CACHE:
            self.backbone.encoder.clear_inference_cache()
            self._packed_lengths.clear()
            self._lengths.clear()


class ModelAttention:
    """The attention one model runs: ``name`` (eager, sdpa or flash) and ``note`` (how ``auto`` decided, or why its
    check failed). Made by :func:`set_attention`, or by :func:`attention_in_use` for a model handed in as it is."""

    def __init__(self, name: str, note: str = "", swap: FlashSwap | None = None, check_first: bool = False) -> None:
        self.name, self.note, self.swap, self.check_first = name, note, swap, check_first

    @property
    def label(self) -> str:
        kernels = f" ({'Triton' if self.swap.kernels == 'triton' else 'PyTorch path'})" \
            if self.name == "flash" and self.swap is not None else ""
        return f"{self.name}{kernels}{f'; {self.note}' if self.note else ''}"

    @property
    def packs(self) -> bool:
        """Whether the model takes packed batches (:func:`packed_logits`) now."""
        return self.name == "flash"

    def prepare_padded(self, length: int) -> None:
        if self.swap is not None:
            self.swap.activate(length)

    def after_packed(self, lengths: tuple[int, ...]) -> None:
        if self.swap is not None:
            self.swap.after_packed(lengths)

    def check(self, run: Callable[[bool], torch.Tensor]) -> torch.Tensor:
        """``auto``'s check, on the first batch: ``run(False)`` (eager) and ``run(True)`` (flash) on the same rows;
        flash stays when every probability is within :data:`AUTO_MAX_PROB_DIFF`, else eager does, and the note says
        so. Returns the logits of the attention kept."""
        assert self.swap is not None
        self.check_first = False
        self.swap.use(False)
        reference = run(False)
        self.swap.use(True)
        candidate = run(True)
        diff = float((torch.softmax(reference.float(), -1) - torch.softmax(candidate.float(), -1)).abs().max())
        if np.isfinite(diff) and diff <= AUTO_MAX_PROB_DIFF:
            self.note = f"auto: passed its first-batch check (max |prob diff| vs eager {diff:.2g})"
            self.swap.keep()
            return candidate
        self.swap.use(False)
        self.swap.keep()
        self.name = "eager"
        self.note = (f"auto: flash failed its parity check on the first batch (max |prob diff| vs eager {diff:.3g} > "
                     f"{AUTO_MAX_PROB_DIFF}), so eager runs")
        log.warning("attention %s", self.note)
        return reference


def set_attention(model: nn.Module, attention: str, *, device: str, inference: bool = True,
                  compiled: bool = False) -> ModelAttention:
    """Give ``model`` (on ``device`` already) the attention asked for; what runs. :class:`ConfigError` (before
    anything changes) for a choice this model cannot run. ``inference``: the serving path (packed and padded batches
    without gradients) or training's differentiable one."""
    raw = unwrap(model)
    model_type = getattr(transformers_model(raw).config, "model_type", None)
    check_attention(attention, model_type, lora=is_lora(raw), compile=compiled)
    if attention in ("eager", "sdpa"):
        inner = transformers_model(raw)
        if loaded_attention(inner) != attention:
            inner.set_attn_implementation(attention)
        return ModelAttention(attention)
    on_gpu = device.startswith("cuda")
    if attention == "flash":
        swap = FlashSwap(_backbone(raw), kernels="triton" if on_gpu else "torch", inference=inference)
        if not swap.installed:  # the Triton kernels do not apply to this model: its PyTorch path, still exact
            swap = FlashSwap(_backbone(raw), kernels="torch", inference=inference)
        swap.keep()
        return ModelAttention("flash", swap=swap)
    loaded = loaded_attention(raw)
    why = _auto_declines(model_type, on_gpu=on_gpu, compiled=compiled, lora=is_lora(raw))
    if why is not None:
        return ModelAttention(loaded, why)
    swap = FlashSwap(_backbone(raw), kernels="triton", inference=inference)
    if not swap.installed:
        return ModelAttention(loaded, "auto: disentangled-flash's Triton kernels do not apply to this model here "
                                      "(head size 32, 64 or 128 and an importable Triton needed)")
    return ModelAttention("flash", "auto: first-batch check pending", swap, check_first=True)


def _auto_declines(model_type: str | None, *, on_gpu: bool, compiled: bool, lora: bool) -> str | None:
    """Why ``auto`` keeps the loaded attention (None: it tries flash)."""
    if model_type not in FLASH_MODEL_TYPES:
        return ""
    if not on_gpu:
        return "auto: no CUDA GPU"
    if flash_missing() is not None:
        return f"auto: disentangled-flash is not installed ({FLASH_INSTALL})"
    if compiled:
        return "auto: --compile"
    if lora:
        return "auto: LoRA adapters"
    return None


def attention_in_use(model: nn.Module) -> ModelAttention:
    """The attention of a model handed in as it is (training's evaluation): flash when its encoder is
    disentangled-flash's, else what transformers runs."""
    flash_class = _flash_encoder_class()
    if flash_class is not None and isinstance(getattr(_backbone(model), "encoder", None), flash_class):
        return ModelAttention("flash")
    return ModelAttention(loaded_attention(model))


def packed_logits(model: nn.Module, input_ids: torch.Tensor, cu_seqlens: np.ndarray,
                  features: torch.Tensor | None = None) -> torch.Tensor:
    """Logits (rows x 3) of a packed batch through a model whose encoder is disentangled-flash's.

    ``input_ids``: the rows' tokens end to end, int64 (total_tokens,) on the model's device; ``cu_seqlens``: int
    (rows + 1,) offsets of each row (host array: the boundaries are read once, without a device sync). The same
    numbers as the padded batch up to float rounding: every row keeps its own positions (0, 1, ...) and attends only
    to itself; the head reads each row's first token ([CLS] pooler) or the mean of its tokens (hybrid head).
    """
    from disentangled_flash import PackedSequenceInfo

    from arena.models.hybrid import HybridClassifier

    raw = unwrap(model)
    backbone = _backbone(raw)
    offsets = tuple(int(x) for x in cu_seqlens)
    lengths = tuple(b - a for a, b in pairwise(offsets))
    info = PackedSequenceInfo(offsets, lengths, max(lengths))
    device = input_ids.device
    cu = torch.as_tensor(np.asarray(cu_seqlens, dtype=np.int32)).to(device)
    starts = cu[:-1].long()
    row = torch.repeat_interleave(torch.arange(len(lengths), device=device),
                                  torch.as_tensor(lengths, device=device), output_size=offsets[-1])
    positions = torch.arange(offsets[-1], device=device) - starts[row]
    hidden = backbone.embeddings(input_ids=input_ids[None], position_ids=positions[None]).squeeze(0)
    hidden = backbone.encoder.forward_packed(hidden, cu, info.max_seqlen, output_hidden_states=False,
                                             packed_info=info).last_hidden_state
    if isinstance(raw, HybridClassifier):
        sums = hidden.new_zeros(len(lengths), hidden.size(-1)).index_add_(0, row, hidden)
        pooled = sums / torch.as_tensor(lengths, device=device, dtype=hidden.dtype)[:, None]
        return raw.head_logits(pooled, features)
    pooled = raw.pooler(hidden[starts].unsqueeze(1))
    return raw.classifier(raw.dropout(pooled))
