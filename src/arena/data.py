"""Read and validate Kaggle CSVs of the Chatbot Arena task: turns, labels, A/B swap.

The Kaggle layout: ``id, [model_a, model_b,] prompt, response_a, response_b[, winner_model_a, winner_model_b,
winner_tie]``. ``prompt``/``response_*`` hold a JSON list of strings, one per turn; about 1% of real rows have a
JSON ``null`` turn (a model that returned nothing), which becomes an empty turn here.

Contract:

* every data row of the file becomes exactly one :class:`Record`, in file order; nothing is dropped;
* a field that is not JSON falls back to a Python literal, and one that is neither becomes one turn holding the
  raw text; each fallback is counted in :class:`ParseReport` and logged once per file;
* whatever cannot be read (missing column, duplicate id, bad label, bad bytes, empty file) raises
  :class:`~arena.errors.DataError` naming the file, the row (id and line) and the column.
"""

from __future__ import annotations

import ast
import json
import logging
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np

from arena import LABELS
from arena.errors import DataError
from arena.readers import EMPTY, Rows, open_rows, read_header

log = logging.getLogger(__name__)

TEXT_COLUMNS = ("prompt", "response_a", "response_b")
TEST_COLUMNS = ("id", *TEXT_COLUMNS)
TRAIN_COLUMNS = (*TEST_COLUMNS, *LABELS)
CLASS_NAMES = ("a", "b", "tie")

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True, slots=True)
class Record:
    """One arena battle. ``label`` is 0 (a wins), 1 (b wins), 2 (tie) or None for test rows."""

    id: str
    prompt: tuple[str, ...]
    response_a: tuple[str, ...]
    response_b: tuple[str, ...]
    label: int | None = None
    line: int = 0


@dataclass
class ParseReport:
    """How each text field was parsed: counts of ``(column, how)`` with how in json / literal / raw / empty."""

    counts: Counter = field(default_factory=Counter)
    examples: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    null_turns: int = 0

    def add(self, column: str, how: str, row_id: str) -> None:
        self.counts[(column, how)] += 1
        if how != "json":
            self.examples.setdefault((column, how), [])
            if len(self.examples[(column, how)]) < 5:
                self.examples[(column, how)].append(row_id)

    @property
    def fallbacks(self) -> int:
        return sum(n for (_, how), n in self.counts.items() if how != "json")


# --------------------------------------------------------------------------------------------------- turns


def _as_turn(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)  # a number or nested list where a string belongs


def _clean(text: str) -> str:
    # A JSON "\ud800" escape yields a lone surrogate, which no tokenizer (nor UTF-8) accepts.
    return _LONE_SURROGATE.sub("\ufffd", text) if _LONE_SURROGATE.search(text) else text


class Parsed(NamedTuple):
    turns: tuple[str, ...]
    how: str
    nulls: int = 0


def parse_turns(raw: str) -> Parsed:
    """Parse one ``prompt``/``response_*`` field into turns; return ``(turns, how, nulls)``.

    ``how`` is ``json`` (the normal case), ``literal`` (a Python literal such as ``['a', None]``), ``raw`` (neither:
    the whole field becomes one turn) or ``empty`` (an empty field: one empty turn). ``null``/``None`` turns become
    empty strings, never the text "None" or "null"; non-string items become their JSON text.
    """
    if raw == "":
        return Parsed(("",), "empty")
    value: object
    how = "json"
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        how = "literal"
        try:
            value = ast.literal_eval(raw) if raw.lstrip()[:1] in "[(" else None
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            value = None
        if not isinstance(value, list | tuple):
            return Parsed((_clean(raw),), "raw")
    if isinstance(value, str):
        return Parsed((_clean(value),), how)
    if not isinstance(value, list | tuple):
        return Parsed((_clean(raw),), "raw")
    if not value:
        return Parsed(("",), how)
    return Parsed(tuple(_clean(_as_turn(v)) for v in value), how, sum(v is None for v in value))


# --------------------------------------------------------------------------------------------------- CSV


def _bad_bytes(value: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in value) if _LONE_SURROGATE.search(value) else False


def _label(row: dict[str, str], path: str, row_id: str, line: int) -> int:
    values = []
    for col in LABELS:
        text = row[col].strip()
        try:
            number = float(text)
        except ValueError:
            raise DataError(f"label {text!r} is not 0 or 1", path=path, row_id=row_id, line=line,
                            column=col) from None
        if number not in (0.0, 1.0):
            raise DataError(f"label {text!r} is not 0 or 1", path=path, row_id=row_id, line=line, column=col)
        values.append(int(number))
    if sum(values) != 1:
        raise DataError(
            f"expected exactly one 1 among {', '.join(LABELS)}, got {values}",
            path=path, row_id=row_id, line=line, column=",".join(LABELS),
        )
    return values.index(1)


def iter_records(
    path: str | Path, *, labelled: bool, chunk_rows: int = 4096, report: ParseReport | None = None
) -> Iterator[list[Record]]:
    """Yield the file's records in chunks of ``chunk_rows``, validating as it goes (see the module docstring).

    Memory grows with the chunk and the set of ids seen, not with the file's text beyond the decoded buffer.
    """
    path = Path(path)
    with open_rows(path) as rows:
        yield from _iter_rows(rows, str(path), labelled=labelled, chunk_rows=chunk_rows, report=report)


def check_header(header: list[str], spath: str, *, labelled: bool) -> dict[str, int]:
    """Each required column's index in ``header``; raise :class:`DataError` naming what is wrong."""
    header = [h.strip() for h in header]
    if _bad_bytes("".join(header)):
        raise DataError("the header has bytes that are not valid UTF-8 (save the file as UTF-8)", path=spath, line=1)
    required = TRAIN_COLUMNS if labelled else TEST_COLUMNS
    missing = [c for c in required if c not in header]
    if missing:
        hint = ""
        if labelled and set(missing) <= set(LABELS):
            hint = ("; this is an unlabelled (test) file: training and parity checks need the labelled train.csv "
                    "with winner_model_a, winner_model_b, winner_tie")
        shown = ", ".join(h[:40] for h in header[:12]) + (" ..." if len(header) > 12 else "")
        raise DataError(f"missing column(s) {', '.join(missing)}; the header has {shown or 'nothing'}{hint}",
                        path=spath, line=1, column=missing[0])
    dup_cols = [c for c, n in Counter(header).items() if n > 1]
    if dup_cols:
        raise DataError("column appears more than once in the header", path=spath, line=1, column=dup_cols[0])
    return {c: header.index(c) for c in required}


def check_layout(path: str | Path, *, labelled: bool) -> None:
    """Read only the header and raise :class:`DataError` unless it has the columns a train (``labelled``) or test
    file needs: the up-front check the CLIs run before any work."""
    check_header(read_header(path), str(path), labelled=labelled)


def _iter_rows(rows: Rows, spath: str, *, labelled: bool, chunk_rows: int,
               report: ParseReport | None) -> Iterator[list[Record]]:
    header = next(rows, None)
    if header is None:
        raise DataError(EMPTY, path=spath)
    index = check_header(header[1], spath, labelled=labelled)
    n_fields = len(header[1])
    report = report if report is not None else ParseReport()
    seen: dict[str, int] = {}
    chunk: list[Record] = []
    for line, fields in rows:
        if not fields or (len(fields) == 1 and not fields[0].strip()):
            continue  # a blank line is not a row
        row_id = fields[0].strip() if fields else ""
        if len(fields) != n_fields:
            raise DataError(f"expected {n_fields} fields, found {len(fields)}", path=spath, row_id=row_id,
                            line=line)
        row = {c: fields[i] for c, i in index.items()}
        for col, value in row.items():
            if _bad_bytes(value):
                raise DataError("bytes that are not valid UTF-8", path=spath, row_id=row_id, line=line,
                                column=col)
        row_id = row["id"].strip()
        if not row_id:
            raise DataError("empty id", path=spath, line=line, column="id")
        if row_id in seen:
            raise DataError(f"duplicate id (first seen on line {seen[row_id]})", path=spath, row_id=row_id,
                            line=line, column="id")
        seen[row_id] = line
        turns = []
        for col in TEXT_COLUMNS:
            parsed = parse_turns(row[col])
            report.add(col, parsed.how, row_id)
            report.null_turns += parsed.nulls
            turns.append(parsed.turns)
        label = _label(row, spath, row_id, line) if labelled else None
        chunk.append(Record(row_id, turns[0], turns[1], turns[2], label, line))
        if len(chunk) >= chunk_rows:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
    if report.fallbacks:
        detail = "; ".join(
            f"{col} {how}: {n} (e.g. id {', '.join(report.examples.get((col, how), []))})"
            for (col, how), n in sorted(report.counts.items()) if how != "json"
        )
        log.warning("%s: %d field(s) were not JSON lists and used a fallback: %s", spath, report.fallbacks, detail)


def read_records(path: str | Path, *, labelled: bool, report: ParseReport | None = None) -> list[Record]:
    """All records of a train (``labelled=True``) or test CSV, in file order."""
    out: list[Record] = []
    for chunk in iter_records(path, labelled=labelled, report=report):
        out.extend(chunk)
    return out


def has_labels(path: str | Path) -> bool:
    """Whether a CSV's header has the label columns (train layout) rather than only the test columns."""
    return set(LABELS) <= set(read_header(path))


def read_train(path: str | Path, report: ParseReport | None = None) -> list[Record]:
    records = read_records(path, labelled=True, report=report)
    if not records:
        raise DataError("the file has a header but no rows to train on", path=str(path))
    return records


def read_test(path: str | Path, report: ParseReport | None = None) -> list[Record]:
    return read_records(path, labelled=False, report=report)


def labels_of(records: Sequence[Record]) -> np.ndarray:
    """The int64 label vector; raises if any record is unlabelled."""
    if any(r.label is None for r in records):
        bad = next(r for r in records if r.label is None)
        raise DataError("row has no label", row_id=bad.id, line=bad.line)
    return np.fromiter((r.label for r in records), dtype=np.int64, count=len(records))


# --------------------------------------------------------------------------------------------------- A/B swap

SWAP_CLASSES = np.array([1, 0, 2])
"""Index map of the A/B swap: class a <-> b, tie stays. ``probs[:, SWAP_CLASSES]`` swaps probability columns."""


def swap_ab(record: Record) -> Record:
    """The same battle with the two responses exchanged: label a <-> b, tie unchanged."""
    label = None if record.label is None else int(SWAP_CLASSES[record.label])
    return replace(record, response_a=record.response_b, response_b=record.response_a, label=label)


def swap_probs(probs: np.ndarray) -> np.ndarray:
    """Map probabilities predicted on swapped inputs back to the original a/b order."""
    return probs[..., SWAP_CLASSES]


# --------------------------------------------------------------------------------------------------- paths

DEFAULT_DATA_DIRS = ("../shared/data/arena/lmsys_kaggle", "llm-classification-finetuning")


def default_data_dir() -> Path:
    """``../shared/data/arena/lmsys_kaggle`` where it exists, else the Kaggle download's folder name."""
    for candidate in DEFAULT_DATA_DIRS:
        if Path(candidate).is_dir():
            return Path(candidate)
    return Path(DEFAULT_DATA_DIRS[-1])


def resolve_csv(data: str | Path | None, name: str) -> Path:
    """The data file from ``--data``: a file is used as is; a folder gets ``name`` (or, for train.csv,
    ``train_sample.csv``) in it, as CSV, compressed CSV or Parquet."""
    base = Path(data) if data is not None else default_data_dir()
    if base.is_file():
        return base
    if not base.exists():
        what = "--data" if data is not None else "the default data folder (pass --data)"
        raise DataError(f"{what}: no such file or folder", path=str(base))
    stems = [name, "train_sample.csv"] if name == "train.csv" else [name]
    for stem in stems:
        for candidate in (stem, *(f"{stem}.{ext}" for ext in ("gz", "bz2", "xz", "zip", "zst")),
                          stem.replace(".csv", ".parquet")):
            if (base / candidate).is_file():
                return base / candidate
    raise DataError(f"no {' or '.join(stems)} in this folder; pass --data with the CSV file itself or its folder",
                    path=str(base))
