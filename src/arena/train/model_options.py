"""The model side of a training run: which head, LoRA or full fine-tuning, which weight dtype and quantisation,
decided once from the options and the model's config, and the classifier built from that.

Encoders (DeBERTa, MiniLM) keep their recipe: the hybrid head, full fine-tuning, fp32 weights under autocast.
Decoders (Gemma-2, Llama, Mistral, Qwen-2) get the recipe of the top LMSYS solutions: the Hugging Face head
(last-token pooling), LoRA on every linear projection with the head trained fully, the frozen base held in the
autocast dtype (the GPU's half precision: bf16 from sm80 on, fp16 on a T4) or in 4/8-bit through bitsandbytes
(CUDA only).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import torch

from arena.errors import ConfigError
from arena.models.modeling import (
    default_max_length,
    is_decoder,
    load_classifier,
    quantization_config,
    require_bitsandbytes,
)
from arena.train.config import TrainConfig

log = logging.getLogger(__name__)

DECODER_LORA_R = 16
"""LoRA rank for decoders when ``--lora-r`` is not given (the 1st and 3rd place used 64 on all projections)."""


def model_config_of(model: str, random_init: bool) -> Any:
    from transformers import AutoConfig

    from arena.models.modeling import load_model_config

    return AutoConfig.from_pretrained(model) if random_init else load_model_config(model)


def default_length(model: str, random_init: bool) -> int:
    """``--max-length`` when none is given: 1,024 for decoders, 512 for encoders, within the model's limit."""
    return default_max_length(model_config_of(model, random_init))


def resolve_model_options(config: TrainConfig, model_config: Any) -> TrainConfig:
    """``config`` with ``head``, ``lora_r`` and ``lora_alpha`` decided for this model; raises :class:`ConfigError`
    for a combination that cannot work, before any weights are loaded."""
    decoder = is_decoder(model_config)
    head = config.head if config.head != "auto" else ("hf" if decoder else "hybrid")
    if head == "hybrid" and decoder:
        raise ConfigError(f"--head hybrid mean-pools a bidirectional encoder's output and is built for encoders; "
                          f"{model_config.model_type} is a decoder, which arena trains with its own last-token "
                          "classification head: use --head hf (the default for decoders)")
    lora_r = config.lora_r if config.lora_r is not None else (DECODER_LORA_R if decoder else 0)
    if lora_r < 0:
        raise ConfigError(f"--lora-r must be 0 (full fine-tuning) or positive, got {lora_r}")
    alpha = config.lora_alpha if config.lora_alpha is not None else (2.0 * lora_r if lora_r else None)
    quantized = config.load_in_4bit or config.load_in_8bit
    _check_combination(config, head, lora_r, quantized)
    if lora_r:
        from arena.models.lora import LoraSettings, require_peft

        require_peft()
        LoraSettings(lora_r, float(alpha), config.lora_dropout, config.lora_targets)  # validates the numbers
        if config.lr < 5e-5:
            log.info("LoRA at --lr %g: adapters usually train at 1e-4 to 2e-4", config.lr)
    if quantized:
        require_bitsandbytes("--load-in-4bit" if config.load_in_4bit else "--load-in-8bit")
    return replace(config, head=head, lora_r=lora_r, lora_alpha=alpha)


def _check_combination(config: TrainConfig, head: str, lora_r: int, quantized: bool) -> None:
    if config.load_in_4bit and config.load_in_8bit:
        raise ConfigError("--load-in-4bit and --load-in-8bit exclude each other")
    if lora_r and head == "hybrid":
        raise ConfigError("LoRA (--lora-r) is for the Hugging Face head (--head hf); the hybrid head fine-tunes "
                          "its encoder fully (--lora-r 0)")
    if lora_r and config.random_init:
        raise ConfigError("a LoRA checkpoint is saved without its base weights, so a random base could not be "
                          "loaded again: save the random model first (--max-steps 0 --lora-r 0) and pass that "
                          "folder as --model")
    if quantized and not lora_r:
        raise ConfigError("4-bit / 8-bit base weights are frozen: use them with LoRA (--lora-r N)")
    if config.merge and not lora_r:
        raise ConfigError("--merge merges a LoRA adapter into its base; this run fine-tunes all weights (--lora-r 0)")
    if config.fsdp:
        from arena.train.fsdp import check_combination

        check_combination(lora_r=lora_r, quantized=quantized, compile=config.compile)


def quantization_for(config: TrainConfig, compute_dtype: torch.dtype | None,
                     device: torch.device | None = None) -> Any:
    """The frozen base's bitsandbytes settings, or None for bf16/fp32 weights. The 4-bit compute dtype is the
    autocast one, or under ``--precision fp32`` the GPU's half precision (bf16 from sm80 on, fp16 on a T4)."""
    if not (config.load_in_4bit or config.load_in_8bit):
        return None
    if compute_dtype is None:
        from arena.machine.gpu import half_precision
        from arena.serving.backends.torch import torch_dtype

        compute_dtype = torch_dtype(half_precision(str(device or "cuda")))
    return quantization_config(8 if config.load_in_8bit else 4, compute_dtype)


def build_classifier(config: TrainConfig, *, pad_token_id: int | None = None, device: torch.device | None = None,
                     dtype: torch.dtype | None = None) -> torch.nn.Module:
    """The Hugging Face classifier to fine-tune, with LoRA and gradient checkpointing as ``config`` says.

    Weights: fp32 for full fine-tuning (autocast does the rest); a LoRA run holds the frozen base in the autocast
    ``dtype`` (or 4/8-bit on ``device``), its trainable tensors in fp32.
    """
    quant = quantization_for(config, dtype, device)
    lora = bool(config.lora_r)
    weights = dtype if lora and dtype is not None else torch.float32
    device_map = None
    if quant is not None:
        device_map = {"": device.index or 0} if device is not None and device.type == "cuda" else {"": 0}
    model = load_classifier(config.model, random_init_from=config.model if config.random_init else None,
                            pad_token_id=pad_token_id, dtype=weights, quantization=quant, device_map=device_map)
    if config.gradient_checkpointing and quant is None:
        enable_gradient_checkpointing(model)
    if lora:
        from arena.models.lora import LoraSettings, apply_lora

        settings = LoraSettings(int(config.lora_r), float(config.lora_alpha or 2 * config.lora_r),
                                config.lora_dropout, config.lora_targets)
        model = apply_lora(model, settings, base=config.model, quantized=quant is not None,
                           gradient_checkpointing=config.gradient_checkpointing)
    return model


def enable_gradient_checkpointing(model: torch.nn.Module) -> None:
    """Non-reentrant checkpointing (works with frozen inputs, LoRA and DistributedDataParallel)."""
    target = getattr(model, "backbone", model)  # the hybrid head's encoder
    if not getattr(target, "supports_gradient_checkpointing", False):
        raise ConfigError(f"--gradient-checkpointing: this {target.config.model_type} model does not support it")
    target.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def is_quantized(model: torch.nn.Module) -> bool:
    """Weights held by bitsandbytes (placed at load time; ``.to(device)`` is refused for them)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return bool(getattr(base, "is_quantized", False))
