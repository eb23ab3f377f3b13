"""Datasets: one table of small files -- every file type x every format, and every kind of
bad input -- with the expected format, row count or error text."""

import csv
import io
import json
import subprocess
import sys
import zipfile

import pytest

from workbench.data import inspect, split_indices
from workbench.errors import DataFileError, WorkbenchError

ALPACA = [{"instruction": "Name a colour.", "input": "", "output": "Blue."},
          {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
          {"instruction": "Say hi.", "input": "", "output": "Hi!", "system": "Be brief."}]
SHAREGPT = [{"conversations": [{"from": "system", "value": "Be kind."}, {"from": "human", "value": "Hello"},
                               {"from": "gpt", "value": "Hi there."}, {"from": "human", "value": "Bye"},
                               {"from": "gpt", "value": "Goodbye."}]},
            {"conversations": [{"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"}]}]
MESSAGES = [{"messages": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Capital of France?"},
                          {"role": "assistant", "content": "Paris."}]},
            {"messages": [{"role": "user", "content": "Colour of the sky?"}, {"role": "assistant", "content": "Blue."}]}]
PAIRS = [{"question": "What is 3x3?", "answer": "9"}, {"question": "Opposite of up?", "answer": "Down"}]
TEXT = [{"text": "The cat sat on the mat."}, {"text": "A second document."}, {"text": "A third one."}]
SELF_INSTRUCT = [{"instruction": "Translate to French.", "instances": [{"input": "cat", "output": "chat"},
                                                                        {"input": "dog", "output": "chien"}]},
                 {"instruction": "Reverse the word.", "instances": [{"input": "abc", "output": "cba"}]}]
FORMATS = {"alpaca": (ALPACA, 3), "sharegpt": (SHAREGPT, 2), "messages": (MESSAGES, 2),
           "prompt_completion": (PAIRS, 2), "text": (TEXT, 3), "self_instruct": (SELF_INSTRUCT, 3)}


def _cell(value):
    return json.dumps(value) if isinstance(value, (list, dict)) else value


def write(path, records, kind):
    if kind == "json":
        path.write_text(json.dumps(records))
    elif kind == "json_wrapped":
        path.write_text(json.dumps({"meta": {"v": 1}, "data": records}))
    elif kind == "jsonl":
        path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    elif kind in ("csv", "tsv"):
        columns = list(dict.fromkeys(k for r in records for k in r))
        buf = io.StringIO()
        w = csv.writer(buf, delimiter="\t" if kind == "tsv" else ",")
        w.writerow(columns)
        for r in records:
            w.writerow([_cell(r.get(c, "")) for c in columns])
        path.write_text(buf.getvalue())
    elif kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(records), path)
    return path


SUFFIX = {"json": ".json", "json_wrapped": ".json", "jsonl": ".jsonl", "csv": ".csv", "tsv": ".tsv", "parquet": ".parquet"}
CASES = [(kind, fmt) for kind in SUFFIX for fmt in FORMATS]


@pytest.mark.parametrize("kind, fmt", CASES, ids=[f"{k}-{f}" for k, f in CASES])
def test_every_file_type_and_format(tmp_path, kind, fmt):
    records, rows = FORMATS[fmt]
    path = write(tmp_path / f"data{SUFFIX[kind]}", records, kind)
    report = inspect(path, val_fraction=0.0)
    assert (report.format, report.rows, report.dropped["count"]) == (fmt, rows, 0)
    assert report.why and report.token_lengths["min"] > 0
    assert report.preview and all(p["tokens"] > 0 for p in report.preview)
    if fmt != "text":  # only the answers carry loss, and every answer is marked
        assert 0 < report.loss_tokens_fraction < 1
        assert "⟦" in report.preview[0]["marked"]
    else:
        assert report.loss_tokens_fraction == 1.0


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_zip_holding_one_file(tmp_path, fmt):
    records, rows = FORMATS[fmt]
    inner = write(tmp_path / "inner.jsonl", records, "jsonl")
    archive = tmp_path / "upload.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(inner, "folder/train.jsonl")
        zf.writestr("folder/README.md", "not data")
    report = inspect(archive)
    assert (report.format, report.rows) == (fmt, rows) and "zip" in report.note


@pytest.mark.parametrize("body, mode, rows", [
    ("First block\nstill first.\n\nSecond block.\n\n\nThird.\n", "blank-line-separated block", 3),
    ("line one\nline two\nline three\nline four\n", "one example per line", 4),
])
def test_txt_blocks_or_lines(tmp_path, body, mode, rows):
    path = tmp_path / "notes.txt"
    path.write_text(body)
    report = inspect(path)
    assert report.format == "text" and report.rows == rows and mode in report.note


def _zip(tmp_path, entries, name="bad.zip", compress=zipfile.ZIP_DEFLATED, symlink=None):
    archive = tmp_path / name
    with zipfile.ZipFile(archive, "w", compress) as zf:
        for entry, data in entries.items():
            zf.writestr(entry, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (0o120777 << 16)
            zf.writestr(info, "/etc/passwd")
    return archive


def _bad_cases():
    jsonl = "\n".join(json.dumps(r) for r in ALPACA)
    return {
        "empty": ("empty.jsonl", b"", "file is empty"),
        "whitespace": ("blank.json", b"  \n\n ", "only whitespace"),
        "truncated_json": ("cut.json", json.dumps(ALPACA)[:-20].encode(), "looks truncated"),
        "jsonl_bad_line": ("bad.jsonl", (json.dumps(ALPACA[0]) + "\n{oops\n").encode(), "line 2: not valid JSON"),
        "jsonl_not_object": ("arr.jsonl", b'{"text": "ok"}\n[1, 2]\n', "line 2: expected a JSON object"),
        "latin1": ("latin.csv", "instruction,output\ncaf\u00e9,ok\n".encode("latin-1"), "line 2: not UTF-8 text"),
        "ragged_csv": ("ragged.csv", b"question,answer\nq1,a1\nq2,a2,extra\n", "line 3 row 2: has 3 fields but the header has 2"),
        "short_csv": ("short.tsv", b"question\tanswer\nq1\ta1\nq2\n", "has 1 fields but the header has 2"),
        "json_scalar": ("scalar.json", b"42", "expected an array of objects"),
        "json_two_arrays": ("two.json", json.dumps({"a": ALPACA, "b": ALPACA}).encode(), "found 2 (a, b)"),
        "bad_parquet": ("bad.parquet", b"PAR1 this is not parquet", "not a readable Parquet file"),
        "unsupported": ("sheet.xlsx", b"PK\x03\x04", "unsupported file type '.xlsx'"),
        "unknown_columns": ("odd.jsonl", b'{"foo": 1, "bar": 2}\n', "cannot tell the format from the columns"),
        "all_rows_bad": ("allbad.jsonl", b'{"instruction": "x", "output": ""}\n', "no usable examples as alpaca"),
        "mixed_types": ("mixed.jsonl", b'{"text": "a"}\n{"text": 5}\n{"text": [1]}\n', "row 3 column 'text'"),
        "two_files_zip": ("two.zip", {"a.jsonl": jsonl, "b.csv": "text\nx\n"}, "found 2: a.jsonl, b.csv"),
        "escape_zip": ("escape.zip", {"../evil.jsonl": jsonl}, "escapes the archive's folder"),
        "absolute_zip": ("abs.zip", {"/tmp/evil.jsonl": jsonl}, "absolute path"),
        "symlink_zip": ("link.zip", {}, "symbolic link"),
        "bomb_zip": ("bomb.zip", {"big.txt": "a" * 5_000_000}, "zip bomb"),
    }


BAD = _bad_cases()


@pytest.mark.security
@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_names_the_problem(tmp_path, case):
    name, content, message = BAD[case]
    if name.endswith(".zip"):
        path = _zip(tmp_path, content, name, symlink="data.jsonl" if case == "symlink_zip" else None)
    else:
        path = tmp_path / name
        path.write_bytes(content)
    with pytest.raises(DataFileError) as err:
        inspect(path)
    assert message in str(err.value)
    assert name in str(err.value) or "zip" in name


def test_numbers_beside_text_become_text(tmp_path):
    path = tmp_path / "n.jsonl"
    path.write_text('{"question": "2+3?", "answer": 5}\n{"question": "Name?", "answer": "Ada"}\n')
    report = inspect(path)
    assert report.rows == 2 and "read as text" in report.note and "⟦5" in report.preview[0]["marked"]


@pytest.mark.security
def test_size_limit(tmp_path):
    path = write(tmp_path / "a.jsonl", ALPACA, "jsonl")
    with pytest.raises(DataFileError, match="over the limit of 100"):
        inspect(path, max_bytes=100)


@pytest.mark.parametrize("fmt, message", [("sharegpt", "needs a conversations column"),
                                          ("text", "needs one text column"),
                                          ("nonsense", "unknown format 'nonsense'")])
def test_format_override_that_does_not_fit(tmp_path, fmt, message):
    path = write(tmp_path / "a.jsonl", ALPACA, "jsonl")
    with pytest.raises(DataFileError, match=message):
        inspect(path, format=fmt)


def test_override_and_mapping(tmp_path):
    rows = [{"q": "Why?", "a": "Because.", "persona": "a teacher"}, {"q": "How?", "a": "Carefully.", "persona": ""}]
    path = write(tmp_path / "custom.csv", rows, "csv")
    with pytest.raises(DataFileError, match="cannot tell the format"):
        inspect(path)
    report = inspect(path, mapping={"prompt": "q", "response": "a", "system": "persona"})
    assert report.format == "mapped" and report.rows == 2
    assert "a teacher" in report.preview[0]["marked"] and "⟦Because." in report.preview[0]["marked"]
    with pytest.raises(DataFileError, match="missing nope"):
        inspect(path, mapping={"prompt": "nope", "response": "a"})
    text = inspect(write(tmp_path / "t.jsonl", ALPACA, "jsonl"), format="alpaca")
    assert text.confidence == "user"


def test_dropped_rows_are_reported_with_reasons(tmp_path):
    rows = ALPACA + [{"instruction": "", "input": "", "output": "x"}, {"instruction": "Q", "input": "", "output": None}]
    report = inspect(write(tmp_path / "a.jsonl", rows, "jsonl"))
    assert report.rows == 3 and report.dropped["count"] == 2
    assert report.dropped["first"] == [{"row": 4, "reason": "'instruction' is empty"},
                                       {"row": 5, "reason": "'output' is missing"}]


def test_sharegpt_unknown_role_dropped(tmp_path):
    rows = SHAREGPT + [{"conversations": [{"from": "robot", "value": "beep"}]}]
    report = inspect(write(tmp_path / "s.json", rows, "json"))
    assert report.rows == 2 and "unknown from 'robot'" in report.dropped["first"][0]["reason"]


def test_loss_marks_every_assistant_turn_and_train_on_prompt(tmp_path):
    path = write(tmp_path / "s.jsonl", SHAREGPT, "jsonl")
    report = inspect(path)
    marked = report.preview[0]["marked"]
    assert "⟦Hi there.<|im_end|>⟧" in marked and "⟦Goodbye.<|im_end|>⟧" in marked
    assert "⟦Hello" not in marked and "Be kind." in marked
    everything = inspect(path, train_on_prompt=True)
    assert everything.loss_tokens_fraction == 1.0 and everything.preview[0]["marked"].startswith("⟦<s>")


def test_plain_template_without_chat_template(tmp_path):
    from workbench.data import load_tokenizer

    tok = load_tokenizer("tiny")
    tok.chat_template = None
    report = inspect(write(tmp_path / "a.jsonl", ALPACA, "jsonl"), tokenizer=tok)
    assert "plain" in report.template
    assert report.preview[0]["marked"].startswith("### User:\nName a colour.\n\n### Assistant:\n⟦Blue.</s>⟧")


def test_lengths_cutoff_duplicates_and_split(tmp_path):
    rows = [{"text": "word " * n} for n in range(1, 201)] + [{"text": "word " * 5}]
    report = inspect(write(tmp_path / "t.jsonl", rows, "jsonl"), cutoff=64, val_fraction=0.1, seed=7)
    t = report.token_lengths
    assert t["min"] <= t["p50"] <= t["p95"] <= t["max"] and sum(t["histogram"]["counts"]) == 201
    assert len(t["histogram"]["edges"]) == len(t["histogram"]["counts"]) + 1
    assert 0 < report.truncated_fraction < 1 and report.cutoff == 64
    assert report.suggested_cutoff in (128, 256) and report.duplicates == 1
    assert report.split == {"train": 181, "validation": 20, "seed": 7, "val_fraction": 0.1}
    train, val = split_indices(201, 0.1, 7)
    assert (len(train), len(val)) == (181, 20) and not set(train) & set(val)
    assert split_indices(201, 0.1, 7) == (train, val)  # fixed seed, same split


def test_cli_inspect_json_and_bad_file(tmp_path):
    path = write(tmp_path / "a.jsonl", ALPACA, "jsonl")
    out = subprocess.run([sys.executable, "-m", "workbench", "data", "inspect", str(path), "--json"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    for key in ("format", "why", "rows", "columns", "dropped", "token_lengths", "truncated_fraction",
                "suggested_cutoff", "preview", "duplicates", "split"):
        assert key in data
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\nnot json\n')
    out = subprocess.run([sys.executable, "-m", "workbench", "data", "inspect", str(bad)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "bad.jsonl line 2" in out.stderr and "Traceback" not in out.stderr


def test_planner_takes_sequence_length_from_dataset(tmp_path):
    path = write(tmp_path / "t.jsonl", [{"text": "word " * n} for n in range(1, 50)], "jsonl")
    report = inspect(path)
    out = subprocess.run([sys.executable, "-m", "workbench", "plan", "--model", "tiny", "--method", "lora",
                          "--seq-len", f"p95:{path}", "--json"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["settings"]["seq_len"] == report.token_lengths["p95"]


def test_errors_are_workbench_errors():
    assert issubclass(DataFileError, WorkbenchError)
