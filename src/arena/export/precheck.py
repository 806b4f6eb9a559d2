"""``arena-export``'s up-front checks: every option, the source folder and the out folder, before a model is loaded
or a file written.

One entry, :func:`check_export_request`, for every kind of source (an arena-train checkpoint, a k-fold training
output, a foreign ONNX export), so each goes through the same option checks and the same safety rule
(:func:`arena.cli.safety.check_export_out` with the source folder as the input): an export can never write into,
over, or around the folder it reads, nor replace a folder of files it did not write.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from arena.cli.options import at_least, one_of, positive, within
from arena.errors import ArenaError, ConfigError, ModelError
from arena.export.config import EXPORTERS, ExportConfig
from arena.export.parity import parse_shapes
from arena.machine.gpu import tensorrt_available
from arena.serving.foreign_folder import ForeignExport

CHECKPOINT, ENSEMBLE, FOREIGN = "checkpoint", "ensemble", "foreign ONNX export"


@dataclass(frozen=True)
class ExportRequest:
    """What the checks established: the source and its kind, the parity CSV, and for a k-fold run its members, for
    a foreign export what :func:`~arena.serving.foreign_folder.inspect_foreign` found."""

    source: Path
    out: Path
    data: Path
    kind: str
    members: tuple[Path, ...] = ()
    foreign: ForeignExport | None = None
    folds: Any = None
    """A k-fold source's :class:`~arena.serving.ensemble.FoldSet` (how many of how many folds are exported)."""
    source_training: str | None = None
    """Overrides what the run markers say of the source's training (a finished fold of an interrupted run)."""


def max_opset(exporter: str) -> int:
    """The newest opset the installed torch exporter writes."""
    try:
        from torch.onnx import _constants
    except ImportError:  # pragma: no cover
        return 20
    if exporter == "torchscript":
        return int(getattr(_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", 20))
    return int(getattr(_constants, "ONNX_MAX_OPSET", 20))


def source_kind(source: Path) -> str:
    """:data:`FOREIGN` (an ONNX model, no manifest, no weights), :data:`ENSEMBLE` (fold folders) or
    :data:`CHECKPOINT` (anything else; :func:`check_checkpoint` says what is wrong with it)."""
    from arena.serving.ensemble import fold_set
    from arena.serving.foreign_folder import is_foreign_export

    if is_foreign_export(source):
        return FOREIGN
    return ENSEMBLE if fold_set(source) is not None else CHECKPOINT


def check_checkpoint(checkpoint: Path) -> None:
    """The source must be an arena-train (or Hugging Face) checkpoint, not an export or a k-fold parent."""
    from arena.artifacts import MANIFEST
    from arena.models.modeling import check_model_folder

    if (checkpoint / MANIFEST).is_file() and not (checkpoint / "model.safetensors").is_file():
        raise ModelError(f"{checkpoint} is an arena-export folder; arena-export reads the arena-train checkpoint "
                         "it came from (source_checkpoint in its manifest)")
    check_model_folder(checkpoint)


def check_options(config: ExportConfig, kind: str, source: Path) -> None:
    """Every option value, for a source of ``kind``; raise :class:`ConfigError` naming the flag."""
    if kind == FOREIGN:
        given = [flag for flag, value in (("--opset", config.opset), ("--exporter", config.exporter))
                 if value is not None]
        if given:
            raise ConfigError(f"{' and '.join(given)} only apply when tracing a PyTorch checkpoint; {source} is a "
                              "foreign ONNX export whose graph is copied as it is: drop "
                              f"{' and '.join(given)}, or export the checkpoint the graph came from")
    else:
        one_of("--exporter", config.traced_exporter, EXPORTERS)
        within("--opset", config.traced_opset, 17, max_opset(config.traced_exporter))
    parse_shapes(config.parity_shapes)
    for flag, value in config.tolerance_flags().items():
        positive(flag, value)
    within("--min-agreement", config.min_agreement, 0.0, 1.0)
    at_least("--trt-buckets", config.trt_buckets, 1)
    at_least("--max-tokens", config.max_tokens, 1)
    positive("--workspace-gib", config.workspace_gib)
    at_least("--calibration-rows", config.calibration_rows, 1)
    if config.int8_static:
        check_int8_static_possible()


def check_int8_static_possible() -> None:
    """``--int8-static`` needs OpenVINO and NNCF: say so before any ONNX work."""
    from arena.serving.backends.openvino import openvino_available

    ok, why = openvino_available()
    if ok and importlib.util.find_spec("nncf") is None:
        ok, why = False, "NNCF is not installed; pip install 'arena-toolkit[openvino]'"
    if not ok:
        raise ConfigError(f"--int8-static: {why}")


def check_export_request(source: str | Path, out: str | Path, config: ExportConfig) -> ExportRequest:
    """Raise :class:`~arena.errors.ArenaError` for any option or path that cannot work, having read the file system
    only; return what the export needs to know about its source."""
    from arena.cli.safety import check_export_out, warn_if_unfinished
    from arena.data import check_layout, resolve_csv
    from arena.serving.ensemble import check_complete
    from arena.serving.foreign_folder import inspect_foreign

    source, out = Path(source), Path(out)
    kind = source_kind(source)
    check_options(config, kind, source)
    foreign, members, folds = None, (), None
    if kind == FOREIGN:
        foreign = inspect_foreign(source)
    elif kind == ENSEMBLE:
        folds = check_complete(source, allow_partial=config.allow_partial)
        members = tuple(folds.members)
        for member in members:  # every fold checked before any is exported
            check_checkpoint(member)
    else:
        check_checkpoint(source)
    data = resolve_csv(config.data, "train.csv")
    check_layout(data, labelled=False)
    check_export_out(out, checkpoint=source, data=data, overwrite=config.overwrite,
                     what="checkpoint" if kind != FOREIGN else "foreign ONNX export")
    if kind == CHECKPOINT:
        warn_if_unfinished(source)
    if config.trt:  # say what is missing before spending minutes on the ONNX part
        check_trt_possible(members[0] if members else source, foreign)  # the folds share one architecture
    return ExportRequest(source, out, data, kind, members, foreign, folds)


def check_trt_possible(source: Path, foreign: ForeignExport | None) -> None:
    """Refuse ``--trt`` for decoder LLMs (out of scope), for a foreign graph arena's TensorRT runner cannot feed,
    and where TensorRT is missing."""
    from types import SimpleNamespace

    from arena.artifacts import TOKEN_INPUTS
    from arena.models.modeling import is_decoder, load_model_config

    config = SimpleNamespace(**foreign.config) if foreign is not None else load_model_config(source)
    if is_decoder(config):
        raise ArenaError(
            f"--trt: TensorRT engines for decoder LLMs ({config.model_type}) are TensorRT-LLM's job (its own model "
            "definitions, paged KV cache, int4/int8 weight-only kernels) and out of scope for arena-export; export "
            "ONNX without --trt for a small decoder, or serve it with arena-infer --backend torch "
            "(bf16 / fp16 / 4bit / 8bit)")
    if foreign is not None and sorted(foreign.inputs) != sorted(TOKEN_INPUTS):
        raise ConfigError(f"--trt: {foreign.onnx} takes {', '.join(foreign.inputs)}; arena's TensorRT runner feeds "
                          f"{' and '.join(TOKEN_INPUTS)} only (export without --trt, or re-export the model "
                          "without token_type_ids)")
    ok, why = tensorrt_available()
    if not ok:
        raise ArenaError(f"--trt: {why}")
