"""OpenVINO at export time: the export's ``model.onnx`` compiled at fp32 and bf16, and the static INT8 model, each
checked against the same PyTorch reference, on the same real rows and shapes, with the same gate as ONNX Runtime.

The result is the manifest's ``openvino`` section. ``--backend auto`` (:func:`arena.serving.choice.choose_backend`)
only ever picks a precision recorded there as passed, and asking for one that failed is refused at load time.

* fp32 and bf16 need no new file: OpenVINO compiles the same ``model.onnx``. A failure is recorded, not fatal,
  because the file itself passed ONNX Runtime's check and stays usable there.
* static INT8 writes ``model.int8.xml``/``.bin``; if it fails its check the whole export fails and nothing is kept,
  like every other derived artefact.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from arena.errors import ConfigError, ModelError
from arena.export.parity import ParityGate, Tolerance

log = logging.getLogger("arena.export")

INT8_XML = "model.int8.xml"
INT8_BIN = "model.int8.bin"
FLOAT_PRECISIONS = ("fp32", "bf16")


def _backend(path: Path, precision: str):
    from arena.serving.backends.openvino import OpenVinoBackend

    return OpenVinoBackend(path, precision=precision, cache_dir=None)  # the export folder is still temporary


def check_onnx(onnx_path: Path, gate: ParityGate, *, fp32_tol: float) -> dict[str, Any]:
    """Parity of ``onnx_path`` under OpenVINO at fp32 (ONNX Runtime's fp32 limit) and, where this CPU runs bf16
    natively, bf16 (:meth:`Tolerance.bf16`), against the gate's reference. Returns the manifest's ``openvino``
    section; a failure is recorded there (and in the gate's reports), not raised."""
    from dataclasses import replace

    from arena.serving.backends.openvino import openvino_available, supports_bf16

    ok, why = openvino_available()
    if not ok:
        log.info("OpenVINO checks skipped: %s", why)
        return {"status": "not installed", "why": why, "precisions": {}}
    import openvino as ov

    from arena.machine.cpu import cpu_model_name

    native_bf16 = supports_bf16()
    section: dict[str, Any] = {"status": "checked", "version": ov.__version__, "cpu": cpu_model_name(),
                               "bf16_native": native_bf16, "precisions": {}}
    tolerances = {"fp32": replace(Tolerance.fp32(), max_logit_diff=fp32_tol), "bf16": Tolerance.bf16()}
    for precision in FLOAT_PRECISIONS:
        entry: dict[str, Any] = {"file": onnx_path.name}
        if precision == "bf16" and not native_bf16:
            entry["status"] = "not checked: the export machine's CPU has no native bf16"
        else:
            try:
                backend = _backend(onnx_path, precision)
            except ModelError as exc:  # recorded, never used; model.onnx itself passed ONNX Runtime's check
                log.warning("OpenVINO %s: %s; it will not be used", precision, exc)
                entry["status"] = f"not usable: {exc}"
                section["precisions"][precision] = entry
                continue
            entry["parity"] = gate.record(f"openvino_{precision}", backend, tolerances[precision])
            if not entry["parity"]["passed"]:
                log.warning("OpenVINO %s failed its parity check; it will not be used: %s", precision,
                            "; ".join(entry["parity"]["failures"]))
        section["precisions"][precision] = entry
    return section


def add_static_int8(folder: Path, gate: ParityGate, calibration: list, tol: Tolerance) -> dict[str, Any]:
    """Write ``model.int8.xml``/``.bin`` (NNCF, calibrated on ``calibration``) and check it; the gate raises
    :class:`~arena.errors.ParityError` when it fails. Returns its entry for the ``openvino`` section's precisions."""
    from arena.export.quantize import quantize_openvino

    info = quantize_openvino(folder / "model.onnx", folder / INT8_XML, calibration)
    report = gate.check("openvino_int8", _backend(folder / INT8_XML, "int8"), tol)
    return {"file": INT8_XML, "weights": INT8_BIN, "quantization": info, "parity": report}


def openvino_section(folder: Path, gate: ParityGate, *, encoder, data: Path, openvino: bool, int8_static: bool,
                     calibration_rows: int, fp32_tol: float, int8_tol: Tolerance,
                     inputs: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The manifest's ``openvino`` section for the export in ``folder``, whatever made its ``model.onnx`` (a
    checkpoint or a foreign export): fp32/bf16 parity of ``model.onnx`` under OpenVINO and, asked for, the static
    INT8 model calibrated on ``calibration_rows`` real rows of ``data`` encoded by ``encoder`` (an
    :class:`~arena.encode.ArenaEncoder`) and fed as the graph's ``inputs`` take them."""
    if not (openvino or int8_static):
        return {"status": "not requested", "precisions": {}}
    section = check_onnx(folder / "model.onnx", gate, fp32_tol=fp32_tol)
    if int8_static:
        if section["status"] != "checked":
            raise ConfigError(f"--int8-static: {section['why']}")
        from arena.export.quantize import calibration_batches
        from arena.serving.executor import BatchExecutor

        executor = BatchExecutor(gate.reference, pad_id=encoder.pad_id, max_length=encoder.config.max_length)
        calibration = calibration_batches(calibration_records(data, calibration_rows), encoder, executor,
                                          input_names=inputs)
        section["precisions"]["int8"] = add_static_int8(folder, gate, calibration, int8_tol)
    return section


def calibration_records(path: Path, rows: int, *, skip: int = 256) -> list:
    """``rows`` real rows of ``path`` for calibration, after the first ``skip`` (those drive the parity check, so
    the check is not judged on the rows the scales were fitted to); the first rows when the file is shorter."""
    from arena.data import has_labels, read_records

    records = read_records(path, labelled=has_labels(path))
    picked = records[skip:skip + rows]
    if len(picked) < rows:
        log.warning("%s has %d rows; calibrating static INT8 on rows that the parity check also uses", path,
                    len(records))
        picked = records[:rows]
    return picked
