"""Parity of an exported model against its reference (PyTorch, or a foreign ONNX model) on real encoded rows, at
several shapes.

Shapes are (batch, sequence) pairs both shorter and longer than the traced example (:func:`parse_shapes`); the rows
are real and padded by the executor inference uses (:func:`parity_batches`). For each shape the report holds the
max absolute logit difference, the max probability difference and the argmax agreement; with labelled rows also the
log-loss change. :func:`judge` turns a report into pass/fail against a :class:`Tolerance`.

Argmax agreement is judged only on *decided* rows: those whose reference top-2 probability margin exceeds the
tolerance's ``max_prob_diff``. On a row whose two best classes are closer than that, a change the tolerance allows
can flip the argmax, so counting it would reject a near-uniform model for differences the other limits accept
(a MiniLM model at log loss 1.09 flipped 8% of argmaxes with probabilities moved by at most 0.015). The
log-loss-change limit still covers every labelled row.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from arena.errors import ConfigError, ParityError
from arena.metrics import log_loss, softmax

log = logging.getLogger("arena.export")

Runner = Callable[[np.ndarray, np.ndarray, np.ndarray | None], np.ndarray]
"""``runner(input_ids, attention_mask, features)``: the backend contract (``features`` None for plain models)."""


@dataclass(frozen=True)
class Tolerance:
    """Limits for one precision. ``max_logit_diff`` None means logits are not compared directly."""

    max_logit_diff: float | None = 1e-4
    max_prob_diff: float = 1e-4
    min_argmax_agreement: float = 1.0
    max_log_loss_change: float = 1e-4

    @classmethod
    def fp32(cls) -> Tolerance:
        return cls(1e-4, 1e-4, 1.0, 1e-4)

    @classmethod
    def fp16(cls) -> Tolerance:
        return cls(None, 2e-2, 0.97, 1e-2)

    @classmethod
    def bf16(cls) -> Tolerance:
        """bf16 keeps 8 mantissa bits (fp16: 11) but accumulates in fp32: the FP16 limits hold for it."""
        return cls(None, 2e-2, 0.97, 1e-2)

    @classmethod
    def int8(cls) -> Tolerance:
        return cls(None, 0.1, 0.97, 0.02)


@dataclass
class ShapeResult:
    batch: int
    sequence: int
    max_logit_diff: float
    max_prob_diff: float
    argmax_agreement: float
    log_loss_reference: float | None = None
    log_loss_candidate: float | None = None
    decided_rows: int | None = None
    """Rows whose reference top-2 probability margin exceeds the tolerance (None: every row counts)."""
    decided_agreement: float | None = None
    """Argmax agreement on those rows (1.0 when there are none)."""

    @property
    def log_loss_change(self) -> float | None:
        if self.log_loss_reference is None or self.log_loss_candidate is None:
            return None
        return abs(self.log_loss_candidate - self.log_loss_reference)


@dataclass
class ParityReport:
    name: str
    tolerance: Tolerance
    shapes: list[ShapeResult] = field(default_factory=list)
    passed: bool = False
    failures: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"name": self.name, "passed": self.passed, "tolerance": asdict(self.tolerance),
                "failures": self.failures,
                "shapes": [{**asdict(s), "log_loss_change": s.log_loss_change} for s in self.shapes]}

    def lines(self) -> list[str]:
        out = []
        for s in self.shapes:
            ll = "" if s.log_loss_change is None else f", log loss change {s.log_loss_change:.2e}"
            decided = "" if s.decided_rows is None else \
                f" ({s.decided_agreement:.3f} on {s.decided_rows} decided rows)"
            out.append(f"{self.name} {s.batch}x{s.sequence}: max |logit diff| {s.max_logit_diff:.2e}, "
                       f"max |prob diff| {s.max_prob_diff:.2e}, argmax agreement {s.argmax_agreement:.3f}"
                       f"{decided}{ll}")
        return out


@dataclass
class ParityBatch:
    """One shape's inputs: int64 (batch, sequence) arrays, and labels where the rows have them."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    labels: np.ndarray | None = None
    features: np.ndarray | None = None
    """A hybrid model's third input (float32, (batch, n_features)); None for a plain classifier."""

    def run(self, runner: Runner) -> np.ndarray:
        return np.asarray(runner(self.input_ids, self.attention_mask, self.features), dtype=np.float64)


def compare(name: str, reference: Runner, candidate: Runner, batches: Sequence[ParityBatch],
            tolerance: Tolerance, reference_cache: dict[int, np.ndarray] | None = None) -> ParityReport:
    """Run both on every batch and judge the differences."""
    report = ParityReport(name, tolerance)
    for k, b in enumerate(batches):
        if reference_cache is not None and k in reference_cache:
            ref = reference_cache[k]
        else:
            ref = b.run(reference)
            if reference_cache is not None:
                reference_cache[k] = ref
        got = b.run(candidate)
        if got.shape != ref.shape:
            report.failures.append(f"{b.input_ids.shape}: output shape {got.shape} != reference {ref.shape}")
            continue
        p_ref, p_got = softmax(ref), softmax(got)
        top2 = np.sort(p_ref, axis=1)[:, -2:]
        decided = (top2[:, 1] - top2[:, 0]) > tolerance.max_prob_diff
        same = ref.argmax(1) == got.argmax(1)
        result = ShapeResult(
            batch=int(b.input_ids.shape[0]), sequence=int(b.input_ids.shape[1]),
            max_logit_diff=float(np.max(np.abs(ref - got))) if np.all(np.isfinite(got)) else float("inf"),
            max_prob_diff=float(np.max(np.abs(p_ref - p_got))) if np.all(np.isfinite(got)) else float("inf"),
            argmax_agreement=float(np.mean(same)),
            decided_rows=int(decided.sum()),
            decided_agreement=float(np.mean(same[decided])) if decided.any() else 1.0,
        )
        if b.labels is not None:
            result.log_loss_reference = log_loss(p_ref, b.labels)
            result.log_loss_candidate = log_loss(p_got, b.labels)
        report.shapes.append(result)
    judge(report)
    return report


@dataclass
class ParityGate:
    """Check each candidate against one reference on the same batches (the reference runs once per batch); log one
    line per shape, keep every report, and raise :class:`ParityError` at the first failure, so nothing is kept."""

    reference: Runner
    batches: Sequence[ParityBatch]
    reports: dict[str, dict[str, Any]] = field(default_factory=dict)
    cache: dict[int, np.ndarray] = field(default_factory=dict)

    def compare(self, name: str, candidate: Runner, tolerance: Tolerance) -> ParityReport:
        """The report, without raising (the caller decides; the TensorRT build keeps nothing on failure)."""
        return compare(name, self.reference, candidate, self.batches, tolerance, self.cache)

    def record(self, name: str, candidate: Runner, tolerance: Tolerance) -> dict[str, Any]:
        """Compare, log and keep the report, without raising: for an option that is recorded as failed and then
        never used (OpenVINO on the export's own ``model.onnx``), where nothing has to be thrown away."""
        return self._run(name, candidate, tolerance).to_dict()

    def check(self, name: str, candidate: Runner, tolerance: Tolerance) -> dict[str, Any]:
        """Like :meth:`record`, and raise :class:`ParityError` when the candidate fails."""
        report = self._run(name, candidate, tolerance)
        if not report.passed:
            raise ParityError(f"{name} parity check failed, nothing was kept: " + "; ".join(report.failures)
                              + "\n" + "\n".join(report.lines()))
        return self.reports[name]

    def _run(self, name: str, candidate: Runner, tolerance: Tolerance) -> ParityReport:
        report = self.compare(name, candidate, tolerance)
        for line in report.lines():
            log.info("parity %s", line)
        self.reports[name] = report.to_dict()
        return report


def judge(report: ParityReport) -> ParityReport:
    tol = report.tolerance
    fails = list(report.failures)
    counted = [(s.batch, s.argmax_agreement) if s.decided_rows is None else (s.decided_rows, s.decided_agreement)
               for s in report.shapes]
    total = sum(n for n, _ in counted)
    agree = sum(n * a for n, a in counted) / total if total else 1.0
    for s in report.shapes:
        where = f"{s.batch}x{s.sequence}"
        if tol.max_logit_diff is not None and not s.max_logit_diff <= tol.max_logit_diff:
            fails.append(f"{where}: max |logit diff| {s.max_logit_diff:.3e} > {tol.max_logit_diff:.1e}")
        if not s.max_prob_diff <= tol.max_prob_diff:
            fails.append(f"{where}: max |prob diff| {s.max_prob_diff:.3e} > {tol.max_prob_diff:.1e}")
        if s.log_loss_change is not None and not s.log_loss_change <= tol.max_log_loss_change:
            fails.append(f"{where}: log loss change {s.log_loss_change:.3e} > {tol.max_log_loss_change:.1e}")
    if agree < tol.min_argmax_agreement:
        fails.append(f"argmax agreement {agree:.3f} over the {total} rows whose reference top-2 margin exceeds "
                     f"{tol.max_prob_diff:g} < {tol.min_argmax_agreement:.3f}")
    report.failures = fails
    report.passed = not fails
    return report


def parity_batches(records, tokenizer, encoder_cfg, shapes: list[tuple[int, int]], executor):
    """Real rows encoded and padded (by the executor that inference uses) to exactly each (batch, sequence) shape;
    the longest rows first, cut to the sequence length."""
    from dataclasses import replace

    from arena.encode import ArenaEncoder, Encoded

    out = []
    for batch, seq in shapes:
        enc = ArenaEncoder(tokenizer, replace(encoder_cfg, max_length=max(seq, 64)))  # then cut to seq
        rows = records[: max(batch * 4, batch)]
        encoded = enc.encode(rows)
        pick = np.argsort(-encoded.lengths, kind="stable")[:batch]
        cut = Encoded([encoded.ids[i][:seq] for i in pick], features=encoded.feature_rows(pick))
        padded = executor.prepare(cut, [np.arange(len(pick))], length=seq).batches[0]
        labels = None
        if all(rows[i].label is not None for i in pick):
            labels = np.array([rows[i].label for i in pick])
        out.append(ParityBatch(padded.input_ids, padded.attention_mask, labels, padded.features))
    return out


def parity_records(path: Path, shapes: list[tuple[int, int]]) -> list:
    """The first 256 rows of the parity CSV; :class:`ConfigError` when the largest parity batch needs more."""
    from arena.data import has_labels, read_records

    records = read_records(path, labelled=has_labels(path))[:256]
    if len(records) < max(b for b, _ in shapes):
        raise ConfigError(f"{path} has {len(records)} rows; the parity check needs at least "
                          f"{max(b for b, _ in shapes)} (see --parity-shapes)")
    return records


MIN_PARITY_LENGTH = 8
"""The shortest parity sequence: the encoder's frame tokens alone take about that many."""


def parse_shapes(text: str, max_length: int | None = None) -> list[tuple[int, int]]:
    """``--parity-shapes`` (``BxL,BxL``): the one parser, used by the up-front checks (``max_length`` None: the
    pairs as given, each at least 1 x :data:`MIN_PARITY_LENGTH`) and by the gate (lengths capped at the model's
    ``max_length``, duplicates dropped, plus a batch at ``max_length``: the longest the model accepts). Raises
    :class:`ConfigError` naming the flag."""
    shapes: list[tuple[int, int]] = []
    for part in text.split(","):
        b, x, s = part.strip().lower().partition("x")
        try:
            shape = (int(b), int(s))
        except ValueError:
            shape = None
        if not x or shape is None:
            raise ConfigError(f"--parity-shapes takes BxL pairs such as 1x17,7x133; got {part.strip()!r}")
        if shape[0] < 1 or shape[1] < MIN_PARITY_LENGTH:
            raise ConfigError(f"--parity-shapes {part.strip()}: the batch must be >= 1 and the length >= "
                              f"{MIN_PARITY_LENGTH}")
        if max_length is not None:
            shape = (shape[0], min(shape[1], max_length))
        if shape not in shapes:
            shapes.append(shape)
    if max_length is not None and all(s != max_length for _, s in shapes):
        shapes.append((2, max_length))  # the longest the model accepts
    return shapes
