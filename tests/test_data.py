import json
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from arena.data import (
    ParseReport,
    Record,
    labels_of,
    parse_turns,
    read_test,
    read_train,
    swap_ab,
    swap_probs,
)
from arena.errors import DataError
from tests.conftest import TEST_CSV, TRAIN_CSV

HEADER = "id,model_a,model_b,prompt,response_a,response_b,winner_model_a,winner_model_b,winner_tie\n"


def write(tmp_path, text: str | bytes, name: str = "train.csv"):
    path = tmp_path / name
    (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
    return path


def row(i, a=1, b=0, t=0, prompt='["hi"]', ra='["x"]', rb='["y"]'):
    q = lambda s: '"' + s.replace('"', '""') + '"'  # noqa: E731
    return f"{i},m1,m2,{q(prompt)},{q(ra)},{q(rb)},{a},{b},{t}\n"


def test_reads_all_real_rows_with_labels_and_null_turns(shared_available):
    report = ParseReport()
    records = read_train(TRAIN_CSV, report=report)
    assert len(records) == 1500
    labels = labels_of(records)
    assert np.bincount(labels).tolist() == [534, 505, 461]  # the counts SOURCES.md gives for a / b / tie
    assert report.fallbacks == 0
    assert report.null_turns > 0
    for r in records:
        for turns in (r.prompt, r.response_a, r.response_b):
            assert all(isinstance(t, str) for t in turns)
            assert "None" not in turns and "null" not in turns
    assert sum(len(r.prompt) > 1 for r in records) / len(records) > 0.05  # multi-turn rows exist


def test_reads_real_test_file_in_order():
    records = read_test(TEST_CSV)
    assert [r.id for r in records] == ["136060", "211333", "1233961"]
    assert all(r.label is None for r in records)


def test_null_turn_becomes_empty_turn_not_text():
    parsed = parse_turns('["first", null, "third"]')
    assert parsed.turns == ("first", "", "third")
    assert parsed.how == "json" and parsed.nulls == 1


@pytest.mark.parametrize("raw, turns, how", [
    ("['a', None]", ("a", ""), "literal"),
    ("just text", ("just text",), "raw"),
    ('["unterminated', ('["unterminated',), "raw"),
    ("", ("",), "empty"),
    ("[]", ("",), "json"),
    ('"a string"', ("a string",), "json"),
    ("[1, [2, 3], {\"k\": 1}]", ("1", "[2, 3]", '{"k": 1}'), "json"),
    ('["\\ud800x"]', ("\ufffdx",), "json"),
])
def test_parse_fallbacks(raw, turns, how):
    parsed = parse_turns(raw)
    assert parsed.turns == turns and parsed.how == how


@given(st.lists(st.one_of(st.text(), st.none()), max_size=5))
@settings(max_examples=200, deadline=None)
def test_json_lists_round_trip(values):
    parsed = parse_turns(json.dumps(values))
    lone = re.compile("[\ud800-\udfff]")
    expected = tuple(lone.sub("\ufffd", "" if v is None else v) for v in values) or ("",)
    assert parsed.how == "json"
    assert parsed.turns == expected
    assert parsed.nulls == sum(v is None for v in values)


def test_fallback_is_counted_and_logged(tmp_path, caplog):
    path = write(tmp_path, HEADER + row(1, prompt="plain text prompt") + row(2))
    report = ParseReport()
    records = read_train(path, report=report)
    assert records[0].prompt == ("plain text prompt",)
    assert report.counts[("prompt", "raw")] == 1
    assert "fallback" in caplog.text and "1" in caplog.text


def test_missing_column_names_file_and_column(tmp_path):
    path = write(tmp_path, "id,prompt,response_a\n1,\"[]\",\"[]\"\n", "test.csv")
    with pytest.raises(DataError) as err:
        read_test(path)
    assert str(path) in str(err.value) and "response_b" in str(err.value)


def test_training_file_without_labels_is_rejected(tmp_path):
    with pytest.raises(DataError, match="winner_model_a"):
        read_train(TEST_CSV)


def test_duplicate_id_names_row_line_and_first_line(tmp_path):
    path = write(tmp_path, HEADER + row(7) + row(8) + row(7))
    with pytest.raises(DataError) as err:
        read_train(path)
    msg = str(err.value)
    assert "id 7" in msg and "line 4" in msg and "first seen on line 2" in msg and "'id'" in msg


def test_empty_file(tmp_path):
    path = write(tmp_path, "")
    with pytest.raises(DataError, match="empty"):
        read_train(path)


def test_header_only_train_file_is_an_error_but_test_file_is_not(tmp_path):
    with pytest.raises(DataError, match="no rows"):
        read_train(write(tmp_path, HEADER))
    assert read_test(write(tmp_path, "id,prompt,response_a,response_b\n", "test.csv")) == []


def test_non_utf8_bytes_name_row_and_column(tmp_path):
    data = (HEADER + row(1) + row(2, rb='["bad \xff here"]')).encode("utf-8")
    data = data.replace("\xff".encode(), b"\xff")
    path = write(tmp_path, data)
    with pytest.raises(DataError) as err:
        read_train(path)
    msg = str(err.value)
    assert "id 2" in msg and "line 3" in msg and "'response_b'" in msg and "UTF-8" in msg


@pytest.mark.parametrize("labels, match", [((1, 1, 0), "exactly one 1"), ((0, 0, 0), "exactly one 1"),
                                           ((2, 0, 0), "not 0 or 1")])
def test_bad_labels_name_the_row(tmp_path, labels, match):
    path = write(tmp_path, HEADER + row(1) + row(42, *labels))
    with pytest.raises(DataError, match=match) as err:
        read_train(path)
    assert "id 42" in str(err.value) and "line 3" in str(err.value)


def test_wrong_field_count_names_line(tmp_path):
    path = write(tmp_path, HEADER + row(1) + "2,m1,m2,\"[]\"\n")
    with pytest.raises(DataError, match="expected 9 fields") as err:
        read_train(path)
    assert "line 3" in str(err.value)


def test_multiline_fields_keep_line_numbers(tmp_path):
    path = write(tmp_path, HEADER + row(1, prompt='["a\\nb"]', ra='["line\none\ntwo"]') + row(2, 1, 1, 0))
    with pytest.raises(DataError) as err:
        read_train(path)
    assert "line 5" in str(err.value)  # row 1 spans lines 2-4


def test_swap_exchanges_responses_and_labels():
    r = Record("1", ("p",), ("A",), ("B",), 0)
    s = swap_ab(r)
    assert (s.response_a, s.response_b, s.label) == (("B",), ("A",), 1)
    assert swap_ab(Record("2", ("p",), ("A",), ("B",), 2)).label == 2
    assert swap_ab(s) == r
    probs = np.array([[0.5, 0.2, 0.3]])
    assert swap_probs(probs).tolist() == [[0.2, 0.5, 0.3]]


def test_unquoted_carriage_return_is_a_clear_error(tmp_path):
    path = write(tmp_path, 'id,prompt,response_a,response_b\n0,"[]","[]",\r0\n', "test.csv")
    with pytest.raises(DataError, match="expected 4 fields") as err:
        read_test(path)
    assert "line 2" in str(err.value) or "line 3" in str(err.value)
