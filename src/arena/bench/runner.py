"""Measure scoring throughput for backend x precision x batch policy cells, side by side in one run.

Each cell is timed twice:

* end to end: records -> probabilities, tokenization included. The ``notebook`` policy tokenizes inside the loop,
  batch by batch in file order, as the starter notebook did; ``padded`` and ``sorted`` go through
  :class:`~arena.scoring.Scorer` (encoding overlapped with compute);
* model only: the same batches from pre-encoded rows, so the backend's own speed is visible.

Warm-up passes are excluded; each timing is the median of ``repeats`` passes, and batch latencies are pooled over
the model-only passes for percentiles. GPU backends are synchronised by the backends themselves (their results are
copied to host memory before the timer stops).
"""

from __future__ import annotations

import gc
import logging
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from arena.batching import default_max_tokens, padding_stats, plan_batches
from arena.data import Record
from arena.encode import ArenaEncoder, pad_batch
from arena.errors import ConfigError
from arena.scoring import ScoreConfig, Scorer

log = logging.getLogger(__name__)


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
    model_s: float
    rows_per_s: float
    model_rows_per_s: float
    tokens_per_s: float
    padding_efficiency: float
    batches: int
    batch_ms_p50: float
    batch_ms_p90: float
    batch_ms_p99: float
    peak_rss_mib: float
    peak_gpu_mib: float | None
    load_s: float
    warmup_s: float = 0.0
    """Untimed warm-up passes (includes torch.compile / ORT graph preparation), reported apart from throughput."""
    e2e_runs_s: list[float] = field(default_factory=list)
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


def notebook_loop(runner, encoder: ArenaEncoder, records: list[Record], batch_size: int) -> np.ndarray:
    """The starter notebook's loop: file order, fixed batches, tokenize inside the loop, pad to the batch max."""
    out = np.zeros((len(records), 3), dtype=np.float32)
    for start in range(0, len(records), batch_size):
        chunk = records[start:start + batch_size]
        enc = encoder.encode(chunk)
        ids, mask = pad_batch(enc.ids, encoder.pad_id, multiple=1)
        out[start:start + len(chunk)] = runner(ids, mask, enc.features)
    return out


def run_cell(spec: CellSpec, model_dir: Path, records: list[Record], *, batch_size: int, max_tokens: int | None,
             repeats: int, warmup: int, threads: int | None, max_length: int | None,
             encode_workers: int = 0) -> CellResult:
    from dataclasses import replace

    from arena.loading import open_model

    gc.collect()
    _reset_peak_rss()
    gpu = spec.precision in ("fp16", "bf16") or spec.backend == "tensorrt"
    torch_mod = None
    try:
        import torch as torch_mod

        if torch_mod.cuda.is_available():
            torch_mod.cuda.reset_peak_memory_stats()
    except ImportError:  # pragma: no cover
        pass
    t0 = time.perf_counter()
    compiled = spec.backend == "torch.compile"  # torch with torch.compile(dynamic=True), timed after warm-up
    loaded = open_model(model_dir, backend="torch" if compiled else spec.backend, precision=spec.precision,
                        threads=threads, compile=compiled)
    load_s = time.perf_counter() - t0
    encoder = loaded.encoder
    if max_length is not None and max_length != encoder.config.max_length:
        encoder = ArenaEncoder(encoder.tokenizer, replace(encoder.config, max_length=max_length))
    policy = spec.policy
    bs = 16 if policy == "notebook" else batch_size
    max_tokens = max_tokens or default_max_tokens(getattr(loaded.runner, "device", "cpu"), encoder.config.max_length,
                                                  loaded.model_type)
    scorer = Scorer(loaded.runner, encoder, ScoreConfig(policy=policy, batch_size=bs, max_tokens=max_tokens,
                                                        temperature=loaded.temperature,
                                                        encode_workers=encode_workers),
                    tokenizer_path=model_dir)

    def end_to_end() -> float:
        t = time.perf_counter()
        if policy == "notebook":
            notebook_loop(loaded.runner, encoder, records, bs)
        else:
            scorer.score(records)
        return time.perf_counter() - t

    encoded = encoder.encode(records)
    batches, fixed = plan_batches(policy, encoded.lengths, batch_size=bs, max_tokens=max_tokens,
                                  max_length=encoder.config.max_length)
    padded = [(*pad_batch([encoded.ids[i] for i in b], encoder.pad_id, length=fixed,
                          multiple=1 if policy == "notebook" else 8), encoded.feature_rows(b)) for b in batches]

    def model_only(latencies: list[float] | None) -> float:
        t = time.perf_counter()
        for ids, mask, feats in padded:
            tb = time.perf_counter()
            loaded.runner(ids, mask, feats)
            if latencies is not None:
                latencies.append((time.perf_counter() - tb) * 1000)
        return time.perf_counter() - t

    tw = time.perf_counter()
    for _ in range(warmup):
        model_only(None)
    warmup_s = time.perf_counter() - tw
    latencies: list[float] = []
    model_runs = [model_only(latencies) for _ in range(repeats)]
    e2e_runs = [end_to_end() for _ in range(repeats)]
    scorer.close()
    stats = padding_stats(batches, encoded.lengths, pad_multiple=1 if policy == "notebook" else 8,
                          fixed_length=fixed)
    e2e, model_s = statistics.median(e2e_runs), statistics.median(model_runs)
    lat = np.array(latencies)
    peak_gpu = None
    if torch_mod is not None and gpu and torch_mod.cuda.is_available():
        peak_gpu = torch_mod.cuda.max_memory_allocated() / 2**20
    return CellResult(
        name=spec.name, backend=spec.backend, precision=spec.precision, policy=policy,
        description=loaded.description, rows=len(records), e2e_s=e2e, model_s=model_s,
        rows_per_s=len(records) / e2e, model_rows_per_s=len(records) / model_s,
        tokens_per_s=stats.real_tokens / e2e, padding_efficiency=stats.efficiency, batches=len(batches),
        batch_ms_p50=float(np.percentile(lat, 50)), batch_ms_p90=float(np.percentile(lat, 90)),
        batch_ms_p99=float(np.percentile(lat, 99)), peak_rss_mib=_peak_rss_mib(), peak_gpu_mib=peak_gpu,
        load_s=load_s, warmup_s=warmup_s, e2e_runs_s=e2e_runs,
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
    from dataclasses import replace

    return replace(record, id=new_id)


def compute_speedups(results: list[CellResult], baseline: str) -> None:
    base = next((r for r in results if r.name == baseline), None)
    for r in results:
        r.speedup = (r.rows_per_s / base.rows_per_s) if base else None


def check_thresholds(results: list[CellResult], thresholds: dict[str, Any]) -> list[dict[str, Any]]:
    """Evaluate each ``{"name", "numerator", "denominator", "metric", "min"}`` ratio; cells missing are failures."""
    by_name = {r.name: asdict(r) for r in results}
    checks = []
    for rule in thresholds.get("ratios", []):
        num, den = by_name.get(rule["numerator"]), by_name.get(rule["denominator"])
        metric = rule.get("metric", "rows_per_s")
        if num is None or den is None:
            checks.append({**rule, "value": None, "passed": False,
                           "why": f"cell {rule['numerator'] if num is None else rule['denominator']} not measured"})
            continue
        value = num[metric] / den[metric]
        checks.append({**rule, "value": value, "passed": value >= rule["min"]})
    return checks
