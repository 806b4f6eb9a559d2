"""DeBERTa-v2/v3's relative-position attention bias without ``torch.gather`` over an expanded index: the same
numbers, computed in a form the runtimes run on their fast kernels (issue 25).

transformers' ``DisentangledSelfAttention.disentangled_attention_bias`` scores every query (c2p) or key (p2c)
against all 2S rows of the projected relative-position table (S: ``position_buckets``, else
``max_relative_positions``), then picks, for each query i and key j, the column of the bucket of i - j with
``torch.gather`` and a (batch x heads, L, L) index. That index depends only on the positions, not on the batch or
the head, so :func:`relpos_rewrite` swaps in (per module instance, for the duration of a ``with`` block) one of two
exact forms (:data:`FORMS`); both read their indices from the ``relative_pos`` the model passes, clamped as eager
clamps:

* ``rows`` (the default): eager's own (batch x heads, L, 2S) scores, flattened per row, and one index_select over
  that axis with a single (L, L) index ``i * 2S + bucket column``, shared by every row and head. The same matmul as
  eager, so the same numbers; no element-wise gather, no extra work.
* ``table``: select the 2L-1 rows of the projected table that the distances L-1 .. -(L-1) pick, one MatMul against
  them (a score per token and distance), then a relative shift (:func:`relative_shift`: Pad, Reshape, Slice). More
  multiply-adds than eager above L = S.

Who uses it, each only where it was measured to help (``benchmarks/relpos_gather.py``,
``benchmarks/cpu_backends.py``, ``benchmarks/RESULTS.md``):

* the export traces the ``rows`` form into OpenVINO's own IR (:mod:`arena.export.relpos`): ONNX GatherElements runs
  on OpenVINO's reference kernel (22-25% of DeBERTa-v3-xsmall's time at 512 tokens); ONNX Runtime's ``model.onnx``
  stays the plain trace (it ran the rewrite 0.86x as fast on an AVX2 EPYC);
* the torch backend runs its eager model in the ``rows`` form under bf16 autocast on a CPU with AMX, not compiled
  (:class:`arena.serving.backends.torch.TorchBackend`): there ``torch.gather`` of bf16 scores with the expanded
  index copied element by element (62% of DeBERTa-v3-xsmall's bf16 time at 8 x 512 on an AMX Xeon, so bf16 ran no
  faster than fp32; the rewrite: 1.55x on real batches). Other CPUs keep transformers' gather until measured, fp32
  too (there torch's own gather is the faster one). Training steps keep transformers' code; a bf16 evaluation on
  such a CPU goes through the torch backend and so through the rewrite (same numbers).
"""

from __future__ import annotations

import types
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch

FORMS = ("rows", "table")
"""The exact forms of the rewritten bias (module docstring)."""
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
    even by an exception, what was there before is back (transformers' method, or an enclosing block's swap).
    Yields how many were swapped. ``form`` not in :data:`FORMS`: ``ValueError``."""
    if form not in FORMS:
        raise ValueError(f"relative-position rewrite form {form!r} is not one of {', '.join(FORMS)}")
    modules = rewritable_modules(model)
    before = [vars(module).get("disentangled_attention_bias") for module in modules]  # an enclosing block's swap
    for module in modules:
        module.disentangled_attention_bias = types.MethodType(partial(rewritten_attention_bias, form=form), module)
    try:
        yield len(modules)
    finally:
        for module, outer in zip(modules, before, strict=True):
            if outer is None:
                vars(module).pop("disentangled_attention_bias", None)
            else:
                module.disentangled_attention_bias = outer
