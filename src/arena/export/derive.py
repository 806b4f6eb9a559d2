"""The one derived-artefact builder: everything an export makes from its ``model.onnx`` once that file is in place,
for a checkpoint and a foreign ONNX export alike.

Each ONNX model (``model.onnx`` itself, fused fp32, FP16, dynamic INT8) is first compared with the tensor spec
(:func:`arena.artifacts.check_graph_io`: input names, dtypes, dynamic axes, a ``logits`` output; a
:class:`~arena.errors.TensorSpecError` before any number is compared) and then checked by the same
:class:`~arena.export.parity.ParityGate` on real rows; the OpenVINO section works from ``model.onnx`` whatever made
it, or from a DeBERTa checkpoint's own OpenVINO graph (:func:`arena.export.relpos.openvino_graph`); the TensorRT
engine is built by one builder (:func:`arena.export.tensorrt.build_trt_section`) called with the same arguments on
both paths. A failure raises and the caller's temporary folder is dropped: nothing is kept.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from arena.export.config import ExportConfig
from arena.export.parity import ParityGate, Tolerance

TrtBuilder = Callable[..., dict[str, Any]]
""":func:`arena.export.tensorrt.build_trt_section`'s signature: (folder, *, lengths, max_length, model_type,
n_features, buckets, max_tokens, workspace_gib, parity) -> the manifest's ``tensorrt`` section."""


@dataclass(frozen=True)
class GraphSource:
    """What the builder needs to know about the model behind ``model.onnx``, from a checkpoint or a foreign
    folder's ``config.json``."""

    model_config: Any
    """Attributes ``model_type``, ``num_attention_heads``, ``hidden_size``: what ONNX Runtime's fusion needs."""
    inputs: tuple[str, ...]
    """The graph's inputs: every derived model must take the same."""
    encoder: Any
    """The :class:`~arena.encode.ArenaEncoder` the model was trained with (calibration rows, TensorRT lengths)."""
    n_features: int = 0
    fp32_label: str = "fp32"
    """How the manifest names ``model.onnx``'s precision (a foreign graph's is whatever it was exported at)."""


def check_onnx_artifact(gate: ParityGate, name: str, path: Path, tolerance: Tolerance,
                        inputs: tuple[str, ...]) -> dict[str, Any]:
    """The structural check, then the parity check, of one ONNX model; its parity record."""
    import onnx

    from arena.artifacts import check_graph_io
    from arena.serving.backends.onnx import OnnxBackend

    check_graph_io(path, onnx.load(str(path), load_external_data=False).graph, expected=inputs)
    return gate.check(name, OnnxBackend(path, device="cpu"), tolerance)


def build_derived(folder: Path, gate: ParityGate, config: ExportConfig, source: GraphSource, *, records: list,
                  data: Path, build_trt: TrtBuilder | None = None,
                  fp32_parity: dict[str, Any] | None = None, openvino_graph: Any = None) -> dict[str, Any]:
    """Check ``folder/model.onnx``, then write and check every model ``config`` asks for. Returns the manifest's
    ``artifacts``, ``openvino`` and ``tensorrt`` sections. ``records``: the parity rows (the TensorRT profiles are
    planned on their lengths); ``data``: the parity CSV (static INT8 calibrates on rows after them);
    ``fp32_parity``: ``model.onnx``'s passed record from :func:`check_onnx_artifact` when the caller already ran it
    (the checkpoint path checks its trace before it traces OpenVINO's graph); ``openvino_graph``: that
    :class:`~arena.export.openvino.OpenVinoGraph` (None: OpenVINO reads ``model.onnx``)."""
    from arena.export.openvino import openvino_section

    if fp32_parity is None:
        fp32_parity = check_onnx_artifact(gate, "fp32", folder / "model.onnx", config.fp32_tolerance(), source.inputs)
    artifacts = {"fp32": {"file": "model.onnx", "precision": source.fp32_label, "parity": fp32_parity}}
    artifacts.update(derived_onnx(folder, gate, config, source))
    ov_section = openvino_section(folder, gate, encoder=source.encoder, data=data, openvino=config.openvino,
                                  int8_static=config.int8_static, int8_tol=config.int8_tolerance(),
                                  calibration_rows=config.calibration_rows, fp32_tol=config.fp32_tol,
                                  inputs=source.inputs, graph=openvino_graph)
    trt_section: dict[str, Any] = {"status": "not requested"}
    if config.trt:
        builder = build_trt if build_trt is not None else _tensorrt_builder()
        tol16 = config.fp16_tolerance()
        trt_section = builder(
            folder, lengths=source.encoder.encode(records).lengths, max_length=source.encoder.config.max_length,
            model_type=getattr(source.model_config, "model_type", None), n_features=source.n_features,
            buckets=config.trt_buckets, max_tokens=config.max_tokens, workspace_gib=config.workspace_gib,
            parity=lambda runner: gate.compare("tensorrt", runner, tol16))
    return {"artifacts": artifacts, "openvino": ov_section, "tensorrt": trt_section}


def derived_onnx(folder: Path, gate: ParityGate, config: ExportConfig, source: GraphSource) -> dict[str, Any]:
    """Write and check each derived ONNX model asked for from ``folder/model.onnx`` (fused fp32, FP16, INT8);
    their manifest artefact entries."""
    from arena.export import optimize as ort_opt

    src = folder / "model.onnx"
    out: dict[str, Any] = {}

    def check(name: str, file: str, tol: Tolerance) -> dict[str, Any]:
        return check_onnx_artifact(gate, name, folder / file, tol, source.inputs)

    if config.optimize:
        stats = ort_opt.fuse(src, folder / "model.opt.onnx", source.model_config)
        out["fp32_fused"] = {"file": "model.opt.onnx", "precision": "fp32", "fusions": stats,
                             "parity": check("fp32_fused", "model.opt.onnx", config.fp32_tolerance())}
    if config.fp16_onnx:
        # the one FP16 graph: ONNX Runtime CUDA runs it and TensorRT builds its strongly typed engine from it
        stats = ort_opt.to_fp16(src, folder / "model.fp16.onnx")
        out["fp16"] = {"file": "model.fp16.onnx", "precision": "fp16", "conversion": stats,
                       "parity": check("fp16", "model.fp16.onnx", config.fp16_tolerance()),
                       "checked_on": "CPUExecutionProvider"}
    if config.int8:
        info = ort_opt.to_int8(src, folder / "model.int8.onnx")
        out["int8"] = {"file": "model.int8.onnx", "precision": "int8", **info,
                       "parity": check("int8", "model.int8.onnx", config.int8_tolerance())}
    return out


def _tensorrt_builder() -> TrtBuilder:  # pragma: no cover - called only where TensorRT and a GPU are
    from arena.export.tensorrt import build_trt_section

    return build_trt_section
