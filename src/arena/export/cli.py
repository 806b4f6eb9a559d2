"""``arena-export``: checkpoint (or a foreign ONNX export) -> verified ONNX (-> fused / FP16 / INT8 ONNX, -> TensorRT
FP16 engines)."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from arena.cli.app import run_app, setup_logging
from arena.errors import ArenaError, ConfigError, ParityError, cli_errors
from arena.export.parity import parity_batches, parse_shapes
from arena.serving.foreign_folder import is_foreign_export

log = logging.getLogger("arena.export")
app = typer.Typer(add_completion=False, help=__doc__, pretty_exceptions_enable=False)


@app.command(epilog="Examples:\n\n  arena-export runs/model --out runs/export\n\n"
             "  arena-export runs/model --out runs/export --int8 --fp16\n\n"
             "  arena-export optimum-onnx/ --out runs/export --int8   (an optimum export: no --opset/--exporter)\n\n"
             "  arena-export runs/model --out runs/export --trt   (NVIDIA GPU + pip install 'arena-toolkit[gpu]')")
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
             "and a GPU)")] = False,
    openvino: Annotated[bool, typer.Option(help="Check model.onnx under OpenVINO at fp32 and bf16 (CPU) and record "
                                           "it for --backend auto (skipped when OpenVINO is not installed)")] = True,
    int8_static: Annotated[bool, typer.Option(help="Also write an NNCF static INT8 OpenVINO model, calibrated on "
                                              "real rows (CPU; needs arena-toolkit[openvino])")] = False,
    calibration_rows: Annotated[int, typer.Option(help="Real rows that calibrate --int8-static")] = 64,
    opset: Annotated[int, typer.Option(help="ONNX opset (>= 17)")] = 17,
    exporter: Annotated[str, typer.Option(help="torchscript (tested) or dynamo")] = "torchscript",
    data: Annotated[str | None, typer.Option(help="CSV whose real rows drive the parity check")] = None,
    parity_shapes: Annotated[str, typer.Option(help="BxL shapes for the parity check")] = "1x17,7x133,16x512",
    fp32_tol: Annotated[float, typer.Option(help="Max |logit diff| for fp32 artefacts")] = 1e-4,
    fp16_prob_tol: Annotated[float, typer.Option(help="Max |prob diff| for FP16")] = 2e-2,
    int8_prob_tol: Annotated[float, typer.Option(help="Max |prob diff| for INT8")] = 0.1,
    min_agreement: Annotated[float, typer.Option(help="Min argmax agreement for FP16/INT8")] = 0.97,
    trt_buckets: Annotated[int, typer.Option(help="TensorRT optimisation profiles (length buckets)")] = 4,
    max_tokens: Annotated[int | None, typer.Option(
        help="Token budget per batch the TensorRT profiles are planned for (default: what arena-infer packs on a "
             "GPU, 64 rows of max length)")] = None,
    workspace_gib: Annotated[float, typer.Option(help="TensorRT builder workspace")] = 4.0,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --out folder (only on success)")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Export a checkpoint to ONNX, check it against PyTorch, and derive optimised artefacts."""
    setup_logging(verbose)
    if is_foreign_export(checkpoint):  # an ONNX export without arena's manifest (optimum's layout)
        from arena.export.foreign import run_foreign_export

        summary = run_foreign_export(checkpoint, out, fp16=fp16, int8=int8, optimize=optimize, trt=trt, data=data,
                                     parity_shapes=parity_shapes, fp32_tol=fp32_tol, fp16_prob_tol=fp16_prob_tol,
                                     int8_prob_tol=int8_prob_tol, min_agreement=min_agreement,
                                     trt_buckets=trt_buckets, max_tokens=max_tokens, workspace_gib=workspace_gib,
                                     overwrite=overwrite, build_trt=_build_trt)
        typer.echo(json.dumps(summary))
        return
    summary = run_export(checkpoint, out, fp16=fp16, int8=int8, optimize=optimize, trt=trt, opset=opset,
                         exporter=exporter, data=data, parity_shapes=parity_shapes, fp32_tol=fp32_tol,
                         fp16_prob_tol=fp16_prob_tol, int8_prob_tol=int8_prob_tol, min_agreement=min_agreement,
                         trt_buckets=trt_buckets, max_tokens=max_tokens, workspace_gib=workspace_gib,
                         overwrite=overwrite, openvino=openvino, int8_static=int8_static,
                         calibration_rows=calibration_rows)
    typer.echo(json.dumps(summary))


def run_export(checkpoint: Path, out: Path, *, fp16: bool = False, int8: bool = False, optimize: bool = False,
               trt: bool = False, opset: int = 17, exporter: str = "torchscript", data: str | None = None,
               parity_shapes: str = "1x17,7x133,16x512", fp32_tol: float = 1e-4, fp16_prob_tol: float = 2e-2,
               int8_prob_tol: float = 0.1, min_agreement: float = 0.97, int8_log_loss_tol: float | None = None,
               trt_buckets: int = 4, max_tokens: int | None = None, workspace_gib: float = 4.0, overwrite: bool = False,
               openvino: bool = True, int8_static: bool = False, calibration_rows: int = 64) -> dict[str, Any]:
    from dataclasses import replace

    from arena.artifacts import copy_model_files, write_manifest
    from arena.cli.safety import unfinished_reason
    from arena.data import has_labels, read_records
    from arena.encode import ArenaEncoder
    from arena.export.derive import derived_artifacts
    from arena.export.onnx import export_onnx
    from arena.export.openvino import openvino_section
    from arena.export.parity import ParityGate, Tolerance
    from arena.export.precheck import check_export_request
    from arena.io import atomic_dir, sha256_file
    from arena.models.modeling import check_pad_token, load_classifier, load_tokenizer, read_meta
    from arena.serving.backends.onnx import OnnxBackend
    from arena.serving.backends.torch import TorchBackend
    from arena.serving.ensemble import member_folders
    from arena.serving.executor import BatchExecutor

    checkpoint, out = Path(checkpoint), Path(out)
    members = member_folders(checkpoint)
    if members is not None:  # a k-fold training output: every fold, one folder, one manifest
        return run_ensemble_export(checkpoint, members, out, overwrite=overwrite, fp16=fp16, int8=int8,
                                   optimize=optimize, trt=trt, opset=opset, exporter=exporter, data=data,
                                   parity_shapes=parity_shapes, fp32_tol=fp32_tol, fp16_prob_tol=fp16_prob_tol,
                                   int8_prob_tol=int8_prob_tol, min_agreement=min_agreement,
                                   trt_buckets=trt_buckets, max_tokens=max_tokens, workspace_gib=workspace_gib,
                                   openvino=openvino, int8_static=int8_static, calibration_rows=calibration_rows)
    path = check_export_request(checkpoint, out, opset=opset, exporter=exporter, data=data,
                                parity_shapes=parity_shapes, tolerances={"--fp32-tol": fp32_tol,
                                "--fp16-prob-tol": fp16_prob_tol, "--int8-prob-tol": int8_prob_tol},
                                min_agreement=min_agreement, trt_buckets=trt_buckets, max_tokens=max_tokens,
                                workspace_gib=workspace_gib, overwrite=overwrite)
    if trt:  # say what is missing before spending minutes on the ONNX part
        _check_trt_possible(checkpoint)
        fp16 = True  # the engine is built from the parity-checked FP16 ONNX: precision lives in the graph
    from arena.models.hybrid import is_hybrid

    meta = read_meta(checkpoint)
    model = load_classifier(checkpoint, require_three_labels=True).float().eval()
    hybrid = is_hybrid(model)
    if hybrid != meta.encoder.features:  # the parity rows must carry features exactly when the model takes them
        meta = replace(meta, encoder=replace(meta.encoder, features=hybrid))
    tokenizer = load_tokenizer(checkpoint)
    check_pad_token(model.config, tokenizer.pad_token_id, checkpoint)  # a decoder's graph pools by the pad id
    max_length = meta.encoder.max_length
    shapes = parse_shapes(parity_shapes, max_length)

    records = read_records(path, labelled=has_labels(path))[:256]
    if len(records) < max(b for b, _ in shapes):
        raise ConfigError(f"{path} has {len(records)} rows; the parity check needs at least "
                          f"{max(b for b, _ in shapes)}")
    reference = TorchBackend(model=model, device="cpu", precision="fp32")
    executor = BatchExecutor(reference, pad_id=tokenizer.pad_token_id or 0, max_length=max_length)
    batches = parity_batches(records, tokenizer, meta.encoder, shapes, executor)
    gate = ParityGate(reference, batches)
    try:
        with atomic_dir(out, overwrite=overwrite) as tmp:
            info = export_onnx(model, tmp / "model.onnx", opset=opset, exporter=exporter)
            fp32 = replace(Tolerance.fp32(), max_logit_diff=fp32_tol)
            artifacts = {"fp32": {"file": "model.onnx", "precision": "fp32",
                                  "parity": gate.check("fp32", OnnxBackend(tmp / "model.onnx", device="cpu"), fp32)}}
            int8_tol = replace(Tolerance.int8(), max_prob_diff=int8_prob_tol, min_argmax_agreement=min_agreement)
            if int8_log_loss_tol is not None:  # None: Tolerance.int8()'s limit
                int8_tol = replace(int8_tol, max_log_loss_change=int8_log_loss_tol)
            artifacts.update(derived_artifacts(
                tmp, model.config, gate, fp16=fp16, int8=int8, optimize=optimize, fp32=fp32, int8_tol=int8_tol,
                fp16_tol=replace(Tolerance.fp16(), max_prob_diff=fp16_prob_tol, min_argmax_agreement=min_agreement)))
            ov_section = openvino_section(tmp, gate, encoder=ArenaEncoder(tokenizer, meta.encoder), data=path,
                                          openvino=openvino, int8_static=int8_static, int8_tol=int8_tol,
                                          calibration_rows=calibration_rows, fp32_tol=fp32_tol)
            copy_model_files(checkpoint, tmp)  # the export folder is self-contained: infer encodes from it
            trt_section: dict[str, Any] = {"status": "not requested"}
            if trt:  # pragma: no cover - needs TensorRT and a GPU
                tol16 = replace(Tolerance.fp16(), max_prob_diff=fp16_prob_tol, min_argmax_agreement=min_agreement)
                trt_section = _build_trt(tmp, records, tokenizer, meta.encoder, model, trt_buckets, max_tokens,
                                         workspace_gib, lambda r: gate.compare("tensorrt", r, tol16))
            write_manifest(tmp, {
                "source_checkpoint": str(checkpoint.resolve()),
                "source_training": "unfinished" if unfinished_reason(checkpoint) else "finished",
                "model": _model_section(model.config, reference.limits.max_length),
                "head": {"kind": "hf", "merged_from": meta.head} if (meta.head or {}).get("kind") == "lora"
                else meta.head or {"kind": "hf"},  # a LoRA checkpoint is exported merged
                "onnx": {**info, "inputs": _input_specs(info),
                         "outputs": [{"name": "logits", "dtype": "float32", "dims": ["batch", 3]}]},
                "max_length": max_length, "tokenizer": type(tokenizer).__name__, "encoder": meta.encoder.to_dict(),
                "temperature": meta.temperature, "parity_data": str(path),
                "parity_shapes": [list(s) for s in shapes], "artifacts": artifacts, "tensorrt": trt_section,
                "openvino": ov_section, "onnx_sha256": sha256_file(tmp / "model.onnx"),
            })
    except OSError as exc:
        raise ConfigError(f"cannot write --out {out}: {exc}") from None
    return {"out": str(out), "artifacts": {k: v["file"] for k, v in artifacts.items()},
            "parity": {k: v["passed"] for k, v in gate.reports.items()}}


def run_ensemble_export(source: Path, members: list[Path], out: Path, *, overwrite: bool = False,
                        **options: Any) -> dict[str, Any]:
    """Export every member (each parity-checked on its own) into ``out/<member>/``, copy the training run's
    ``oof.csv`` / ``metrics.json`` (blend weights are fitted on them), and write one manifest over all of it."""
    from arena.artifacts import write_manifest
    from arena.cli.safety import check_export_out
    from arena.data import resolve_csv
    from arena.export.precheck import check_checkpoint
    from arena.io import atomic_dir
    from arena.serving.ensemble import DEFAULT_COMBINE, ENSEMBLE_KIND

    check_export_out(out, checkpoint=source, data=resolve_csv(options.get("data"), "train.csv"), overwrite=overwrite)
    for member in members:  # every fold checked before any is exported
        check_checkpoint(member)
    summaries = {}
    with atomic_dir(out, overwrite=overwrite) as tmp:
        for member in members:
            log.info("exporting %s", member.name)
            summaries[member.name] = run_export(member, tmp / member.name, **options)
        for name in ("oof.csv", "metrics.json", "train_config.json"):
            if (source / name).is_file():
                shutil.copy2(source / name, tmp / name)
        write_manifest(tmp, {
            "kind": ENSEMBLE_KIND, "source_checkpoint": str(source.resolve()), "combine": DEFAULT_COMBINE,
            "members": [{"folder": m.name, "weight": 1.0 / len(members),
                         "artifacts": summaries[m.name]["artifacts"]} for m in members]})
    return {"out": str(out), "members": {k: v["artifacts"] for k, v in summaries.items()},
            "parity": {k: v["parity"] for k, v in summaries.items()}}


def _check_trt_possible(checkpoint: Path) -> None:
    """Refuse ``--trt`` before any ONNX work: for decoder LLMs (out of scope) and where TensorRT is missing."""
    from arena.models.modeling import is_decoder, load_model_config
    from arena.serving.backends.tensorrt import tensorrt_available

    config = load_model_config(checkpoint)
    if is_decoder(config):
        raise ArenaError(
            f"--trt: TensorRT engines for decoder LLMs ({config.model_type}) are TensorRT-LLM's job (its own model "
            "definitions, paged KV cache, int4/int8 weight-only kernels) and out of scope for arena-export; export "
            "ONNX without --trt for a small decoder, or serve it with arena-infer --backend torch "
            "(bf16 / fp16 / 4bit / 8bit)")
    ok, why = tensorrt_available()
    if not ok:
        raise ArenaError(f"--trt: {why}")


def _model_section(config: Any, max_positions: int | None) -> dict[str, Any]:
    """The manifest's ``model`` section: what the graph computes, for loading checks and readers."""
    return {"model_type": config.model_type, "num_labels": config.num_labels, "hidden_size": config.hidden_size,
            "num_hidden_layers": config.num_hidden_layers, "max_positions": max_positions}


def _input_specs(info: dict[str, Any]) -> list[dict[str, Any]]:
    """The graph's inputs as the manifest records them (name, dtype, dims)."""
    specs: list[dict[str, Any]] = [{"name": n, "dtype": "int64", "dims": ["batch", "sequence"]}
                                   for n in info["inputs"] if n != "features"]
    if "features" in info["inputs"]:
        specs.append({"name": "features", "dtype": "float32", "dims": ["batch", len(info["features"])],
                      "columns": info["features"]})
    return specs


def _build_trt(folder: Path, records, tokenizer, encoder_cfg, model, buckets: int, max_tokens: int | None,
               workspace_gib: float, parity: Callable[[Any], Any]) -> dict[str, Any]:  # pragma: no cover - GPU
    """Plan profiles for the token budget inference packs, build the strongly typed engine from the FP16 ONNX, and
    check it with ``parity(runner)`` (PyTorch fp32 on the real parity rows, the FP16 gate; a failure raises and
    nothing is kept).

    Returns the manifest's ``tensorrt`` section: the budget the profiles were planned for, and per engine the GPU,
    compute capability and TensorRT version it runs on, the ONNX file and hash it came from, profiles and parity.
    """
    from dataclasses import asdict

    import tensorrt as trt_mod

    from arena.artifacts import engine_filename, engine_key, slug
    from arena.encode import ArenaEncoder
    from arena.export.tensorrt import build_engine, plan_profiles, planned_budget
    from arena.io import sha256_file
    from arena.models.hybrid import is_hybrid
    from arena.serving.backends.tensorrt import TensorRTRunner, gpu_identity

    onnx_file, version = "model.fp16.onnx", trt_mod.__version__
    n_features = model.n_features if is_hybrid(model) else 0
    budget = planned_budget(max_tokens, encoder_cfg.max_length, model.config.model_type)
    lengths = ArenaEncoder(tokenizer, encoder_cfg).encode(records).lengths
    profiles = plan_profiles(lengths, max_length=encoder_cfg.max_length, max_tokens=budget, buckets=buckets)
    gpu, cc = gpu_identity()
    onnx_sha = sha256_file(folder / onnx_file)
    key = engine_key(onnx_sha, gpu, cc, version, "fp16", profiles)
    name = engine_filename(gpu, version, "fp16", key)
    cache = Path.home() / ".cache" / "arena" / f"trt-timing-{slug(gpu)}-{version}.cache"
    cache.parent.mkdir(parents=True, exist_ok=True)
    info = build_engine(folder / onnx_file, folder / name, profiles, workspace_gib=workspace_gib,
                        timing_cache=cache, n_features=n_features)
    report = parity(TensorRTRunner((folder / name).read_bytes()))
    for line in report.lines():
        log.info("parity %s", line)
    if not report.passed:
        raise ParityError("tensorrt parity check failed, nothing was kept: " + "; ".join(report.failures)
                          + "\n" + "\n".join(report.lines()))
    return {"status": "built", "max_tokens": budget, "engines": [{
        "file": name, "key": key, "gpu_name": gpu, "compute_capability": cc, "tensorrt_version": version,
        "onnx_file": onnx_file, "onnx_sha256": onnx_sha, "precision": "fp16", "strongly_typed": True,
        "features": n_features, "max_tokens": budget, "profiles": [asdict(p) for p in profiles],
        "parity": report.to_dict(), **info}]}


def main() -> None:
    run_app(app)


if __name__ == "__main__":
    main()
