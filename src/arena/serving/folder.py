"""A model folder, read once: what it is and what it offers.

:func:`read_folder` opens any folder arena scores from (an arena-train checkpoint, a LoRA adapter checkpoint, an
arena-export folder, a foreign ONNX export such as optimum's, a fold ensemble) into one :class:`ModelFolder`: its
kind, its manifest (read once, here), its encoder settings and temperature, and the runnable *variants* it offers
(backend x precision x file, with the parity record and why a variant cannot run here), which the registered
backends (:mod:`arena.serving.backends`) declare. Every command takes what it needs from this object; the path from a
folder to a running backend goes one way: read -> choose a variant (:mod:`arena.serving.choice`) -> open it
(:mod:`arena.serving.loading`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from arena.artifacts import CONFIG, read_manifest, verify_files
from arena.encode import EncoderConfig
from arena.errors import ModelError
from arena.serving.backends.contract import Variant

CHECKPOINT, LORA, EXPORT, FOREIGN, ENSEMBLE = "checkpoint", "lora", "export", "foreign", "ensemble"
KINDS = (CHECKPOINT, LORA, EXPORT, FOREIGN, ENSEMBLE)
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors")
"""Files whose presence means the folder holds PyTorch weights (a LoRA checkpoint holds the adapter's)."""


@dataclass(frozen=True)
class ModelFolder:
    """What :func:`read_folder` found. ``manifest`` is the export's (None for a checkpoint or a foreign folder);
    ``foreign`` the :class:`~arena.serving.foreign_folder.ForeignExport` of a foreign folder; ``members`` the
    member folders of a fold ensemble (whose own settings are read when each member is)."""

    path: Path
    kind: str
    manifest: dict[str, Any] | None = None
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    temperature: float = 1.0
    model_type: str | None = None
    foreign: Any = None
    members: tuple[Path, ...] = ()

    @property
    def has_weights(self) -> bool:
        return any((self.path / name).is_file() for name in WEIGHT_FILES)

    @property
    def onnx_artifacts(self) -> dict[str, dict[str, Any]]:
        """ONNX Runtime models by precision: the manifest's ``artifacts`` (each there only because it passed its
        parity check), a foreign folder's one model as exported, or a hand-made folder's ``model.onnx``."""
        if self.manifest is not None:
            return dict(self.manifest.get("artifacts") or {})
        if self.foreign is not None:
            return {"fp32": {"file": self.foreign.onnx.name, "foreign": True}}
        return {"fp32": {"file": "model.onnx"}} if (self.path / "model.onnx").is_file() else {}

    @property
    def max_positions(self) -> int | None:
        """The longest sequence the exported graph accepts (recorded at export; a foreign folder's config)."""
        if self.foreign is not None:
            return self.foreign.max_positions
        value = ((self.manifest or {}).get("model") or {}).get("max_positions")
        return int(value) if value else None

    def recorded_hash(self, name: str) -> str | None:
        return ((self.manifest or {}).get("files") or {}).get(name)

    def verify(self, names: list[str]) -> None:
        """Raise :class:`ModelError` if a file differs from the sha256 the manifest recorded (no-op without one)."""
        if self.manifest is not None:
            verify_files(self.path, self.manifest, names)

    def variants(self, devices: Sequence[str] = ("auto",)) -> list[Variant]:
        """Every variant the registered backends find in this folder for ``devices``, runnable or not (``why_not``
        says)."""
        from arena.serving.backends import specs

        return [v for spec in specs().values() for v in spec.variants(self, tuple(devices))]

    def describe(self) -> str:
        return {CHECKPOINT: "arena-train checkpoint", LORA: "LoRA adapter checkpoint", EXPORT: "arena-export folder",
                FOREIGN: "foreign ONNX export", ENSEMBLE: f"fold ensemble of {len(self.members)}"}[self.kind]


def read_folder(folder: str | Path) -> ModelFolder:
    """Open ``folder`` into a :class:`ModelFolder`, reading its manifest once; :class:`ModelError` naming what is
    wrong when it is none of the kinds arena scores from."""
    from arena.serving.ensemble import member_folders
    from arena.serving.foreign_folder import inspect_foreign, is_foreign_export

    folder = Path(folder)
    if not folder.is_dir():
        raise ModelError(f"model folder {folder} does not exist" if not folder.exists()
                         else f"{folder} is a file; pass a model folder")
    manifest = read_manifest(folder)  # the one read of the manifest
    members = member_folders(folder, manifest)
    if members:
        return ModelFolder(folder, ENSEMBLE, manifest, members=tuple(members))
    if manifest is not None:
        return ModelFolder(folder, EXPORT, manifest, EncoderConfig.from_dict(manifest.get("encoder", {})),
                           float(manifest.get("temperature", 1.0)),
                           (manifest.get("model") or {}).get("model_type") or _config_model_type(folder))
    if is_foreign_export(folder):
        foreign = inspect_foreign(folder)
        return ModelFolder(folder, FOREIGN, None, foreign.encoder, foreign.temperature, foreign.model_type, foreign)
    from arena.models.modeling import check_model_folder, read_meta

    check_model_folder(folder)
    meta = read_meta(folder)
    kind = LORA if (folder / "adapter_config.json").is_file() else CHECKPOINT
    return ModelFolder(folder, kind, None, meta.encoder, meta.temperature, _config_model_type(folder))


def _config_model_type(folder: Path) -> str | None:
    import json

    try:
        return json.loads((folder / CONFIG).read_text()).get("model_type")
    except (OSError, ValueError):
        return None
