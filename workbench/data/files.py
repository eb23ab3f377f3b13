"""Read an uploaded data file into a ``datasets.Dataset``, or fail with a message that
names the file and the line/row/column and says what to do.

Supported: ``.json`` (an array of objects, or an object holding exactly one such array),
``.jsonl``, ``.csv``, ``.tsv``, ``.parquet``, ``.txt`` (one example per blank-line-separated
block when the file has blank lines, else one per line) and a ``.zip`` holding one of those.
Text files must be UTF-8 (a UTF-8 or UTF-16 byte-order mark is accepted). Nothing is
returned partly: a file either loads whole or raises :class:`DataFileError`.
"""

from __future__ import annotations

import codecs
import csv
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataFileError
from .archive import DATA_SUFFIXES, extract_single_data_file

DEFAULT_MAX_BYTES = 1 << 30  # 1 GiB


def max_upload_bytes() -> int:
    """The size limit: ``$WORKBENCH_MAX_UPLOAD_BYTES`` or 1 GiB."""
    value = os.environ.get("WORKBENCH_MAX_UPLOAD_BYTES")
    return int(value) if value and value.isdigit() else DEFAULT_MAX_BYTES


@dataclass
class RawTable:
    """A loaded file: its rows as a ``datasets.Dataset`` plus what we learned reading it."""

    dataset: object  # datasets.Dataset
    file_type: str
    display: str
    note: str


def read_table(path: str | Path, display: str | None = None, max_bytes: int | None = None) -> RawTable:
    path = Path(path)
    display = display or path.name
    limit = max_upload_bytes() if max_bytes is None else max_bytes
    if not path.is_file():
        raise DataFileError(display, "file not found")
    size = path.stat().st_size
    if size > limit:
        raise DataFileError(display, f"file is {size:,} bytes, over the limit of {limit:,}",
                            hint="split the file, or raise the limit (WORKBENCH_MAX_UPLOAD_BYTES)")
    if size == 0:
        raise DataFileError(display, "file is empty")
    suffix = path.suffix.lower()
    if suffix == ".zip":
        tmp = Path(tempfile.mkdtemp(prefix="wb-zip-"))
        try:
            inner = extract_single_data_file(path, display, tmp, limit)
            table = read_table(inner, f"{display}:{inner.suffix.lstrip('.')} file", limit)
            table.note = f"from the zip archive; {table.note}"
            return table
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    if suffix not in DATA_SUFFIXES:
        raise DataFileError(display, f"unsupported file type {suffix or '(none)'!r}; use one of "
                                     f"{', '.join(DATA_SUFFIXES)} or .zip")
    if suffix == ".parquet":
        return _read_parquet(path, display)
    text = _decode(path.read_bytes(), display)
    if not text.strip():
        raise DataFileError(display, "file holds only whitespace")
    reader = {".json": _read_json, ".jsonl": _read_jsonl, ".csv": _read_delimited, ".tsv": _read_delimited,
              ".txt": _read_txt}[suffix]
    return reader(text, display, suffix)


def _decode(raw: bytes, display: str) -> str:
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return raw.decode("utf-16")
        except UnicodeDecodeError as exc:
            raise DataFileError(display, f"broken UTF-16 text at byte {exc.start}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataFileError(display, f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})", line=line,
                            hint="re-save the file with UTF-8 encoding") from None
    nul = text.find("\0")
    if nul >= 0:  # valid UTF-8, but no text file holds NUL characters: a binary file renamed
        raise DataFileError(display, f"binary content (a NUL character at offset {nul}), not text",
                            line=text.count("\n", 0, nul) + 1, hint="upload the data as .jsonl, .csv, .parquet or .txt")
    return text


SCALARS = (str, int, float, bool)


def _dataset(rows: list[dict], display: str, note: str, file_type: str) -> RawTable:
    """Rows -> Dataset. A column mixing numbers and text (an answer ``5`` beside ``"five"``)
    becomes text; a column mixing text and lists/objects is an error naming the first row."""
    import datasets

    try:
        return RawTable(datasets.Dataset.from_list(rows), file_type, display, note)
    except Exception as exc:  # pyarrow type clashes between rows
        column, row, scalar_only = _first_type_clash(rows)
        if column is None or not scalar_only:
            raise DataFileError(display, f"values of different kinds in one column ({type(exc).__name__})", row=row,
                                column=column, hint="make every value of a column the same kind, e.g. all text") from None
    for r in rows:
        if r.get(column) is not None:
            r[column] = str(r[column])
    return _dataset(rows, display, f"{note}; numbers in column {column!r} read as text", file_type)


def _first_type_clash(rows: list[dict]) -> tuple[str | None, int | None, bool]:
    """(column, 1-based row, whether the column holds only scalars) of the first clash."""
    seen: dict[str, type] = {}
    scalar_clash = None
    for i, row in enumerate(rows, 1):
        for key, value in row.items():
            if value is None:
                continue
            kind = type(value)
            first = seen.setdefault(key, kind)
            if first is kind or {first, kind} <= {int, float}:
                continue
            if isinstance(value, SCALARS) and first in SCALARS:
                scalar_clash = scalar_clash or (key, i)
            else:
                return key, i, False
    return (scalar_clash[0], scalar_clash[1], True) if scalar_clash else (None, None, False)


def _read_json(text: str, display: str, suffix: str) -> RawTable:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        end = text.rstrip()
        truncated = exc.pos >= len(end) - 1 or not end.endswith(("]", "}"))
        raise DataFileError(display, f"invalid JSON at column {exc.colno}: {exc.msg}", line=exc.lineno,
                            hint="the file looks truncated" if truncated else "fix the JSON syntax") from None
    note = "a JSON array of objects"
    if isinstance(data, dict):
        arrays = [k for k, v in data.items() if isinstance(v, list) and v and all(isinstance(x, dict) for x in v)]
        if len(arrays) != 1:
            raise DataFileError(display, "expected an array of objects, or an object holding exactly one such "
                                         f"array; found {len(arrays)} ({', '.join(arrays) or 'none'})")
        data, note = data[arrays[0]], f"the array of objects under key {arrays[0]!r}"
    if not isinstance(data, list):
        raise DataFileError(display, f"expected an array of objects, found a JSON {type(data).__name__}")
    if not data:
        raise DataFileError(display, "the array holds no examples")
    for i, item in enumerate(data, 1):
        if not isinstance(item, dict):
            raise DataFileError(display, f"expected an object, found a JSON {type(item).__name__}", row=i)
    return _dataset(data, display, note, "json")


def _read_jsonl(text: str, display: str, suffix: str) -> RawTable:
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataFileError(display, f"not valid JSON ({exc.msg} at column {exc.colno})", line=number,
                                hint="each line must be one JSON object") from None
        if not isinstance(item, dict):
            raise DataFileError(display, f"expected a JSON object, found a {type(item).__name__}", line=number)
        rows.append(item)
    return _dataset(rows, display, "one JSON object per line", "jsonl")


def _read_delimited(text: str, display: str, suffix: str) -> RawTable:
    import datasets

    delimiter = "\t" if suffix == ".tsv" else ","
    reader = csv.reader(text.splitlines(), delimiter=delimiter)
    try:
        header = next(reader)
        if len(set(header)) != len(header) or any(not h.strip() for h in header):
            raise DataFileError(display, f"header must name every column once; got {header}", line=1)
        columns: list[list[str]] = [[] for _ in header]
        for row in reader:
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise DataFileError(display, f"has {len(row)} fields but the header has {len(header)}",
                                    line=reader.line_num, row=sum(1 for _ in columns[0]) + 1,
                                    hint="quote fields that contain the delimiter")
            for values, cell in zip(columns, row):
                values.append(cell)
    except csv.Error as exc:
        raise DataFileError(display, f"cannot parse: {exc}", line=reader.line_num) from None
    if not columns[0]:
        raise DataFileError(display, "has a header but no rows")
    dataset = datasets.Dataset.from_dict({h.strip(): v for h, v in zip(header, columns)})
    kind = "tab" if delimiter == "\t" else "comma"
    return RawTable(dataset, suffix.lstrip("."), display, f"{kind}-separated with a header row")


def _read_txt(text: str, display: str, suffix: str) -> RawTable:
    import datasets

    if re.search(r"\n[ \t]*\n", text.strip()):
        pieces, note = re.split(r"\n[ \t]*\n", text), "one example per blank-line-separated block"
    else:
        pieces, note = text.splitlines(), "one example per line (the file has no blank lines)"
    texts = [p.strip() for p in pieces if p.strip()]
    return RawTable(datasets.Dataset.from_dict({"text": texts}), "txt", display, note)


def _read_parquet(path: Path, display: str) -> RawTable:
    import pyarrow.parquet as pq
    import datasets

    try:
        table = pq.read_table(path)
    except Exception as exc:  # ArrowInvalid, OSError: a corrupt or foreign file
        raise DataFileError(display, f"not a readable Parquet file ({type(exc).__name__}: {str(exc)[:200]})",
                            hint="export the file again") from None
    if table.num_rows == 0:
        raise DataFileError(display, "the Parquet file has no rows")
    return RawTable(datasets.Dataset(table), "parquet", display, f"Parquet, {table.num_columns} columns")
