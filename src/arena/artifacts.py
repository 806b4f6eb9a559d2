"""The export folder format, in one place: what ``arena-export`` writes and every reader checks.

* the graph's tensor names (:data:`INPUT_IDS`, :data:`ATTENTION_MASK`, :data:`FEATURES`, :data:`LOGITS`);
* ``manifest.json``: what was built, from what, with which versions, how it was checked, and the sha256 of every
  file (:func:`write_manifest`, :func:`read_manifest`, :func:`verify_files`);
* ONNX files that are safe to open (:func:`check_onnx_file`);
* TensorRT engine identity: optimisation profiles (:class:`Profile`), the key and file name of an engine, and the
  check that an engine was built for this GPU / TensorRT / ONNX file (:func:`check_engine`).

The exporter writes this format and the backends read it; neither imports the other.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib.metadata as md
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from arena.errors import BackendUnavailable, ConfigError, ModelError
from arena.io import atomic_write_text, sha256_file

MANIFEST = "manifest.json"
INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"
TOKEN_INPUTS = (INPUT_IDS, ATTENTION_MASK)
FEATURES = "features"
"""A hybrid model's third input: float32 (batch, n_features)."""
LOGITS = "logits"
FORMAT_VERSION = 1


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for pkg in ("arena-toolkit", "torch", "transformers", "onnx", "onnxruntime", "onnxruntime-gpu", "tensorrt"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def file_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` except the manifest itself, by relative path."""
    return {str(p.relative_to(folder)): sha256_file(p)
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST}


def write_manifest(folder: Path, body: dict[str, Any]) -> dict[str, Any]:
    manifest = {"format_version": FORMAT_VERSION,
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "versions": versions(), **body, "files": file_hashes(folder)}
    atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=2))
    return manifest


def verify_files(folder: Path, manifest: dict[str, Any], names: list[str]) -> None:
    """Raise if any of ``names`` differs from the hash the manifest recorded (a corrupt or swapped file)."""
    recorded = manifest.get("files", {})
    for name in names:
        if name in recorded and sha256_file(folder / name) != recorded[name]:
            raise ModelError(f"{folder / name} does not match the sha256 in {folder / MANIFEST}: "
                             "the file changed or is corrupt; export again")


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The folder's manifest, or None when it has none (a training checkpoint)."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from None


def openvino_passed(manifest: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """The OpenVINO precisions whose parity check passed at export (the manifest's ``openvino`` section):
    precision -> entry (``file``, ``parity``, ...). Nothing else may be run or chosen."""
    section = (manifest or {}).get("openvino") or {}
    return {name: entry for name, entry in (section.get("precisions") or {}).items()
            if (entry.get("parity") or {}).get("passed")}


# ------------------------------------------------------------------------------------------------------ ONNX files


def check_onnx_file(path: str | Path) -> None:
    """Refuse a corrupt ONNX file, or one whose external data points outside its folder."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path} does not exist")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and friends for truncated files
        raise ModelError(f"{path} is not a readable ONNX file ({type(exc).__name__}): it may be truncated") from None
    root = path.parent.resolve()
    for tensor in _external_tensors(proto):
        for entry in tensor.external_data:
            if entry.key == "location":
                target = (root / entry.value).resolve()
                if root != target and root not in target.parents:
                    raise ModelError(
                        f"{path}: tensor {tensor.name!r} keeps its data at {entry.value!r}, outside the model "
                        "folder; refusing to read it"
                    )


def _external_tensors(proto: Any):
    from onnx.external_data_helper import _get_all_tensors

    for tensor in _get_all_tensors(proto):
        if tensor.data_location == 1:  # TensorProto.EXTERNAL
            yield tensor


# ------------------------------------------------------------------------------------------ TensorRT engines


@dataclass(frozen=True)
class Profile:
    """One optimisation profile: shapes (batch, sequence) at min / opt / max."""

    seq_min: int
    seq_opt: int
    seq_max: int
    batch_min: int
    batch_opt: int
    batch_max: int

    def fits(self, batch: int, seq: int) -> bool:
        return self.seq_min <= seq <= self.seq_max and self.batch_min <= batch <= self.batch_max

    def shapes(self) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
        return (self.batch_min, self.seq_min), (self.batch_opt, self.seq_opt), (self.batch_max, self.seq_max)

    def input_shapes(self, n_features: int = 0) -> dict[str, tuple[tuple[int, ...], ...]]:
        """min / opt / max shape of every engine input: the token inputs are (batch, sequence); a hybrid model's
        ``features`` input is (batch, n_features), its batch range the same as the tokens'."""
        out: dict[str, tuple[tuple[int, ...], ...]] = {name: self.shapes() for name in TOKEN_INPUTS}
        if n_features:
            out[FEATURES] = tuple((b, n_features) for b in (self.batch_min, self.batch_opt, self.batch_max))
        return out


def pick_profile(profiles: list[Profile], batch: int, seq: int) -> int:
    """Index of the first profile whose ranges hold (batch, seq); the smallest such bucket comes first."""
    for i, p in enumerate(profiles):
        if p.fits(batch, seq):
            return i
    raise ConfigError(f"no TensorRT profile holds a batch of {batch} x {seq} tokens; rebuild with a wider plan")


def slug(text: str) -> str:
    """A file-name-safe form of a GPU name or version."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def engine_key(onnx_sha256: str, gpu_name: str, compute_capability: str, trt_version: str, precision: str,
               profiles: list[Profile]) -> str:
    """Identity of an engine: it only runs where all of these match."""
    blob = json.dumps({"onnx": onnx_sha256, "gpu": gpu_name, "cc": compute_capability, "trt": trt_version,
                       "precision": precision, "profiles": [asdict(p) for p in profiles]}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def engine_filename(gpu_name: str, trt_version: str, precision: str, key: str) -> str:
    return f"model.{precision}.{slug(gpu_name)}.trt{trt_version}.{key[:12]}.engine"


def check_engine(entry: dict[str, Any], *, gpu_name: str, compute_capability: str, trt_version: str,
                 onnx_sha256: str) -> None:
    """Raise :class:`BackendUnavailable` naming what differs between the engine's build and this machine."""
    wanted = {"gpu_name": gpu_name, "compute_capability": compute_capability, "tensorrt_version": trt_version,
              "onnx_sha256": onnx_sha256}
    diffs = [f"{k}: engine {entry.get(k)!r} vs here {v!r}" for k, v in wanted.items() if entry.get(k) != v]
    if diffs:
        raise BackendUnavailable(
            "the TensorRT engine was built for another setup (" + "; ".join(diffs) + "). Rebuild it here with "
            "`arena-export CHECKPOINT --out DIR --trt`, or use --backend onnx/torch."
        )
