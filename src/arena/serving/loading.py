"""Open a model folder as a backend plus the encoder it needs, one way: read the folder once
(:func:`arena.serving.folder.read_folder`) -> choose a variant (:func:`arena.serving.choice.choose_variant`) ->
open it with its backend's declaration (:mod:`arena.serving.backends`)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from arena.encode import ArenaEncoder
from arena.errors import ConfigError
from arena.models.modeling import check_pad_token, load_tokenizer
from arena.serving.backends import spec
from arena.serving.backends.contract import OpenOptions
from arena.serving.calibration import CalibrationRequest, calibrated_choice
from arena.serving.choice import Choice, choose_variant
from arena.serving.ensemble import DEFAULT_COMBINE
from arena.serving.folder import ModelFolder, read_folder

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    folder: Path
    runner: Any
    encoder: ArenaEncoder
    temperature: float
    choice: Choice
    description: str
    model_type: str | None = None
    source: ModelFolder | None = None


def open_model(folder: str | Path | ModelFolder, *, backend: str = "auto", precision: str = "auto",
               threads: int | None = None, compile: bool = False, device: str = "auto",
               load_runner: bool = True, devices: Sequence[str] | None = None,
               calibration: CalibrationRequest | None = None, attention: str = "auto",
               device_map: dict[str, Any] | None = None) -> LoadedModel:
    """The folder's encoder, settings and backend. ``load_runner=False``: everything but the backend (``runner``
    None), for a parent process whose workers each load their own (:mod:`arena.serving.sharded`); ``devices``: the
    workers' devices, or the GPUs of a layer split (``device_map``, :mod:`arena.serving.layer_split`), which the
    chosen variant must suit (default: ``device``). ``calibration``: settle an automatic CPU choice on this machine
    (:func:`arena.serving.calibration.calibrated_choice`: cached, measured on these rows, or the declared order);
    None: the declared order. Never with ``devices`` or without a runner. ``attention``: the torch backend's
    ``--attention``; anything but ``auto`` with another backend chosen is a :class:`ConfigError`."""
    source = folder if isinstance(folder, ModelFolder) else read_folder(folder)
    choice = choose_variant(source, backend, precision, devices or device)
    if attention != "auto" and choice.backend != "torch":
        raise ConfigError(f"--attention {attention} is the torch backend's, and {source.path} runs on "
                          f"{choice.backend}; pass --backend torch with the arena-train checkpoint, or drop "
                          "--attention")
    tokenizer = load_tokenizer(source.path, manifest=source.manifest)
    encoder = ArenaEncoder(tokenizer, source.encoder)
    options, runner = OpenOptions(device, threads, compile, attention, device_map), None
    if calibration is not None and load_runner and devices is None:
        choice, runner = calibrated_choice(source, choice, encoder, options, calibration, source.model_type)
    loaded = LoadedModel(source.path, None, encoder, source.temperature, choice, choice.backend, source.model_type,
                         source)
    if not load_runner:
        return loaded
    if runner is None:
        runner = spec(choice.backend).open(source, choice.variant, options)
    if choice.backend == "torch":
        check_pad_token(runner.model.config, encoder.pad_id, source.path)  # a decoder pools by the pad id
    attach_runner(loaded, runner)
    if source.foreign is not None:
        loaded.description += f"; {source.foreign.describe()}"
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
    from arena.serving.ensemble import COMBINE, fit_blend_weights

    if combine not in COMBINE:
        raise ConfigError(f"--combine must be one of {', '.join(COMBINE)}; got {combine!r}")
    folders = [Path(f) for f in folders]
    if not folders:
        raise ConfigError("give at least one --model")
    if weights is not None and len(weights) != len(folders):
        raise ConfigError(f"--weights has {len(weights)} numbers for {len(folders)} --model folders; give one each")
    if weights is not None and (any(w < 0 for w in weights) or sum(weights) <= 0):
        raise ConfigError(f"--weights must be non-negative with a positive sum; got {list(weights)}")
    read = [read_folder(f) for f in folders]  # each folder read once: a fold ensemble knows its members
    expanded: list[list[Path] | list[ModelFolder]] = [list(r.members) or [r] for r in read]
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
