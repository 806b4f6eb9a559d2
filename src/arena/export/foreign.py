"""``arena-export FOREIGN --out DIR``: a full arena export folder from a foreign ONNX export (optimum's layout).

The foreign graph is copied as ``model.onnx`` (with any external data it names) and becomes the parity reference:
the copy and every derived model (fused, FP16, INT8, TensorRT) are checked against it on real rows, with the same
tolerances a checkpoint export uses, and nothing is kept when one fails. The manifest records the source as foreign
(:meth:`arena.serving.foreign_folder.ForeignExport.to_dict`): arena vouches for the derived models against that graph,
not for the
graph against any PyTorch weights (it has none).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from arena.errors import ArenaError, ConfigError
from arena.export.derive import derived_artifacts
from arena.export.parity import ParityGate, Tolerance
from arena.serving.foreign_folder import ForeignExport, inspect_foreign

log = logging.getLogger("arena.export")

TrtBuilder = Callable[..., dict[str, Any]]
"""``arena.export.cli._build_trt``: (folder, records, tokenizer, encoder, buckets, max_tokens, workspace_gib)."""


def run_foreign_export(folder: Path, out: Path, *, fp16: bool = False, int8: bool = False, optimize: bool = False,
                       trt: bool = False, data: str | None = None, parity_shapes: str = "1x17,7x133,16x512",
                       fp32_tol: float = 1e-4, fp16_prob_tol: float = 2e-2, int8_prob_tol: float = 0.1,
                       min_agreement: float = 0.97, trt_buckets: int = 4, max_tokens: int = 16384,
                       workspace_gib: float = 4.0, overwrite: bool = False,
                       build_trt: TrtBuilder | None = None) -> dict[str, Any]:
    """Export ``folder`` (a foreign ONNX export, see :func:`arena.serving.foreign_folder.inspect_foreign`) to
    ``out``."""
    from arena.artifacts import copy_model_files, write_manifest
    from arena.data import has_labels, read_records, resolve_csv
    from arena.export.parity import parity_batches, parse_shapes
    from arena.io import atomic_dir, sha256_file
    from arena.models.modeling import load_tokenizer
    from arena.serving.backends.contract import Limits
    from arena.serving.backends.onnx import OnnxBackend
    from arena.serving.executor import BatchExecutor

    foreign = inspect_foreign(folder)
    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not overwrite)):
        raise ConfigError(f"--out {out} already exists with other content; choose a new folder or pass --overwrite")
    if trt:
        _check_trt(foreign, build_trt)
    tokenizer = load_tokenizer(folder)
    max_length = foreign.encoder.max_length
    shapes = parse_shapes(parity_shapes, max_length)
    path = resolve_csv(data, "train.csv")
    records = read_records(path, labelled=has_labels(path))[:256]
    if len(records) < max(b for b, _ in shapes):
        raise ConfigError(f"{path} has {len(records)} rows; the parity check needs at least "
                          f"{max(b for b, _ in shapes)}")
    reference = OnnxBackend(foreign.onnx, device="cpu", precision="as exported",
                            limits=Limits(max_length=foreign.max_positions))
    executor = BatchExecutor(reference, pad_id=tokenizer.pad_token_id or 0, max_length=max_length)
    gate = ParityGate(reference, parity_batches(records, tokenizer, foreign.encoder, shapes, executor))
    fp32 = replace(Tolerance.fp32(), max_logit_diff=fp32_tol)
    try:
        with atomic_dir(out, overwrite=overwrite) as tmp:
            copy_onnx(foreign.onnx, tmp / "model.onnx")
            artifacts = {"fp32": {"file": "model.onnx", "precision": "as exported (foreign)",
                                  "parity": gate.check("fp32", OnnxBackend(tmp / "model.onnx", device="cpu"), fp32)}}
            artifacts.update(derived_artifacts(tmp, SimpleNamespace(**foreign.config), gate, optimize=optimize,
                                               fp16=fp16, int8=int8, fp32=fp32,
                                     fp16_tol=replace(Tolerance.fp16(), max_prob_diff=fp16_prob_tol,
                                                      min_argmax_agreement=min_agreement),
                                     int8_tol=replace(Tolerance.int8(), max_prob_diff=int8_prob_tol,
                                                      min_argmax_agreement=min_agreement)))
            copy_model_files(folder, tmp)
            trt_section: dict[str, Any] = {"status": "not requested"}
            if trt and build_trt is not None:  # pragma: no cover - needs TensorRT and a GPU
                trt_section = build_trt(tmp, records, tokenizer, foreign.encoder, trt_buckets, max_tokens,
                                        workspace_gib)
            write_manifest(tmp, _manifest_body(foreign, tokenizer, path, shapes, artifacts, trt_section,
                                               sha256_file(tmp / "model.onnx")))
    except OSError as exc:
        raise ConfigError(f"cannot write --out {out}: {exc}") from None
    return {"out": str(out), "source": "foreign_onnx", "artifacts": {k: v["file"] for k, v in artifacts.items()},
            "parity": {k: v["passed"] for k, v in gate.reports.items()}}


def copy_onnx(src: Path, dst: Path) -> None:
    """Copy an ONNX file and the external-data files it names (already checked to lie inside its folder)."""
    import onnx

    from arena.artifacts import external_data_files

    shutil.copy2(src, dst)
    for name in external_data_files(onnx.load(str(src), load_external_data=False)):
        (dst.parent / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src.parent / name, dst.parent / name)


def _check_trt(foreign: ForeignExport, build_trt: TrtBuilder | None) -> None:
    """Say what stops a TensorRT build before any minutes are spent on the ONNX part."""
    from arena.artifacts import TOKEN_INPUTS
    from arena.serving.backends.tensorrt import tensorrt_available

    ok, why = tensorrt_available()
    if not ok:
        raise ArenaError(f"--trt: {why}")
    if build_trt is None or sorted(foreign.inputs) != sorted(TOKEN_INPUTS):
        raise ConfigError(f"--trt: {foreign.onnx} takes {', '.join(foreign.inputs)}; arena's TensorRT runner feeds "
                          f"{' and '.join(TOKEN_INPUTS)} only (export without --trt, or re-export the model "
                          "without token_type_ids)")


def _manifest_body(foreign: ForeignExport, tokenizer: Any, data: Path, shapes: list[tuple[int, int]],
                   artifacts: dict[str, Any], trt_section: dict[str, Any], onnx_sha256: str) -> dict[str, Any]:
    from arena.artifacts import FEATURES, TOKEN_TYPE_IDS

    config = foreign.config
    inputs: list[dict[str, Any]] = []
    for name in foreign.inputs:
        if name == FEATURES:
            inputs.append({"name": name, "dtype": "float32", "dims": ["batch", "features"]})
        else:
            spec = {"name": name, "dtype": "int64", "dims": ["batch", "sequence"]}
            inputs.append({**spec, "fed": "zeros"} if name == TOKEN_TYPE_IDS else spec)
    return {
        "source": foreign.to_dict(),
        "model": {"model_type": foreign.model_type, "num_labels": foreign.num_labels,
                  "hidden_size": config.get("hidden_size"), "num_hidden_layers": config.get("num_hidden_layers"),
                  "max_positions": foreign.max_positions},
        "head": {"kind": "hf"},
        "onnx": {"exporter": f"foreign ({foreign.producer})", "opset": foreign.opset, "inputs": inputs,
                 "outputs": [{"name": "logits", "dtype": "float32", "dims": ["batch", 3]}]},
        "max_length": foreign.encoder.max_length,
        "tokenizer": type(tokenizer).__name__,
        "encoder": foreign.encoder.to_dict(),
        "encoder_settings": foreign.encoder_source,
        "temperature": foreign.temperature,
        "parity_reference": f"the foreign ONNX model {foreign.onnx.resolve()} (ONNX Runtime, CPU)",
        "parity_data": str(data),
        "parity_shapes": [list(s) for s in shapes],
        "artifacts": artifacts,
        "tensorrt": trt_section,
        "onnx_sha256": onnx_sha256,
    }
