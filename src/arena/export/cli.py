"""``arena-export``: checkpoint -> verified ONNX (-> fused / FP16 / INT8 ONNX, -> TensorRT FP16 engines)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Annotated, Any

import typer

from arena.cli_common import setup_logging
from arena.errors import ArenaError, ConfigError, ParityError, cli_errors

log = logging.getLogger("arena.export")
app = typer.Typer(add_completion=False, help=__doc__, pretty_exceptions_enable=False)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "spm.model",
                   "added_tokens.json", "vocab.txt", "config.json", "arena.json")


def parity_batches(records, tokenizer, encoder_cfg, shapes: list[tuple[int, int]]):
    """Real rows encoded and padded to exactly each (batch, sequence) shape; the longest rows first."""
    from dataclasses import replace

    import numpy as np

    from arena.encode import ArenaEncoder, pad_batch
    from arena.export.parity import ParityBatch

    out = []
    for batch, seq in shapes:
        enc = ArenaEncoder(tokenizer, replace(encoder_cfg, max_length=max(seq, 64)))  # then cut to seq
        rows = records[: max(batch * 4, batch)]
        encoded = enc.encode(rows)
        pick = np.argsort(-encoded.lengths, kind="stable")[:batch]
        ids = [encoded.ids[i][:seq] for i in pick]
        input_ids, mask = pad_batch(ids, tokenizer.pad_token_id or 0, length=seq)
        labels = None
        if all(rows[i].label is not None for i in pick):
            labels = np.array([rows[i].label for i in pick])
        out.append(ParityBatch(input_ids, mask, labels, encoded.feature_rows(pick)))
    return out


def parse_shapes(text: str, max_length: int) -> list[tuple[int, int]]:
    shapes = []
    for part in text.split(","):
        try:
            b, _, s = part.strip().lower().partition("x")
            shape = (int(b), min(int(s), max_length))
        except ValueError:
            raise ConfigError(f"--parity-shapes takes BxL pairs such as 1x17,7x133; got {part!r}") from None
        if shape not in shapes:
            shapes.append(shape)
    if (2, max_length) not in shapes and all(s != max_length for _, s in shapes):
        shapes.append((2, max_length))  # the longest the model accepts
    return shapes


@app.command(epilog="Examples:\n\n  arena-export runs/model --out runs/export\n\n"
             "  arena-export runs/model --out runs/export --int8 --fp16\n\n"
             "  arena-export runs/model --out runs/export --trt   (NVIDIA GPU + pip install 'arena-toolkit[gpu]')")
@cli_errors
def export(
    checkpoint: Annotated[Path, typer.Argument(help="arena-train output or any HF sequence-classification folder")],
    out: Annotated[Path, typer.Option(help="Folder for the artefacts (must not exist or be empty)")],
    fp16: Annotated[bool, typer.Option(help="Also write an ONNX Runtime FP16 model (fused, float32 I/O)")] = False,
    int8: Annotated[bool, typer.Option(help="Also write an INT8 dynamically quantised model (CPU)")] = False,
    optimize: Annotated[bool, typer.Option(help="Also write an onnxruntime.transformers fused fp32 model")] = False,
    trt: Annotated[bool, typer.Option(help="Build TensorRT FP16 engines (needs TensorRT and a GPU)")] = False,
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
    max_tokens: Annotated[int, typer.Option(help="Token budget per batch that inference will use")] = 16384,
    workspace_gib: Annotated[float, typer.Option(help="TensorRT builder workspace")] = 4.0,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --out folder (only on success)")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Export a checkpoint to ONNX, check it against PyTorch, and derive optimised artefacts."""
    setup_logging(verbose)
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
               int8_prob_tol: float = 0.1, min_agreement: float = 0.97, trt_buckets: int = 4,
               max_tokens: int = 16384, workspace_gib: float = 4.0, overwrite: bool = False,
               openvino: bool = True, int8_static: bool = False, calibration_rows: int = 64) -> dict[str, Any]:
    from dataclasses import replace

    import numpy as np

    from arena.artifacts import write_manifest
    from arena.backends.onnx import OnnxBackend
    from arena.backends.torch import TorchBackend
    from arena.data import has_labels, read_records, resolve_csv
    from arena.export import optimize as ort_opt
    from arena.export.onnx import export_onnx
    from arena.export.parity import Tolerance, compare
    from arena.io import atomic_dir, sha256_file
    from arena.modeling import check_model_folder, load_classifier, load_tokenizer, read_meta

    checkpoint = Path(checkpoint)
    check_model_folder(checkpoint)
    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not overwrite)):
        raise ConfigError(f"--out {out} already exists with other content; choose a new folder or pass --overwrite")
    if trt:  # say what is missing before spending minutes on the ONNX part
        from arena.backends.tensorrt import tensorrt_available

        ok, why = tensorrt_available()
        if not ok:
            raise ArenaError(f"--trt: {why}")
    from arena.hybrid import is_hybrid

    meta = read_meta(checkpoint)
    model = load_classifier(checkpoint, require_three_labels=True).float().eval()
    hybrid = is_hybrid(model)
    if hybrid != meta.encoder.features:  # the parity rows must carry features exactly when the model takes them
        meta = replace(meta, encoder=replace(meta.encoder, features=hybrid))
    tokenizer = load_tokenizer(checkpoint)
    max_length = meta.encoder.max_length
    shapes = parse_shapes(parity_shapes, max_length)

    path = resolve_csv(data, "train.csv")
    records = read_records(path, labelled=has_labels(path))[:256]
    if len(records) < max(b for b, _ in shapes):
        raise ConfigError(f"{path} has {len(records)} rows; the parity check needs at least "
                          f"{max(b for b, _ in shapes)}")
    batches = parity_batches(records, tokenizer, meta.encoder, shapes)
    reference = TorchBackend(model=model, device="cpu", precision="fp32")
    ref_cache: dict[int, np.ndarray] = {}
    reports: dict[str, Any] = {}
    artifacts: dict[str, Any] = {}

    def check(name: str, file: Path, tol: Tolerance) -> None:
        backend = OnnxBackend(file, device="cpu")
        report = compare(name, reference, backend, batches, tol, ref_cache)
        for line in report.lines():
            log.info("parity %s", line)
        reports[name] = report.to_dict()
        if not report.passed:
            raise ParityError(f"{name} parity check failed, nothing was kept: " + "; ".join(report.failures)
                              + "\n" + "\n".join(report.lines()))

    try:
        with atomic_dir(out, overwrite=overwrite) as tmp:
            info = export_onnx(model, tmp / "model.onnx", opset=opset, exporter=exporter)
            check("fp32", tmp / "model.onnx", replace(Tolerance.fp32(), max_logit_diff=fp32_tol))
            artifacts["fp32"] = {"file": "model.onnx", "precision": "fp32", "parity": reports["fp32"]}
            if optimize:
                stats = ort_opt.fuse(tmp / "model.onnx", tmp / "model.opt.onnx", model.config)
                check("fp32_fused", tmp / "model.opt.onnx", replace(Tolerance.fp32(), max_logit_diff=fp32_tol))
                artifacts["fp32_fused"] = {"file": "model.opt.onnx", "precision": "fp32", "fusions": stats,
                                           "parity": reports["fp32_fused"]}
            if fp16:
                stats = ort_opt.to_fp16(tmp / "model.onnx", tmp / "model.fp16.onnx", model.config)
                check("fp16", tmp / "model.fp16.onnx",
                      replace(Tolerance.fp16(), max_prob_diff=fp16_prob_tol, min_argmax_agreement=min_agreement))
                artifacts["fp16"] = {"file": "model.fp16.onnx", "precision": "fp16", "fusions": stats,
                                     "parity": reports["fp16"], "checked_on": "CPUExecutionProvider"}
            if int8:
                info8 = ort_opt.to_int8(tmp / "model.onnx", tmp / "model.int8.onnx")
                check("int8", tmp / "model.int8.onnx",
                      replace(Tolerance.int8(), max_prob_diff=int8_prob_tol, min_argmax_agreement=min_agreement))
                artifacts["int8"] = {"file": "model.int8.onnx", "precision": "int8", **info8,
                                     "parity": reports["int8"]}
            ov_section = _openvino_artifacts(tmp, meta.encoder, tokenizer, path, reference, batches, ref_cache,
                                             reports, openvino=openvino, int8_static=int8_static,
                                             calibration_rows=calibration_rows, fp32_tol=fp32_tol,
                                             int8_tol=(int8_prob_tol, min_agreement))
            for name in TOKENIZER_FILES:  # the export folder is self-contained: infer encodes from it
                if (checkpoint / name).is_file():
                    shutil.copy2(checkpoint / name, tmp / name)
            trt_section: dict[str, Any] = {"status": "not requested"}
            if trt:  # pragma: no cover - needs TensorRT and a GPU
                trt_section = _build_trt(tmp, records, tokenizer, meta.encoder, trt_buckets, max_tokens,
                                         workspace_gib, model.n_features if hybrid else 0)
            write_manifest(tmp, {
                "source_checkpoint": str(checkpoint.resolve()),
                "model": {"model_type": model.config.model_type, "num_labels": model.config.num_labels,
                          "hidden_size": model.config.hidden_size,
                          "num_hidden_layers": model.config.num_hidden_layers},
                "head": meta.head or {"kind": "hf"},
                "onnx": {**info, "inputs": _input_specs(info),
                         "outputs": [{"name": "logits", "dtype": "float32", "dims": ["batch", 3]}]},
                "max_length": max_length,
                "tokenizer": type(tokenizer).__name__,
                "encoder": meta.encoder.to_dict(),
                "temperature": meta.temperature,
                "parity_data": str(path),
                "parity_shapes": [list(s) for s in shapes],
                "artifacts": artifacts,
                "tensorrt": trt_section,
                "openvino": ov_section,
                "onnx_sha256": sha256_file(tmp / "model.onnx"),
            })
    except OSError as exc:
        raise ConfigError(f"cannot write --out {out}: {exc}") from None
    return {"out": str(out), "artifacts": {k: v["file"] for k, v in artifacts.items()},
            "parity": {k: v["passed"] for k, v in reports.items()}}


def _openvino_artifacts(folder: Path, encoder_cfg, tokenizer, data: Path, reference, batches, ref_cache,
                        reports: dict[str, Any], *, openvino: bool, int8_static: bool, calibration_rows: int,
                        fp32_tol: float, int8_tol: tuple[float, float]) -> dict[str, Any]:
    """The manifest's ``openvino`` section: fp32/bf16 parity of model.onnx under OpenVINO and, asked for, the
    static INT8 model (:mod:`arena.export.openvino`); each check's report is added to ``reports``."""
    if not (openvino or int8_static):
        return {"status": "not requested", "precisions": {}}
    from dataclasses import replace

    from arena.export import openvino as ov_export
    from arena.export.parity import Tolerance

    section = ov_export.check_onnx(folder / "model.onnx", reference, batches, ref_cache, fp32_tol=fp32_tol)
    if int8_static:
        if section["status"] != "checked":
            raise ConfigError(f"--int8-static: {section['why']}")
        from arena.batching import default_max_tokens
        from arena.encode import ArenaEncoder
        from arena.export.quantize import calibration_batches

        rows = ov_export.calibration_records(data, calibration_rows)
        calibration = calibration_batches(rows, ArenaEncoder(tokenizer, encoder_cfg),
                                          max_tokens=default_max_tokens("cpu", encoder_cfg.max_length))
        tol = replace(Tolerance.int8(), max_prob_diff=int8_tol[0], min_argmax_agreement=int8_tol[1])
        section["precisions"]["int8"] = ov_export.add_static_int8(folder, reference, batches, ref_cache,
                                                                  calibration, tol)
    reports.update({f"openvino_{k}": v["parity"] for k, v in section["precisions"].items() if "parity" in v})
    return section


def _input_specs(info: dict[str, Any]) -> list[dict[str, Any]]:
    """The graph's inputs as the manifest records them (name, dtype, dims)."""
    specs: list[dict[str, Any]] = [{"name": n, "dtype": "int64", "dims": ["batch", "sequence"]}
                                   for n in info["inputs"] if n != "features"]
    if "features" in info["inputs"]:
        specs.append({"name": "features", "dtype": "float32", "dims": ["batch", len(info["features"])],
                      "columns": info["features"]})
    return specs


def _build_trt(folder: Path, records, tokenizer, encoder_cfg, buckets: int, max_tokens: int,
               workspace_gib: float, n_features: int = 0) -> dict[str, Any]:  # pragma: no cover - needs TensorRT
    import tensorrt as trt_mod

    from arena.artifacts import engine_filename, engine_key, slug
    from arena.backends.tensorrt import gpu_identity
    from arena.encode import ArenaEncoder
    from arena.export.tensorrt import build_engine, plan_profiles
    from arena.io import sha256_file

    lengths = ArenaEncoder(tokenizer, encoder_cfg).encode(records).lengths
    profiles = plan_profiles(lengths, max_length=encoder_cfg.max_length, max_tokens=max_tokens, buckets=buckets)
    gpu, cc = gpu_identity()
    onnx_sha = sha256_file(folder / "model.onnx")
    key = engine_key(onnx_sha, gpu, cc, trt_mod.__version__, "fp16", profiles)
    name = engine_filename(gpu, trt_mod.__version__, "fp16", key)
    cache = Path.home() / ".cache" / "arena" / f"trt-timing-{slug(gpu)}-{trt_mod.__version__}.cache"
    cache.parent.mkdir(parents=True, exist_ok=True)
    info = build_engine(folder / "model.onnx", folder / name, profiles, fp16=True, workspace_gib=workspace_gib,
                        timing_cache=cache, n_features=n_features)
    from dataclasses import asdict

    return {"status": "built", "onnx_sha256": onnx_sha, "engines": [{
        "file": name, "key": key, "gpu_name": gpu, "compute_capability": cc,
        "tensorrt_version": trt_mod.__version__, "onnx_sha256": onnx_sha, "precision": "fp16",
        "features": n_features,
        "profiles": [asdict(p) for p in profiles], **info}]}


def main() -> None:
    app()


if __name__ == "__main__":
    main()
