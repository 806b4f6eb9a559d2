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
    assert summary["rows"] == 3 and summary["backend"].startswith(choose_backend("auto", tiny_export).backend)


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


def test_two_processes_give_the_same_submission(tmp_path, tiny_export):
    """--devices shards batches over one process per device (2 CPU processes here); output is identical."""
    frame = pd.read_csv(TRAIN_CSV).iloc[:120][["id", "prompt", "response_a", "response_b"]]
    frame.to_csv(tmp_path / "t.csv", index=False)
    one = run_infer(tmp_path / "t.csv", tiny_export, tmp_path / "one.csv")
    two = run_infer(tmp_path / "t.csv", tiny_export, tmp_path / "two.csv", devices="cpu,cpu")
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
