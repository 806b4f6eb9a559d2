"""OpenVINO at export time: the export's graph compiled at fp32 and bf16, and the static INT8 model, each checked
against the same PyTorch reference, on the same real rows and shapes, with the same gate as ONNX Runtime.

The result is the manifest's ``openvino`` section. ``--backend auto`` (:func:`arena.serving.choice.choose_backend`)
only ever picks a precision recorded there as passed, and asking for one that failed is refused at load time.

* Which graph OpenVINO reads: ``model.onnx`` (ONNX Runtime's graph, the plain trace), except for a DeBERTa-v2/v3
  checkpoint, whose relative-position gather is rewritten for OpenVINO alone (:mod:`arena.export.relpos`) and saved
  as the IR ``model.ov.xml``/``.bin`` (:data:`OV_XML`, :func:`save_ir`; fp32 weights, as large as ``model.onnx``).
  The rewrite makes OpenVINO fp32 1.18x faster but ONNX Runtime fp32 0.86x as fast (DeBERTa-v3-xsmall, 2 x 512
  tokens, AVX2 EPYC, ``benchmarks/relpos_gather.py``), so each runtime reads the graph it runs faster. The IR must
  pass OpenVINO's fp32 check, else it is dropped and OpenVINO reads ``model.onnx`` (the section's ``relpos_rewrite``
  says which, and why). Each precision's entry names its ``file`` (and an IR's ``weights``).
* fp32 and bf16 compile that graph. A failure is recorded, not fatal, because ``model.onnx`` passed ONNX Runtime's
  check and stays usable there.
* static INT8 quantises that graph into ``model.int8.xml``/``.bin``; if it fails its check the whole export fails
  and nothing is kept, like every other derived artefact.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from arena.errors import ConfigError, ModelError
from arena.export.parity import ParityGate, Tolerance

log = logging.getLogger("arena.export")

INT8_XML = "model.int8.xml"
INT8_BIN = "model.int8.bin"
OV_XML = "model.ov.xml"
OV_BIN = "model.ov.bin"
"""The IR of a DeBERTa-v2/v3 checkpoint's graph with the relative-position rewrite, which only OpenVINO reads."""
FLOAT_PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class OpenVinoGraph:
    """What a checkpoint export gives OpenVINO beside ``model.onnx`` (:func:`arena.export.relpos.openvino_graph`):
    the section's ``relpos_rewrite`` record and, when the rewritten IR passed OpenVINO's fp32 check, that
    precision's entry (``file``, ``weights``, ``parity``); ``fp32`` None: OpenVINO reads ``model.onnx``."""

    record: dict[str, Any]
    fp32: dict[str, Any] | None = None


def export_backend(path: Path, precision: str):
    """OpenVINO on the graph at ``path``, uncached; :class:`~arena.errors.ModelError` when it does not compile."""
    from arena.serving.backends.openvino import OpenVinoBackend

    return OpenVinoBackend(path, precision=precision, cache_dir=None)  # the export folder is still temporary


def save_ir(onnx_path: Path, xml_path: Path) -> None:
    """The ONNX graph at ``onnx_path`` as OpenVINO IR at ``xml_path`` (weights beside it in .bin), its weights kept
    in fp32 (``compress_to_fp16=False``) so the IR computes what the ONNX graph does."""
    import openvino as ov

    ov.save_model(ov.convert_model(str(onnx_path)), str(xml_path), compress_to_fp16=False)


def graph_files(path: Path) -> dict[str, str]:
    """A precision entry's file names: ``file``, and ``weights`` for an IR (.xml with its .bin)."""
    return {"file": path.name, **({"weights": path.with_suffix(".bin").name} if path.suffix == ".xml" else {})}


def check_graph(path: Path, gate: ParityGate, *, fp32_tol: float,
                fp32: dict[str, Any] | None = None) -> dict[str, Any]:
    """Parity of the graph at ``path`` (``model.onnx`` or an IR) under OpenVINO at fp32 (ONNX Runtime's fp32 limit)
    and, where this CPU runs bf16 natively, bf16 (:meth:`Tolerance.bf16`), against the gate's reference; ``fp32``:
    that precision's entry when it was checked already. Returns the manifest's ``openvino`` section; a failure is
    recorded there (and in the gate's reports), not raised."""
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
        entry: dict[str, Any] = graph_files(path)
        if precision == "fp32" and fp32 is not None:
            entry = fp32
        elif precision == "bf16" and not native_bf16:
            entry["status"] = "not checked: the export machine's CPU has no native bf16"
        else:
            try:
                backend = export_backend(path, precision)
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


def add_static_int8(folder: Path, source: Path, gate: ParityGate, calibration: list,
                    tol: Tolerance) -> dict[str, Any]:
    """Write ``model.int8.xml``/``.bin`` (NNCF on the graph at ``source``, calibrated on ``calibration``) and check
    it; the gate raises :class:`~arena.errors.ParityError` when it fails. Returns its entry for the ``openvino``
    section's precisions."""
    from arena.export.quantize import quantize_openvino

    info = quantize_openvino(source, folder / INT8_XML, calibration)
    report = gate.check("openvino_int8", export_backend(folder / INT8_XML, "int8"), tol)
    return {"file": INT8_XML, "weights": INT8_BIN, "quantized_from": source.name, "quantization": info,
            "parity": report}


def openvino_section(folder: Path, gate: ParityGate, *, encoder, data: Path, openvino: bool, int8_static: bool,
                     calibration_rows: int, fp32_tol: float, int8_tol: Tolerance,
                     inputs: tuple[str, ...] | None = None, graph: OpenVinoGraph | None = None) -> dict[str, Any]:
    """The manifest's ``openvino`` section for the export in ``folder``, whatever made its ``model.onnx`` (a
    checkpoint or a foreign export): fp32/bf16 parity under OpenVINO of the graph it reads (``graph``'s checked IR,
    else ``model.onnx``) and, asked for, the static INT8 model quantised from that graph, calibrated on
    ``calibration_rows`` real rows of ``data`` encoded by ``encoder`` (an :class:`~arena.encode.ArenaEncoder`) and
    fed as the graph's ``inputs`` take them. ``graph``'s record goes into the section as ``relpos_rewrite``."""
    if not (openvino or int8_static):
        return {"status": "not requested", "precisions": {}}
    fp32 = graph.fp32 if graph is not None else None
    source = folder / (fp32["file"] if fp32 is not None else "model.onnx")
    section = check_graph(source, gate, fp32_tol=fp32_tol, fp32=fp32)
    if graph is not None:
        section["relpos_rewrite"] = graph.record
    if int8_static:
        if section["status"] != "checked":
            raise ConfigError(f"--int8-static: {section['why']}")
        from arena.export.quantize import calibration_batches
        from arena.serving.executor import BatchExecutor

        executor = BatchExecutor(gate.reference, pad_id=encoder.pad_id, max_length=encoder.config.max_length)
        calibration = calibration_batches(calibration_records(data, calibration_rows), encoder, executor,
                                          input_names=inputs)
        section["precisions"]["int8"] = add_static_int8(folder, source, gate, calibration, int8_tol)
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
