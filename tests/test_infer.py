import csv
import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from arena.data import Record
from arena.errors import ArenaError, BackendUnavailable, DataError
from arena.infer.cli import app, run_infer
from arena.infer.submission import submission_writer
from arena.serving.choice import choose_backend
from tests.conftest import DATA, TEST_CSV, TRAIN_CSV

COLUMNS = ["id", "winner_model_a", "winner_model_b", "winner_tie"]


def check_submission(path, ids):
    frame = pd.read_csv(path, dtype={"id": str})
    assert list(frame.columns) == COLUMNS
    assert frame["id"].tolist() == list(ids)
    probs = frame[COLUMNS[1:]].to_numpy()
    assert np.isfinite(probs).all() and (probs >= 0).all()
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    return probs


def test_real_test_csv_gives_a_valid_submission_matching_sample_submission(tmp_path, tiny_export):
    out = tmp_path / "submission.csv"
    summary = run_infer(TEST_CSV, tiny_export, out)
    sample = pd.read_csv(DATA / "sample_submission.csv", dtype={"id": str})
    check_submission(out, sample["id"].tolist())
    from arena.serving.folder import read_folder

    chosen = summary["calibration"]["members"][0]["chosen"]  # measured on this CPU, or the declared order
    checked = {v.name for v in read_folder(tiny_export).variants() if v.device == "cpu" and v.usable and v.checked}
    assert summary["rows"] == 3 and chosen in checked and summary["backend"].startswith(chosen.split()[0])


def test_backends_agree_and_order_is_restored(tmp_path, tiny_checkpoint, tiny_export):
    """Scoring 200 real rows sorted by length must give the same per-id result as file-order scoring."""
    rows = tmp_path / "test.csv"
    frame = pd.read_csv(TRAIN_CSV).iloc[:200][["id", "prompt", "response_a", "response_b"]]
    frame.to_csv(rows, index=False)
    ids = frame["id"].astype(str).tolist()
    run_infer(rows, tiny_export, tmp_path / "a.csv", backend="onnx", policy="sorted", max_tokens=1024)
    run_infer(rows, tiny_export, tmp_path / "b.csv", backend="onnx", policy="notebook", batch_size=7)
    run_infer(rows, tiny_checkpoint, tmp_path / "c.csv", backend="torch", chunk_rows=64)
    p_sorted = check_submission(tmp_path / "a.csv", ids)
    p_file = check_submission(tmp_path / "b.csv", ids)
    p_torch = check_submission(tmp_path / "c.csv", ids)
    assert np.abs(p_sorted - p_file).max() < 1e-5
    assert np.abs(p_sorted - p_torch).max() < 1e-5


def test_swap_tta_is_symmetric(tmp_path, tiny_export):
    """With TTA, swapping A and B in the input swaps the a/b columns of the output exactly."""
    frame = pd.read_csv(TRAIN_CSV).iloc[:40][["id", "prompt", "response_a", "response_b"]]
    frame.to_csv(tmp_path / "t.csv", index=False)
    swapped = frame.rename(columns={"response_a": "response_b", "response_b": "response_a"})
    swapped[["id", "prompt", "response_a", "response_b"]].to_csv(tmp_path / "s.csv", index=False)
    run_infer(tmp_path / "t.csv", tiny_export, tmp_path / "t_out.csv", tta=True)
    run_infer(tmp_path / "s.csv", tiny_export, tmp_path / "s_out.csv", tta=True)
    ids = frame["id"].astype(str).tolist()
    a, b = check_submission(tmp_path / "t_out.csv", ids), check_submission(tmp_path / "s_out.csv", ids)
    assert np.allclose(a[:, [1, 0, 2]], b, atol=1e-6)


def test_empty_test_file_gives_header_only_submission(tmp_path, tiny_export):
    path = tmp_path / "empty.csv"
    path.write_text("id,prompt,response_a,response_b\n")
    run_infer(path, tiny_export, tmp_path / "sub.csv")
    assert (tmp_path / "sub.csv").read_text() == ",".join(COLUMNS) + "\n"


def test_hostile_but_valid_rows_are_scored_not_dropped(tmp_path, tiny_export):
    rows = [
        ("1", [""], [""], [""]),
        ("2", [None], ["x" * 50_000], ["ok"]),
        ("3", ["ctrl \x00\x01\x1b[31m"], ["\u202eright-to-left \u05e9\u05dc\u05d5\u05dd"], ["\ud83d\ude00 emoji"]),
        ("4", ["a", None, "c"], [None], ["b"]),
    ]
    path = tmp_path / "hostile.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "prompt", "response_a", "response_b"])
        for rid, p, a, b in rows:
            w.writerow([rid, json.dumps(p), json.dumps(a), json.dumps(b)])
    run_infer(path, tiny_export, tmp_path / "sub.csv")
    check_submission(tmp_path / "sub.csv", ["1", "2", "3", "4"])


def test_bad_test_file_stops_with_row_and_column_and_writes_nothing(tmp_path, tiny_export):
    path = tmp_path / "dup.csv"
    path.write_text('id,prompt,response_a,response_b\n1,"[]","[]","[]"\n1,"[]","[]","[]"\n')
    out = tmp_path / "sub.csv"
    with pytest.raises(DataError, match="duplicate id"):
        run_infer(path, tiny_export, out)
    assert not out.exists() and not list(tmp_path.glob(".sub.csv*"))


def test_writer_never_leaves_a_partial_file(tmp_path):
    out = tmp_path / "sub.csv"
    with pytest.raises(RuntimeError), submission_writer(out) as writer:
        writer.write(["1"], np.array([[0.2, 0.3, 0.5]]))
        raise RuntimeError("killed midway")
    assert not out.exists() and not list(tmp_path.iterdir())
    with pytest.raises(ArenaError, match="not a probability"), submission_writer(out) as writer:
        writer.write(["1"], np.array([[np.nan, 0.5, 0.5]]))
    assert not out.exists()


def test_backend_choice_says_why(tiny_checkpoint, tiny_export):

    from arena.serving.folder import read_folder

    c = choose_backend("auto", tiny_export)
    offered = [v for v in read_folder(tiny_export).variants() if v.device == "cpu" and v.usable and v.checked]
    fastest = max(offered, key=lambda v: v.speed)  # which one depends on this CPU (native bf16) and OpenVINO
    assert (c.backend, c.options["precision"]) == (fastest.backend, fastest.precision)
    assert "fastest CPU option" in c.reason
    assert choose_backend("auto", tiny_checkpoint).backend == "torch"
    with pytest.raises(BackendUnavailable, match="arena-export"):
        choose_backend("onnx", tiny_checkpoint)
    with pytest.raises(BackendUnavailable, match="TensorRT"):
        choose_backend("tensorrt", tiny_export)


def test_tampered_artifact_is_refused(tmp_path, tiny_export):
    import shutil

    from arena.errors import ModelError

    copy = tmp_path / "export"
    shutil.copytree(tiny_export, copy)
    data = bytearray((copy / "model.int8.onnx").read_bytes())
    data[-10] ^= 0xFF
    (copy / "model.int8.onnx").write_bytes(bytes(data))
    with pytest.raises(ModelError, match="sha256"):
        run_infer(TEST_CSV, copy, tmp_path / "s.csv", precision="int8")


def test_cli_prints_summary_and_json(tmp_path, tiny_export):
    result = CliRunner().invoke(app, [str(TEST_CSV), "--model", str(tiny_export), "--out",
                                      str(tmp_path / "s.csv"), "--tta", "swap"])
    assert result.exit_code == 0, result.output
    last = json.loads(result.output.strip().splitlines()[-1])
    assert last["rows"] == 3 and last["tta"] is True
    assert "rows/s end to end" in result.output
    bad = CliRunner().invoke(app, [str(TEST_CSV), "--model", str(tmp_path / "missing")])
    assert bad.exit_code == 2 and "does not exist" in bad.output


def test_scorer_encode_workers_give_identical_results(tiny_export):
    from arena.serving.loading import open_model
    from arena.serving.scoring import ScoreConfig, Scorer

    records = [Record(str(i), ("p" * i,), ("a " * (i * 7),), ("b",)) for i in range(30)]
    loaded = open_model(tiny_export)
    one = Scorer(loaded.runner, loaded.encoder, ScoreConfig()).score(records)
    pool = Scorer(loaded.runner, loaded.encoder, ScoreConfig(encode_workers=2), tokenizer_path=tiny_export)
    try:
        two = pool.score(records)
    finally:
        pool.close()
    assert np.array_equal(one, two)


def test_encode_workers_after_torch_has_run_do_not_hang(tmp_path, tiny_checkpoint):
    """Regression: forked encode workers deadlocked once torch and the parallel tokenizer had run in the parent
    (``arena-infer --backend torch --encode-workers 2`` hung); workers are spawned now."""
    import os
    import subprocess
    import sys

    frame = pd.read_csv(TRAIN_CSV).iloc[:40][["id", "prompt", "response_a", "response_b"]]
    frame.to_csv(tmp_path / "t.csv", index=False)
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "true"}
    cmd = [sys.executable, "-m", "arena.infer.cli", str(tmp_path / "t.csv"), "--model", str(tiny_checkpoint),
           "--backend", "torch", "--encode-workers", "2", "--chunk-rows", "16", "--out", str(tmp_path / "w.csv")]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # on a hang, kill the workers too, not only the parent
    try:
        _, err = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.communicate()
        pytest.fail("arena-infer --encode-workers 2 hung (killed after 240 s)")
    assert proc.returncode == 0, err[-2000:]
    run_infer(tmp_path / "t.csv", tiny_checkpoint, tmp_path / "one.csv", backend="torch")
    ids = frame["id"].astype(str).tolist()
    assert np.abs(check_submission(tmp_path / "w.csv", ids) - check_submission(tmp_path / "one.csv", ids)).max() < 1e-6


def test_two_processes_give_the_same_submission(tmp_path, tiny_export, monkeypatch):
    """--devices shards batches over one process per device (2 CPU processes here); output is identical."""
    monkeypatch.setenv("ARENA_CACHE_DIR", str(tmp_path / "cache"))  # nothing measured: --no-calibrate's order
    frame = pd.read_csv(TRAIN_CSV).iloc[:120][["id", "prompt", "response_a", "response_b"]]
    frame.to_csv(tmp_path / "t.csv", index=False)
    # --devices runs the declared order (its workers' thread counts differ from one process's: no measurement of
    # one process holds for them), so the one-process run takes it too: the same variant, the same numbers
    one = run_infer(tmp_path / "t.csv", tiny_export, tmp_path / "one.csv", calibrate=False)
    two = run_infer(tmp_path / "t.csv", tiny_export, tmp_path / "two.csv", devices="cpu,cpu")
    assert two["calibration"]["members"] == []  # --devices is never calibrated
    assert "2 processes" in two["backend"] and one["rows"] == two["rows"] == 120
    ids = frame["id"].astype(str).tolist()
    assert np.allclose(check_submission(tmp_path / "one.csv", ids), check_submission(tmp_path / "two.csv", ids),
                       atol=1e-6)


def test_rules_move_probability_where_documented():
    from arena.serving.rules import apply_rules, parse_rules

    recs = [Record("1", ("p",), ("same",), ("same",)), Record("2", ("p",), ("",), ("answer",)),
            Record("3", ("p",), ("a",), ("b",))]
    probs = np.array([[0.4, 0.4, 0.2], [0.5, 0.3, 0.2], [0.5, 0.3, 0.2]])
    out = apply_rules(probs, recs, parse_rules("identical-tie,empty-loses"))
    assert out[0].tolist() == pytest.approx([0.2, 0.2, 0.6])
    assert out[1].tolist() == pytest.approx([0.25, 0.55, 0.2])
    assert out[2].tolist() == pytest.approx(probs[2].tolist())
    assert np.allclose(out.sum(1), 1) and probs[0, 2] == 0.2  # input unchanged
    with pytest.raises(Exception, match="unknown --rules"):
        parse_rules("bogus")


# ------------------------------------------------------------------------------------ --time-limit projection


def test_time_limit_parses_durations():
    from arena.errors import ConfigError
    from arena.serving.projection import check_time_limit, parse_duration

    assert parse_duration("9h") == 9 * 3600 and parse_duration("1h30m") == 5400
    assert parse_duration("540m") == 32400 and parse_duration("90s") == 90 and parse_duration("3600") == 3600
    assert parse_duration(None) is None
    for bad in ("soon", "9 hours", "0h", "h", "-1h"):
        with pytest.raises(ConfigError, match="--time-limit"):
            parse_duration(bad)
    with pytest.raises(ConfigError, match="--time-limit-action"):
        check_time_limit("9h", "ignore")


def test_projection_cost_model_recovers_per_token_and_per_batch_cost():
    from arena.serving.projection import CostModel, combine_projections

    rng = np.random.default_rng(0)
    tokens = rng.integers(64, 4096, size=40).astype(float)
    seconds = 2e-6 * tokens + 3e-3 + rng.normal(0, 2e-4, size=40)
    model = CostModel.fit(tokens, seconds)
    assert model.per_token == pytest.approx(2e-6, rel=0.05) and model.per_batch == pytest.approx(3e-3, rel=0.1)
    plan = rng.integers(64, 4096, size=2000).astype(float)
    truth = float((2e-6 * plan + 3e-3).sum())
    mean, sd = model.project(plan)
    assert abs(mean - truth) < 3 * sd and sd < 0.05 * mean
    few = CostModel.fit(tokens[:4], seconds[:4])
    assert few.project(plan)[1] > sd  # fewer measured batches: a wider interval
    one = CostModel.fit(tokens[:1], seconds[:1])
    assert one.project(plan)[1] > 0.2 * one.project(plan)[0]  # one batch never looks certain
    total, low, high = combine_projections([(10.0, 1.0), (20.0, 2.0)])
    assert total == 30.0 and low == pytest.approx(30 - 1.96 * 5 ** 0.5) and high > total


def test_projection_sample_is_stratified_by_length():
    from arena.serving.projection import stratified_sample

    lengths = np.random.default_rng(1).integers(10, 2000, size=500)
    pick = stratified_sample(lengths, 50)
    assert len(pick) == 50 and len(set(pick)) == 50 and list(pick) == sorted(pick)
    assert lengths[pick].min() == lengths.min() and lengths[pick].max() == lengths.max()
    assert abs(np.median(lengths[pick]) - np.median(lengths)) < 0.1 * np.median(lengths)
    assert list(stratified_sample(lengths[:7], 50)) == list(range(7))
    taken = np.zeros(len(lengths), dtype=bool)
    taken[pick] = True
    more = stratified_sample(lengths, 50, taken)  # a later round: new rows, between the first round's
    assert len(more) == 50 and not taken[more].any()
    assert abs(np.median(lengths[more]) - np.median(lengths)) < 0.1 * np.median(lengths)
    taken[more] = True
    assert len(stratified_sample(lengths, 1000, taken)) == 400  # the rest, when fewer are left than asked


class _DriftingBackend:
    """Costs 20 us per computed token, and gets four times as slow after a few calls: a machine whose speed moves.
    Sleeps (no busy wait) so its cost model is exact up to the scheduler's overshoot."""

    def __init__(self, slow_after: int):
        self.calls, self.slow_after = 0, slow_after

    def __call__(self, ids, mask, features=None):
        import time

        self.calls += 1
        time.sleep(2e-5 * ids.size * (4 if self.calls > self.slow_after else 1))
        return np.zeros((len(ids), 3), dtype=np.float32)


def test_projection_samples_for_long_enough_and_widens_for_a_drifting_machine(tokenizer, train_records):
    from arena.encode import ArenaEncoder, EncoderConfig
    from arena.serving.projection import MIN_DRIFT, project_scorer
    from arena.serving.scoring import ScoreConfig, Scorer

    records = train_records[:400]
    encoder = ArenaEncoder(tokenizer, EncoderConfig(max_length=256))
    config = ScoreConfig(max_tokens=2048, batch_size=16)
    steady = project_scorer(Scorer(_DriftingBackend(10 ** 9), encoder, config), records, limit_s=None,
                            sample_rows=40, min_sample_s=0.5)
    member = steady.members[0]
    assert 2 <= member["sample_rounds"] < 10 and member["sample_s"] >= 0.5  # rounds until 0.5 s, not every row
    assert steady.sample_rows == 40 * member["sample_rounds"]
    drifting = project_scorer(Scorer(_DriftingBackend(8), encoder, config), records, limit_s=None,
                              sample_rows=40, min_sample_s=0.5)
    assert drifting.members[0]["drift"] > max(3 * member["drift"], 0.2)
    width = lambda p: (p.high_s - p.low_s) / p.projected_s  # noqa: E731
    assert width(drifting) > 2 * width(steady)
    # a steady sample still leaves room for drift it cannot see: at least +-1.96 x MIN_DRIFT of the model's time
    model_s = steady.projected_s - steady.encode_s
    assert steady.high_s - steady.low_s >= 2 * 1.96 * MIN_DRIFT * model_s * 0.999


class _BusyBackend:
    """A backend whose cost is known: 1.5 us per computed token plus 2 ms per batch of wall time (a busy wait on
    the clock: ``time.sleep`` overshoots by whatever the scheduler adds on a busy machine)."""

    def __call__(self, ids, mask, features=None):
        import time

        end = time.perf_counter() + 1.5e-6 * ids.size + 2e-3
        while time.perf_counter() < end:
            pass
        return np.zeros((len(ids), 3), dtype=np.float32)


def test_projection_tracks_the_measured_run_with_tta(tokenizer, train_records):
    from arena.encode import ArenaEncoder, EncoderConfig
    from arena.serving.executor import Timings
    from arena.serving.projection import project_scorer
    from arena.serving.scoring import ScoreConfig, Scorer

    records = train_records[:240]
    scorer = Scorer(_BusyBackend(), ArenaEncoder(tokenizer, EncoderConfig(max_length=256)),
                    ScoreConfig(tta=True, max_tokens=2048, batch_size=16))
    projection = project_scorer(scorer, records, limit_s=3600.0, sample_rows=48, min_sample_s=0.0)
    timings = Timings()
    scorer.score(records, timings)
    model_s = projection.projected_s - projection.encode_s
    assert model_s == pytest.approx(timings.model_s, rel=0.25)  # the full plan, both TTA passes
    assert sum(m["projected_s"] for m in projection.members) == pytest.approx(model_s)
    assert projection.encode_s > 0  # one chunk: none of its encoding overlaps the model
    assert projection.low_s <= projection.projected_s <= projection.high_s and projection.sample_rows == 48
    assert projection.members[0]["sample_batches"] >= 6  # 48 rows, both TTA passes, batches of <= 2048 tokens


def test_projection_adds_only_the_encoding_the_run_cannot_overlap():
    from arena.serving.projection import exposed_encode_s

    assert exposed_encode_s(10.0, 100.0, rows=20000, chunk_rows=8192) == pytest.approx(10.0 * 8192 / 20000)
    assert exposed_encode_s(100.0, 10.0, rows=10000, chunk_rows=8192) == pytest.approx(81.92 + 8.08)
    assert exposed_encode_s(5.0, 1.0, rows=100, chunk_rows=8192) == 5.0 and \
        exposed_encode_s(5.0, 1.0, rows=0, chunk_rows=8192) == 0.0


def test_time_limit_stops_before_the_run_and_writes_nothing(tmp_path, tiny_export):
    out = tmp_path / "submission.csv"
    with pytest.raises(ArenaError, match="over --time-limit") as exc:
        run_infer(TEST_CSV, tiny_export, out, tta="swap", time_limit="0.001s")
    assert "--time-limit-action warn" in str(exc.value) and not out.exists() and not list(tmp_path.iterdir())
    summary = run_infer(TEST_CSV, tiny_export, out, tta="swap", time_limit="0.001s", time_limit_action="warn")
    projection = summary["projection"]
    assert projection["rows"] == 3 and projection["projected_s"] > 0 and projection["limit_s"] == 0.001
    assert projection["low_s"] <= projection["projected_s"] <= projection["high_s"]
    assert len(pd.read_csv(out)) == 3
    result = CliRunner().invoke(app, [str(TEST_CSV), "--model", str(tiny_export), "--out", str(out),
                                      "--time-limit", "9h"])
    assert result.exit_code == 0 and "projected run time" in result.output, result.output
    assert json.loads(result.output.strip().splitlines()[-1])["projection"]["limit_s"] == 9 * 3600
