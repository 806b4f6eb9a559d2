"""Which CPU variant of an export is fastest *on this machine*: measured once, on the input's own rows, and cached.

Why: ``--backend auto`` ranks an export's CPU variants by their declared speed (each backend's ``CPU_SPEED``,
measured on one 2-core Zen 4, ``benchmarks/RESULTS.md``). One CPU's order picks wrong elsewhere: on Intel AMX,
OpenVINO bf16 runs ~8x fp32; on an AVX2-only CPU, INT8 gains nothing. So the first time an export is scored with
``--backend auto`` on a CPU, each candidate is timed on a few real batches and the fastest (rows/s) is kept.

The contract:

* **What is timed**: exactly the variants :func:`arena.serving.choice.choose_variant` ranked for an automatic CPU
  choice (:attr:`~arena.serving.choice.Choice.candidates`: usable *and* checked, exact or admitted by a parity check
  at export), when there are two or more and the folder is an arena export (its manifest keys the cache). So a
  measurement can change the speed, never the numbers. Torch bf16 from a checkpoint beside the export is not a
  candidate: no parity check admits it (it changes the logits unasked, which ``--backend auto`` never does), the
  export's manifest does not hash that checkpoint (the cache could not tell when it changed), and a Kaggle dataset
  of the export need not ship it. The bf16 path the design admits is OpenVINO bf16, parity-checked at export and
  offered only where the CPU has native bf16: it is the one that takes the AMX gain. Torch bf16 runs when asked for
  (``--backend torch --precision bf16`` on the checkpoint).
* **How**: each candidate is opened once (all at once, so they can be interleaved: memory for every candidate), its
  own batch executor plans the first :data:`SAMPLE_ROWS` rows of the input exactly as the run will (policy, token
  budget, limits), and batches spread over that length-sorted plan are run: one warm-up batch per variant (not
  timed), then up to :attr:`CalibrationRequest.timed_batches` rounds, each round one batch per variant in turn (so
  drift in the machine's load hits every variant alike), stopping before a new round once
  :attr:`CalibrationRequest.budget_s` has passed (at least one round always runs). The winner's opened backend is
  the one the run uses: it is not opened twice.
* **Cache**: ``calibration.json`` in :func:`arena.io.user_cache_dir` (``$ARENA_CACHE_DIR``, else
  ``$XDG_CACHE_HOME/arena``, else ``~/.cache/arena``), never in the model folder. One entry per
  :class:`CalibrationKey`: the CPU (:func:`arena.machine.cpu.cpu_kind`: model and matmul flags), the thread count,
  the versions of the runtimes the candidates run on, the export's manifest hash and the candidates themselves; a
  change to any of them measures again. Written atomically (temporary file + rename); a file that cannot be read or
  is not one arena wrote is ignored with one warning and left as it is; a folder that cannot be written only warns.
* **``--no-calibrate``**: the cached choice when there is one, else the declared order; never a measurement.
  A named ``--backend``, a GPU (its order stays the declared one) and ``--devices`` never measure either. Each member
  of an ensemble is its own export and its own cache entry.

The pure parts (key, cache, batch picks, decision) are separate from the timing loop, which reuses the batch
executor and the backends' own ``open``; no speed list lives here.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from arena.artifacts import manifest_sha256
from arena.data import Record
from arena.errors import ArenaError
from arena.serving.backends import spec
from arena.serving.backends.contract import Backend, OpenOptions, Variant
from arena.serving.choice import Choice
from arena.serving.executor import BatchExecutor, PaddedBatch

log = logging.getLogger(__name__)

CACHE_FILE = "calibration.json"
CACHE_FORMAT = "arena-calibration/1"
"""What marks a cache file as one arena wrote (any other file under that name is left alone)."""
CACHE_KEEP = 64
"""Entries kept in the cache file (the most recently measured)."""
SAMPLE_ROWS = 256
"""Rows read from the head of the input for its length mix (encoding them takes well under a second)."""
MEASURED, CACHED, STATIC = "measured", "cache", "static"

_clock = time.perf_counter
"""The timer of :func:`measure` (tests inject timings here)."""
_warned: set[tuple[str, float]] = set()


@dataclass(frozen=True)
class CalibrationRequest:
    """What ``--backend auto`` on a CPU needs to measure: rows of the input and the run's batch settings.

    ``records``: the input's first rows (their length mix); ``measure`` False: ``--no-calibrate``."""

    records: tuple[Record, ...] = ()
    measure: bool = True
    policy: str = "sorted"
    batch_size: int = 64
    max_tokens: int | None = None
    budget_s: float = 10.0
    """Seconds of timing (warm-up included) after which no new round starts."""
    timed_batches: int = 3


@dataclass(frozen=True)
class Calibration:
    """Where an automatic CPU choice came from: ``measured`` now, the ``cache``, or the declared order
    (``static``, with ``why`` nothing was measured). ``measured``: rows/s per variant name; ``seconds``: the time
    the measurement took here, opening every candidate included (the winner's open is not repeated; 0 for the cache
    and the static order), part of the run's wall time."""

    source: str
    chosen: str
    measured: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    cpu: str = ""
    why: str = ""

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["measured"] = {k: round(v, 3) for k, v in self.measured.items()}
        out["seconds"] = round(self.seconds, 3)
        return out


@dataclass(frozen=True)
class CalibrationKey:
    """When a measurement holds: the same CPU (model and matmul flags), threads, runtime versions, export and
    candidates."""

    cpu: str
    threads: int
    runtimes: tuple[tuple[str, str], ...]
    export: str
    candidates: tuple[str, ...]

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()


def runtime_versions(variants: Sequence[Variant]) -> tuple[tuple[str, str], ...]:
    """(module, version) of every runtime the variants run on (:attr:`BackendSpec.runtime`), sorted."""
    out = {}
    for v in variants:
        module = spec(v.backend).runtime
        if module and module not in out:
            out[module] = _installed_version(module)
    return tuple(sorted(out.items()))


def _installed_version(module: str) -> str:
    """The installed version of the runtime ``module`` from its package metadata, without importing it (importing
    OpenVINO only to read its version cost 0.15 s of every start); the module's ``__version__`` where no
    distribution of that name (or its ``-gpu`` build) is installed."""
    import importlib.metadata as md

    for dist in (module, f"{module}-gpu"):
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            continue
    try:
        return str(importlib.import_module(module).__version__)
    except (ImportError, AttributeError):
        return "absent"


def calibration_key(folder: Any, candidates: Sequence[Variant], threads: int | None) -> CalibrationKey:
    """The key of ``folder``'s candidates on this machine; ``threads`` None: every core this process may use."""
    from arena.machine.cpu import allowed_cores, cpu_kind

    return CalibrationKey(cpu_kind(), int(threads or allowed_cores()), runtime_versions(candidates),
                          manifest_sha256(folder.manifest or {}), tuple(sorted(v.name for v in candidates)))


def cache_file() -> Path:
    from arena.io import user_cache_dir

    return user_cache_dir() / CACHE_FILE


def read_cache(path: Path) -> tuple[dict[str, Any], bool]:
    """(entries by key digest, whether arena may write ``path``: it is absent or one arena wrote). A file that
    cannot be read or is not arena's is ignored with one warning (once per file version)."""
    if not path.is_file():  # absent, or its folder is not one (then writing it warns)
        return {}, True
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT or not isinstance(data.get("entries"),
                                                                                             dict):
            raise ValueError(f"not an arena calibration cache (no \"format\": \"{CACHE_FORMAT}\")")
        return data["entries"], True
    except (OSError, ValueError) as exc:
        try:
            stamp = path.stat().st_mtime
        except OSError:
            stamp = 0.0
        if (str(path), stamp) not in _warned:
            _warned.add((str(path), stamp))
            log.warning("ignoring the calibration cache %s (%s); remove it to cache measured choices again", path,
                        exc)
        return {}, False


def write_entry(path: Path, key: CalibrationKey, entry: dict[str, Any], model_folder: Path) -> bool:
    """Add ``entry`` under ``key`` (atomically, re-reading the file first so concurrent runs keep each other's
    entries); warn and return False where the cache cannot or must not be written."""
    from arena.io import atomic_write_text

    if Path(model_folder).resolve() in path.resolve().parents:
        log.warning("not caching the calibration in %s: it is inside the model folder %s (set ARENA_CACHE_DIR "
                    "elsewhere)", path, model_folder)
        return False
    entries, writable = read_cache(path)
    if not writable:
        return False
    entries = {**entries, key.digest: {"key": asdict(key), **entry}}
    newest = sorted(entries, key=lambda k: str(entries[k].get("measured_at", "")), reverse=True)[:CACHE_KEEP]
    try:
        atomic_write_text(path, json.dumps({"format": CACHE_FORMAT, "entries": {k: entries[k] for k in newest}},
                                           indent=1, sort_keys=True))
    except OSError as exc:
        log.warning("could not write the calibration cache %s (%s); the choice will be measured again next time",
                    path, exc)
        return False
    return True


def decide(measured: Mapping[str, float], order: Sequence[str]) -> str:
    """The fastest variant by measured rows/s; a tie goes to the one earlier in the declared ``order``."""
    if not measured:
        raise ValueError("nothing was measured")
    rank = {name: i for i, name in enumerate(order)}
    return max(measured, key=lambda name: (measured[name], -rank.get(name, len(rank))))


def pick_batches(widths: Sequence[int], timed: int) -> list[int]:
    """Indices into a plan of batches of padded ``widths``: the widest first (the warm-up: it allocates the largest
    buffers, as the run's first length-sorted batch does), then ``timed`` batches evenly spread over the plan in
    length order, so short and long batches are both timed (a plan shorter than that repeats batches)."""
    if not widths:
        return []
    order = sorted(range(len(widths)), key=lambda i: -widths[i])
    n = len(order)
    return [order[0]] + [order[min(n - 1, int((k + 0.5) * n / timed))] for k in range(timed)]


def measure(runners: Mapping[str, Backend], encoder: Any, request: CalibrationRequest,
            model_type: str | None = None) -> dict[str, float]:
    """Rows/s of each runner on batches of ``request.records`` planned by its own executor (the run's settings):
    one warm-up batch each, then interleaved rounds until ``request.timed_batches`` or the time budget. Empty when
    there are no rows."""
    encoded = encoder.encode(list(request.records))
    batches: dict[str, list[PaddedBatch]] = {}
    for name, runner in runners.items():
        executor = BatchExecutor(runner, pad_id=encoder.pad_id, max_length=encoder.config.max_length,
                                 policy=request.policy, batch_size=request.batch_size,
                                 max_tokens=request.max_tokens, model_type=model_type)
        plan, length = executor.plan(encoded.lengths)
        widths = [length or max(int(encoded.lengths[i]) for i in rows) for rows in plan]
        picks = pick_batches(widths, request.timed_batches)
        batches[name] = executor.prepare(encoded, [plan[i] for i in picks], length).batches if picks else []
    if not all(batches.values()):
        return {}
    rows, seconds = dict.fromkeys(runners, 0), dict.fromkeys(runners, 0.0)
    start = _clock()
    for name, runner in runners.items():
        batches[name][0].run(runner)
    for k in range(1, request.timed_batches + 1):
        if k > 1 and _clock() - start > request.budget_s:
            break
        for name, runner in runners.items():
            t0 = _clock()
            batches[name][k].run(runner)
            seconds[name] += _clock() - t0
            rows[name] += len(batches[name][k].rows)
    return {name: rows[name] / max(seconds[name], 1e-9) for name in runners}


def calibrated_choice(folder: Any, choice: Choice, encoder: Any, options: OpenOptions, request: CalibrationRequest,
                      model_type: str | None = None) -> tuple[Choice, Backend | None]:
    """``choice`` (from :func:`~arena.serving.choice.choose_variant`) settled by a measurement on this machine:
    cached, measured now, or the declared order with the reason in :attr:`Choice.calibration`. Returns the choice
    and, when a measurement opened it, the chosen variant's backend (None: open it as usual)."""
    from arena.machine.cpu import cpu_kind

    candidates, kind = list(choice.candidates), cpu_kind()
    why = _static_reason(folder, choice, request)
    if why:
        return replace(choice, calibration=Calibration(STATIC, choice.variant.name, cpu=kind, why=why)), None
    key, path = calibration_key(folder, candidates, options.threads), cache_file()
    by_name = {v.name: v for v in candidates}
    record = _cached(read_cache(path)[0].get(key.digest), by_name, kind)
    if record is not None:
        return _settled(choice, by_name[record.chosen], record, path), None
    if not request.measure:
        why = "--no-calibrate and nothing measured for this export on this CPU yet: the declared order"
        return replace(choice, reason=f"{choice.reason}; {why}",
                       calibration=Calibration(STATIC, choice.variant.name, cpu=kind, why=why)), None
    t0 = time.perf_counter()
    runners = _open_candidates(folder, candidates, options)
    measured = measure(runners, encoder, request, model_type) if len(runners) > 1 else {}
    seconds = time.perf_counter() - t0
    if not measured:  # the others failed to open (warned): the first that did runs
        chosen = next(iter(runners))
        why = f"only {chosen} opened: nothing to compare" if len(runners) == 1 else "no batch to time"
        variant = by_name[chosen]
        return replace(choice, backend=variant.backend, reason=f"{choice.reason}; {why}",
                       options={"precision": variant.precision}, variant=variant,
                       calibration=Calibration(STATIC, chosen, seconds=seconds, cpu=kind, why=why)), runners[chosen]
    chosen = decide(measured, [v.name for v in candidates])
    write_entry(path, key, {"chosen": chosen, "measured": measured, "seconds": seconds, "model": str(folder.path),
                            "measured_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")}, folder.path)
    record = Calibration(MEASURED, chosen, measured, seconds, kind)
    return _settled(choice, by_name[chosen], record, path), runners[chosen]


def _cached(entry: Any, by_name: Mapping[str, Variant], cpu: str) -> Calibration | None:
    """The cached measurement in ``entry``, or None when there is none that names one of the candidates."""
    if not isinstance(entry, dict) or entry.get("chosen") not in by_name:
        return None
    try:
        measured = {str(k): float(v) for k, v in dict(entry.get("measured") or {}).items()}
    except (TypeError, ValueError):
        return None
    return Calibration(CACHED, entry["chosen"], measured, cpu=cpu)


def _static_reason(folder: Any, choice: Choice, request: CalibrationRequest) -> str:
    """Why this choice is not measured (empty: it may be)."""
    if not choice.candidates:
        return "the declared GPU order" if choice.variant.device == "cuda" else "--backend names the backend"
    if len(choice.candidates) == 1:
        return "one checked variant: nothing to compare"
    if folder.manifest is None:
        return "not an arena export (no manifest to key a measurement on): the declared order"
    if not request.records:
        return "no rows to time: the declared order"
    return ""


def _open_candidates(folder: Any, candidates: Sequence[Variant], options: OpenOptions) -> dict[str, Backend]:
    """Every candidate opened, in the declared order; one that fails to open is left out with a warning (the error
    is raised when none opens)."""
    runners, first_error = {}, None
    for v in candidates:
        try:
            runners[v.name] = spec(v.backend).open(folder, v, options)
        except ArenaError as exc:
            first_error = first_error or exc
            log.warning("not timing %s: %s", v.name, exc)
    if not runners:
        raise first_error
    return runners


def _settled(choice: Choice, variant: Variant, record: Calibration, path: Path) -> Choice:
    """``choice`` turned to the measured ``variant``, saying what was measured and where it is kept."""
    speeds = ", ".join(f"{name} {rate:.1f} rows/s" for name, rate in
                       sorted(record.measured.items(), key=lambda item: -item[1]))
    how = (f"measured here in {record.seconds:.1f} s" if record.source == MEASURED
           else "measured earlier on this CPU") + f", kept in {path}"
    reason = (f"{variant.backend} {variant.precision} is the fastest checked CPU option of this export on "
              f"{record.cpu} ({speeds}; {how})")
    return replace(choice, backend=variant.backend, reason=reason, options={"precision": variant.precision},
                   variant=variant, calibration=record)
