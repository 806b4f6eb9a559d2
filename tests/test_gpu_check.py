"""``benchmarks/gpu_check.sh``, dry run on the CPU: a fake ``nvidia-smi`` on PATH, every step at tiny sizes through
the script's knobs. The device check is run once, when a GPU is lent, and must come back complete the first time:
a broken path, a missing flag or file, a dropped PYTHONPATH or a model written where results go fails here first.
(The GPU-marked tests skip here, and the compiled cells are left out: torch.compile on these 2 cores takes minutes.)"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

import pytest
from benchmarks.gpu_bench_merge import cell_folder, merge

from tests.conftest import ROOT, SHARED, TRAIN_CSV, write_tiny_config

FAKE_SMI = """#!/bin/sh
echo "NVIDIA H100 80GB HBM3 (fake), 81559 MiB, 570.00, 9.0"
"""
CELLS = "torch:fp32/notebook,torch:fp32/sorted"
STEPS = ["wheels", "gpu-tests", "scoring", "training", "attention"]
SITECUSTOMIZE = """import atexit, os, sys
atexit.register(lambda: open(os.environ["DRY_RUN_PYTHONS"], "a").write(" ".join(sys.argv) + "\\n"))
"""
"""Loaded by every Python the scripts start, if they keep the caller's PYTHONPATH (where carried wheels go)."""


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """Run the whole script once: (exit status, $OUT, the Python command lines it ran, its output)."""
    if not TRAIN_CSV.is_file():
        pytest.fail(f"the real sample is missing at {TRAIN_CSV}")
    tmp = tmp_path_factory.mktemp("gpu-check")
    (tmp / "bin").mkdir()
    smi = tmp / "bin" / "nvidia-smi"
    smi.write_text(FAKE_SMI)
    smi.chmod(0o755)
    (tmp / "site").mkdir()
    (tmp / "site" / "sitecustomize.py").write_text(SITECUSTOMIZE)
    out = tmp / "out"
    env = {**os.environ, "PATH": f"{tmp / 'bin'}:{os.environ['PATH']}", "PY": sys.executable,
           "PYTHONPATH": str(tmp / "site"), "DRY_RUN_PYTHONS": str(tmp / "pythons.txt"),
           "OUT": str(out), "WORK": str(tmp / "work"), "ARENA_SHARED": str(SHARED),
           "WHEELS": str(tmp / "wheels"), "SITE": str(tmp / "site-wheels"),
           "TEST_FILES": "tests/test_devices.py", "INFER_ROWS": "8", "INFER_CELLS": CELLS, "ENCODE_WORKERS": "0",
           "SCORING_CONFIG": str(write_tiny_config(tmp / "config")), "MAX_LENGTH": "64", "BATCH_SIZE": "4",
           "TRAIN_ROWS": "16", "TRAIN_STEPS": "2", "TRAIN_COMPILE": "0",
           "ATTENTION_ROWS": "12", "ATTENTION_LENGTHS": "96,384", "ATTENTION_DEVICE": "cpu",
           "ATTENTION_PRECISION": "fp32",
           # caps far above the work: this machine may be shared; the device's caps are checked from the script
           **{cap: "600" for cap in ("CAP_TESTS", "CAP_SCORING", "CAP_TRAINING", "CAP_ATTENTION")}, "CELL_CAP": "300",
           "TRAIN_RUN_CAP": "300"}
    proc = subprocess.Popen(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], cwd=tmp, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:  # about a minute on an idle 2-core machine; the limit is for a machine shared with other test runs
        log, _ = proc.communicate(timeout=1200)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the script and every Python it started
        log, _ = proc.communicate()
        pytest.fail(f"the dry run took over 20 minutes:\n{log[-3000:]}")
    pythons = (tmp / "pythons.txt").read_text() if (tmp / "pythons.txt").is_file() else ""
    return proc.returncode, out, pythons, log


def test_every_step_runs_and_succeeds(dry_run):
    rc, out, _, log = dry_run
    assert rc == 0, log[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    assert [s["step"] for s in summary] == STEPS
    for s in summary:
        assert s["exit"] == 0 and 0 <= s["seconds"] <= s["cap"], s


def test_the_default_caps_end_the_device_run_inside_the_device_calls_10_minutes():
    """Environment probe + the five steps' caps (each step is killed 10 s after its cap at most), with 40 s to
    spare inside one device call (600 s at most); the scoring cells and training runs fit inside their step's cap."""
    script = (ROOT / "benchmarks" / "gpu_check.sh").read_text()

    def default(name: str) -> int:
        found = re.findall(rf"\$\{{{name}:-(\d+)\}}", script)
        assert len(set(found)) == 1, (name, found)
        return int(found[0])

    env_probe, wheels = int(re.search(r"timeout (\d+) bash -c environment", script)[1]), \
        int(re.search(r"step wheels (\d+)", script)[1])
    steps = [wheels, default("CAP_TESTS"), default("CAP_SCORING"), default("CAP_TRAINING"), default("CAP_ATTENTION")]
    assert env_probe + sum(steps) + 10 * len(steps) <= 10 * 60 - 40
    assert int(re.search(r"timeout_s (\d+)", script)[1]) >= env_probe + sum(steps) + 10 * len(steps)
    assert default("CAP_TRAINING") - default("TRAIN_RUN_CAP") - 5 >= 60  # the compiled run: ~40-60 s compiling
    assert 3 * default("CELL_CAP") <= default("CAP_SCORING") + 60  # a cut cell leaves time for the others


def test_every_result_comes_back_and_nothing_else(dry_run):
    """At most 8 files, none large, none deeper than 2 folders (the device tool's limits); no model in $OUT."""
    _, out, _, log = dry_run
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == ["attention.txt", "bench.html", "bench.json", "bench.md", "gpu_check.log", "gpu_tests.txt",
                     "summary.json", "train.txt"], files
    assert all((out / f).stat().st_size < 1_000_000 for f in files)
    assert "NVIDIA H100 80GB HBM3 (fake)" in (out / "gpu_check.log").read_text()  # the environment, first
    assert "skipped" in (out / "gpu_tests.txt").read_text()  # the GPU tests were collected (and skip here)
    assert "=== training: exit 0" in (out / "gpu_check.log").read_text()


def test_scoring_measured_every_cell_on_real_rows(dry_run):
    _, out, _, _ = dry_run
    bench = json.loads((out / "bench.json").read_text())
    assert [c["name"] for c in bench["cells"]] == CELLS.split(",") and not bench["skipped"]
    assert bench["rows"] == 8 and bench["max_length"] == 64 and bench["baseline"] == "torch:fp32/notebook"
    assert all(c["rows"] == 8 and c["rows_per_s"] > 0 for c in bench["cells"])
    assert bench["cells"][0]["speedup"] == 1.0
    assert "torch:fp32/sorted" in (out / "bench.md").read_text()


def test_training_measured_both_modes(dry_run):
    _, out, _, _ = dry_run
    lines = [json.loads(line) for line in (out / "train.txt").read_text().splitlines() if line.startswith("{")]
    assert lines, (out / "train.txt").read_text()
    modes = {r["mode"] for line in lines for r in line["results"]}
    assert modes == {"padded", "grouped"}


def test_attention_measured_every_cell_with_parity_against_eager(dry_run):
    """eager, flash and flash + packed at both lengths on real rows (disentangled-flash's PyTorch path here), or one
    line saying the package was not there."""
    _, out, _, _ = dry_run
    lines = (out / "attention.txt").read_text().splitlines()
    result = json.loads(lines[-1])
    if "skipped" in result and not result.get("cells"):
        pytest.skip(f"disentangled-flash is not installed here: {result['skipped']}")
    cells = {(c["cell"], c["max_length"]): c for c in result["cells"]}
    assert sorted(cells) == sorted((c, n) for c in ("eager", "flash", "flash+packed") for n in (96, 384))
    assert not result["skipped"] and result["rows"] == 12
    for (name, _), c in cells.items():
        assert c["rows"] == 12 and c["rows_per_s"] > 0 and c["eager_logit_spread"] > 0.1
        assert c["max_abs_logit_diff"] <= 1e-3 * c["eager_logit_spread"], c
        assert c["attention"].startswith("eager" if name == "eager" else "flash (PyTorch path)"), c
        assert c["padding_efficiency"] == 1.0 if name == "flash+packed" else c["padding_efficiency"] <= 1.0, c
    assert cells[("flash", 384)]["padding_efficiency"] < 1.0  # real rows at 384 tokens: padded batches pad


def test_the_callers_pythonpath_reaches_every_python(dry_run):
    """Carried wheels install into a folder put on PYTHONPATH; the scripts once reset it and lost them."""
    _, _, pythons, _ = dry_run
    # sys.argv[0] of `python -m module` is the module's file
    for script in ("pytest", "arena/train/cli.py", "arena/bench/cli.py", "arena/bench/train_speed.py",
                   "benchmarks/gpu_bench_merge.py", "benchmarks/gpu_attention.py"):
        assert script in pythons, pythons


def test_a_cell_that_did_not_finish_is_listed_and_the_others_kept(dry_run, tmp_path):
    """What the check returns when the scoring step is cut after its first cell."""
    _, out, _, _ = dry_run
    cells = tmp_path / "cells"
    first = CELLS.split(",")[0]
    cell_folder(cells, first).mkdir(parents=True)
    one = json.loads((out / "bench.json").read_text())
    one["cells"] = one["cells"][:1]
    (cell_folder(cells, first) / "bench.json").write_text(json.dumps(one))
    final = merge(cells, tmp_path / "out", [*CELLS.split(","), "torch.compile:fp16/sorted"], "cut")
    assert list(final["cells"]) == [first] and final["missing"] == ["torch:fp32/sorted", "torch.compile:fp16/sorted"]
    assert "torch.compile:fp16/sorted: no result" in (tmp_path / "out" / "bench.md").read_text()
