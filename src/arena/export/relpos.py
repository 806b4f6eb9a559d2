"""DeBERTa-v2/v3's relative-position attention bias, rewritten for OpenVINO's graph: the same numbers, no
GatherElements.

Eager's c2p/p2c ``torch.gather`` exports to ONNX GatherElements with a (batch x heads, L, L) index, which OpenVINO's
CPU plugin runs on a reference kernel: 22-25% of DeBERTa-v3-xsmall's time at 512 tokens, in every precision (issue
25). The export traces the model a second time with :func:`arena.models.relpos.relpos_rewrite` in its ``rows`` form
(one Gather over flattened score rows with a shared (L, L) index; OpenVINO 2026.4 runs it on its JIT kernel,
``jit_avx2_f32`` in its profile on an AVX2 EPYC, where GatherElements shows ``ref_any_f32``).

Which runtime reads which graph: ``benchmarks/relpos_gather.py`` times both forms against the plain trace. On an AVX2
EPYC (DeBERTa-v3-xsmall, 2 x 512 tokens, fp32) OpenVINO runs the ``rows`` graph 1.18x as fast as the plain one, but
ONNX Runtime runs it 0.86x as fast: slower. So the export's ``model.onnx`` stays the plain trace, which ONNX Runtime
(fp32, and the fused, FP16 and dynamic INT8 graphs derived from it) and TensorRT (from the FP16 graph) read, and
:func:`openvino_graph` traces the rewritten graph into the OpenVINO IR ``model.ov.xml``/``.bin``
(:data:`arena.export.openvino.OV_XML`), which only OpenVINO reads: fp32 and bf16 compile it and the static INT8 IR
is quantised from it. The manifest's ``openvino`` section names each precision's file and records the rewrite as
``relpos_rewrite``. Every score is a dot product eager computes, so the bias agrees with eager's to fp32 rounding;
the export's OpenVINO fp32 parity gate checks the IR on real rows, and when it fails (or the rewritten graph fails
to trace, convert or compile) the IR is dropped, OpenVINO reads ``model.onnx``, and the log and the manifest say so.
Exports made before this split carry the rewrite inside ``model.onnx`` (``onnx.relpos_rewrite``) and still load.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from arena.models.relpos import DEFAULT_FORM, relpos_rewrite, rewritable_modules

if TYPE_CHECKING:
    from arena.export.openvino import OpenVinoGraph

log = logging.getLogger("arena.export")

REWRITE_NAME = "deberta_relpos_gather"
"""How the manifest's ``onnx.relpos_rewrite`` names this rewrite."""


def gather_elements_count(path: str | Path) -> int:
    """How many GatherElements nodes the ONNX graph at ``path`` has (its weights are not read)."""
    import onnx

    return sum(node.op_type == "GatherElements" for node in onnx.load(str(path), load_external_data=False).graph.node)


def openvino_graph(model: torch.nn.Module, folder: Path, gate: Any, config: Any) -> OpenVinoGraph | None:
    """The graph OpenVINO reads of a checkpoint export whose plain ``model.onnx`` is in ``folder``: where ``model``
    has modules for the rewrite, its rewritten trace as the IR ``model.ov.xml``/``.bin``, checked by the gate at
    OpenVINO fp32 (``openvino_fp32``). When that fails to trace, convert, compile or match, the IR is removed, the
    log says so, and OpenVINO reads ``model.onnx``; the returned record says which and why (a failed check's
    report with it). None when the export builds no ``openvino`` section (not asked for, or OpenVINO not
    installed). ``gate``: the export's :class:`~arena.export.parity.ParityGate`; ``config``: its
    :class:`~arena.export.config.ExportConfig`."""
    from arena.errors import ParityError
    from arena.export.onnx import export_onnx
    from arena.export.openvino import OV_BIN, OV_XML, OpenVinoGraph, export_backend, graph_files, save_ir
    from arena.serving.backends.openvino import openvino_available

    if not (config.openvino or config.int8_static) or not openvino_available()[0]:
        return None
    modules = len(rewritable_modules(model))
    record: dict[str, Any] = {"name": REWRITE_NAME, "applied": False}
    if not modules:
        return OpenVinoGraph({**record, "reason": "no DeBERTa-v2/v3 relative-position attention in this model"})
    scratch = folder / ".relpos-trace"  # the rewritten ONNX trace, kept only until it is converted
    try:
        scratch.mkdir()
        with relpos_rewrite(model):
            export_onnx(model, scratch / "model.onnx", opset=config.traced_opset, exporter=config.traced_exporter)
        gathers = gather_elements_count(scratch / "model.onnx")
        save_ir(scratch / "model.onnx", folder / OV_XML)
        report = gate.record("openvino_fp32", export_backend(folder / OV_XML, "fp32"), config.fp32_tolerance())
        if not report["passed"]:
            raise ParityError("; ".join(report["failures"]))
        log.info("relative-position gather rewritten in %d attention modules for OpenVINO (%s); fp32 parity passed",
                 modules, OV_XML)
        return OpenVinoGraph({**record, "applied": True, "form": DEFAULT_FORM, "attention_modules": modules,
                              "gather_elements": gathers, **graph_files(folder / OV_XML)},
                             {**graph_files(folder / OV_XML), "parity": report})
    except Exception as exc:  # any failure of the rewritten graph (trace, convert, compile, parity) falls back
        failed = gate.reports.pop("openvino_fp32", None)
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        reason = ("the rewritten graph failed the OpenVINO fp32 parity check" if isinstance(exc, ParityError)
                  else f"the rewritten graph failed to trace, convert or compile: {detail}")
        log.warning("relative-position gather rewrite not used: %s; OpenVINO reads the plain model.onnx", reason)
        for name in (OV_XML, OV_BIN):
            (folder / name).unlink(missing_ok=True)
        return OpenVinoGraph({**record, "reason": reason, **({"parity": failed} if failed else {})})
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
