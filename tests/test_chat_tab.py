"""The Chat tab as a non-engineer meets it (issue 18): model text shown as plain text,
an adapter list that follows finished runs, the arena's A/B votes, a note on the random
``tiny`` model, and long operations that a Cancel really stops (the engine checks the stop
flag between texts and after every token, and serves the next request at once)."""

import json
import threading
import time

import pytest

from workbench.chat import BASE, ChatEngine, OperationCancelled, Sampling
from workbench.training.job import Schedule
from workbench.training.launcher import make_job, prepare

HOSTILE = "**bold** # head [link](http://evil) <img src=x onerror=alert(1)>"
PROMPT = "Say the colour of the sky."


@pytest.fixture(scope="module")
def run_id(tmp_path_factory):
    """One finished tiny LoRA run (a few steps: only its adapter and data matter here)."""
    import os

    from workbench.sessions import session_path
    from workbench.training.worker import main

    root = tmp_path_factory.mktemp("chat-tab")
    os.environ["WORKBENCH_SESSIONS"] = str(root / "sessions")
    data = root / "sky.jsonl"
    data.write_text("\n".join(json.dumps({"instruction": PROMPT, "output": "Blue."}) for _ in range(24)))
    (root / "sky_heldout.jsonl").write_text(
        "\n".join(json.dumps({"instruction": f"{PROMPT} {i}", "output": "Blue."}) for i in range(40)))
    sid = prepare(make_job("tiny", "lora", str(data), schedule=Schedule(max_steps=4, learning_rate=1e-3)))
    assert main([str(session_path(sid) / "job.json")]) == 0
    yield sid
    os.environ.pop("WORKBENCH_SESSIONS", None)


class Parrot:
    """An engine whose every answer is ``HOSTILE``: what a dataset could teach an adapter."""
    adapters = []

    def stream(self, prompt, who, sampling, stop=None):
        yield from (HOSTILE[:20], HOSTILE[20:])

    def answer(self, prompt, who, sampling, stop=None):
        return HOSTILE


def test_model_text_is_shown_literally_never_as_markdown(monkeypatch):
    from workbench.ui import chat_tab
    from workbench.ui.chat_long import sample_rows

    monkeypatch.setattr(chat_tab, "engine_with", lambda *a, **k: Parrot())
    *_, last = chat_tab.chat_answers("tiny", [], PROMPT, 0, 0.0, 8)
    assert last[0] == HOSTILE  # exactly the model's text: no name header, no formatting added
    state, prompt, a, b, message, _ = chat_tab.arena_next("tiny", ["run"], HOSTILE, 0, 0.0, 8, 0)
    assert (prompt, a, b) == (HOSTILE, HOSTILE, HOSTILE)
    assert "bold" not in message and "evil" not in message  # the Markdown message holds none of it
    results = [{"contender": BASE, "samples": [{"row": 3, "answer": HOSTILE, "reference": HOSTILE}]}]
    assert sample_rows(results) == [[BASE, 3, HOSTILE, HOSTILE]]


def test_evaluation_message_holds_no_answer(run_id):
    from workbench.ui.chat_long import task_evaluation

    message, rows, _, samples = task_evaluation("tiny", [run_id], None, 3)
    assert [s[0] for s in samples] == [BASE, run_id] and len(rows) == 2
    for _, _, answer, reference in samples:
        assert reference == "Blue."
        assert answer.strip() == "" or answer not in message
    assert "Blue." not in message


def test_the_adapter_list_changes_only_when_the_runs_do():
    from workbench.ui.chat_tab import adapter_columns, refreshed_adapters

    one = [("r1 (lora, a.jsonl)", "r1")]
    two = [("r2 (lora, b.jsonl)", "r2"), *one]
    assert refreshed_adapters(one, ["r1"], [list(c) for c in one]) is None  # nothing new: the page is left alone
    assert refreshed_adapters(two, ["r1"], one) == ([list(c) for c in two], ["r1"])  # the selection stays
    assert refreshed_adapters(one, ["r1", "gone"], None) == ([list(c) for c in one], ["r1"])
    assert refreshed_adapters([], ["r1"], one) == ([], [])  # another model: nothing of it is kept
    columns = adapter_columns(["r2"], two)
    assert columns[0]["label"] == "r2 (lora, b.jsonl)" and columns[0]["visible"]
    assert [c["visible"] for c in columns[1:]] == [False, False]


def test_finished_runs_appear_in_the_list(run_id):
    from workbench.ui.chat_tab import finished_adapters, refreshed_adapters

    fresh = refreshed_adapters(finished_adapters("tiny"), [], [])
    assert fresh and run_id in [value for _, value in fresh[0]]


def test_the_chat_tab_says_when_the_model_is_random_noise():
    from workbench.smollm2 import SMOLLM2_NAME
    from workbench.ui.chat_tab import model_note

    note = model_note("tiny")
    assert "random weights" in note and "noise" in note and SMOLLM2_NAME in note
    assert model_note(SMOLLM2_NAME) == "" and model_note(None) == ""


def test_stop_flags_belong_to_one_browser_and_one_kind():
    from types import SimpleNamespace

    from workbench.ui.chat_long import cancel_work, stop_flag

    mine, other = SimpleNamespace(session_hash="me"), SimpleNamespace(session_hash="you")
    with stop_flag("perplexity", mine) as stop:
        assert cancel_work("perplexity", other) == 0 and cancel_work("evaluate", mine) == 0 and not stop.is_set()
        assert cancel_work("perplexity", mine) == 1 and stop.is_set()
    assert cancel_work("perplexity", mine) == 0  # finished work leaves nothing behind


def _force_long(engine: ChatEngine) -> None:
    """Answers of 200+ new tokens run to full length (only a stop can end them early)."""
    real = engine._model.generate

    def generate(**kwargs):
        if kwargs["max_new_tokens"] >= 200:
            kwargs["min_new_tokens"] = kwargs["max_new_tokens"]
        return real(**kwargs)

    engine._model.generate = generate


def test_cancel_stops_perplexity_between_texts_and_frees_the_engine():
    engine = ChatEngine("tiny", wait_seconds=2)
    texts = [f"{PROMPT} number {i}" for i in range(200)]
    stop, scored = threading.Event(), []

    def progress(done, total):
        scored.append(done)
        if done == 3:
            stop.set()  # the user presses Cancel while the third text is scored

    with pytest.raises(OperationCancelled, match="cancelled"):
        engine.perplexity(texts, BASE, stop=stop, progress=progress)
    assert scored == [1, 2, 3] and scored[-1] < len(texts)
    started = time.perf_counter()
    assert engine.perplexity(texts[:2], BASE) > 0 and time.perf_counter() - started < 2  # served at once


def test_cancel_stops_generation_mid_answer_and_frees_the_engine():
    engine = ChatEngine("tiny", wait_seconds=2)
    engine.tokenizer  # loads the model
    _force_long(engine)
    for ask in (lambda stop: engine.answer(PROMPT, BASE, Sampling(max_new_tokens=900, temperature=0.0), stop=stop),
                lambda stop: engine.answer_batch([[{"role": "user", "content": PROMPT}]], BASE, 900, stop=stop)):
        stop = threading.Event()
        threading.Timer(0.3, stop.set).start()
        started = time.perf_counter()
        with pytest.raises(OperationCancelled):
            ask(stop)
        full = time.perf_counter()
        assert engine.answer(PROMPT, BASE, Sampling(max_new_tokens=4, temperature=0.0))  # the next one is served
        assert full - started < 5, f"the cancelled answer took {full - started:.1f} s"


class CancelAt:
    """A stand-in for ``gr.Progress`` that presses Cancel (for the browser of no request)
    at its ``at``-th update, counting the updates."""

    def __init__(self, kind: str, at: int) -> None:
        self.kind, self.at, self.calls = kind, at, []

    def __call__(self, progress, desc=None, total=None, unit="steps"):
        from workbench.ui.chat_long import cancel_work

        self.calls.append((progress, desc))
        if len(self.calls) == self.at:
            assert cancel_work(self.kind) == 1  # the operation's stop flag is registered while it runs


def test_cancel_stops_the_pages_long_operations(run_id):
    from workbench.sessions import session_path
    from workbench.ui.chat_long import CANCELLED, task_evaluation, what_changed
    from workbench.ui.chat_tab import arena_next

    cancel = CancelAt("perplexity", 3)
    message, rows = what_changed("tiny", [run_id], progress=cancel)
    # the cancel crosses to the inference worker while it scores: it stops within a text or two
    assert message == CANCELLED and rows == [] and 3 <= len(cancel.calls) <= 5
    message, rows = what_changed("tiny", [run_id])  # the engine serves the next request
    assert "lower is better" in message and len(rows) == 2

    (session_path(run_id) / "eval.json").unlink(missing_ok=True)
    cancel = CancelAt("evaluate", 2)  # after the loading step: during the base's first batch
    message, rows, chart, samples = task_evaluation("tiny", [run_id], None, 40, progress=cancel)
    assert message == CANCELLED and rows == [] and len(cancel.calls) == 2
    assert not (session_path(run_id) / "eval.json").exists()  # an incomplete evaluation is not saved

    cancel = CancelAt("arena", 2)  # while answer A is being written
    state, *_, message, index = arena_next("tiny", [run_id], PROMPT, 0, 0.0, 8, 0, progress=cancel)
    assert state is None and message == CANCELLED and index == 0
    state, *_, message, index = arena_next("tiny", [run_id], PROMPT, 0, 0.0, 8, 0)
    assert state and index == 1
