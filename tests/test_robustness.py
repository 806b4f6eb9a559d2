"""Hostile inputs, interrupted runs and untrusted model folders (issue 7)."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from arena.data import read_records, read_test
from arena.encode import ArenaEncoder, EncoderConfig
from arena.errors import DataError, ModelError
from tests.conftest import ROOT, TOKENIZER, TRAIN_CSV

ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}

UNICODE = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=300)
ALMOST_JSON = st.one_of(
    UNICODE,
    st.lists(st.one_of(UNICODE, st.none(), st.integers(), st.floats(allow_nan=False), st.lists(UNICODE, max_size=2)),
             max_size=4).map(json.dumps),
    st.lists(UNICODE, max_size=3).map(lambda xs: json.dumps(xs)[:-1]),  # unterminated
    st.lists(UNICODE, max_size=3).map(lambda xs: repr(xs)),  # Python literal
    st.just('["\\ud800 lone surrogate", null]'),
    st.just("[" * 5000),  # deep nesting
    st.just(""),
)


def test_fuzz_reader_never_crashes_and_never_drops_rows(tmp_path_factory):
    cases = 0

    @given(st.lists(st.tuples(ALMOST_JSON, ALMOST_JSON, ALMOST_JSON), min_size=0, max_size=6),
           st.sampled_from(["\n", "\r\n"]))
    @settings(max_examples=300, deadline=None)
    def check(rows, newline):
        nonlocal cases
        path = tmp_path_factory.mktemp("fuzz") / "test.csv"
        with open(path, "w", encoding="utf-8", newline="") as fh:
            w = csv.writer(fh, lineterminator=newline, quoting=csv.QUOTE_ALL)  # a bare \r must be quoted
            w.writerow(["id", "prompt", "response_a", "response_b"])
            for i, (p, a, b) in enumerate(rows):
                w.writerow([i, p, a, b])
        cases += 1
        records = read_test(path)  # any DataError would fail the test: every generated row is valid CSV
        assert [r.id for r in records] == [str(i) for i in range(len(rows))]
        for r in records:
            for turns in (r.prompt, r.response_a, r.response_b):
                assert turns and all(isinstance(t, str) for t in turns)
                assert not any("\ud800" <= c <= "\udfff" for t in turns for c in t)

    check()
    print(f"\nfuzz cases run: reader {cases}")
    assert cases >= 100  # hypothesis really generated the cases (not cut short by a health check)


def test_fuzz_encoder_on_whatever_the_parser_returns(tokenizer):
    from arena.data import Record, parse_turns

    cases = 0
    encoder = ArenaEncoder(tokenizer, EncoderConfig(max_length=64))

    @given(st.lists(ALMOST_JSON, min_size=3, max_size=3))
    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    def check(fields):
        nonlocal cases
        rec = Record("x", *(parse_turns(f).turns for f in fields))
        cases += 1
        ids = encoder.encode([rec]).ids[0]
        assert 4 <= len(ids) <= 64

    check()
    print(f"\nfuzz cases run: encoder {cases}")
    assert cases >= 100


def test_one_megabyte_fields(tmp_path, tokenizer):
    big = "word " * 200_000
    path = tmp_path / "big.csv"
    with open(path, "w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "prompt", "response_a", "response_b"])
        w.writerow(["1", json.dumps([big]), json.dumps([big, big]), big])
    (rec,) = read_test(path)
    t0 = time.perf_counter()
    ids = ArenaEncoder(tokenizer, EncoderConfig(max_length=512)).encode([rec]).ids[0]
    assert len(ids) == 512 and time.perf_counter() - t0 < 5  # the pre-cut keeps this fast


def damaged_test_file(path, n=10_000, damage=0.05, seed=0):
    """The real sample repeated to n rows with unique ids, ``damage`` of them damaged in every documented way."""
    frame = pd.read_csv(TRAIN_CSV)[["id", "prompt", "response_a", "response_b"]]
    frame = pd.concat([frame] * (n // len(frame) + 1), ignore_index=True).iloc[:n].copy()
    frame["id"] = np.arange(n) + 10_000_000
    rng = np.random.default_rng(seed)
    kinds = [
        lambda s: s[: len(s) // 2],  # truncated JSON
        lambda s: "not json at all \x00\x07",
        lambda s: json.dumps([None, None]),
        lambda s: "",
        lambda s: json.dumps(["x" * 50_000]),
        lambda s: json.dumps([12345, [1, [2]]]),
        lambda s: json.dumps(["\u202e\u05e9\u05dc\u05d5\u05dd \ud83d\ude00 \x1b[31m"]),
    ]
    damaged = rng.choice(n, size=int(n * damage), replace=False)
    for i in damaged:
        col = rng.choice(["prompt", "response_a", "response_b"])
        frame.at[i, col] = kinds[rng.integers(len(kinds))](str(frame.at[i, col]))
    frame.to_csv(path, index=False)
    return frame["id"].astype(str).tolist()


def test_two_thousand_rows_with_five_percent_damaged_all_scored_across_chunks(tmp_path, tiny_export):
    """Every row scored, in order, with 100 rows damaged (every kind in every column, with seed 0) and read in
    two chunks, a full and a partial one. Nothing here depends on the row count beyond the chunking (this test
    once read 10,000 rows in the default 8,192-row chunks, 5x the time); streaming 10k and 100k rows in bounded
    memory is benchmarks/run_cpu.sh's."""
    from arena.infer.cli import run_infer

    ids = damaged_test_file(tmp_path / "damaged.csv", n=2000)
    out = tmp_path / "sub.csv"
    summary = run_infer(tmp_path / "damaged.csv", tiny_export, out, chunk_rows=1500)
    sub = pd.read_csv(out, dtype={"id": str})
    assert sub["id"].tolist() == ids and summary["rows"] == 2000
    probs = sub.iloc[:, 1:].to_numpy()
    assert np.isfinite(probs).all() and np.allclose(probs.sum(1), 1, atol=1e-6)


def test_structurally_broken_row_stops_at_the_first_bad_row(tmp_path, tiny_export):
    from arena.infer.cli import run_infer

    damaged_test_file(tmp_path / "t.csv", n=300)
    lines = (tmp_path / "t.csv").read_text(encoding="utf-8").split("\n")
    bad = next(i for i, line in enumerate(lines[1:], 2) if line.startswith("10000100,"))
    lines[bad - 1] = "10000100,only-two-fields"
    (tmp_path / "t.csv").write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(DataError, match="id 10000100") as err:
        run_infer(tmp_path / "t.csv", tiny_export, tmp_path / "sub.csv")
    assert f"line {bad}" in str(err.value)
    assert not (tmp_path / "sub.csv").exists()


def _wait_for(predicate, timeout=120):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(tmp_path, tiny_config, request):
    args = ["-m", "arena.train.cli", "--data", str(TRAIN_CSV), "--model", str(tiny_config), "--random-init",
            "--tokenizer", str(TOKENIZER), "--max-rows", "64", "--max-length", "64", "--epochs", "2",
            "--batch-size", "4", "--lr", "1e-3", "--save-steps", "1", "--no-calibrate", "--no-swap-augment"]
    # the uninterrupted run goes beside the interrupted one and its resume: each is one process on one thread
    # (OMP_NUM_THREADS=1), so its weights do not depend on what runs next to it, and the wall time is the longer
    # of the two instead of their sum
    with open(tmp_path / "full.log", "w") as log:
        full = subprocess.Popen([sys.executable, *args, "--output", str(tmp_path / "full")], env=ENV,
                                stdout=log, stderr=subprocess.STDOUT)
    request.addfinalizer(lambda: (full.kill(), full.wait()))  # not left running when an assertion below fails
    cut = tmp_path / "cut"
    proc = subprocess.Popen([sys.executable, *args, "--output", str(cut)], env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)

    def mid_first_epoch():
        state = cut / "state" / "trainer_state.json"
        try:
            return json.loads(state.read_text())["global_step"] >= 4
        except (OSError, ValueError):
            return False

    assert _wait_for(mid_first_epoch), "training never saved a state"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (cut / "train_done.json").exists()
    resumed = subprocess.run([sys.executable, *args, "--output", str(cut), "--resume"], env=ENV,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert full.wait(timeout=300) == 0, (tmp_path / "full.log").read_text()[-2000:]
    a = json.loads((tmp_path / "full" / "train_done.json").read_text())["weights_sha256"]
    b = json.loads((cut / "train_done.json").read_text())["weights_sha256"]
    assert a == b


def test_sigkill_during_inference_leaves_no_submission(tmp_path, tiny_export):
    damaged_test_file(tmp_path / "t.csv", n=6000, damage=0.0)
    out = tmp_path / "submission.csv"
    proc = subprocess.Popen([sys.executable, "-m", "arena.infer.cli", str(tmp_path / "t.csv"), "--model",
                             str(tiny_export), "--out", str(out), "--chunk-rows", "500"], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert _wait_for(lambda: any(tmp_path.glob(".submission.csv.*")), 60), "inference never started writing"
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()


def test_sigkill_during_export_leaves_no_output_folder(tmp_path, tiny_checkpoint):
    out = tmp_path / "export"
    proc = subprocess.Popen([sys.executable, "-m", "arena.export.cli", str(tiny_checkpoint), "--out", str(out),
                             "--int8", "--data", str(TRAIN_CSV)], env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    assert _wait_for(lambda: any(p.name.endswith(".partial") for p in tmp_path.iterdir()), 60)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()


def test_truncated_checkpoint_gives_a_clear_error(tmp_path, tiny_checkpoint):
    import shutil

    from arena.models.modeling import load_classifier

    broken = tmp_path / "broken"
    shutil.copytree(tiny_checkpoint, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 3])
    with pytest.raises(ModelError, match="truncated or corrupt|cannot load"):
        load_classifier(broken)


def test_corrupt_csv_header_bytes(tmp_path):
    path = tmp_path / "x.csv"
    path.write_bytes(b"id,pr\xffompt,response_a,response_b\n")
    with pytest.raises(DataError, match="UTF-8"):
        read_records(path, labelled=False)


@pytest.mark.tensorrt
def test_corrupt_engine_gives_a_clear_error():  # pragma: no cover - needs TensorRT + GPU
    from arena.serving.backends.tensorrt import TensorRTRunner

    with pytest.raises(ModelError, match="could not deserialise"):
        TensorRTRunner(b"garbage" * 100)
