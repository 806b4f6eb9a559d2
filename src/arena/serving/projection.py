"""Will the run fit the time limit? A projection of the whole scoring run from a measured sample, before it starts.

Kaggle stops a notebook after 9 hours; an ensemble with TTA that does not fit scores nothing. The projection:

1. every row of the file is encoded once (with each member's encoder) to know its length, and the full run's
   batches are planned exactly as the run will plan them (each member's executor, the same sorted batches);
2. a length-stratified sample (rows evenly spaced in length order, so short and long rows are both measured) is
   scored by every member, TTA included, after one warm-up batch, timing each batch; sampling goes on in rounds of
   new rows (spaced between the rows already taken) until each member has been timed for at least
   :data:`MIN_SAMPLE_S` or :data:`SAMPLE_FRACTION` of its first projection, whichever is longer (capped at
   :data:`MAX_SAMPLE_S`): a fixed 128 rows of a fast model is a few seconds of timing, and a machine's speed moves
   by more than 10% over a few seconds (measured: -17% and -4% on two runs of the same 1,500 rows, issue 24);
3. a cost model ``seconds = a * computed_tokens + b`` per batch (per-token and per-batch cost) is fitted by least
   squares per member over all rounds, and summed over the full plan (twice with swap TTA);
4. the encoding the run cannot hide behind the model (the first chunk's, and any excess over the model time) is
   added from the measured encoding of every row;
5. the uncertainty combines the fit's parameter covariance, the batches' own scatter around it, and the machine's
   drift: how far each round's (or, with one round, each half's) measured time strays from the fit, taken as the
   spread of the whole run's speed (the run happens later than the sample, on the same machine), at least
   :data:`MIN_DRIFT`, since a sample of seconds cannot see drift over the run's hours; the projection
   is reported as ``projected_s`` with a 95% interval, plus what was already spent (loading, encoding, sampling).

The cost model is linear in padded tokens; attention's quadratic term is absorbed in ``a`` for the length mix of
the sample, which is why the sample is stratified by length rather than drawn at random.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from arena.errors import ConfigError

log = logging.getLogger(__name__)
ACTIONS = ("error", "warn")
_UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}


def parse_duration(text: str | None, flag: str = "--time-limit") -> float | None:
    """Seconds in ``9h``, ``1h30m``, ``540m``, ``90s`` or a plain number of seconds; None for None."""
    if text is None:
        return None
    value = str(text).strip().lower()
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([dhms])", value)
    if re.fullmatch(r"\d+(?:\.\d+)?", value):
        seconds = float(value)
    elif parts and re.fullmatch(r"(\s*\d+(?:\.\d+)?\s*[dhms])+\s*", value):
        seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    else:
        raise ConfigError(f"{flag} takes a duration such as 9h, 1h30m, 540m or 3600 (seconds); got {text!r}")
    if seconds <= 0:
        raise ConfigError(f"{flag} must be longer than 0; got {text!r}")
    return seconds


def check_time_limit(limit: str | None, action: str) -> float | None:
    """The limit in seconds (None: no projection), after checking ``--time-limit-action``."""
    if action not in ACTIONS:
        raise ConfigError(f"--time-limit-action must be one of {', '.join(ACTIONS)}; got {action!r}")
    return parse_duration(limit)


SAMPLE_ROWS = 128
"""Rows per sampling round."""
MIN_SAMPLE_S = 15.0
"""Each member is timed for at least this many seconds (or every row is sampled)."""
SAMPLE_FRACTION = 0.02
"""... or this share of its first round's projection, when that is longer ..."""
MAX_SAMPLE_S = 300.0
"""... but never longer than this."""
MAX_ROUNDS = 16
MIN_DRIFT = 0.03
"""The least machine drift (standard deviation of the run's speed, relative) the interval assumes, whatever the
sample saw: a few rounds over seconds cannot see how a machine's speed moves over the minutes or hours of the run.
Measured (``benchmarks/RESULTS.md``): two sampling rounds that agreed to 0.5% before a 10-minute run that went 3.6%
faster (AMX Xeon); the same benchmark's cells 20% apart 90 minutes later on that machine; 8-10% between rounds on an
AVX2 EPYC. 3% keeps the 95% interval at least +-6% wide."""


def stratified_sample(lengths: np.ndarray, n: int, taken: np.ndarray | None = None) -> np.ndarray:
    """Indices of ``n`` rows evenly spaced in length order (all rows when there are fewer), sorted by index.
    ``taken``: a boolean mask of rows already sampled; the new rows are spaced over the rest, each in the middle
    of its stratum, so later rounds fall between the rows of earlier ones."""
    lengths = np.asarray(lengths)
    order = np.argsort(lengths, kind="stable")
    if taken is not None:
        order = order[~np.asarray(taken)[order]]
        if n >= len(order):
            return np.sort(order)
        return np.sort(order[np.unique(((np.arange(n) + 0.5) * len(order) / n).astype(int))])
    if n >= len(lengths):
        return np.arange(len(lengths))
    picks = np.unique(np.round(np.linspace(0, len(lengths) - 1, n)).astype(int))
    return np.sort(order[picks])


@dataclass(frozen=True)
class CostModel:
    """``seconds = per_token * tokens + per_batch`` for one batch, with the fit's covariance and residual scatter."""

    per_token: float
    per_batch: float
    covariance: tuple[tuple[float, float], tuple[float, float]]
    residual_var: float
    batches: int

    @classmethod
    def fit(cls, tokens: Sequence[float], seconds: Sequence[float]) -> CostModel:
        """Least squares over measured batches; with fewer than three batches (no residual to estimate), the
        scatter is taken as 25% of the mean batch time, so one or two batches never look certain."""
        x = np.column_stack([np.asarray(tokens, dtype=float), np.ones(len(tokens))])
        y = np.asarray(seconds, dtype=float)
        if len(y) == 0:
            raise ValueError("no measured batches to fit")
        if len(y) == 1 or np.ptp(x[:, 0]) == 0:  # one point, or one batch shape: all cost is per token
            a = float(y.sum() / max(x[:, 0].sum(), 1.0))
            var = float((0.25 * y.mean()) ** 2)
            return cls(a, 0.0, ((var / max(x[:, 0].mean(), 1.0) ** 2, 0.0), (0.0, 0.0)), var, len(y))
        coef, *_ = np.linalg.lstsq(x, y, rcond=None)
        a, b = float(coef[0]), float(coef[1])
        if b < 0 or a < 0:  # a negative intercept or slope is noise: refit with one term
            a, b = (float(y.sum() / x[:, 0].sum()), 0.0) if b < 0 else (0.0, float(y.mean()))
        residual = y - x @ np.array([a, b])
        dof = len(y) - 2
        var = float(residual @ residual / dof) if dof > 0 else float((0.25 * y.mean()) ** 2)
        cov = var * np.linalg.pinv(x.T @ x)
        return cls(a, b, ((float(cov[0, 0]), float(cov[0, 1])), (float(cov[1, 0]), float(cov[1, 1]))), var, len(y))

    def project(self, tokens: Sequence[float]) -> tuple[float, float]:
        """(seconds, standard deviation) for running batches of ``tokens`` computed tokens each."""
        total, count = float(np.sum(tokens)), len(tokens)
        mean = self.per_token * total + self.per_batch * count
        g = np.array([total, count])
        var = float(g @ np.array(self.covariance) @ g) + count * self.residual_var
        return mean, var ** 0.5


@dataclass(frozen=True)
class Projection:
    rows: int
    sample_rows: int
    spent_s: float
    projected_s: float
    low_s: float
    high_s: float
    limit_s: float | None
    members: list[dict[str, Any]]
    encode_s: float = 0.0
    """Of ``projected_s``: the encoding the run cannot overlap with the model."""

    @property
    def total_s(self) -> float:
        return self.spent_s + self.projected_s

    def line(self) -> str:
        limit = f" against a limit of {hours(self.limit_s)}" if self.limit_s else ""
        return (f"projected run time {hours(self.total_s)} (95%: {hours(self.spent_s + self.low_s)} to "
                f"{hours(self.spent_s + self.high_s)}) for {self.rows} rows{limit}, from {self.sample_rows} "
                f"length-stratified rows scored by {len(self.members)} model(s)")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total_s": self.total_s}


def hours(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds / 3600:.2f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min" if seconds >= 60 \
        else f"{seconds:.1f} s"


def combine_projections(parts: Sequence[tuple[float, float]]) -> tuple[float, float, float]:
    """(mean, low, high) of a sum of independent (mean, sd) projections, 95% interval, never below 0."""
    mean = float(sum(m for m, _ in parts))
    sd = float(sum(s * s for _, s in parts) ** 0.5)
    return mean, max(mean - 1.96 * sd, 0.0), mean + 1.96 * sd


def _timed_batches(executor: Any, prepared: Any) -> tuple[list[float], list[float]]:
    """(computed tokens, seconds) of every batch of ``prepared`` run on ``executor``'s backend."""
    tokens, seconds = [], []
    for batch in prepared.batches:
        t0 = time.perf_counter()
        batch.run(executor.backend)
        seconds.append(time.perf_counter() - t0)
        tokens.append(float(batch.input_ids.size))
    return tokens, seconds


def _time_rows(member: Any, rows: list[Any], tta: bool, warm_up: bool) -> tuple[list[float], list[float]]:
    """Time ``rows`` as the run scores them (and swapped, with TTA): one (tokens, seconds) entry per batch."""
    prepared = member.executor.prepare(member.encoder.encode(rows))
    if warm_up and prepared.batches:  # first-call costs (graph compilation, allocation) are not the run's
        prepared.batches[0].run(member.executor.backend)
    tokens, seconds = _timed_batches(member.executor, prepared)
    if tta:
        more_tokens, more_seconds = _timed_batches(member.executor,
                                                   member.executor.prepare(member.encoder.encode(rows, swap=True)))
        tokens, seconds = tokens + more_tokens, seconds + more_seconds
    return tokens, seconds


def _sample_rounds(member: Any, records: Sequence[Any], lengths: np.ndarray, *, tta: bool, sample_rows: int,
                   min_sample_s: float, plan: list[float]) -> tuple[list[tuple[list[float], list[float]]], int]:
    """Timed rounds of new length-stratified rows until the member has been timed long enough (module docstring):
    each round's (tokens, seconds) per batch, and how many rows were sampled."""
    taken = np.zeros(len(records), dtype=bool)
    rounds: list[tuple[list[float], list[float]]] = []
    target = min_sample_s
    while len(rounds) < MAX_ROUNDS and not taken.all():
        pick = stratified_sample(lengths, sample_rows, taken if rounds else None)
        taken[pick] = True
        rounds.append(_time_rows(member, [records[i] for i in pick], tta, warm_up=not rounds))
        if len(rounds) == 1 and rounds[0][0]:
            first = CostModel.fit(*rounds[0]).project(plan)[0] * (2 if tta else 1)
            target = min(max(min_sample_s, SAMPLE_FRACTION * first), MAX_SAMPLE_S)
        if sum(s for r in rounds for s in r[1]) >= target:
            break
    return rounds, int(taken.sum())


def drift(model: CostModel, rounds: Sequence[tuple[Sequence[float], Sequence[float]]]) -> float:
    """The machine's speed spread seen while sampling: the standard deviation of measured / fitted time over the
    rounds (one round: its two halves, in the order they ran); 0 when there is nothing to compare."""
    blocks = list(rounds)
    if len(blocks) == 1:
        tokens, seconds = blocks[0]
        half = len(tokens) // 2
        blocks = [(tokens[:half], seconds[:half]), (tokens[half:], seconds[half:])] if half else []
    ratios = [sum(s) / fitted for t, s in blocks if t and (fitted := model.project(t)[0]) > 0]
    return float(np.std(ratios, ddof=1)) if len(ratios) >= 2 else 0.0


def project_scorer(scorer: Any, records: Sequence[Any], *, limit_s: float | None, sample_rows: int = SAMPLE_ROWS,
                   min_sample_s: float = MIN_SAMPLE_S, started: float | None = None) -> Projection:
    """Project the full run of ``scorer`` (a :class:`~arena.serving.scoring.Scorer`) over ``records``."""
    t_start = time.perf_counter() if started is None else started
    tta = bool(scorer.config.tta)
    passes = 2 if tta else 1
    parts, members = [], []
    encode_s, sampled = 0.0, 0
    for member in scorer.members:
        member.encoder.encode(list(records[:8]))  # the tokenizer's first call is slower than the run's calls
        t_encode = time.perf_counter()
        encoded = member.encoder.encode(list(records))
        encode_s += passes * (time.perf_counter() - t_encode)
        lengths = np.asarray(encoded.lengths)
        plan = member.executor.planned_tokens(lengths)
        rounds, rows = _sample_rounds(member, records, lengths, tta=tta, sample_rows=sample_rows,
                                min_sample_s=min_sample_s, plan=plan)
        tokens = [t for r in rounds for t in r[0]]
        if not tokens:
            continue
        model = CostModel.fit(tokens, [s for r in rounds for s in r[1]])
        mean, sd = model.project(plan)
        spread = drift(model, rounds)
        sd = (sd * sd + (max(spread, MIN_DRIFT) * mean) ** 2) ** 0.5
        sampled = max(sampled, rows)
        parts.append((passes * mean, passes * sd))
        members.append({"per_token_us": model.per_token * 1e6, "per_batch_ms": model.per_batch * 1e3,
                        "sample_batches": model.batches, "sample_rounds": len(rounds),
                        "sample_s": sum(s for r in rounds for s in r[1]), "drift": spread,
                        "projected_s": passes * mean})
    mean, low, high = combine_projections(parts) if parts else (0.0, 0.0, 0.0)
    exposed = exposed_encode_s(encode_s, mean, rows=len(records), chunk_rows=scorer.config.chunk_rows)
    return Projection(len(records), sampled, time.perf_counter() - t_start, mean + exposed,
                      low + exposed, high + exposed, limit_s, members, exposed)


def exposed_encode_s(encode_s: float, model_s: float, *, rows: int, chunk_rows: int) -> float:
    """The encoding time the run does not hide behind the model: the first chunk's (nothing to overlap with yet),
    and whatever of the rest takes longer than the model does (encoding all rows is measured, not sampled)."""
    if rows == 0:
        return 0.0
    first = encode_s * min(1.0, chunk_rows / rows)
    return first + max(0.0, encode_s - first - model_s)


def enforce_limit(projection: Projection, action: str) -> None:
    """Raise :class:`ConfigError` (``action`` error) or log a warning when the projection exceeds the limit; warn
    when only the interval's upper end does."""
    limit = projection.limit_s
    if limit is None:
        return
    if projection.total_s > limit:
        message = (f"the run would take about {hours(projection.total_s)} (95%: up to "
                   f"{hours(projection.spent_s + projection.high_s)}), over --time-limit {hours(limit)}; use fewer "
                   "models, no --tta, a faster --backend/--precision, or --time-limit-action warn to run anyway")
        if action == "error":
            raise ConfigError(message)
        log.warning("%s", message)
    elif projection.spent_s + projection.high_s > limit:
        log.warning("the run may exceed --time-limit %s: the projection's 95%% interval reaches %s", hours(limit),
                    hours(projection.spent_s + projection.high_s))
