"""Small files that expand (issue 15, findings 1 and 9): every hostile file the attacker
reported is refused quickly, in little memory, with a message that names the file, the
limit and its environment variable -- never a server path. Plus: a file at the limits
still loads, and the limits follow their environment variables."""

import json
import zipfile
from pathlib import Path

import pytest

from workbench.data.files import read_table
from workbench.data.limits import DataLimits, data_limits
from workbench.errors import DataFileError

pytestmark = pytest.mark.security
LIMIT_VARIABLES = ("WORKBENCH_MAX_ROWS", "WORKBENCH_MAX_DECODED_BYTES", "WORKBENCH_MAX_COLUMNS",
                   "WORKBENCH_MAX_FIELD_CHARS", "WORKBENCH_MAX_DEPTH")


@pytest.fixture(autouse=True)
def _default_limits(monkeypatch):
    for name in LIMIT_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def _status(field: str) -> int | None:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return None


def _refused_within(path, most_bytes: int, display=None) -> str:
    """The refusal message of reading ``path``; where Linux lets the peak RSS be reset,
    also that reading it raised the peak by less than ``most_bytes``."""
    try:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
        before = _status("VmRSS")
    except OSError:
        before = None
    with pytest.raises(DataFileError) as err:
        read_table(path, display)
    if before is not None and _status("VmHWM") is not None:
        assert _status("VmHWM") - before < most_bytes, f"peak RSS grew by {(_status('VmHWM') - before) >> 20} MiB"
    return str(err.value)


def _dictionary_parquet(path, rows: int, value: str) -> None:
    """``rows`` copies of ``value``, written as a dictionary (so the test never holds them
    decoded) and without an Arrow schema: it reads back as plain text, like the attack file."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    column = pa.DictionaryArray.from_arrays(pa.array(np.zeros(rows, np.int32)), pa.array([value]))
    pq.write_table(pa.table({"text": column}), path, store_schema=False)


def test_small_parquet_of_one_repeated_value_is_refused_before_decoding(tmp_path):
    """Finding 1: 300,000 rows of one 8.7 KB dictionary-encoded value in a ~7 KB file
    (2.6 GB decoded) took 20 s and +2.6 GB; now the first batch's dictionary tells."""
    path = tmp_path / "orders.parquet"
    _dictionary_parquet(path, 300_000, ("abcdefghijklmnopqrstuvwxyz" * 335)[:8_700])
    assert path.stat().st_size < 20_000
    message = _refused_within(path, 200 << 20)
    assert message.startswith("orders.parquet: expands to more than 134,217,728 bytes")
    assert "(limit WORKBENCH_MAX_DECODED_BYTES)" in message and "300,000 rows" in message


@pytest.mark.parametrize("name", ["deep.json", "deep.jsonl", "deep.zip"])
def test_json_nested_100k_deep_is_refused_not_a_recursion_error(tmp_path, name):
    """Finding 1: JSON nested 100,000 deep ended in an unhandled RecursionError."""
    deep = "[" * 100_000 + "]" * 100_000
    path = tmp_path / name
    if name.endswith(".zip"):
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:  # deflated, it is refused as a zip bomb
            zf.writestr("inner/deep.json", deep)
    else:
        path.write_text(deep if name.endswith(".json") else '{"text": ' + deep + "}\n")
    message = _refused_within(path, 200 << 20)
    assert message.startswith(name) and "line 1: nested more than 64 levels deep (limit WORKBENCH_MAX_DEPTH)" in message


def test_csv_cell_of_deep_json_stays_text(tmp_path):
    """A CSV cell is parsed as JSON when it looks like a list (self-instruct instances):
    nested 50,000 deep it raised RecursionError from format detection."""
    from workbench.data import inspect

    path = tmp_path / "cells.csv"
    path.write_text("instruction,instances\nDo it," + "[" * 50_000 + "]" * 50_000 + "\n")
    with pytest.raises(DataFileError, match=r"^cells\.csv: no usable examples"):
        inspect(path)


def test_csv_header_of_100k_columns_is_refused_before_any_row(tmp_path):
    """Finding 1: a CSV with 100,000 columns took 18.5 s."""
    path = tmp_path / "wide.csv"
    path.write_text(",".join(f"c{i}" for i in range(100_000)) + "\n" + ",".join(["x"] * 100_000) + "\n")
    message = _refused_within(path, 100 << 20)
    assert message.startswith("wide.csv line 1: has 100,000 columns, more than 1,000 (limit WORKBENCH_MAX_COLUMNS)")


def test_jsonl_object_of_200k_keys_is_refused(tmp_path):
    """Finding 1: one JSONL object with 200,000 keys took 39 s and +530 MB."""
    path = tmp_path / "keys.jsonl"
    path.write_text(json.dumps({f"k{i}": i for i in range(200_000)}) + "\n")
    message = _refused_within(path, 200 << 20)
    assert message.startswith("keys.jsonl line 1: an object with 200,000 keys, more than 1,000 "
                              "(limit WORKBENCH_MAX_COLUMNS)")


def test_1000_mb_of_nul_bytes_is_refused_from_the_first_chunk(tmp_path):
    """Finding 1: 1,000 MB of NUL bytes took +2 GB before the "binary content" message."""
    path = tmp_path / "zeros.jsonl"
    with open(path, "wb") as fh:
        fh.truncate(1_000_000_000)  # sparse: costs no disk, reads back as NUL bytes
    message = _refused_within(path, 64 << 20)
    assert message.startswith("zeros.jsonl line 1: binary content (a NUL character at offset 0)")


@pytest.mark.parametrize("name, body, line", [
    ("big.json", '[{"question": "q", "answer": "a"},\n {"question": "big?", "answer": ' + "7" * 5_000 + "}]", 2),
    ("big.jsonl", '{"question": "q", "answer": "a"}\n{"question": "big?", "answer": ' + "7" * 5_000 + "}\n", 2),
], ids=["json", "jsonl"])
def test_a_5000_digit_integer_names_the_line(tmp_path, name, body, line):
    """Finding 9: Python's int max_str_digits ValueError surfaced as a generic error."""
    path = tmp_path / name
    path.write_text(body)
    with pytest.raises(DataFileError) as err:
        read_table(path)
    assert str(err.value).startswith(f"{name} line {line}: a number with more than 4300 digits")


def _zip_bytes() -> bytes:
    import io

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("data.jsonl", "".join(json.dumps({"question": f"q{i}", "answer": f"a{i}"}) + "\n"
                                          for i in range(300)))
    return buf.getvalue()


def _patched(raw: bytes, local: int, central: int, value: bytes) -> bytes:
    """``value`` written at offset ``local`` of the local header and ``central`` of the
    central directory entry (the one entry of ``raw``)."""
    out, at = bytearray(raw), raw.rfind(b"PK\x01\x02")
    out[local:local + len(value)] = value
    out[at + central:at + central + len(value)] = value
    return bytes(out)


def _truncated_data(raw: bytes) -> bytes:
    """The entry's compressed data cut in half, the central directory kept."""
    at = raw.rfind(b"PK\x01\x02")
    return raw[: at // 2] + raw[at:]


def _corrupt_data(raw: bytes) -> bytes:
    at = raw.rfind(b"PK\x01\x02")
    return raw[: at // 2] + bytes(range(256))[: 40] + raw[at // 2 + 40:]


@pytest.mark.parametrize("case, make, problem", [
    ("bad_crc", lambda raw: _patched(raw, 14, 16, b"\xde\xad\xbe\xef"), "is corrupt: its CRC-32 check failed"),
    ("encrypted", lambda raw: _patched(raw, 6, 8, b"\x01\x00"), "is encrypted"),
    ("method_99", lambda raw: _patched(raw, 8, 10, (99).to_bytes(2, "little")), "uses compression method 99"),
    ("truncated", _truncated_data, "cannot be extracted"),
    ("corrupt", _corrupt_data, "entry 'data.jsonl'"),
], ids=["bad_crc", "encrypted", "method_99", "truncated", "corrupt"])
def test_damaged_encrypted_or_unreadable_zip_names_the_archive(tmp_path, case, make, problem):
    """Finding 9: bad CRC, an encrypted entry, compression method 99 and a truncated or
    corrupt archive gave a generic error; now one that names the zip and the problem."""
    path = tmp_path / f"{case}.zip"
    path.write_bytes(make(_zip_bytes()))
    with pytest.raises(DataFileError) as err:
        read_table(path)
    message = str(err.value)
    assert message.startswith(f"{case}.zip: ") and problem in message and " -- " in message
    assert str(tmp_path) not in message and "/tmp" not in message


@pytest.mark.parametrize("field, value", [("entries", 60_000), ("directory", 64 << 20)])
def test_zip_whose_directory_is_too_large_is_refused_before_it_is_parsed(tmp_path, field, value):
    """``zipfile`` builds an object per central-directory entry (~0.5 KB each): a 50 MB
    zip of a million empty entries is half a GB. The end record's counts are read first."""
    raw = bytearray(_zip_bytes())
    end = raw.rfind(b"PK\x05\x06")
    if field == "entries":
        raw[end + 8:end + 12] = value.to_bytes(2, "little") * 2  # entries on this disk, in all
    else:
        raw[end + 12:end + 16] = value.to_bytes(4, "little")
    path = tmp_path / "many.zip"
    path.write_bytes(bytes(raw))
    with pytest.raises(DataFileError, match=r"^many\.zip: the archive lists .* more than 10,000 entries or "):
        read_table(path)


@pytest.mark.parametrize("inside_zip", [False, True])
def test_an_unreadable_parquet_message_holds_no_server_path(tmp_path, inside_zip):
    path = tmp_path / "bad.parquet"
    path.write_bytes(b"PAR1 this is not parquet at all PAR1")
    if inside_zip:
        with zipfile.ZipFile(tmp_path / "bad.zip", "w") as zf:
            zf.write(path, "bad.parquet")
        path = tmp_path / "bad.zip"
    with pytest.raises(DataFileError) as err:
        read_table(path)
    message = str(err.value)
    assert "not a readable Parquet file" in message and str(tmp_path) not in message and "wb-zip-" not in message


@pytest.mark.parametrize("case, variable", [("rows", "WORKBENCH_MAX_ROWS"), ("columns", "WORKBENCH_MAX_COLUMNS"),
                                            ("depth", "WORKBENCH_MAX_DEPTH")])
def test_parquet_footer_over_a_limit_is_refused_before_any_data(tmp_path, monkeypatch, case, variable):
    import pyarrow as pa
    import pyarrow.parquet as pq

    monkeypatch.setenv("WORKBENCH_MAX_ROWS", "1000")
    table = {"rows": pa.table({"text": ["same"] * 1_001}),
             "columns": pa.table({f"c{i}": [i % 100] for i in range(1_001)}),
             "depth": pa.table({"deep": [[[[[[["x"]]]]]] + [[]] * 0]})}[case]
    if case == "depth":
        monkeypatch.setenv("WORKBENCH_MAX_DEPTH", "5")
    path = tmp_path / f"{case}.parquet"
    pq.write_table(table, path)
    with pytest.raises(DataFileError, match=rf"^{case}\.parquet: .*\(limit {variable}\)"):
        read_table(path)


FILES_AT = {  # (file name, body at the limits below, the same one step over, the variable named)
    "rows": ("r.jsonl", '{"text": "a"}\n' * 3, '{"text": "a"}\n' * 4, "WORKBENCH_MAX_ROWS"),
    "columns": ("c.csv", "a,b,c\n1,2,3\n", "a,b,c,d\n1,2,3,4\n", "WORKBENCH_MAX_COLUMNS"),
    "keys": ("k.json", '[{"a": 1, "b": 2, "text": "x"}]', '[{"a": 1, "b": 2, "c": 3, "text": "x"}]',
             "WORKBENCH_MAX_COLUMNS"),
    "field": ("f.tsv", "text\n" + "x" * 20 + "\n", "text\n" + "x" * 21 + "\n", "WORKBENCH_MAX_FIELD_CHARS"),
    "txt_field": ("t.txt", "x" * 20 + "\n", "x" * 21 + "\n", "WORKBENCH_MAX_FIELD_CHARS"),
    "depth": ("d.jsonl", '{"messages": [{"role": "user", "content": "hi"}]}\n',
              '{"messages": [{"role": "user", "content": ["hi"]}]}\n', "WORKBENCH_MAX_DEPTH"),
    "json_depth": ("d.json", '[{"messages": [{"role": "user", "content": "hi"}]}]',
                   '[{"messages": [{"role": "user", "content": ["hi"]}]}]', "WORKBENCH_MAX_DEPTH"),
    "bytes": ("b.jsonl", '{"text": "' + "x" * 87 + '"}\n', '{"text": "' + "x" * 88 + '"}\n',
              "WORKBENCH_MAX_DECODED_BYTES"),
}


@pytest.mark.parametrize("case", list(FILES_AT))
def test_a_file_at_the_limits_loads_and_one_step_over_is_refused(tmp_path, monkeypatch, case):
    """The limits follow their variables: WORKBENCH_MAX_ROWS=3, _COLUMNS=3, _FIELD_CHARS=20,
    _DEPTH=3 (a JSONL chat row: object, messages list, message) and _DECODED_BYTES=100."""
    for name, value in {"WORKBENCH_MAX_ROWS": "3", "WORKBENCH_MAX_COLUMNS": "3", "WORKBENCH_MAX_DEPTH": "3",
                        "WORKBENCH_MAX_FIELD_CHARS": "100" if case == "bytes" else "20",
                        "WORKBENCH_MAX_DECODED_BYTES": "100"}.items():
        monkeypatch.setenv(name, value)
    name, at, over, variable = FILES_AT[case]
    (tmp_path / "at").mkdir()
    (tmp_path / "at" / name).write_text(at)
    assert len(read_table(tmp_path / "at" / name).dataset) >= 1
    (tmp_path / name).write_text(over)
    with pytest.raises(DataFileError) as err:
        read_table(tmp_path / name)
    assert str(err.value).startswith(name) and f"(limit {variable})" in str(err.value)
    assert f"raise the limit by setting {variable}" in str(err.value)


def test_parquet_at_the_limits_loads_and_over_them_is_refused(tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "chat.parquet"
    rows = [{"messages": [{"role": "user", "content": "x" * 20}, {"role": "assistant", "content": "ok"}]}] * 3
    pq.write_table(pa.Table.from_pylist(rows), path)
    for name, value in {"WORKBENCH_MAX_ROWS": "3", "WORKBENCH_MAX_COLUMNS": "3", "WORKBENCH_MAX_FIELD_CHARS": "20",
                        "WORKBENCH_MAX_DEPTH": "3"}.items():
        monkeypatch.setenv(name, value)
    assert read_table(path).dataset.to_list() == rows
    for name, value, variable in [("WORKBENCH_MAX_FIELD_CHARS", "19", "WORKBENCH_MAX_FIELD_CHARS"),
                                  ("WORKBENCH_MAX_DEPTH", "2", "WORKBENCH_MAX_DEPTH"),
                                  ("WORKBENCH_MAX_DECODED_BYTES", "100", "WORKBENCH_MAX_DECODED_BYTES")]:
        with monkeypatch.context() as m:
            m.setenv(name, value)
            with pytest.raises(DataFileError, match=rf"^chat\.parquet.*\(limit {variable}\)"):
                read_table(path)


def test_limits_defaults_and_malformed_values_fall_back():
    assert data_limits({}) == DataLimits(rows=2_000_000, decoded_bytes=128 << 20, columns=1_000,
                                         field_chars=4_000_000, depth=64)
    limits = data_limits({"WORKBENCH_MAX_ROWS": "lots", "WORKBENCH_MAX_DEPTH": "-3", "WORKBENCH_MAX_COLUMNS": "1_500",
                          "WORKBENCH_MAX_FIELD_CHARS": "0", "WORKBENCH_MAX_DECODED_BYTES": " 4096 "})
    assert limits == DataLimits(columns=1_500, decoded_bytes=4096)
