"""``--attention``'s choices and the up-front checks, declared once and free of torch (the CLI's help and request
checks read them without importing torch, so serving an export stays torch-free). Applying a choice to a model is
:mod:`arena.models.attention`."""

from __future__ import annotations

from arena.errors import ConfigError

ATTENTIONS = ("auto", "eager", "sdpa", "flash")
"""``--attention``'s choices, for arena-train and arena-infer's torch backend."""
FLASH_MODEL_TYPES = ("deberta-v2",)
"""The model types disentangled-flash runs: DeBERTa-v2 and v3 (a v3 checkpoint's config says ``deberta-v2``)."""
FLASH_INSTALL = "pip install 'arena-toolkit[flash]' (or pip install disentangled-flash)"


def flash_missing() -> str | None:
    """None when disentangled-flash imports here; else the import error, for a message."""
    try:
        import disentangled_flash  # noqa: F401
    except ImportError as exc:
        return str(exc)
    return None


def sdpa_supported(model_type: str | None) -> bool:
    """Whether transformers declares an SDPA attention for this model type (its ``_supports_sdpa``)."""
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

    name = MODEL_MAPPING_NAMES.get(model_type) if model_type else None
    model_class = getattr(transformers, name, None) if isinstance(name, str) else None
    return bool(getattr(model_class, "_supports_sdpa", False))


def check_attention(attention: str, model_type: str | None, *, lora: bool = False, compile: bool = False) -> None:
    """Refuse, before any work, an ``--attention`` this model cannot run: one :class:`ConfigError` naming the fix."""
    if attention not in ATTENTIONS:
        raise ConfigError(f"--attention must be one of {', '.join(ATTENTIONS)}; got {attention!r}")
    if attention == "sdpa" and not sdpa_supported(model_type):
        from transformers import __version__

        other = "flash (its fused attention) or eager" if model_type in FLASH_MODEL_TYPES else "eager"
        raise ConfigError(f"--attention sdpa: transformers {__version__} has no SDPA attention for "
                          f"{model_type or 'this'} models; use --attention {other}")
    if attention != "flash":
        return
    if model_type not in FLASH_MODEL_TYPES:
        raise ConfigError(f"--attention flash is disentangled-flash's DeBERTa-v2/v3 attention and this is a "
                          f"{model_type or 'model of unknown type'} model; use --attention auto, eager or sdpa")
    missing = flash_missing()
    if missing is not None:
        raise ConfigError(f"--attention flash needs the disentangled-flash package, which does not import here "
                          f"({missing}); {FLASH_INSTALL}")
    if lora:
        raise ConfigError("--attention flash replaces DeBERTa's attention modules, which LoRA adapters wrap; train "
                          "with --lora-r 0 or use --attention eager")
    if compile:
        raise ConfigError("--attention flash and --compile are not combined (untested together); drop one of them")
