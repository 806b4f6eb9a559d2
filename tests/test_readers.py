"""Compressed CSVs and Parquet read exactly like the plain CSV, with the same validation (issue 14)."""

import bz2
import gzip
import json
import lzma
import tarfile
import zipfile

import pandas as pd
import pytest

from arena.data import check_layout, has_labels, read_records, resolve_csv
from arena.errors import DataError
from arena.readers import detect_format
from tests.conftest import TEST_CSV, TRAIN_CSV

N = 40


@pytest.fixture(scope="module")
def small_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("csv") / "train.csv"
    pd.read_csv(TRAIN_CSV).head(N).to_csv(path, index=False)
    return path


def _zst(data: bytes) -> bytes:
    import zstandard  # a dependency (pyproject.toml): the README lists .zst input, so this test never skips

    return zstandard.ZstdCompressor().compress(data)


COMPRESSORS = {
    "train.csv.gz": gzip.compress,
    "train.csv.bz2": bz2.compress,
    "train.csv.xz": lzma.compress,
    "gzip-named.csv": gzip.compress,  # told by its bytes, not its name
}


@pytest.mark.parametrize("name", sorted(COMPRESSORS))
def test_compressed_csv_reads_like_the_plain_file(tmp_path, small_csv, name):
    path = tmp_path / name
    path.write_bytes(COMPRESSORS[name](small_csv.read_bytes()))
    assert read_records(path, labelled=True) == read_records(small_csv, labelled=True)
    assert has_labels(path)


def test_zstd_csv(tmp_path, small_csv):
    path = tmp_path / "train.csv.zst"
    path.write_bytes(_zst(small_csv.read_bytes()))
    assert detect_format(path) == "zstd"
    assert read_records(path, labelled=True) == read_records(small_csv, labelled=True)


def test_zip_and_tar_with_one_csv(tmp_path, small_csv):
    with zipfile.ZipFile(tmp_path / "train.zip", "w") as zf:
        zf.write(small_csv, "train.csv")
    with tarfile.open(tmp_path / "train.tar.gz", "w:gz") as tf:
        tf.add(small_csv, "train.csv")
    expected = read_records(small_csv, labelled=True)
    assert read_records(tmp_path / "train.zip", labelled=True) == expected
    assert read_records(tmp_path / "train.tar.gz", labelled=True) == expected


def test_parquet_with_json_strings_or_lists(tmp_path, small_csv):
    frame = pd.read_csv(small_csv)
    frame.to_parquet(tmp_path / "a.parquet")
    as_lists = frame.copy()
    for col in ("prompt", "response_a", "response_b"):
        as_lists[col] = as_lists[col].map(json.loads)  # one string (or null) per turn, as datasets store it
    as_lists.to_parquet(tmp_path / "b.parquet")
    expected = read_records(small_csv, labelled=True)
    assert read_records(tmp_path / "a.parquet", labelled=True) == expected
    assert read_records(tmp_path / "b.parquet", labelled=True) == expected


def test_parquet_gets_the_same_validation(tmp_path, small_csv):
    frame = pd.read_csv(small_csv)
    frame.loc[3, "id"] = frame.loc[1, "id"]
    frame.to_parquet(tmp_path / "dup.parquet")
    with pytest.raises(DataError, match="duplicate id"):
        read_records(tmp_path / "dup.parquet", labelled=True)
    frame.drop(columns=["winner_tie"]).to_parquet(tmp_path / "nolabel.parquet")
    with pytest.raises(DataError, match="missing column"):
        check_layout(tmp_path / "nolabel.parquet", labelled=True)


def test_truncated_compressed_file_is_not_called_bad_utf8(tmp_path, small_csv):
    data = gzip.compress(small_csv.read_bytes())
    (tmp_path / "cut.csv.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="truncated or corrupt") as err:
        read_records(tmp_path / "cut.csv.gz", labelled=True)
    assert "UTF-8" not in str(err.value)
    (tmp_path / "bad.gz").write_bytes(b"\x1f\x8b" + b"\x00" * 50)
    with pytest.raises(DataError, match="truncated or corrupt"):
        read_records(tmp_path / "bad.gz", labelled=True)


def test_archives_that_are_not_one_csv(tmp_path, small_csv):
    with zipfile.ZipFile(tmp_path / "two.zip", "w") as zf:
        zf.write(small_csv, "a.csv")
        zf.write(small_csv, "b.csv")
    with pytest.raises(DataError, match="holds 2 files"):
        read_records(tmp_path / "two.zip", labelled=True)
    with zipfile.ZipFile(tmp_path / "book.xlsx", "w") as zf:
        zf.writestr("[Content_Types].xml", "<x/>")
        zf.writestr("xl/workbook.xml", "<x/>")
    with pytest.raises(DataError, match="Excel"):
        read_records(tmp_path / "book.xlsx", labelled=True)


def test_test_file_given_where_labels_are_needed():
    with pytest.raises(DataError, match="unlabelled .test. file"):
        check_layout(TEST_CSV, labelled=True)


def test_resolve_finds_compressed_or_parquet_in_a_folder(tmp_path, small_csv):
    (tmp_path / "train.csv.gz").write_bytes(gzip.compress(small_csv.read_bytes()))
    assert resolve_csv(tmp_path, "train.csv") == tmp_path / "train.csv.gz"
    with pytest.raises(DataError, match="no such file or folder"):
        resolve_csv(tmp_path / "nope", "train.csv")
    with pytest.raises(DataError, match="no test.csv"):
        resolve_csv(tmp_path, "test.csv")
