"""The submission writer: exact rows, the probability check, the row count, atomic files (``make mutation``)."""

from __future__ import annotations

import csv
import io
import math

import numpy as np
import pytest

from arena import LABELS
from arena.errors import ArenaError
from arena.infer.submission import (
    LOGIT_COLUMNS,
    PredictionWriter,
    SubmissionWriter,
    check_probs,
    predictions_writer,
    submission_writer,
)

PROBS = np.array([[0.1, 0.2, 0.7], [1 / 3, 1 / 3, 1 / 3]])


def test_rows_are_written_exactly_with_the_header():
    fh = io.StringIO()
    writer = SubmissionWriter(fh)
    writer.write(["a1", "b2"], PROBS)
    writer.write(["c3"], np.array([[0.5, 0.5, 0.0]]))
    writer.commit(3)
    lines = fh.getvalue().split("\n")
    assert lines[0] == "id," + ",".join(LABELS) and lines[-1] == "" and len(lines) == 5
    rows = list(csv.reader(io.StringIO(fh.getvalue())))
    assert rows[1] == ["a1", "0.1", "0.2", "0.7"] and rows[3] == ["c3", "0.5", "0.5", "0.0"]
    assert [float(x) for x in rows[2][1:]] == [1 / 3] * 3  # full precision, bit for bit
    assert writer.rows == 3


def test_commit_refuses_a_wrong_row_count():
    writer = SubmissionWriter(io.StringIO())
    writer.write(["a"], PROBS[:1])
    writer.commit(1)
    with pytest.raises(ArenaError, match="wrote 1 rows for 2 test ids"):
        writer.commit(2)
    with pytest.raises(ArenaError, match="wrote 1 rows for 0 test ids"):
        writer.commit(0)


@pytest.mark.parametrize("row", [[0.5, 0.5, 1e-6 + 1e-9], [0.5, 0.5, -1e-6 - 1e-9], [np.nan, 0.5, 0.5],
                                 [np.inf, 0.0, 0.0], [1.2, -0.1, -0.1], [0.0, 0.0, 0.0]])
def test_rows_that_are_not_probability_vectors_are_refused_naming_the_id(row):
    probs = np.array([[0.2, 0.3, 0.5], row, [0.2, 0.3, 0.5]])
    with pytest.raises(ArenaError, match="prediction for id y is not a probability vector"):
        check_probs(probs, ["x", "y", "z"])


def test_rounding_noise_within_a_millionth_is_accepted():
    check_probs(np.array([[0.5, 0.5, 9e-7], [0.5, 0.5 - 9e-7, 0.0], [0.0, 0.0, 1.0]]), ["a", "b", "c"])


def test_a_count_mismatch_is_an_internal_error():
    with pytest.raises(ArenaError, match="internal error: 2 predictions for 3 ids"):
        check_probs(PROBS, ["a", "b", "c"])
    with pytest.raises(ArenaError, match="internal error"):
        check_probs(np.full((2, 2), 0.5), ["a", "b"])


def test_the_file_appears_only_when_every_row_was_written(tmp_path):
    out = tmp_path / "sub" / "submission.csv"
    with submission_writer(out) as writer:
        writer.write(["a", "b"], PROBS)
        assert not out.exists()
        writer.commit(2)
    assert out.read_text().splitlines()[1] == "a,0.1,0.2,0.7"
    with pytest.raises(ArenaError), submission_writer(out) as writer:
        writer.write(["a"], PROBS[:1])
        writer.commit(2)
    assert out.read_text().splitlines()[1] == "a,0.1,0.2,0.7"  # the earlier file stands
    assert sorted(p.name for p in out.parent.iterdir()) == ["submission.csv"]


def test_predictions_carry_log_probabilities_clipped_at_1e_12(tmp_path):
    fh = io.StringIO()
    writer = PredictionWriter(fh)
    writer.write(["a"], np.array([[0.25, 0.75, 0.0]]))
    writer.commit(1)
    header, row = list(csv.reader(io.StringIO(fh.getvalue())))
    assert header == ["id", *LABELS, *LOGIT_COLUMNS] and LOGIT_COLUMNS == ("logit_a", "logit_b", "logit_tie")
    assert row[:4] == ["a", "0.25", "0.75", "0.0"]
    assert [float(x) for x in row[4:]] == [math.log(0.25), math.log(0.75), math.log(1e-12)]
    with pytest.raises(ArenaError, match="not a probability vector"):
        writer.write(["b"], np.array([[0.5, 0.6, 0.0]]))
    assert writer.rows == 1
    writer.write(["c"], np.array([[1.0 + 5e-7, 0.0, 0.0]]))  # rounding noise above 1: log-probability 0, not > 0
    assert writer.rows == 2 and float(fh.getvalue().splitlines()[-1].split(",")[4]) == 0.0
    assert "\r" not in fh.getvalue() and fh.getvalue().count("\n") == 3


def test_save_logits_writes_a_file_only_when_asked(tmp_path):
    with predictions_writer(None) as writer:
        writer.write(["a"], PROBS[:1])
        writer.commit(5)
    assert list(tmp_path.iterdir()) == []
    out = tmp_path / "logits.csv"
    with predictions_writer(out) as writer:
        assert isinstance(writer, PredictionWriter)
        writer.write(["a"], PROBS[:1])
        writer.commit(1)
    assert out.read_text().splitlines()[0].endswith(",logit_a,logit_b,logit_tie")
    assert len(out.read_text().splitlines()) == 2
