"""Open a model folder (arena-train checkpoint, arena-export folder, or a foreign ONNX export such as optimum's) as a
backend plus the encoder it needs."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from arena.artifacts import read_manifest
from arena.encode import ArenaEncoder, EncoderConfig
from arena.errors import BackendUnavailable, ConfigError, ModelError
from arena.models.modeling import check_pad_token, load_tokenizer, read_meta
from arena.serving.backends.contract import Limits
from arena.serving.choice import Choice, choose_backend
from arena.serving.ensemble import DEFAULT_COMBINE
from arena.serving.foreign_folder import ForeignExport, inspect_foreign, is_foreign_export

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
               compile: bool = False, device: str = "auto", load_runner: bool = True,
               devices: Sequence[str] | None = None) -> LoadedModel:
    """The folder's encoder, settings and backend. ``load_runner=False``: everything but the backend (``runner``
    None), for a parent process whose workers each load their own (:mod:`arena.serving.sharded`); ``devices``: the
    workers' devices, which the backend choice must suit (default: ``device``)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelError(f"model folder {folder} does not exist")
    manifest = read_manifest(folder)
    foreign = inspect_foreign(folder) if manifest is None and is_foreign_export(folder) else None
    if manifest is not None:
        from arena.artifacts import verify_files

        encoder_cfg = EncoderConfig.from_dict(manifest.get("encoder", {}))
        temperature = float(manifest.get("temperature", 1.0))
    elif foreign is not None:
        encoder_cfg, temperature = foreign.encoder, foreign.temperature
    else:
        from arena.models.modeling import check_model_folder

        check_model_folder(folder)
        meta = read_meta(folder)
        encoder_cfg, temperature = meta.encoder, meta.temperature
    model_type = (manifest or {}).get("model", {}).get("model_type") or _config_model_type(folder)
    choice = choose_backend(backend, folder, precision=precision, device=devices or device)
    if precision == "auto":
        precision = choice.options.get("precision", "auto")
    tokenizer = load_tokenizer(folder)
    encoder = ArenaEncoder(tokenizer, encoder_cfg)
    loaded = LoadedModel(folder, None, encoder, temperature, choice, choice.backend, model_type)
    if not load_runner:
        return loaded
    if choice.backend == "onnx":
        from arena.serving.backends.onnx import OnnxBackend, onnx_device

        dev = onnx_device(device)  # auto: cuda only when a GPU is present and ONNX Runtime has the CUDA provider
        path, prec = (_onnx_artifact(folder, manifest, precision, dev) if foreign is None
                      else _foreign_artifact(foreign, precision))
        if manifest is not None:
            verify_files(folder, manifest, [path.name])
        max_length = foreign.max_positions if foreign is not None else _onnx_max_length(manifest)
        runner = OnnxBackend(path, device=device, threads=threads, precision=prec,
                             limits=Limits(max_length=max_length))
    elif choice.backend == "openvino":
        runner = _openvino_backend(folder, manifest, precision, threads)
    elif choice.backend == "torch":
        from arena.serving.backends.torch import TorchBackend

        runner = TorchBackend(folder, device=device, precision=precision, compile=compile, threads=threads)
        check_pad_token(runner.model.config, encoder.pad_id, folder)  # a decoder pools by the pad id
    else:  # pragma: no cover - needs TensorRT and a GPU
        from arena.serving.backends.tensorrt import TensorRTBackend

        runner = TensorRTBackend(folder, manifest or {}, device=device)
    attach_runner(loaded, runner)
    if foreign is not None:
        loaded.description += f"; {foreign.describe()}"
    return loaded


def attach_runner(loaded: LoadedModel, runner: Any) -> LoadedModel:
    """Give ``loaded`` its backend. The model decides whether rows need features (a hybrid head's third input)."""
    needs = bool(getattr(runner, "needs_features", False))
    if needs != loaded.encoder.config.features:
        from dataclasses import replace

        if needs:
            log.warning("%s: the model takes features but its encoder settings do not say so; computing them",
                        loaded.folder)
        loaded.encoder = ArenaEncoder(loaded.encoder.tokenizer, replace(loaded.encoder.config, features=needs))
    loaded.runner, loaded.description = runner, runner.description
    return loaded


def _foreign_artifact(foreign: ForeignExport, precision: str) -> tuple[Path, str]:
    """A foreign export has one model, scored as it was exported; derived precisions come from arena-export."""
    if precision not in ONNX_PRECISIONS:
        raise ConfigError(f"--precision for ONNX must be one of {', '.join(ONNX_PRECISIONS)}")
    if precision not in ("auto", "fp32"):
        flag = "optimize" if precision == "fp32_fused" else precision
        raise BackendUnavailable(f"{foreign.folder} is a foreign ONNX export with one model ({foreign.onnx.name}); "
                                 f"derive a {precision} model with `arena-export {foreign.folder} --out DIR "
                                 f"--{flag}` and score DIR")
    return foreign.onnx, "as exported"


def _openvino_backend(folder: Path, manifest: dict[str, Any] | None, precision: str, threads: int | None):
    """The export's OpenVINO model at ``precision`` (auto: the fastest that passed), only if its parity check
    passed at export; the files are checked against the manifest's sha256 first, and that hash keys the
    compiled-model cache."""
    from arena.artifacts import openvino_passed, verify_files
    from arena.serving.backends.openvino import PRECISIONS, OpenVinoBackend, cache_key

    passed = openvino_passed(manifest)
    if precision == "auto":  # the CPU ranking's OpenVINO options, with its checks (native bf16, installed)
        from arena.serving.choice import cpu_options

        usable = [p for b, p, why in cpu_options(manifest) if b == "openvino" and why is None]
        precision = usable[0] if usable else "fp32"
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


@dataclass
class LoadedEnsemble:
    """Every model that scores the rows (one, the folds of a k-fold run, or a blend), with their weights."""

    members: list[LoadedModel]
    weights: list[float]
    combine: str
    weights_reason: str

    @property
    def description(self) -> str:
        if len(self.members) == 1:
            return self.members[0].description
        kinds = sorted({m.description for m in self.members})
        return (f"ensemble of {len(self.members)} ({'; '.join(kinds)}), {self.combine} mean, weights "
                f"{', '.join(f'{w:.3f}' for w in self.weights)} ({self.weights_reason})")


def open_models(folders: Sequence[str | Path], *, weights: Sequence[float] | None = None,
                combine: str = DEFAULT_COMBINE, **options: Any) -> LoadedEnsemble:
    """Open one model, a fold ensemble (a k-fold training output or its export) or a blend of several folders.

    ``weights``: one per folder (a fold ensemble's weight is shared equally by its folds); None: equal for one
    folder, else fitted on the folders' out-of-fold predictions (:func:`arena.serving.ensemble.fit_blend_weights`).
    ``options`` go to :func:`open_model` for every member.
    """
    from arena.serving.ensemble import COMBINE, fit_blend_weights, member_folders

    if combine not in COMBINE:
        raise ConfigError(f"--combine must be one of {', '.join(COMBINE)}; got {combine!r}")
    folders = [Path(f) for f in folders]
    if not folders:
        raise ConfigError("give at least one --model")
    if weights is not None and len(weights) != len(folders):
        raise ConfigError(f"--weights has {len(weights)} numbers for {len(folders)} --model folders; give one each")
    if weights is not None and (any(w < 0 for w in weights) or sum(weights) <= 0):
        raise ConfigError(f"--weights must be non-negative with a positive sum; got {list(weights)}")
    expanded = [member_folders(f) or [f] for f in folders]
    if weights is not None:
        per_folder, reason = list(weights), "given"
    elif len(folders) == 1:
        per_folder, reason = [1.0], "equal" if len(expanded[0]) > 1 else "single model"
    else:
        fitted, reason = fit_blend_weights(folders, combine)
        per_folder = list(fitted)
    members, member_weights = [], []
    for parts, w in zip(expanded, per_folder, strict=True):
        for part in parts:
            members.append(open_model(part, **options))
            member_weights.append(w / sum(per_folder) / len(parts))
    return LoadedEnsemble(members, member_weights, combine, reason)
