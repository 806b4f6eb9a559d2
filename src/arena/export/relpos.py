"""DeBERTa-v2/v3's relative-position attention bias, rewritten for OpenVINO's graph: the same numbers, no
GatherElements.

transformers' ``DisentangledSelfAttention.disentangled_attention_bias`` scores every query (c2p) or key (p2c)
against all 2S rows of the projected relative-position table (S: ``position_buckets``, else
``max_relative_positions``), then picks, for each query i and key j, the column of the bucket of i - j with
``torch.gather``. That exports to ONNX GatherElements with a (batch x heads, L, L) index, which OpenVINO's CPU plugin
runs on a reference kernel: 22-25% of DeBERTa-v3-xsmall's time at 512 tokens, in every precision (issue 25). The
index depends only on the positions, not on the batch or the head, so the export traces one of two exact forms
(:data:`FORMS`) instead; both read their indices from the ``relative_pos`` the model passes, clamped as eager clamps:

* ``rows`` (the default): eager's own (batch x heads, L, 2S) scores, flattened per row, and one Gather over that axis
  with a single (L, L) index ``i * 2S + bucket column``, shared by every row and head. The same matmul as eager, so
  the same numbers; no GatherElements, no extra work. OpenVINO 2026.4 runs these Gathers on its JIT kernel
  (``jit_avx2_f32`` in its profile on an AVX2 EPYC, where GatherElements shows ``ref_any_f32``).
* ``table``: Gather the 2L-1 rows of the projected table that the distances L-1 .. -(L-1) pick (ONNX Gather on the
  table's small axis), one MatMul against them (a score per token and distance), then a relative shift
  (:func:`relative_shift`: Pad, Reshape, Slice). No element-wise gather at all, but the MatMul runs over 2L-1
  distances instead of 2S table rows (fewer multiply-adds up to L = S, 256 for v3; twice as many at L = 2S), and
  OpenVINO 2026.4 runs the shift's Pad and Slice on reference kernels (``ref_f32``).

Which runtime reads which graph: ``benchmarks/relpos_gather.py`` times both forms against the plain trace. On an AVX2
EPYC (DeBERTa-v3-xsmall, 2 x 512 tokens, fp32) OpenVINO runs the ``rows`` graph 1.18x as fast as the plain one, but
ONNX Runtime runs it 0.86x as fast: slower. So the export's ``model.onnx`` stays the plain trace, which ONNX Runtime
(fp32, and the fused, FP16 and dynamic INT8 graphs derived from it) and TensorRT (from the FP16 graph) read, and
:func:`openvino_graph` traces the rewritten graph a second time into the OpenVINO IR ``model.ov.xml``/``.bin``
(:data:`arena.export.openvino.OV_XML`), which only OpenVINO reads: fp32 and bf16 compile it and the static INT8 IR
is quantised from it. The manifest's ``openvino`` section names each precision's file and records the rewrite as
``relpos_rewrite``. Every score is a dot product eager computes, so the bias agrees with eager's to fp32 rounding;
the export's OpenVINO fp32 parity gate checks the IR on real rows, and when it fails (or the rewritten graph fails
to trace, convert or compile) the IR is dropped, OpenVINO reads ``model.onnx``, and the log and the manifest say so.
Exports made before this split carry the rewrite inside ``model.onnx`` (``onnx.relpos_rewrite``) and still load.
The swap is per module instance and lasts only inside :func:`relpos_rewrite`: training and the torch backend run
transformers' own code.
"""

from __future__ import annotations

import logging
import shutil
import types
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from arena.export.openvino import OpenVinoGraph

log = logging.getLogger("arena.export")

REWRITE_NAME = "deberta_relpos_gather"
"""How the manifest's ``onnx.relpos_rewrite`` names this rewrite."""
FORMS = ("rows", "table")
"""The exact forms of the rewritten bias (module docstring); the export traces :data:`DEFAULT_FORM`."""
DEFAULT_FORM = "rows"


def relative_shift(scores: torch.Tensor) -> torch.Tensor:
    """(N, L, 2L-1) scores by distance -> (N, L, L) with ``out[n, r, c] = scores[n, r, L-1-r+c]``.

    Column u of ``scores`` holds distance L-1-u, so row r's keys c = 0..L-1 are the contiguous columns starting at
    L-1-r. One zero column on the left makes every row 2L wide; flattened, row r's wanted run then starts at
    r(2L-1) + L, so dropping the first L values and reading rows of 2L-1 puts it at the start of row r. Only Pad,
    Reshape and Slice; holds for every L >= 1."""
    length, width = scores.shape[-2], scores.shape[-1]
    flat = torch.nn.functional.pad(scores, (1, 0)).flatten(1)[:, length:]
    return flat.reshape(-1, length, width)[:, :, :length]


def gather_rows(scores: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(N, L, W) scores and an (L, L) column index -> (N, L, L) with ``out[n, r, c] = scores[n, r, index[r, c]]``:
    what eager's ``torch.gather`` does with the index expanded over N, as one Gather over each row of N's flattened
    (L x W) scores with the index ``r * W + index[r, c]``, never expanded."""
    length, width = scores.shape[-2], scores.shape[-1]
    flat = index + torch.arange(length, device=index.device).unsqueeze(1) * width
    return scores.flatten(1).index_select(1, flat.flatten()).reshape(-1, length, length)


def distance_buckets(positions: torch.Tensor) -> torch.Tensor:
    """The value of an (L, L) ``positions`` matrix that depends on r - c alone (transformers'
    ``build_relative_position`` for self-attention, or its negation) at each distance L-1, L-2, .., -(L-1): its last
    row gives L-1 .. 0, its first row after column 0 gives -1 .. -(L-1). 2L-1 values."""
    return torch.cat([positions[-1], positions[0, 1:]])


def _scores(states: torch.Tensor, rows: torch.Tensor, heads: int) -> torch.Tensor:
    """``states`` (batch x heads, L, d) against each head's ``rows`` (heads, R, d): (batch x heads, L, R). A
    broadcast MatMul over the batch, so the rows are never repeated per batch row."""
    length, size = states.shape[-2], states.shape[-1]
    out = torch.matmul(states.reshape(-1, heads, length, size), rows.transpose(-1, -2))
    return out.reshape(-1, length, out.shape[-1])


def position_scores(states: torch.Tensor, projected: torch.Tensor, positions: torch.Tensor, span: int, heads: int,
                    form: str) -> torch.Tensor:
    """``out[n, r, c] = states[n, r] . projected[head of n, clamp(positions[r, c] + span, 0, 2 span - 1)]``:
    c2p with the queries and eager's relative positions, p2c (before its transpose) with the keys and their
    negation. ``projected``: the position table after the key (c2p) or query (p2c) projection, (heads, 2 span, d);
    ``form``: one of :data:`FORMS`."""
    if form == "table":
        index = torch.clamp(distance_buckets(positions) + span, 0, span * 2 - 1)
        return relative_shift(_scores(states, projected.index_select(1, index), heads))
    return gather_rows(_scores(states, projected, heads), torch.clamp(positions + span, 0, span * 2 - 1))


def rewritten_attention_bias(self: Any, query_layer: torch.Tensor, key_layer: torch.Tensor,
                             relative_pos: torch.Tensor | None, rel_embeddings: torch.Tensor, scale_factor: int,
                             *, form: str = DEFAULT_FORM) -> torch.Tensor:
    """Drop-in for ``DisentangledSelfAttention.disentangled_attention_bias`` (bound to the module as ``self``), same
    arguments, same (batch x heads, L, L) result, in ``form`` (see the module docstring). Valid for the relative
    positions transformers builds for self-attention (they depend on i - j alone); a query length other than the key
    length goes to transformers' own method."""
    from transformers.models.deberta_v2 import modeling_deberta_v2 as deberta

    if query_layer.shape[-2] != key_layer.shape[-2]:
        return type(self).disentangled_attention_bias(self, query_layer, key_layer, relative_pos, rel_embeddings,
                                                      scale_factor)
    if relative_pos is None:
        relative_pos = deberta.build_relative_position(query_layer, key_layer, bucket_size=self.position_buckets,
                                                       max_position=self.max_relative_positions)
    positions = relative_pos.to(device=query_layer.device, dtype=torch.long)
    while positions.dim() > 2:
        positions = positions[0]
    span, heads = self.pos_ebd_size, self.num_attention_heads
    table = rel_embeddings[0: span * 2, :].unsqueeze(0)
    score = 0
    if "c2p" in self.pos_att_type:
        projected = self.transpose_for_scores((self.key_proj if self.share_att_key else self.pos_key_proj)(table),
                                              heads)
        c2p = position_scores(query_layer, projected, positions, span, heads, form)
        score += c2p / deberta.scaled_size_sqrt(projected, scale_factor).to(dtype=c2p.dtype)
    if "p2c" in self.pos_att_type:
        projected = self.transpose_for_scores(
            (self.query_proj if self.share_att_key else self.pos_query_proj)(table), heads)
        p2c = position_scores(key_layer, projected, -positions, span, heads, form).transpose(-1, -2)
        score += p2c / deberta.scaled_size_sqrt(projected, scale_factor).to(dtype=p2c.dtype)
    return score


def rewritable_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The DeBERTa-v2/v3 attention modules in ``model`` whose relative-position bias this rewrite reproduces:
    exactly transformers' ``DisentangledSelfAttention`` (not a subclass or a look-alike copy, whose method may
    differ), with relative attention and c2p or p2c on. Empty for every other architecture."""
    try:
        from transformers.models.deberta_v2.modeling_deberta_v2 import DisentangledSelfAttention
    except ImportError:  # pragma: no cover - transformers without DeBERTa-v2
        return []
    return [m for m in model.modules() if type(m) is DisentangledSelfAttention and m.relative_attention
            and {"c2p", "p2c"} & set(m.pos_att_type)]


@contextmanager
def relpos_rewrite(model: torch.nn.Module, form: str = DEFAULT_FORM) -> Iterator[int]:
    """Inside the block, every module :func:`rewritable_modules` finds computes its bias with
    :func:`rewritten_attention_bias` in ``form`` (an instance attribute shadowing the class's method); on leaving,
    even by an exception, the instance attribute is removed and transformers' method is back. Yields how many were
    swapped. ``form`` not in :data:`FORMS`: ``ValueError``."""
    if form not in FORMS:
        raise ValueError(f"relative-position rewrite form {form!r} is not one of {', '.join(FORMS)}")
    modules = rewritable_modules(model)
    for module in modules:
        module.disentangled_attention_bias = types.MethodType(partial(rewritten_attention_bias, form=form), module)
    try:
        yield len(modules)
    finally:
        for module in modules:
            vars(module).pop("disentangled_attention_bias", None)


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
