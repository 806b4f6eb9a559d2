"""``arena-export``: checkpoint (or a foreign ONNX export) -> verified ONNX (-> fused / FP16 / INT8 ONNX, OpenVINO
static INT8, TensorRT FP16 engines)."""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
from pathlib import Path
from typing import Annotated, Any

import typer

from arena.cli.app import run_app, setup_logging
from arena.errors import cli_errors
from arena.export.config import DEFAULT_EXPORTER, DEFAULT_OPSET, DEFAULT_PARITY_SHAPES, EXPORTERS, ExportConfig
from arena.export.derive import TrtBuilder
from arena.export.parity import parse_shapes  # noqa: F401 - the one --parity-shapes parser, importable from here

log = logging.getLogger("arena.export")
app = typer.Typer(add_completion=False, help=__doc__, pretty_exceptions_enable=False)


@app.command(epilog="Examples:\n\n  arena-export runs/model --out runs/export\n\n"
             "  arena-export runs/model --out runs/export --int8 --fp16\n\n"
             "  arena-export optimum-onnx/ --out runs/export --int8   (an optimum export: no --opset/--exporter)\n\n"
             "  arena-export runs/model --out runs/export --trt   (NVIDIA GPU + pip install 'arena-toolkit\\[gpu]')")
@cli_errors
def export(
    checkpoint: Annotated[Path, typer.Argument(
        help="arena-train output, any HF sequence-classification folder, or a foreign ONNX export (optimum's "
             "model.onnx + config.json + tokenizer, no manifest: it becomes the parity reference)")],
    out: Annotated[Path, typer.Option(help="Folder for the artefacts (must not exist or be empty)")],
    fp16: Annotated[bool, typer.Option(help="Also write an ONNX Runtime FP16 model (fused, float32 I/O)")] = False,
    int8: Annotated[bool, typer.Option(help="Also write an INT8 dynamically quantised model (CPU)")] = False,
    optimize: Annotated[bool, typer.Option(help="Also write an onnxruntime.transformers fused fp32 model")] = False,
    trt: Annotated[bool, typer.Option(
        help="Build a strongly typed TensorRT engine from the FP16 ONNX (implies --fp16; needs TensorRT >= 10.12 "
             "and a GPU: pip install 'arena-toolkit\\[gpu]')")] = False,
    openvino: Annotated[bool, typer.Option(help="Check model.onnx (a DeBERTa-v2/v3 checkpoint: its own rewritten "
                                           "model.ov.xml) under OpenVINO at fp32 and bf16 (CPU) and record it for "
                                           "--backend auto (skipped when OpenVINO is not installed: pip install "
                                           "'arena-toolkit\\[openvino]')")] = True,
    int8_static: Annotated[bool, typer.Option(help="Also write an NNCF static INT8 OpenVINO model, calibrated on "
                                              "real rows (CPU; needs pip install 'arena-toolkit\\[openvino]')")]
    = False,
    calibration_rows: Annotated[int, typer.Option(help="Real rows that calibrate --int8-static")] = 64,
    opset: Annotated[int | None, typer.Option(
        help=f"ONNX opset (>= 17; default {DEFAULT_OPSET}); re-tracing a checkpoint only, refused for a foreign "
             "ONNX export", show_default=False)] = None,
    exporter: Annotated[str | None, typer.Option(
        help=f"{' or '.join(EXPORTERS)} (default {DEFAULT_EXPORTER}, the tested one); re-tracing a checkpoint only, "
             "refused for a foreign ONNX export", show_default=False)] = None,
    data: Annotated[str | None, typer.Option(help="CSV whose real rows drive the parity check")] = None,
    parity_shapes: Annotated[str, typer.Option(help="BxL shapes for the parity check")] = DEFAULT_PARITY_SHAPES,
    fp32_tol: Annotated[float, typer.Option(help="Max |logit diff| for fp32 artefacts")] = 1e-4,
    fp16_prob_tol: Annotated[float, typer.Option(help="Max |prob diff| for FP16")] = 2e-2,
    int8_prob_tol: Annotated[float, typer.Option(help="Max |prob diff| for INT8")] = 0.1,
    int8_log_loss_tol: Annotated[float | None, typer.Option(
        help="Max log-loss change for INT8 on labelled rows (default: the gate's 0.02)")] = None,
    min_agreement: Annotated[float, typer.Option(help="Min argmax agreement for FP16/INT8")] = 0.97,
    trt_buckets: Annotated[int, typer.Option(help="TensorRT optimisation profiles (length buckets)")] = 4,
    max_tokens: Annotated[int | None, typer.Option(
        help="Token budget per batch the TensorRT profiles are planned for (default: what arena-infer packs on a "
             "GPU, 64 rows of max length)")] = None,
    workspace_gib: Annotated[float, typer.Option(help="TensorRT builder workspace")] = 4.0,
    overwrite: Annotated[bool, typer.Option(help="Replace an earlier arena-export folder at --out (only on success; "
                                            "never a folder holding other files, nor the source)")] = False,
    allow_partial: Annotated[bool, typer.Option(
        help="Export a k-fold output that has folds missing or unfinished with the folds that finished (refused "
             "without it); the manifest and the output say 'k of N folds'")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Export a checkpoint (or a foreign ONNX export) to ONNX, check it against its reference, and derive optimised
    artefacts."""
    setup_logging(verbose)
    config = ExportConfig(data=data, fp16=fp16, int8=int8, optimize=optimize, trt=trt, openvino=openvino,
                          int8_static=int8_static, calibration_rows=calibration_rows, opset=opset, exporter=exporter,
                          parity_shapes=parity_shapes, fp32_tol=fp32_tol, fp16_prob_tol=fp16_prob_tol,
                          int8_prob_tol=int8_prob_tol, int8_log_loss_tol=int8_log_loss_tol,
                          min_agreement=min_agreement, trt_buckets=trt_buckets,
                          max_tokens=max_tokens, workspace_gib=workspace_gib, overwrite=overwrite,
                          allow_partial=allow_partial)
    typer.echo(json.dumps(export_folder(checkpoint, out, config)))


def export_folder(source: str | Path, out: str | Path, config: ExportConfig,
                  build_trt: TrtBuilder | None = None) -> dict[str, Any]:
    """Export any source folder: the one way in for a checkpoint, a k-fold training output and a foreign ONNX
    export. Every check runs first (:func:`~arena.export.precheck.check_export_request`: options, source, the
    safety rule for ``out``), then the path for the source's kind, which builds its derived artefacts with the one
    builder (:func:`~arena.export.derive.build_derived`; ``build_trt`` replaces its TensorRT step, for tests)."""
    from arena.export.checkpoint import export_checkpoint, export_ensemble
    from arena.export.foreign import export_foreign
    from arena.export.precheck import ENSEMBLE, FOREIGN, check_export_request

    request = check_export_request(source, out, config)
    if request.kind == FOREIGN:
        return export_foreign(request, config, build_trt)
    if request.kind == ENSEMBLE:
        return export_ensemble(request, config, build_trt)
    return export_checkpoint(request, config, build_trt)


def run_export(checkpoint: str | Path, out: str | Path, *, build_trt: TrtBuilder | None = None,
               **options: Any) -> dict[str, Any]:
    """:func:`export_folder` with the options as keywords (the fields of :class:`ExportConfig`, e.g.
    ``int8=True, data="train.csv"``); an unknown keyword is a ``TypeError``."""
    return export_folder(checkpoint, out, ExportConfig(**options), build_trt)


def _keyword_signature() -> inspect.Signature:
    """run_export's real signature, read from :class:`ExportConfig` (the one home of the options and defaults), so
    ``help(run_export)`` and ``inspect`` show every keyword."""
    positional = [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation="str | Path")
                  for n in ("checkpoint", "out")]
    keywords = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=f.type)
                for f in dataclasses.fields(ExportConfig)]
    trt = inspect.Parameter("build_trt", inspect.Parameter.KEYWORD_ONLY, default=None, annotation="TrtBuilder | None")
    return inspect.Signature([*positional, *keywords, trt], return_annotation="dict[str, Any]")


run_export.__signature__ = _keyword_signature()  # type: ignore[attr-defined]


def main() -> None:
    run_app(app)


if __name__ == "__main__":
    main()
