"""A PyTorch checkpoint (or a k-fold training output) -> an arena export folder.

The checkpoint is traced to ``model.onnx`` (the plain trace, which ONNX Runtime and every derived ONNX model read) and
PyTorch fp32 is the parity reference; a DeBERTa-v2/v3 checkpoint is traced a second time with its relative-position
gather rewritten, for OpenVINO alone (:func:`arena.export.relpos.openvino_graph`). From there the one derived-artefact
builder (:func:`arena.export.derive.build_derived`) makes and checks everything else. The caller
(:func:`arena.export.cli.run_export`) has already run every check (:func:`arena.export.precheck.check_export_request`).
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import replace
from typing import Any

from arena.errors import ConfigError
from arena.export.config import ExportConfig
from arena.export.derive import GraphSource, TrtBuilder, build_derived, check_onnx_artifact
from arena.export.precheck import ExportRequest

log = logging.getLogger("arena.export")


def export_checkpoint(request: ExportRequest, config: ExportConfig,
                      build_trt: TrtBuilder | None = None) -> dict[str, Any]:
    """Trace, check and derive; write the folder atomically (nothing is kept when a check fails). Returns the
    command's summary."""
    from arena.artifacts import copy_model_files, write_manifest
    from arena.encode import ArenaEncoder
    from arena.export.onnx import export_onnx
    from arena.export.parity import ParityGate, parity_batches, parity_records, parse_shapes
    from arena.export.relpos import openvino_graph
    from arena.io import atomic_dir, sha256_file
    from arena.models.hybrid import is_hybrid
    from arena.models.modeling import (
        check_pad_token,
        load_classifier,
        load_tokenizer,
        read_meta,
        write_serving_tokenizer,
    )
    from arena.serving.backends.torch import TorchBackend
    from arena.serving.executor import BatchExecutor

    checkpoint, out = request.source, request.out
    meta = read_meta(checkpoint)
    model = load_classifier(checkpoint, require_three_labels=True).float().eval()
    hybrid = is_hybrid(model)
    if hybrid != meta.encoder.features:  # the parity rows must carry features exactly when the model takes them
        meta = replace(meta, encoder=replace(meta.encoder, features=hybrid))
    tokenizer = load_tokenizer(checkpoint)
    check_pad_token(model.config, tokenizer.pad_token_id, checkpoint)  # a decoder's graph pools by the pad id
    shapes = parse_shapes(config.parity_shapes, meta.encoder.max_length)
    records = parity_records(request.data, shapes)
    reference = TorchBackend(model=model, device="cpu", precision="fp32")
    executor = BatchExecutor(reference, pad_id=tokenizer.pad_token_id or 0, max_length=meta.encoder.max_length)
    gate = ParityGate(reference, parity_batches(records, tokenizer, meta.encoder, shapes, executor))
    try:
        with atomic_dir(out, overwrite=config.overwrite) as tmp:
            info = export_onnx(model, tmp / "model.onnx", opset=config.traced_opset, exporter=config.traced_exporter)
            fp32_parity = check_onnx_artifact(gate, "fp32", tmp / "model.onnx", config.fp32_tolerance(),
                                              tuple(info["inputs"]))
            graph = openvino_graph(model, tmp, gate, config)  # DeBERTa's relative-position rewrite, OpenVINO's only
            source = GraphSource(model.config, tuple(info["inputs"]), ArenaEncoder(tokenizer, meta.encoder),
                                 n_features=model.n_features if hybrid else 0)
            built = build_derived(tmp, gate, config, source, records=records, data=request.data,
                                  build_trt=build_trt, fp32_parity=fp32_parity, openvino_graph=graph)
            copy_model_files(checkpoint, tmp)  # the export folder is self-contained: infer encodes from it
            write_serving_tokenizer(tokenizer, tmp)  # and encodes without transformers
            write_manifest(tmp, _manifest_body(request, config, model, meta, tokenizer, info, shapes, built,
                                               reference.limits.max_length, sha256_file(tmp / "model.onnx")))
    except OSError as exc:
        raise ConfigError(f"cannot write --out {out}: {exc}") from None
    return {"out": str(out), "artifacts": {k: v["file"] for k, v in built["artifacts"].items()},
            "parity": {k: v["passed"] for k, v in gate.reports.items()}}


def _manifest_body(request: ExportRequest, config: ExportConfig, model: Any, meta: Any, tokenizer: Any,
                   info: dict[str, Any], shapes: list[tuple[int, int]], built: dict[str, Any],
                   max_positions: int | None, onnx_sha256: str) -> dict[str, Any]:
    from arena.artifacts import io_manifest
    from arena.cli.safety import unfinished_reason
    from arena.models.weights import weights_sha256

    head = meta.head or {"kind": "hf"}
    if head.get("kind") == "lora":  # a LoRA checkpoint is exported merged
        head = {"kind": "hf", "merged_from": meta.head}
    return {
        "source_checkpoint": str(request.source.resolve()),
        "source_training": request.source_training or ("unfinished" if unfinished_reason(request.source)
                                                       else "finished"),
        "source_weights_sha256": weights_sha256(request.source),  # arena-bench checks --export came from --model
        "export_config": config.to_dict(),
        "model": {"model_type": model.config.model_type, "num_labels": model.config.num_labels,
                  "hidden_size": model.config.hidden_size, "num_hidden_layers": model.config.num_hidden_layers,
                  "max_positions": max_positions},
        "head": head,
        "onnx": {**info, **io_manifest(info["inputs"], info.get("features"))},
        "max_length": meta.encoder.max_length, "tokenizer": type(tokenizer).__name__,
        "encoder": meta.encoder.to_dict(), "temperature": meta.temperature, "parity_data": str(request.data),
        "parity_shapes": [list(s) for s in shapes], **built, "onnx_sha256": onnx_sha256,
    }


def export_ensemble(request: ExportRequest, config: ExportConfig,
                    build_trt: TrtBuilder | None = None) -> dict[str, Any]:
    """Export every member (each parity-checked on its own) into ``out/<member>/``, copy the training run's
    ``oof.csv`` / ``metrics.json`` (blend weights are fitted on them), and write one manifest over all of it."""
    from arena.artifacts import TRAIN_CONFIG, write_manifest
    from arena.export.precheck import check_export_request
    from arena.io import atomic_dir
    from arena.serving.ensemble import DEFAULT_COMBINE, ENSEMBLE_KIND

    source, members = request.source, request.members
    summaries = {}
    member_config = replace(config, overwrite=False)  # each member folder is new inside the temporary folder
    with atomic_dir(request.out, overwrite=config.overwrite) as tmp:
        for member in members:
            log.info("exporting %s", member.name)
            member_request = replace(check_export_request(member, tmp / member.name, member_config),
                                     source_training="finished")  # check_complete judged every fold
            summaries[member.name] = export_checkpoint(member_request, member_config, build_trt)
        for name in ("oof.csv", "metrics.json", TRAIN_CONFIG):
            if (source / name).is_file():
                shutil.copy2(source / name, tmp / name)
        write_manifest(tmp, {
            "kind": ENSEMBLE_KIND, "source_checkpoint": str(source.resolve()), "combine": DEFAULT_COMBINE,
            "export_config": config.to_dict(), "folds": request.folds.to_dict(),
            "members": [{"folder": m.name, "weight": 1.0 / len(members),
                         "artifacts": summaries[m.name]["artifacts"]} for m in members]})
    return {"out": str(request.out), "folds": request.folds.describe(),
            "members": {k: v["artifacts"] for k, v in summaries.items()},
            "parity": {k: v["parity"] for k, v in summaries.items()}}
