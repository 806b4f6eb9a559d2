"""``--backend auto`` on a CPU settled by a measurement on this machine (:mod:`arena.serving.calibration`): the key
says when a measurement holds, the cache is read before anything is timed, timings decide, ``--no-calibrate``,
a named backend and a GPU never time anything. A registered toy backend whose calls advance an injected clock
stands in for the runtimes in the unit tests; the end-to-end test times the tiny export's real ONNX Runtime (and
OpenVINO, where installed) variants."""

from __future__ import annotations

import json
import logging
import sys
import types

import numpy as np
import pytest
from typer.testing import CliRunner

import arena.serving.calibration as calibration
from arena.encode import ArenaEncoder, EncoderConfig
from arena.serving.backends import register, unregister
from arena.serving.backends.contract import BackendSpec, Limits, OpenOptions, Variant
from arena.serving.calibration import (
    CACHE_FILE,
    CalibrationRequest,
    calibrated_choice,
    calibration_key,
    decide,
    pick_batches,
)
from arena.serving.choice import choose_variant
from arena.serving.folder import EXPORT, ModelFolder
from tests.conftest import TEST_CSV

RUNTIME = "arena_test_clocked_runtime"


class Clock:
    """The injected timer: only the toy backends move it, by their declared cost per row."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class ClockedBackend:
    device = "cpu"
    needs_features = False
    limits = Limits(max_length=512)

    def __init__(self, name: str, seconds_per_row: float, clock: Clock, calls: list[str]) -> None:
        self.name, self.seconds_per_row, self.clock, self.calls = name, seconds_per_row, clock, calls

    @property
    def description(self) -> str:
        return f"{self.name} (cpu)"

    def __call__(self, input_ids, attention_mask, features=None):
        self.clock.now += self.seconds_per_row * len(input_ids)
        self.calls.append(self.name)
        return np.zeros((len(input_ids), 3), dtype=np.float32)


@pytest.fixture
def clocked(monkeypatch, tmp_path):
    """A toy backend with two checked CPU variants (fp32 declared faster, int8 measured faster) and a GPU one;
    its runtime module, the clock and the cache folder are the test's own."""
    clock, calls, opened = Clock(), [], []

    def variants(folder, devices=("auto",)):
        if "clocked" not in (folder.manifest or {}):
            return []
        return [Variant("clocked", "fp32", "cpu", "a", speed=2.0), Variant("clocked", "int8", "cpu", "b", speed=1.0),
                Variant("clocked", "fp16", "cuda", "c", speed=5.0)]

    def open_variant(folder, variant, options):
        opened.append(variant.name)
        return ClockedBackend(variant.name, folder.manifest["clocked"][variant.precision], clock, calls)

    register(BackendSpec(name="clocked", precisions=("fp32", "int8", "fp16"), devices=("cpu", "cuda"),
                         reads="export", variants=variants, open=open_variant, runtime=RUNTIME))
    monkeypatch.setitem(sys.modules, RUNTIME, types.SimpleNamespace(__version__="1.0"))
    monkeypatch.setattr(calibration, "_clock", clock)
    monkeypatch.setattr("arena.serving.choice.gpu_present", lambda: False)
    monkeypatch.setenv("ARENA_CACHE_DIR", str(tmp_path / "cache"))
    folder = tmp_path / "export"
    folder.mkdir()
    export = ModelFolder(folder, EXPORT, {"clocked": {"fp32": 0.3, "int8": 0.1, "fp16": 0.01}, "files": {}})
    yield types.SimpleNamespace(folder=export, clock=clock, calls=calls, opened=opened,
                                cache=tmp_path / "cache" / CACHE_FILE)
    unregister("clocked")


@pytest.fixture(scope="module")
def encoder(tokenizer):
    return ArenaEncoder(tokenizer, EncoderConfig(max_length=64))


@pytest.fixture(scope="module")
def request_rows(train_records):
    return CalibrationRequest(tuple(train_records[:40]), max_tokens=128)  # 2 rows of 64 tokens per batch


def _no_measuring(*args, **kwargs):
    raise AssertionError("measured although it must not")


def test_the_key_changes_when_any_component_changes(clocked, monkeypatch):
    import arena.machine.cpu

    folder = clocked.folder
    candidates = choose_variant(folder).candidates
    base = calibration_key(folder, candidates, 4)
    assert base == calibration_key(folder, candidates, 4)  # stable for the same machine and export
    assert dict(base.runtimes) == {RUNTIME: "1.0"} and base.threads == 4
    other_export = ModelFolder(folder.path, EXPORT, {**folder.manifest, "files": {"model.onnx": "0" * 64}})
    changed = [calibration_key(folder, candidates, 8), calibration_key(other_export, candidates, 4),
               calibration_key(folder, candidates[:1], 4)]
    monkeypatch.setitem(sys.modules, RUNTIME, types.SimpleNamespace(__version__="1.1"))
    changed.append(calibration_key(folder, candidates, 4))
    monkeypatch.setitem(sys.modules, RUNTIME, types.SimpleNamespace(__version__="1.0"))
    monkeypatch.setattr(arena.machine.cpu, "cpu_kind", lambda *a: "Intel Xeon 8480+ [avx2 avx512f amx_tile]")
    changed.append(calibration_key(folder, candidates, 4))
    digests = [base.digest] + [k.digest for k in changed]
    assert len(set(digests)) == len(digests), "a changed component kept the same key"
    monkeypatch.setattr(arena.machine.cpu, "allowed_cores", lambda: 6)
    assert calibration_key(folder, candidates, None).threads == 6  # no --threads: the cores this process may use


def test_injected_timings_pick_the_fastest_interleaved_and_cache_it(clocked, encoder, request_rows):
    choice = choose_variant(clocked.folder)
    assert choice.variant.name == "clocked fp32" and [v.name for v in choice.candidates] == \
        ["clocked fp32", "clocked int8"]  # the declared order; the GPU variant is no CPU candidate
    settled, runner = calibrated_choice(clocked.folder, choice, encoder, OpenOptions(), request_rows)
    record = settled.calibration
    assert (record.source, record.chosen, settled.options) == ("measured", "clocked int8", {"precision": "int8"})
    assert record.measured == pytest.approx({"clocked fp32": 1 / 0.3, "clocked int8": 1 / 0.1})  # rows/s
    assert runner.name == "clocked int8" and settled.variant.precision == "int8"  # the timed backend is reused
    assert "clocked int8 10.0 rows/s" in settled.reason and str(clocked.cache) in settled.reason
    assert clocked.calls == ["clocked fp32", "clocked int8"] * 4  # one warm-up each, then 3 interleaved rounds
    entry = next(iter(json.loads(clocked.cache.read_text())["entries"].values()))
    assert entry["chosen"] == "clocked int8" and entry["key"]["export"] and entry["model"] == str(clocked.folder.path)
    assert not list(clocked.folder.path.iterdir())  # nothing written into the model folder


def test_the_time_budget_stops_after_a_round(clocked, encoder, request_rows):
    from dataclasses import replace

    settled, _ = calibrated_choice(clocked.folder, choose_variant(clocked.folder), encoder, OpenOptions(),
                                   replace(request_rows, budget_s=1.0))  # warm-up + one round: 1.6 s of clock
    assert clocked.calls == ["clocked fp32", "clocked int8"] * 2 and settled.calibration.chosen == "clocked int8"


def test_a_cache_hit_does_not_measure(clocked, encoder, request_rows, monkeypatch):
    calibrated_choice(clocked.folder, choose_variant(clocked.folder), encoder, OpenOptions(), request_rows)
    opened = len(clocked.opened)
    monkeypatch.setattr(calibration, "measure", _no_measuring)
    settled, runner = calibrated_choice(clocked.folder, choose_variant(clocked.folder), encoder, OpenOptions(),
                                        request_rows)
    assert runner is None and len(clocked.opened) == opened  # nothing opened: the caller opens the cached choice
    assert (settled.calibration.source, settled.variant.name) == ("cache", "clocked int8")
    assert settled.calibration.seconds == 0 and settled.calibration.measured["clocked int8"] == pytest.approx(10)


def test_a_corrupt_cache_is_ignored_with_one_warning_and_left_alone(clocked, encoder, request_rows, caplog):
    clocked.cache.parent.mkdir(parents=True)
    clocked.cache.write_text('{"entries": ')
    with caplog.at_level(logging.WARNING, logger="arena.serving.calibration"):
        for _ in range(2):
            settled, _ = calibrated_choice(clocked.folder, choose_variant(clocked.folder), encoder, OpenOptions(),
                                           request_rows)
            assert settled.calibration.source == "measured" and settled.calibration.chosen == "clocked int8"
    warnings = [r for r in caplog.records if "ignoring the calibration cache" in r.getMessage()]
    assert len(warnings) == 1 and str(clocked.cache) in warnings[0].getMessage()
    assert clocked.cache.read_text() == '{"entries": '  # not arena's file as far as it can tell: not overwritten


def test_an_unwritable_cache_folder_only_warns(clocked, encoder, request_rows, monkeypatch, tmp_path, caplog):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would be")
    monkeypatch.setenv("ARENA_CACHE_DIR", str(blocker / "cache"))
    with caplog.at_level(logging.WARNING, logger="arena.serving.calibration"):
        settled, runner = calibrated_choice(clocked.folder, choose_variant(clocked.folder), encoder, OpenOptions(),
                                            request_rows)
    assert settled.calibration.chosen == "clocked int8" and runner is not None
    assert any("could not write the calibration cache" in r.getMessage() for r in caplog.records)


def test_no_calibrate_never_measures_and_falls_back_to_the_declared_order(clocked, encoder, request_rows,
                                                                         monkeypatch):
    from dataclasses import replace

    real_measure = calibration.measure
    monkeypatch.setattr(calibration, "measure", _no_measuring)
    asked = replace(request_rows, measure=False)
    settled, runner = calibrated_choice(clocked.folder, choose_variant(clocked.folder), encoder, OpenOptions(), asked)
    assert runner is None and not clocked.opened and not clocked.cache.exists()
    assert (settled.variant.name, settled.calibration.source) == ("clocked fp32", "static")
    assert "--no-calibrate" in settled.calibration.why and "--no-calibrate" in settled.reason
    monkeypatch.setattr(calibration, "measure", real_measure)  # a calibrated run caches a choice ...
    calibrated_choice(clocked.folder, choose_variant(clocked.folder), encoder, OpenOptions(), request_rows)
    monkeypatch.setattr(calibration, "measure", _no_measuring)  # ... which --no-calibrate then uses
    settled, _ = calibrated_choice(clocked.folder, choose_variant(clocked.folder), encoder, OpenOptions(), asked)
    assert (settled.variant.name, settled.calibration.source) == ("clocked int8", "cache")


def test_a_named_backend_and_a_gpu_never_measure(clocked, encoder, request_rows, monkeypatch):
    monkeypatch.setattr(calibration, "measure", _no_measuring)
    named = choose_variant(clocked.folder, "clocked")
    settled, runner = calibrated_choice(clocked.folder, named, encoder, OpenOptions(), request_rows)
    assert runner is None and settled.variant.name == "clocked fp32" and "names the backend" in \
        settled.calibration.why
    monkeypatch.setattr("arena.serving.choice.gpu_present", lambda: True)
    gpu = choose_variant(clocked.folder)
    assert gpu.variant.device == "cuda" and not gpu.candidates
    settled, runner = calibrated_choice(clocked.folder, gpu, encoder, OpenOptions(), request_rows)
    assert runner is None and settled.variant.name == "clocked fp16 cuda" and "GPU" in settled.calibration.why
    assert not clocked.opened and not clocked.cache.exists()


def test_decision_and_batch_picks_are_pure():
    assert decide({"a": 10.0, "b": 12.5, "c": 3.0}, ["a", "b", "c"]) == "b"
    assert decide({"a": 10.0, "b": 10.0}, ["b", "a"]) == "b"  # a tie keeps the declared order
    widths = [512, 512, 480, 400, 256, 128, 96, 64, 32]  # a length-sorted plan, longest first
    picks = pick_batches(widths, 3)
    assert picks[0] == 0 and len(picks) == 4
    timed = [widths[i] for i in picks[1:]]
    assert max(timed) >= 480 and min(timed) <= 96 and 128 <= sorted(timed)[1] <= 400  # long, middle, short
    assert pick_batches([64], 3) == [0, 0, 0, 0] and pick_batches([], 3) == []


def test_arena_infer_calibrates_once_then_reads_the_cache(tmp_path, tiny_export, monkeypatch):
    """The tiny export's checked CPU variants (ONNX Runtime fp32 and int8, OpenVINO where installed) are timed
    on the test file's rows; the summary says so, the cache is written outside the export, a second run reads it,
    and --no-calibrate with an empty cache runs the declared order without timing anything."""
    from arena.infer.cli import app, run_infer
    from arena.serving.folder import read_folder

    monkeypatch.setenv("ARENA_CACHE_DIR", str(tmp_path / "cache"))
    files = sorted(p.name for p in tiny_export.iterdir())
    first = run_infer(TEST_CSV, tiny_export, tmp_path / "a.csv")
    record = first["calibration"]["members"][0]
    checked = {v.name for v in read_folder(tiny_export).variants() if v.device == "cpu" and v.usable and v.checked}
    assert record["source"] == "measured" and set(record["measured"]) == checked and len(checked) >= 2
    assert all(rate > 0 for rate in record["measured"].values()) and record["chosen"] in checked
    assert record["chosen"] == max(record["measured"], key=record["measured"].get)
    assert first["backend"].startswith(record["chosen"].split()[0]) and first["calibration"]["cpu"]
    assert first["wall_s"] >= first["calibration"]["seconds"] > 0  # the measurement is part of the wall time
    assert (tmp_path / "cache" / CACHE_FILE).is_file() and sorted(p.name for p in tiny_export.iterdir()) == files
    second = run_infer(TEST_CSV, tiny_export, tmp_path / "b.csv")
    again = second["calibration"]["members"][0]
    assert (again["source"], again["chosen"], again["seconds"]) == ("cache", record["chosen"], 0)
    assert again["measured"] == record["measured"] and second["backend"] == first["backend"]

    monkeypatch.setenv("ARENA_CACHE_DIR", str(tmp_path / "empty"))
    monkeypatch.setattr(calibration, "measure", _no_measuring)
    result = CliRunner().invoke(app, [str(TEST_CSV), "--model", str(tiny_export), "--out", str(tmp_path / "c.csv"),
                                      "--no-calibrate"])
    assert result.exit_code == 0, result.output
    static = json.loads(result.output.strip().splitlines()[-1])["calibration"]["members"][0]
    declared = choose_variant(read_folder(tiny_export)).variant.name
    assert (static["source"], static["chosen"], static["measured"]) == ("static", declared, {})
    assert not (tmp_path / "empty" / CACHE_FILE).exists()


def test_arena_pack_passes_no_calibrate_to_the_notebook():
    from arena.pack.cli import infer_options
    from arena.pack.notebook import render_script

    common = dict(backend="auto", precision="auto", tta="none", devices=None, weights=None, combine="probs",
                  rules=None, max_tokens=None, time_limit=None, time_limit_action="error")
    assert "--no-calibrate" not in infer_options(1, **common)  # the notebook calibrates by default
    options = infer_options(1, **common, calibrate=False)
    assert "--no-calibrate" in options and '"--no-calibrate"' in render_script(options)
