"""Read an uploaded data file into a ``datasets.Dataset``, or fail with a message that
names the file and the line/row/column and says what to do.

Supported: ``.json`` (an array of objects, or an object holding exactly one such array),
``.jsonl``, ``.csv``, ``.tsv``, ``.parquet``, ``.txt`` (one example per blank-line-separated
block when the file has blank lines, else one per line) and a ``.zip`` holding one of those.
Text files must be UTF-8 (a UTF-8 or UTF-16 byte-order mark is accepted). Nothing is
returned partly: a file either loads whole or raises :class:`DataFileError`.

How far a file may expand -- rows, decoded bytes, columns or keys per object, characters
per field, nesting depth -- is bounded by :mod:`workbench.data.limits`, checked while
reading: a text file's first 64 KiB for binary content and its size before the rest is
read, JSON's nesting and row count by a scan that builds no objects before it is parsed,
a CSV header before any row, Parquet in batches (``parquet.py``). Messages name the file by
its display name (never a server path) and the limit's environment variable.
"""

from __future__ import annotations

import codecs
import csv
import json
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataFileError
from .archive import DATA_SUFFIXES, extract_single_data_file
from .limits import DataLimits, data_limits
from .parquet import read_parquet

DEFAULT_MAX_BYTES = 1 << 30  # 1 GiB
HEAD_BYTES = 1 << 16  # read first: binary content is refused before the rest is read


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


def read_table(path: str | Path, display: str | None = None, max_bytes: int | None = None,
               limits: DataLimits | None = None) -> RawTable:
    """``path`` as a table, or DataFileError naming ``display`` (default: the file's name)."""
    path = Path(path)
    display = display or path.name
    limit = max_upload_bytes() if max_bytes is None else max_bytes
    limits = limits or data_limits()
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
            inner = extract_single_data_file(path, display, tmp, limit, limits)
            table = read_table(inner, f"{display}:{inner.suffix.lstrip('.')} file", limit, limits)
            table.note = f"from the zip archive; {table.note}"
            return table
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    if suffix not in DATA_SUFFIXES:
        raise DataFileError(display, f"unsupported file type {suffix or '(none)'!r}; use one of "
                                     f"{', '.join(DATA_SUFFIXES)} or .zip")
    if suffix == ".parquet":
        table = read_parquet(path, display, limits)
        import datasets

        return RawTable(datasets.Dataset(table), "parquet", display, f"Parquet, {table.num_columns} columns")
    text = _read_text(path, display, size, limits)
    if not text or text.isspace():  # (not strip(): no second copy of a large text)
        raise DataFileError(display, "file holds only whitespace")
    reader = {".json": _read_json, ".jsonl": _read_jsonl, ".csv": _read_delimited, ".tsv": _read_delimited,
              ".txt": _read_txt}[suffix]
    return reader(text, display, suffix, limits)


def _read_text(path: Path, display: str, size: int, limits: DataLimits) -> str:
    """The decoded text: binary content refused from the first chunk, the size checked
    against the decoded-bytes limit before the rest is read, one copy of the bytes at most."""
    with open(path, "rb") as fh:
        head = fh.read(HEAD_BYTES)
        utf16 = head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE))
        start = head[: len(head) - len(head) % 2].decode("utf-16", "replace") if utf16 else head
        nul = start.find("\0" if utf16 else b"\0")
        if nul >= 0:
            raise _binary(display, nul, start.count("\n" if utf16 else b"\n", 0, nul) + 1)
        if size > limits.decoded_bytes:
            raise limits.refuse(display, "decoded_bytes", f"holds {size:,} bytes of text, more than "
                                                          f"{limits.decoded_bytes:,}")
        fh.seek(0)
        return _decode(fh.read(), display)


def _binary(display: str, offset: int, line: int) -> DataFileError:
    return DataFileError(display, f"binary content (a NUL character at offset {offset}), not text", line=line,
                         hint="upload the data as .jsonl, .csv, .parquet or .txt")


def _decode(raw: bytes, display: str) -> str:
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            text = raw.decode("utf-16")
        except UnicodeDecodeError as exc:
            raise DataFileError(display, f"broken UTF-16 text at byte {exc.start}") from None
        nul = text.find("\0")
        if nul >= 0:
            raise _binary(display, nul, text.count("\n", 0, nul) + 1)
        return text
    nul = raw.find(b"\0")  # valid UTF-8 holds NUL only as the NUL character: no text file has one
    if nul >= 0:
        raise _binary(display, nul, raw.count(b"\n", 0, nul) + 1)
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataFileError(display, f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})", line=line,
                            hint="re-save the file with UTF-8 encoding") from None


def _lines(text: str, keep_ends: bool = False):
    """The lines of ``text`` one at a time (no list of them all); split at \\n only, so a
    U+2028 inside a JSON string is not a line break. A file without \\n: ``splitlines``."""
    if "\n" not in text:
        yield from text.splitlines(keep_ends)
        return
    start, length = 0, len(text)
    while start < length:
        end = text.find("\n", start)
        end = length if end < 0 else end + 1
        line = text[start:end]
        yield line if keep_ends else line.rstrip("\r\n")
        start = end


SCALARS = (str, int, float, bool)


def _dataset(rows: list[dict], display: str, note: str, file_type: str) -> RawTable:
    """Rows -> Dataset. A column mixing numbers and text (an answer ``5`` beside ``"five"``)
    becomes text; a column mixing text and lists/objects is an error naming the first row."""
    import datasets

    try:
        return RawTable(datasets.Dataset.from_list(rows), file_type, display, note)
    except MemoryError:
        raise  # out of memory (the worker's cap): not a property of the file
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


def _read_json(text: str, display: str, suffix: str, limits: DataLimits) -> RawTable:
    depth, rows, outer = _json_shape(text)
    if depth - outer > limits.depth:  # a record's own depth, as in JSONL: the outer array (object) not counted
        raise limits.refuse(display, "depth", f"nested more than {limits.depth} levels deep",
                            line=_deep_line(text, limits.depth + outer))
    if rows > limits.rows:
        raise limits.refuse(display, "rows", f"holds about {rows:,} rows, more than {limits.rows:,}")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        end = text.rstrip()
        truncated = exc.pos >= len(end) - 1 or not end.endswith(("]", "}"))
        raise DataFileError(display, f"invalid JSON at column {exc.colno}: {exc.msg}", line=exc.lineno,
                            hint="the file looks truncated" if truncated else "fix the JSON syntax") from None
    except (ValueError, RecursionError) as exc:
        raise _unparsable(exc, display, limits, _digits_line(text)) from None
    note = "a JSON array of objects"
    if isinstance(data, dict):
        arrays = [k for k, v in data.items() if isinstance(v, list) and v and all(isinstance(x, dict) for x in v)]
        if len(arrays) != 1:
            raise DataFileError(display, "expected an array of objects, or an object holding exactly one such "
                                         f"array; found {len(arrays)} ({', '.join(arrays[:10]) or 'none'})")
        data, note = data[arrays[0]], f"the array of objects under key {arrays[0]!r}"
    if not isinstance(data, list):
        raise DataFileError(display, f"expected an array of objects, found a JSON {type(data).__name__}")
    if not data:
        raise DataFileError(display, "the array holds no examples")
    if len(data) > limits.rows:
        raise limits.refuse(display, "rows", f"holds {len(data):,} rows, more than {limits.rows:,}")
    for i, item in enumerate(data, 1):
        if not isinstance(item, dict):
            raise DataFileError(display, f"expected an object, found a JSON {type(item).__name__}", row=i)
        _check_row(item, display, limits, row=i)
    return _dataset(data, display, note, "json")


def _read_jsonl(text: str, display: str, suffix: str, limits: DataLimits) -> RawTable:
    rows = []
    for number, line in enumerate(_lines(text), 1):
        if not line or line.isspace():
            continue
        if len(rows) == limits.rows:
            raise limits.refuse(display, "rows", line=number)
        if line.count("[") + line.count("{") > limits.depth and _json_shape(line)[0] > limits.depth:
            raise limits.refuse(display, "depth", f"nested more than {limits.depth} levels deep", line=number)
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataFileError(display, f"not valid JSON ({exc.msg} at column {exc.colno})", line=number,
                                hint="each line must be one JSON object") from None
        except (ValueError, RecursionError) as exc:
            raise _unparsable(exc, display, limits, number) from None
        if not isinstance(item, dict):
            raise DataFileError(display, f"expected a JSON object, found a {type(item).__name__}", line=number)
        _check_row(item, display, limits, line=number)
        rows.append(item)
    return _dataset(rows, display, "one JSON object per line", "jsonl")


_JSON_DROP = bytes(b for b in range(256) if b not in b'"[]{},')  # keep quotes, brackets, commas


def _json_shape(text: str) -> tuple[int, int, int]:
    """(deepest nesting, rows, levels above a row) of JSON ``text`` with no objects built:
    rows are the elements of the outer array (1 level above a row) or of the arrays just
    inside an outer object (2 levels). Exact for valid JSON: escaped backslashes go, then
    escaped quotes, then every byte but quotes, brackets and commas, then each string; a
    cumulative sum of the brackets left is the depth."""
    import numpy as np

    marks = text.encode().replace(b"\\\\", b"").replace(b'\\"', b"").translate(None, _JSON_DROP)
    marks = re.sub(rb'"[^"]*"', b"", marks)
    deepest, rows, depth, level = 0, 1, 0, 1 if marks[:1] == b"[" else 2
    for start in range(0, len(marks), 1 << 24):  # chunks: a cumulative sum of int32, 64 MiB at most
        chunk = np.frombuffer(marks, np.uint8, min(1 << 24, len(marks) - start), start)
        step = np.isin(chunk, (91, 123)).astype(np.int32) - np.isin(chunk, (93, 125))
        levels = np.cumsum(step, dtype=np.int32) + depth
        deepest = max(deepest, int(levels.max()))
        rows += int(np.count_nonzero((chunk == 44) & (levels == level)))
        depth = int(levels[-1])
    return deepest, rows, level


def _deep_line(text: str, most: int) -> int | None:
    """The line where JSON ``text`` first nests deeper than ``most`` (strings skipped)."""
    depth = 0
    for match in re.finditer(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', text):
        token = match.group()
        if token in "[{":
            depth += 1
            if depth > most:
                return text.count("\n", 0, match.start()) + 1
        elif token in "]}":
            depth -= 1
    return None


def _digits_line(text: str) -> int | None:
    match = re.search(r"\d{%d,}" % (sys.get_int_max_str_digits() + 1), text) if sys.get_int_max_str_digits() else None
    return text.count("\n", 0, match.start()) + 1 if match else None


def _unparsable(exc: Exception, display: str, limits: DataLimits, line: int | None) -> DataFileError:
    """A ValueError/RecursionError of ``json.loads`` (not a syntax error) as a message."""
    if isinstance(exc, RecursionError):
        return limits.refuse(display, "depth", f"nested more than {limits.depth} levels deep", line=line)
    if "integer string conversion" in str(exc):
        return DataFileError(display, f"a number with more than {sys.get_int_max_str_digits()} digits", line=line,
                             hint="write very long numbers as text (in quotes)")
    return DataFileError(display, f"cannot parse the JSON ({type(exc).__name__})", line=line,
                         hint="fix the JSON syntax")


def _check_row(record: dict, display: str, limits: DataLimits, line: int | None = None, row: int | None = None) -> None:
    """One parsed record within the limits: keys per object, characters per string (keys
    too) and nesting depth (the record is level 1); iterative, so any depth is safe."""
    most, chars = limits.columns, limits.field_chars
    stack: list[tuple[object, int]] = [(record, 1)]
    while stack:
        value, level = stack.pop()
        if isinstance(value, dict):
            if level > limits.depth:
                raise limits.refuse(display, "depth", f"nested more than {limits.depth} levels deep", line=line, row=row)
            if len(value) > most:
                raise limits.refuse(display, "columns", f"an object with {len(value):,} keys, more than {most:,}",
                                    line=line, row=row)
            items = value.items()
        elif isinstance(value, list):
            if level > limits.depth:
                raise limits.refuse(display, "depth", f"nested more than {limits.depth} levels deep", line=line, row=row)
            items = enumerate(value)
        else:
            continue
        for key, item in items:
            if type(key) is str and len(key) > chars:
                raise limits.refuse(display, "field_chars", f"a key of {len(key):,} characters, more than {chars:,}",
                                    line=line, row=row)
            if type(item) is str:
                if len(item) > chars:
                    raise limits.refuse(display, "field_chars", f"a value of {len(item):,} characters, more than "
                                                                f"{chars:,}", line=line, row=row,
                                        column=key if level == 1 else None)
            elif isinstance(item, (dict, list)):
                stack.append((item, level + 1))


def _read_delimited(text: str, display: str, suffix: str, limits: DataLimits) -> RawTable:
    delimiter = "\t" if suffix == ".tsv" else ","
    csv.field_size_limit(max(limits.field_chars, 1))  # process-wide, but every caller here sets the same
    reader = csv.reader(_lines(text, keep_ends=True), delimiter=delimiter)
    try:
        header = next(reader)
        if len(header) > limits.columns:
            raise limits.refuse(display, "columns", f"has {len(header):,} columns, more than {limits.columns:,}",
                                line=1)
        if len(set(header)) != len(header) or any(not h.strip() for h in header):
            raise DataFileError(display, f"header must name every column once; got {header}", line=1)
        columns: list[list[str]] = [[] for _ in header]
        for row in reader:
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise DataFileError(display, f"has {len(row)} fields but the header has {len(header)}",
                                    line=reader.line_num, row=len(columns[0]) + 1,
                                    hint="quote fields that contain the delimiter")
            if len(columns[0]) == limits.rows:
                raise limits.refuse(display, "rows", line=reader.line_num)
            for values, cell in zip(columns, row):
                values.append(cell)
    except csv.Error as exc:
        if "field limit" in str(exc):
            raise limits.refuse(display, "field_chars", f"a field of more than {limits.field_chars:,} characters",
                                line=reader.line_num) from None
        raise DataFileError(display, f"cannot parse: {exc}", line=reader.line_num) from None
    if not columns[0]:
        raise DataFileError(display, "has a header but no rows")
    import datasets

    dataset = datasets.Dataset.from_dict({h.strip(): v for h, v in zip(header, columns)})
    kind = "tab" if delimiter == "\t" else "comma"
    return RawTable(dataset, suffix.lstrip("."), display, f"{kind}-separated with a header row")


def _read_txt(text: str, display: str, suffix: str, limits: DataLimits) -> RawTable:
    import datasets

    if re.search(r"\n[ \t]*\n", text.strip()):
        pieces, note = re.split(r"\n[ \t]*\n", text), "one example per blank-line-separated block"
    else:
        pieces, note = _lines(text), "one example per line (the file has no blank lines)"
    texts = []
    for piece in pieces:
        piece = piece.strip()
        if not piece:
            continue
        if len(texts) == limits.rows:
            raise limits.refuse(display, "rows")
        if len(piece) > limits.field_chars:
            raise limits.refuse(display, "field_chars", f"an example of {len(piece):,} characters, more than "
                                                        f"{limits.field_chars:,}", row=len(texts) + 1)
        texts.append(piece)
    return RawTable(datasets.Dataset.from_dict({"text": texts}), "txt", display, note)
