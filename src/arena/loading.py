"""Open a model folder (arena-train checkpoint or arena-export folder) as a backend plus the encoder it needs."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from arena.artifacts import read_manifest
from arena.backends.base import Choice, Limits, choose_backend
from arena.encode import ArenaEncoder, EncoderConfig
from arena.errors import BackendUnavailable, ConfigError, ModelError
from arena.modeling import load_tokenizer, read_meta

log = logging.getLogger(__name__)

ONNX_PRECISIONS = ("auto", "fp32", "fp32_fused", "fp16", "int8")


@dataclass
class LoadedModel:
    folder: Path
    runner: Any
    encoder: ArenaEncoder
    temperature: float
    choice: Choice
    description: str
    model_type: str | None = None


def _onnx_artifact(folder: Path, manifest: dict[str, Any] | None, precision: str, device: str) -> tuple[Path, str]:
    artifacts = (manifest or {}).get("artifacts", {})
    if precision not in ONNX_PRECISIONS:
        raise ConfigError(f"--precision for ONNX must be one of {', '.join(ONNX_PRECISIONS)}")
    if precision == "auto":
        # fp32 on the CPU is exact; int8 is faster but changes predictions slightly (opt in with --precision int8).
        precision = "fp16" if device.startswith("cuda") and "fp16" in artifacts else "fp32"
    if artifacts:
        if precision not in artifacts:
            raise BackendUnavailable(f"{folder} has no {precision} ONNX model (it has {', '.join(artifacts)}); "
                                     f"export it with arena-export --{precision.split('_')[0]}")
        return folder / artifacts[precision]["file"], precision
    if (folder / "model.onnx").is_file():
        return folder / "model.onnx", "fp32"
    raise BackendUnavailable(f"{folder} has no ONNX model")


def open_model(folder: str | Path, *, backend: str = "auto", precision: str = "auto", threads: int | None = None,
               compile: bool = False, device: str = "auto") -> LoadedModel:
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelError(f"model folder {folder} does not exist")
    manifest = read_manifest(folder)
    if manifest is not None:
        from arena.artifacts import verify_files

        encoder_cfg = EncoderConfig.from_dict(manifest.get("encoder", {}))
        temperature = float(manifest.get("temperature", 1.0))
    else:
        from arena.modeling import check_model_folder

        check_model_folder(folder)
        meta = read_meta(folder)
        encoder_cfg, temperature = meta.encoder, meta.temperature
    model_type = (manifest or {}).get("model", {}).get("model_type") or _config_model_type(folder)
    choice = choose_backend(backend, folder, precision=precision)
    if precision == "auto":
        precision = choice.options.get("precision", "auto")
    tokenizer = load_tokenizer(folder)
    encoder = ArenaEncoder(tokenizer, encoder_cfg)
    if choice.backend == "onnx":
        import onnxruntime as ort

        from arena.backends.onnx import OnnxBackend

        dev = device if device != "auto" else (
            "cuda" if "CUDAExecutionProvider" in ort.get_available_providers() else "cpu")
        path, prec = _onnx_artifact(folder, manifest, precision, dev)
        if manifest is not None:
            verify_files(folder, manifest, [path.name])
        runner = OnnxBackend(path, device=dev, threads=threads, precision=prec,
                             limits=Limits(max_length=_onnx_max_length(manifest)))
    elif choice.backend == "openvino":
        runner = _openvino_backend(folder, manifest, precision, threads)
    elif choice.backend == "torch":
        from arena.backends.torch import TorchBackend

        runner = TorchBackend(folder, device=device, precision=precision, compile=compile, threads=threads)
    else:  # pragma: no cover - needs TensorRT and a GPU
        from arena.backends.tensorrt import TensorRTBackend

        runner = TensorRTBackend(folder, manifest or {})
    needs = bool(getattr(runner, "needs_features", False))
    if needs != encoder_cfg.features:  # the model decides whether rows need features (the hybrid head's input)
        from dataclasses import replace

        if needs:
            log.warning("%s: the model takes features but its encoder settings do not say so; computing them", folder)
        encoder = ArenaEncoder(tokenizer, replace(encoder_cfg, features=needs))
    return LoadedModel(folder, runner, encoder, temperature, choice, runner.description, model_type)


def _openvino_backend(folder: Path, manifest: dict[str, Any] | None, precision: str, threads: int | None):
    """The export's OpenVINO model at ``precision`` (auto: the fastest that passed), only if its parity check
    passed at export; the files are checked against the manifest's sha256 first, and that hash keys the
    compiled-model cache."""
    from arena.artifacts import openvino_passed, verify_files
    from arena.backends.openvino import PRECISIONS, OpenVinoBackend, cache_key

    passed = openvino_passed(manifest)
    if precision == "auto":
        precision = next((p for p in ("int8", "bf16", "fp32") if p in passed), "fp32")
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision for OpenVINO must be one of auto, {', '.join(PRECISIONS)}")
    if precision not in passed:
        entry = (((manifest or {}).get("openvino") or {}).get("precisions") or {}).get(precision)
        why = ("; ".join(entry["parity"]["failures"]) if entry and entry.get("parity") else
               entry.get("status", "not checked") if entry else "no parity record for it")
        raise BackendUnavailable(f"{folder}: OpenVINO {precision} did not pass its parity check at export ({why}); "
                                 "re-export with arena-export (with OpenVINO installed"
                                 + (", --int8-static)" if precision == "int8" else ")"))
    files = [passed[precision]["file"]] + ([passed[precision]["weights"]] if "weights" in passed[precision] else [])
    verify_files(folder, manifest or {}, files)
    hashes = [(manifest or {}).get("files", {}).get(f) for f in files]
    return OpenVinoBackend(folder / files[0], precision=precision, threads=threads,
                           limits=Limits(max_length=_onnx_max_length(manifest)),
                           cache_key=cache_key(hashes) if all(hashes) else None)


def _config_model_type(folder: Path) -> str | None:
    import json

    try:
        return json.loads((folder / "config.json").read_text()).get("model_type")
    except (OSError, ValueError):
        return None


def _onnx_max_length(manifest: dict[str, Any] | None) -> int | None:
    """The longest sequence an exported model accepts: what its architecture allows (recorded at export)."""
    value = ((manifest or {}).get("model") or {}).get("max_positions")
    return int(value) if value else None
