"""``arena-export``'s up-front checks: every option and path, before a model is loaded or a file written."""

from __future__ import annotations

from pathlib import Path

from arena.cli.options import at_least, one_of, positive, within
from arena.errors import ConfigError, ModelError

EXPORTERS = ("torchscript", "dynamo")
MIN_PARITY_LENGTH = 8


def max_opset(exporter: str) -> int:
    """The newest opset the installed torch exporter writes."""
    try:
        from torch.onnx import _constants
    except ImportError:  # pragma: no cover
        return 20
    if exporter == "torchscript":
        return int(getattr(_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", 20))
    return int(getattr(_constants, "ONNX_MAX_OPSET", 20))


def parity_shape_list(text: str) -> list[tuple[int, int]]:
    """``--parity-shapes`` as (batch, length) pairs, each at least 1 x :data:`MIN_PARITY_LENGTH`."""
    shapes = []
    for part in text.split(","):
        b, x, s = part.strip().lower().partition("x")
        try:
            shape = (int(b), int(s))
        except ValueError:
            shape = None
        if not x or shape is None:
            raise ConfigError(f"--parity-shapes takes BxL pairs such as 1x17,7x133; got {part.strip()!r}")
        if shape[0] < 1 or shape[1] < MIN_PARITY_LENGTH:
            raise ConfigError(f"--parity-shapes {part.strip()}: the batch must be >= 1 and the length >= "
                              f"{MIN_PARITY_LENGTH}")
        shapes.append(shape)
    return shapes


def check_checkpoint(checkpoint: Path) -> None:
    """The source must be an arena-train (or Hugging Face) checkpoint, not an export or a k-fold parent."""
    from arena.artifacts import MANIFEST
    from arena.models.modeling import check_model_folder

    if (checkpoint / MANIFEST).is_file() and not (checkpoint / "model.safetensors").is_file():
        raise ModelError(f"{checkpoint} is an arena-export folder; arena-export reads the arena-train checkpoint "
                         "it came from (source_checkpoint in its manifest)")
    check_model_folder(checkpoint)


def check_export_request(checkpoint: Path, out: Path, *, opset: int, exporter: str, data: str | None,
                         parity_shapes: str, tolerances: dict[str, float], min_agreement: float,
                         trt_buckets: int, max_tokens: int, workspace_gib: float, overwrite: bool) -> Path:
    """Raise :class:`~arena.errors.ArenaError` for any option or path that cannot work; return the parity CSV."""
    from arena.cli.safety import check_export_out, warn_if_unfinished
    from arena.data import check_layout, resolve_csv

    one_of("--exporter", exporter, EXPORTERS)
    within("--opset", opset, 17, max_opset(exporter))
    parity_shape_list(parity_shapes)
    for flag, value in tolerances.items():
        positive(flag, value)
    within("--min-agreement", min_agreement, 0.0, 1.0)
    at_least("--trt-buckets", trt_buckets, 1)
    at_least("--max-tokens", max_tokens, 1)
    positive("--workspace-gib", workspace_gib)
    check_checkpoint(checkpoint)
    path = resolve_csv(data, "train.csv")
    check_layout(path, labelled=False)
    check_export_out(out, checkpoint=checkpoint, data=path, overwrite=overwrite)
    warn_if_unfinished(checkpoint)
    return path
