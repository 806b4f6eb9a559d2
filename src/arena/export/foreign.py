"""``arena-export FOREIGN --out DIR``: a full arena export folder from a foreign ONNX export (optimum's layout).

The foreign graph is copied as ``model.onnx`` (with any external data it names) and becomes the parity reference:
the copy and every derived model (fused, FP16, INT8, OpenVINO, TensorRT) are made and checked by the same builder a
checkpoint export uses (:func:`arena.export.derive.build_derived`), on real rows, with the same tolerances, and
nothing is kept when one fails. The source went through the same checks and safety rule as a checkpoint
(:func:`arena.export.precheck.check_export_request`) before anything here runs; ``--opset`` / ``--exporter``,
which only apply to re-tracing a PyTorch checkpoint, were refused there. The manifest records the source as foreign
(:meth:`arena.serving.foreign_folder.ForeignExport.to_dict`): arena vouches for the derived models against that graph,
not for the
graph against any PyTorch weights (it has none).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from arena.errors import ConfigError
from arena.export.config import ExportConfig
from arena.export.derive import GraphSource, TrtBuilder, build_derived
from arena.export.precheck import ExportRequest
from arena.serving.foreign_folder import ForeignExport

log = logging.getLogger("arena.export")


def export_foreign(request: ExportRequest, config: ExportConfig, build_trt: TrtBuilder | None = None) -> dict[str, Any]:
    """Export the foreign folder ``request.source`` (inspected: ``request.foreign``) to ``request.out``; the
    command's summary."""
    from arena.artifacts import copy_model_files, write_manifest
    from arena.encode import ArenaEncoder
    from arena.export.parity import ParityGate, parity_batches, parity_records, parse_shapes
    from arena.io import atomic_dir, sha256_file
    from arena.models.modeling import load_tokenizer, write_serving_tokenizer
    from arena.serving.backends.contract import Limits
    from arena.serving.backends.onnx import OnnxBackend
    from arena.serving.executor import BatchExecutor

    foreign, out = request.foreign, request.out
    assert foreign is not None, "check_export_request inspects a foreign source"
    tokenizer = load_tokenizer(request.source)
    shapes = parse_shapes(config.parity_shapes, foreign.encoder.max_length)
    records = parity_records(request.data, shapes)
    reference = OnnxBackend(foreign.onnx, device="cpu", precision="as exported",
                            limits=Limits(max_length=foreign.max_positions))
    executor = BatchExecutor(reference, pad_id=tokenizer.pad_token_id or 0, max_length=foreign.encoder.max_length)
    gate = ParityGate(reference, parity_batches(records, tokenizer, foreign.encoder, shapes, executor))
    # n_features only sizes TensorRT profiles, and --trt is refused up front for a foreign graph with features
    source = GraphSource(SimpleNamespace(**foreign.config), foreign.inputs, ArenaEncoder(tokenizer, foreign.encoder),
                         fp32_label="as exported (foreign)")
    try:
        with atomic_dir(out, overwrite=config.overwrite) as tmp:
            copy_onnx(foreign.onnx, tmp / "model.onnx")
            built = build_derived(tmp, gate, config, source, records=records, data=request.data,
                                  build_trt=build_trt)
            copy_model_files(request.source, tmp)
            write_serving_tokenizer(tokenizer, tmp)
            write_manifest(tmp, _manifest_body(foreign, config, tokenizer, request.data, shapes, built,
                                               sha256_file(tmp / "model.onnx")))
    except OSError as exc:
        raise ConfigError(f"cannot write --out {out}: {exc}") from None
    return {"out": str(out), "source": "foreign_onnx",
            "artifacts": {k: v["file"] for k, v in built["artifacts"].items()},
            "parity": {k: v["passed"] for k, v in gate.reports.items()}}


def copy_onnx(src: Path, dst: Path) -> None:
    """Copy an ONNX file and the external-data files it names (already checked to lie inside its folder)."""
    from arena.artifacts import external_data_files

    shutil.copy2(src, dst)
    for name in external_data_files(src):
        (dst.parent / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src.parent / name, dst.parent / name)


def _manifest_body(foreign: ForeignExport, config: ExportConfig, tokenizer: Any, data: Path,
                   shapes: list[tuple[int, int]], built: dict[str, Any], onnx_sha256: str) -> dict[str, Any]:
    from arena.artifacts import io_manifest

    return {
        "source": foreign.to_dict(),
        "export_config": config.to_dict(),
        "model": {"model_type": foreign.model_type, "num_labels": foreign.num_labels,
                  "hidden_size": foreign.config.get("hidden_size"),
                  "num_hidden_layers": foreign.config.get("num_hidden_layers"), "max_positions": foreign.max_positions},
        "head": {"kind": "hf"},
        "onnx": {"exporter": f"foreign ({foreign.producer})", "opset": foreign.opset, **io_manifest(foreign.inputs)},
        "max_length": foreign.encoder.max_length,
        "tokenizer": type(tokenizer).__name__,
        "encoder": foreign.encoder.to_dict(),
        "encoder_settings": foreign.encoder_source,
        "temperature": foreign.temperature,
        "parity_reference": f"the foreign ONNX model {foreign.onnx.resolve()} (ONNX Runtime, CPU)",
        "parity_data": str(data),
        "parity_shapes": [list(s) for s in shapes],
        **built,
        "onnx_sha256": onnx_sha256,
    }
