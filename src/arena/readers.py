"""The table files users hand arena, read as one stream of string fields whatever their format.

Accepted: plain CSV; CSV compressed as pandas reads it (gzip, bz2, xz, zip, zstd, tar with one member), told by
its first bytes rather than its name; and Parquet. Every format becomes the same stream of ``(line, fields)`` pairs,
the header first (line 1), each field a string as the ``csv`` module would give it, so :mod:`arena.data` validates
them all the same way. Parquet rows are numbered as the equivalent CSV's lines (first row: line 2); a Parquet list
column (one string per turn) becomes the JSON list the CSV layout holds.

Whatever cannot be opened raises :class:`~arena.errors.DataError` naming the file and what to do.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import lzma
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from arena.errors import DataError

Rows = Iterator[tuple[int, list[str]]]

csv.field_size_limit(2**31 - 1)  # real answers reach 20k chars; robustness tests use 1 MB

MAGIC = (
    (b"PAR1", "parquet"),
    (b"\x1f\x8b", "gzip"),
    (b"BZh", "bz2"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"PK\x03\x04", "zip"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"\xd0\xcf\x11\xe0", "excel"),
)
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
DECODE_ERRORS = (OSError, EOFError, zlib.error, lzma.LZMAError, zipfile.BadZipFile, tarfile.TarError)
EMPTY = "the file is empty: expected a header line such as 'id,prompt,response_a,response_b'"


def detect_format(path: str | Path) -> str:
    """``csv``, ``parquet``, ``gzip``, ``bz2``, ``xz``, ``zip``, ``zstd``, ``tar`` or ``excel``, from the first
    bytes (a tar archive also from its name)."""
    path = Path(path)
    if path.name.lower().endswith(TAR_SUFFIXES):
        return "tar"
    with open(path, "rb") as fh:
        head = fh.read(512)
    if len(head) > 262 and head[257:262] == b"ustar":
        return "tar"
    for magic, name in MAGIC:
        if head.startswith(magic):
            return name
    return "csv"


def _binary(path: Path, fmt: str, stack: contextlib.ExitStack) -> io.BufferedIOBase:
    """A binary stream of the CSV bytes inside ``path`` (decompressed or taken out of its archive)."""
    spath = str(path)
    if fmt == "csv":
        return stack.enter_context(open(path, "rb"))
    if fmt == "gzip":
        import gzip

        return stack.enter_context(gzip.open(path, "rb"))
    if fmt == "bz2":
        import bz2

        return stack.enter_context(bz2.open(path, "rb"))
    if fmt == "xz":
        return stack.enter_context(lzma.open(path, "rb"))
    if fmt == "zstd":
        return stack.enter_context(_zstd(path))
    if fmt == "zip":
        archive = stack.enter_context(zipfile.ZipFile(path))
        names = [n for n in archive.namelist() if not n.endswith("/") and not n.startswith("__MACOSX")]
        if "[Content_Types].xml" in names:
            raise DataError("this is an Excel workbook (.xlsx), not a CSV: save it as CSV", path=spath)
        _one_member(names, spath, "zip archive")
        return stack.enter_context(archive.open(names[0]))
    if fmt == "tar":
        archive = stack.enter_context(tarfile.open(path, "r:*"))
        members = [m for m in archive.getmembers() if m.isfile()]
        _one_member([m.name for m in members], spath, "tar archive")
        return stack.enter_context(archive.extractfile(members[0]))  # type: ignore[arg-type]
    if fmt == "excel":
        raise DataError("this is an Excel workbook (.xls), not a CSV: save it as CSV", path=spath)
    raise DataError(f"unsupported file format {fmt}", path=spath)  # pragma: no cover


def _one_member(names: list[str], spath: str, what: str) -> None:
    if len(names) != 1:
        shown = ", ".join(names[:5]) + (" ..." if len(names) > 5 else "")
        raise DataError(f"the {what} holds {len(names)} files ({shown or 'none'}); it must hold exactly one CSV",
                        path=spath)


def _zstd(path: Path) -> Any:
    try:
        import zstandard
    except ImportError:
        try:
            from compression import zstd  # Python 3.14+
        except ImportError:
            raise DataError("the file is zstd-compressed and this Python cannot read zstd: pip install "
                            "'arena-toolkit[zstd]', or decompress it (zstd -d)", path=str(path)) from None
        return zstd.open(path, "rb")
    return zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True)


def _csv_rows(fh: io.TextIOBase, spath: str, fmt: str) -> Rows:
    reader = csv.reader(fh)
    prev_end = 0
    while True:
        line = prev_end + 1
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise DataError(f"malformed CSV: {exc}", path=spath, line=line) from None
        except DECODE_ERRORS as exc:
            raise DataError(f"cannot decompress the {fmt} file ({exc}); it is truncated or corrupt",
                            path=spath, line=line) from None
        prev_end = reader.line_num
        yield line, fields


def _parquet_field(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="surrogateescape")
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list | tuple | dict):
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)


def _parquet_rows(path: Path, spath: str, batch_rows: int = 4096) -> Rows:
    try:
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - pyarrow is a dependency
        raise DataError("reading Parquet needs pyarrow: pip install pyarrow", path=spath) from None
    try:
        table = pq.ParquetFile(path)
        yield 1, list(table.schema_arrow.names)
        line = 1
        for batch in table.iter_batches(batch_size=batch_rows):
            columns = [col.to_pylist() for col in batch.columns]
            for values in zip(*columns, strict=True):
                line += 1
                yield line, [_parquet_field(v) for v in values]
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError, ArrowIOError an OSError
        raise DataError(f"cannot read the Parquet file: {exc}", path=spath) from None


@contextlib.contextmanager
def open_rows(path: str | Path) -> Iterator[Rows]:
    """The file's ``(line, fields)`` pairs, header first. Text is UTF-8 (a BOM is dropped); bad bytes are kept as
    lone surrogates (``surrogateescape``) so the reader can name the row and column they are in."""
    path = Path(path)
    spath = str(path)
    if not path.exists():
        raise DataError("no such file", path=spath)
    if path.is_dir():
        raise DataError("this is a folder; pass the data file itself (e.g. train.csv)", path=spath)
    if path.stat().st_size == 0:
        raise DataError(EMPTY, path=spath)
    try:
        fmt = detect_format(path)
    except OSError as exc:
        raise DataError(f"cannot read the file: {exc.strerror or exc}", path=spath) from None
    if fmt == "parquet":
        yield _parquet_rows(path, spath)
        return
    with contextlib.ExitStack() as stack:
        try:
            raw = _binary(path, fmt, stack)
        except DataError:
            raise
        except (*DECODE_ERRORS, ValueError) as exc:
            raise DataError(f"cannot open the {fmt} file ({exc}); it is truncated or corrupt", path=spath) from None
        text = stack.enter_context(io.TextIOWrapper(raw, encoding="utf-8-sig", errors="surrogateescape", newline=""))
        yield _csv_rows(text, spath, fmt)


def read_header(path: str | Path) -> list[str]:
    """The header's column names, stripped (an empty list for a header-only blank first line)."""
    with open_rows(path) as rows:
        for _, fields in rows:
            return [f.strip() for f in fields]
    raise DataError(EMPTY, path=str(path))
