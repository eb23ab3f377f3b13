"""Task evaluation: scoring, held-out sources, the CLI and the page function (tiny model)."""

import json

import pytest

from workbench.errors import WorkbenchError
from workbench.evaluation import Case, cases_from, parse_literal, score

REF = '{"name": "Ana Ruiz", "item": "mug", "quantity": 3, "city": "Porto"}'


def _cases(refs):
    return [Case(i + 1, [{"role": "user", "content": f"q{i}"}], r) for i, r in enumerate(refs)]


def test_scores_exact_match_parse_rate_and_fields():
    cases = _cases([REF, REF, REF, REF])
    answers = [REF,                                                             # exact
               '```json\n{"name": "ana ruiz", "item": "mug", "quantity": 3.0, "city": "Porto"}\n```',  # fenced, equal
               '{"name": "Ana Ruiz", "item": "cup", "quantity": "3"}',          # wrong item, "3" is not 3, no city
               "The customer is Ana Ruiz from Porto."]                          # prose: does not parse
    s = score("base", answers, cases)
    assert s.exact_match == 0.25 and s.parse_rate == 0.75
    assert s.field_accuracy == {"name": 0.75, "item": 0.5, "quantity": 0.5, "city": 0.5}
    assert s.mean_field_accuracy == pytest.approx(0.5625)


def test_python_literals_and_plain_text_references():
    assert parse_literal("{'a': 1, 'b': [True, None]}") == (True, {"a": 1, "b": [True, None]})
    assert parse_literal("__import__('os')")[0] is False  # literal_eval never runs code
    assert parse_literal("[" * 100_000 + "]" * 100_000)[0] is False  # nested too deep: not parsed, no crash
    s = score("a", ["[1, 2]", "[1, 3]"], _cases(["[1, 2]", "[1, 2]"]))
    assert s.parse_rate == 1.0 and s.exact_match == 0.5 and s.field_accuracy == {}
    text = score("a", ["Paris", " Paris "], _cases(["Paris", "Lyon"]))
    assert text.parse_rate is None and text.exact_match == 0.5 and text.mean_field_accuracy is None


def test_cases_come_from_the_files_conversations(tmp_path):
    f = tmp_path / "h.jsonl"
    f.write_text(json.dumps({"instruction": "Extract.", "input": "Ana wants a mug.", "output": REF}) + "\n")
    [case] = cases_from(f)
    assert case.prompt == [{"role": "user", "content": "Extract.\n\nAna wants a mug."}] and case.reference == REF
    text = tmp_path / "t.txt"
    text.write_text("just some text\n")
    with pytest.raises(WorkbenchError, match="no prompt and answer"):
        cases_from(text)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """A tiny LoRA run on a copy of the demo data (so its _heldout sibling is found)."""
    import os
    import shutil

    from workbench.paths import DEMO_DIR
    from workbench.runspec import Schedule
    from workbench.sessions import session_path
    from workbench.training.launcher import make_job, prepare
    from workbench.training.worker import main

    root = tmp_path_factory.mktemp("eval")
    os.environ["WORKBENCH_SESSIONS"] = str(root / "sessions")
    for name in ("orders.jsonl", "orders_heldout.jsonl"):
        shutil.copy(DEMO_DIR / name, root / name)
    sid = prepare(make_job("tiny", "lora", str(root / "orders.jsonl"), settings={"device": "cpu", "seq_len": 128},
                           schedule=Schedule(max_steps=3)))
    assert main([str(session_path(sid) / "job.json")]) == 0
    return sid, root


def test_cli_eval_scores_base_and_adapter_and_saves_them(demo_run, capsys):
    from workbench.cli import main
    from workbench.sessions import session_path

    sid, _ = demo_run
    assert main(["eval", sid, "--limit", "4", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["prompts"] == 4 and "orders_heldout.jsonl" in report["data"]
    assert [r["contender"] for r in report["results"]] == ["base", sid]
    for r in report["results"]:
        assert r["cases"] == 4 and 0 <= r["exact_match"] <= 1 and set(r["field_accuracy"]) == {
            "name", "item", "quantity", "city"} and len(r["samples"]) == 4
    assert json.loads((session_path(sid) / "eval.json").read_text())["results"] == report["results"]
    assert main(["eval", sid, "--limit", "2"]) == 0
    assert "exact match %" in capsys.readouterr().out
    assert main(["eval", sid, "--limit", "0"]) == 2
    assert main(["eval", "no-such-run"]) == 2


def test_batched_answers_equal_one_at_a_time(demo_run):
    from workbench.chat import BASE, ChatEngine, Sampling
    from workbench.sessions import session_path
    from workbench.training.checkpoints import newest_complete

    sid, root = demo_run
    engine = ChatEngine("tiny")
    engine.add_adapter(sid, newest_complete(session_path(sid)))
    cases = cases_from(root / "orders_heldout.jsonl", limit=3)
    for who in (BASE, sid):
        batch = engine.answer_batch([c.prompt for c in cases], who, 10)
        single = [engine.answer(c.prompt, who, Sampling(max_new_tokens=10, temperature=0.0)) for c in cases]
        assert batch == single


def test_page_evaluation_table_and_chart(demo_run, tmp_path):
    from workbench.ui.chat_tab import task_evaluation

    sid, _ = demo_run
    message, rows, chart, samples = task_evaluation("tiny", [sid], None, 3)
    assert "3 prompts" in message and [r[0] for r in rows] == ["base", sid] and len(chart.data) == 3
    assert [s[0] for s in samples] == ["base", sid]  # answers in table cells, not in the Markdown message
    message, rows, chart, samples = task_evaluation("tiny", [], None, 3)
    assert "Pick at least one adapter" in message and rows == [] and chart is None and samples == []
    bad = tmp_path / "bad.txt"
    bad.write_text("plain text only\n")
    message, rows, *_ = task_evaluation("tiny", [sid], str(bad), 3)
    assert "no prompt and answer" in message and rows == []


def test_the_demo_dataset_uploaded_alone_keeps_its_held_out_prompts_and_preset(tmp_path, monkeypatch):
    """The page uploads a lone copy of the demo file: the run still gets the bundled held-out
    prompts, and the Train tab takes the demo's schedule (another file leaves the form alone)."""
    import shutil

    from workbench.paths import DEMO_DATASET, DEMO_HELDOUT, DEMO_SETTINGS
    from workbench.sessions import session_path
    from workbench.training.launcher import make_job, prepare
    from workbench.ui.train_tab import demo_schedule

    monkeypatch.setenv("WORKBENCH_SESSIONS", str(tmp_path / "sessions"))
    (tmp_path / "upload").mkdir()
    copy = tmp_path / "upload" / "orders.jsonl"
    shutil.copy(DEMO_DATASET, copy)
    sid = prepare(make_job("tiny", "lora", str(copy), settings={"device": "cpu"}))
    assert (session_path(sid) / "dataset_heldout.jsonl").read_bytes() == DEMO_HELDOUT.read_bytes()
    assert demo_schedule(str(copy)) == (DEMO_SETTINGS["max_steps"], DEMO_SETTINGS["learning_rate"])
    other = tmp_path / "upload" / "other.jsonl"
    other.write_text(DEMO_DATASET.read_text()[:-2])
    assert all(u == {"__type__": "update"} for u in demo_schedule(str(other)))
    sid = prepare(make_job("tiny", "lora", str(other), settings={"device": "cpu"}))
    assert not (session_path(sid) / "dataset_heldout.jsonl").exists()
