"""One export's settings: :class:`ExportConfig`, filled once from the CLI (or :func:`arena.export.cli.run_export`'s
keywords), checked by :func:`arena.export.precheck.check_export_request`, used by the checkpoint and the foreign-export
paths alike, and written into the manifest (``export_config``) so an export can always be traced to what made it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from arena.export.parity import Tolerance

DEFAULT_OPSET = 17
DEFAULT_EXPORTER = "torchscript"
EXPORTERS = (DEFAULT_EXPORTER, "dynamo")
DEFAULT_PARITY_SHAPES = "1x17,7x133,16x512"


@dataclass(frozen=True)
class ExportConfig:
    """Every ``arena-export`` option. ``opset`` / ``exporter`` None: not given (they re-trace a PyTorch checkpoint,
    so a foreign ONNX export refuses them when given; a checkpoint uses :data:`DEFAULT_OPSET` /
    :data:`DEFAULT_EXPORTER`). ``max_tokens`` None: the budget arena-infer packs on a GPU."""

    data: str | None = None
    fp16: bool = False
    int8: bool = False
    optimize: bool = False
    trt: bool = False
    openvino: bool = True
    int8_static: bool = False
    calibration_rows: int = 64
    opset: int | None = None
    exporter: str | None = None
    parity_shapes: str = DEFAULT_PARITY_SHAPES
    fp32_tol: float = 1e-4
    fp16_prob_tol: float = 2e-2
    int8_prob_tol: float = 0.1
    int8_log_loss_tol: float | None = None
    """Max log-loss change for INT8 on labelled rows; None: :meth:`Tolerance.int8`'s limit."""
    min_agreement: float = 0.97
    trt_buckets: int = 4
    max_tokens: int | None = None
    workspace_gib: float = 4.0
    overwrite: bool = False
    allow_partial: bool = False
    """A k-fold output with folds missing or unfinished is exported with the finished ones (else refused)."""

    @property
    def fp16_onnx(self) -> bool:
        """Whether ``model.fp16.onnx`` is written: asked for, or needed by ``--trt`` (the engine is built from the
        parity-checked FP16 graph: precision lives in the graph)."""
        return self.fp16 or self.trt

    @property
    def traced_opset(self) -> int:
        return DEFAULT_OPSET if self.opset is None else self.opset

    @property
    def traced_exporter(self) -> str:
        return DEFAULT_EXPORTER if self.exporter is None else self.exporter

    def fp32_tolerance(self) -> Tolerance:
        return replace(Tolerance.fp32(), max_logit_diff=self.fp32_tol)

    def fp16_tolerance(self) -> Tolerance:
        return replace(Tolerance.fp16(), max_prob_diff=self.fp16_prob_tol, min_argmax_agreement=self.min_agreement)

    def int8_tolerance(self) -> Tolerance:
        tol = replace(Tolerance.int8(), max_prob_diff=self.int8_prob_tol, min_argmax_agreement=self.min_agreement)
        return tol if self.int8_log_loss_tol is None else replace(tol, max_log_loss_change=self.int8_log_loss_tol)

    def tolerance_flags(self) -> dict[str, float]:
        """The tolerance options by flag name, for the up-front checks."""
        return {"--fp32-tol": self.fp32_tol, "--fp16-prob-tol": self.fp16_prob_tol,
                "--int8-prob-tol": self.int8_prob_tol}

    def to_dict(self) -> dict[str, Any]:
        """The manifest's ``export_config``: every option as given, plus what ``None`` resolved to."""
        return {**asdict(self), "resolved": {"fp16_onnx": self.fp16_onnx}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExportConfig:
        """Back from a manifest's ``export_config``; keys this version does not know are ignored, missing ones take
        their defaults."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any] | None) -> ExportConfig | None:
        """The configuration an export recorded; None for a manifest written before ``export_config`` existed."""
        section = (manifest or {}).get("export_config")
        return cls.from_dict(section) if isinstance(section, dict) else None
