"""Measure scoring throughput for backend x precision x batch policy cells, side by side in one run.

Every cell runs the real scoring path, :class:`~arena.serving.scoring.Scorer` on
:class:`~arena.serving.executor.BatchExecutor`:
records -> probabilities, tokenization included (the ``notebook`` policy tokenizes batch by batch in file order
on the model's thread, as the starter notebook did; ``padded`` and ``sorted`` encode and pad in a background
thread, overlapped with compute). One pass gives both numbers of a cell: end to end (its wall time) and model only
(the time inside the backend, from the executor's own timings of that pass), so model-only rows/s is never below
end-to-end rows/s.

All cells are opened and checked before any is timed; then the passes are interleaved (repeat 1 of every cell,
then repeat 2, ...), so a slow minute of a shared machine hits every cell alike. Reported: the median pass, with
the min and max beside it. GPU backends synchronise before they return (their results are in host memory).
"""

from __future__ import annotations

import gc
import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from arena.data import Record
from arena.encode import ArenaEncoder
from arena.errors import ConfigError
from arena.serving.executor import Timings
from arena.serving.scoring import ScoreConfig, Scorer

COMPILED = "torch.compile"
"""The torch backend with torch.compile(dynamic=True), timed after warm-up: a bench cell of its own."""

log = logging.getLogger(__name__)

NOTEBOOK_BATCH = 16
"""The starter notebook's batch size, used by every ``notebook`` cell."""


@dataclass(frozen=True)
class CellSpec:
    backend: str
    precision: str
    policy: str

    @property
    def name(self) -> str:
        return f"{self.backend}:{self.precision}/{self.policy}"

    @classmethod
    def parse(cls, backend_spec: str, policy: str) -> CellSpec:
        backend, _, precision = backend_spec.partition(":")
        return cls(backend, precision or "auto", policy)


@dataclass
class CellResult:
    name: str
    backend: str
    precision: str
    policy: str
    description: str
    rows: int
    e2e_s: float
    """Median end-to-end seconds of the timed passes."""
    model_s: float
    """Seconds inside the backend on the pass with the median end-to-end time."""
    rows_per_s: float
    model_rows_per_s: float
    tokens_per_s: float
    padding_efficiency: float
    batches: int
    batch_ms_p50: float
    batch_ms_p90: float
    batch_ms_p99: float
    peak_rss_mib: float
    """The process's peak resident memory during this cell's passes (every cell's model is loaded meanwhile)."""
    peak_gpu_mib: float | None
    load_s: float
    warmup_s: float = 0.0
    """Untimed warm-up passes (includes torch.compile / ORT graph preparation), reported apart from throughput."""
    e2e_runs_s: list[float] = field(default_factory=list)
    model_runs_s: list[float] = field(default_factory=list)
    rows_per_s_min: float = 0.0
    rows_per_s_max: float = 0.0
    max_tokens: int = 0
    speedup: float | None = None


def _reset_peak_rss() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: reset VmHWM to the current RSS
    except OSError:
        pass


def _peak_rss_mib() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclass
class Cell:
    """One opened cell: its model, scorer and the timings of every pass so far."""

    spec: CellSpec
    loaded: Any
    scorer: Scorer
    load_s: float
    warmup_s: float = 0.0
    passes: list[tuple[float, Timings]] = field(default_factory=list)
    peak_rss_mib: float = 0.0
    peak_gpu_mib: float | None = None


def open_cell(spec: CellSpec, model_dir: Path, *, batch_size: int, max_tokens: int | None, threads: int | None,
              max_length: int | None, encode_workers: int = 0) -> Cell:
    """Load the cell's model and build its scorer (raises before any timing if the cell cannot run)."""
    from arena.serving.loading import open_models
    from arena.serving.scoring import scorer_for

    t0 = time.perf_counter()
    compiled = spec.backend == COMPILED  # torch with torch.compile(dynamic=True), timed after warm-up
    loaded = open_models([model_dir], backend="torch" if compiled else spec.backend, precision=spec.precision,
                         threads=threads, compile=compiled)
    load_s = time.perf_counter() - t0
    if max_length is not None:
        for m in loaded.members:
            if max_length != m.encoder.config.max_length:
                m.encoder = ArenaEncoder(m.encoder.tokenizer, replace(m.encoder.config, max_length=max_length))
    bs = NOTEBOOK_BATCH if spec.policy == "notebook" else batch_size
    config = ScoreConfig(policy=spec.policy, batch_size=bs, max_tokens=max_tokens, encode_workers=encode_workers)
    scorer = scorer_for(loaded, config)
    return Cell(spec, loaded, scorer, load_s)


def time_pass(cell: Cell, records: list[Record]) -> tuple[float, Timings]:
    """One end-to-end pass; the executor's timings of the same pass carry the model-only time."""
    timings = Timings()
    t0 = time.perf_counter()
    cell.scorer.score(records, timings)
    timings.wall_s = time.perf_counter() - t0
    return timings.wall_s, timings


def run_cells(cells: list[Cell], records: list[Record], *, repeats: int, warmup: int) -> list[CellResult]:
    """Warm every cell up, then time ``repeats`` passes interleaved across cells."""
    if repeats < 1 or warmup < 0:
        raise ConfigError("--repeats must be at least 1 and --warmup at least 0")
    torch_mod = _torch()
    for cell in cells:
        t0 = time.perf_counter()
        for _ in range(warmup):
            time_pass(cell, records)
        cell.warmup_s = time.perf_counter() - t0
    for _ in range(repeats):
        for cell in cells:
            gc.collect()
            _reset_peak_rss()
            if torch_mod is not None:
                torch_mod.cuda.reset_peak_memory_stats()
            cell.passes.append(time_pass(cell, records))
            cell.peak_rss_mib = max(cell.peak_rss_mib, _peak_rss_mib())
            if torch_mod is not None:
                cell.peak_gpu_mib = max(cell.peak_gpu_mib or 0.0, torch_mod.cuda.max_memory_allocated() / 2**20)
    for cell in cells:
        cell.scorer.close()
    return [summarise(cell, len(records)) for cell in cells]


def _torch() -> Any:
    try:
        import torch

        return torch if torch.cuda.is_available() else None
    except ImportError:  # pragma: no cover
        return None


def summarise(cell: Cell, rows: int) -> CellResult:
    """The cell's median pass (by end-to-end time), with the spread over all passes."""
    passes = sorted(cell.passes, key=lambda p: p[0])
    e2e, timings = passes[(len(passes) - 1) // 2]
    lat = np.array([ms for _, t in cell.passes for ms in t.batch_ms] or [0.0])
    spec = cell.spec
    return CellResult(
        name=spec.name, backend=spec.backend, precision=spec.precision, policy=spec.policy,
        description=cell.loaded.description, rows=rows, e2e_s=e2e, model_s=timings.model_s,
        rows_per_s=rows / e2e, model_rows_per_s=rows / timings.model_s,
        tokens_per_s=timings.real_tokens / e2e, padding_efficiency=timings.padding_efficiency,
        batches=timings.batches, batch_ms_p50=float(np.percentile(lat, 50)),
        batch_ms_p90=float(np.percentile(lat, 90)), batch_ms_p99=float(np.percentile(lat, 99)),
        peak_rss_mib=cell.peak_rss_mib, peak_gpu_mib=cell.peak_gpu_mib, load_s=cell.load_s,
        warmup_s=cell.warmup_s, e2e_runs_s=[p[0] for p in cell.passes],
        model_runs_s=[p[1].model_s for p in cell.passes], rows_per_s_min=rows / passes[-1][0],
        rows_per_s_max=rows / passes[0][0], max_tokens=cell.scorer.executor.budget,
    )


def repeat_to(records: list[Record], n: int) -> list[Record]:
    """The sample repeated (ids made unique) to ``n`` rows: keeps the real length mix."""
    if not records:
        raise ConfigError("no rows to benchmark")
    out = []
    for i in range(n):
        r = records[i % len(records)]
        out.append(r if i < len(records) else replace_id(r, f"{r.id}-{i // len(records)}"))
    return out


def replace_id(record: Record, new_id: str) -> Record:
    return replace(record, id=new_id)


def compute_speedups(results: list[CellResult], baseline: str) -> None:
    base = next((r for r in results if r.name == baseline), None)
    for r in results:
        r.speedup = (r.rows_per_s / base.rows_per_s) if base else None


def rule_min(rule: dict[str, Any], flags: frozenset[str]) -> tuple[float, str]:
    """The threshold a ratio must meet on a CPU with ``flags``, and where it came from.

    ``min`` holds on every CPU kind measured; a ``where_cpu`` entry (``{"flags_all": [...], "flags_none": [...],
    "min": x, "kind": "..."}``) raises it on the CPU kind it names, where that kind was measured to do better.
    """
    best, source = float(rule["min"]), "every CPU kind measured"
    for entry in rule.get("where_cpu", []):
        if set(entry.get("flags_all", [])) <= flags and not set(entry.get("flags_none", [])) & flags:
            if entry["min"] > best:
                best, source = float(entry["min"]), entry.get("kind", "this CPU kind")
    return best, source


def check_thresholds(results: list[CellResult], thresholds: dict[str, Any],
                     flags: frozenset[str] | None = None) -> list[dict[str, Any]]:
    """Evaluate each ``{"name", "numerator", "denominator", "metric", "min"}`` ratio; cells missing are failures.

    The threshold is :func:`rule_min`'s for this machine's CPU flags (``/proc/cpuinfo`` unless ``flags`` is given).
    """
    from arena.machine.cpu import cpu_flags

    flags = cpu_flags() if flags is None else flags
    by_name = {r.name: asdict(r) for r in results}
    checks = []
    for rule in thresholds.get("ratios", []):
        num, den = by_name.get(rule["numerator"]), by_name.get(rule["denominator"])
        metric = rule.get("metric", "rows_per_s")
        least, source = rule_min(rule, flags)
        rule = {k: v for k, v in rule.items() if k != "where_cpu"} | {"min": least, "min_for": source}
        if num is None or den is None:
            checks.append({**rule, "value": None, "passed": False,
                           "why": f"cell {rule['numerator'] if num is None else rule['denominator']} not measured"})
            continue
        value = num[metric] / den[metric]
        checks.append({**rule, "value": value, "passed": value >= least})
    return checks
