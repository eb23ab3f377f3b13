"""The Chat tab's long operations and how they are cancelled: perplexity ("what changed"),
the task evaluation, and the per-browser stop flags behind every Cancel button.

A cancel must really stop the work, not only the browser's wait: gradio's ``cancels`` ends
the event, but a function running in a worker thread keeps going (and keeps the model's
lock). So every long operation registers a ``threading.Event`` under (browser session,
kind) while it runs (:func:`stop_flag`), passes it to the engine (which checks it between
texts and after every generated token), and the Cancel button sets it (:func:`cancel_work`).
Model and dataset text never goes into Markdown here: evaluation samples are table rows."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import gradio as gr

from ..chat import BASE, OperationCancelled
from ..errors import WorkbenchError
from .views import user_of

_STOPS: dict[tuple[str | None, str], set[threading.Event]] = {}
_STOPS_LOCK = threading.Lock()
SAMPLE_HEADERS = ["model", "row", "answer (plain text)", "reference"]
MAX_ADAPTERS = 3  # the Chat tab's limit (chat_tab re-exports it)
#: what a cancelled operation's message says, whichever lands last: the Cancel button's answer or
#: the operation's own end (gradio may or may not have dropped it by then)
CANCELLED = "Cancelled: the model stopped."


def _session(request) -> str | None:
    return getattr(request, "session_hash", None) if request is not None else None


@contextmanager
def stop_flag(kind: str, request=None) -> Iterator[threading.Event]:
    """A fresh stop event for one ``kind`` of operation ("chat", "arena", "perplexity",
    "evaluate") of the browser of ``request``, set by :func:`cancel_work` until the block ends."""
    key, event = (_session(request), kind), threading.Event()
    with _STOPS_LOCK:
        _STOPS.setdefault(key, set()).add(event)
    try:
        yield event
    finally:
        with _STOPS_LOCK:
            events = _STOPS.get(key, set())
            events.discard(event)
            if not events:
                _STOPS.pop(key, None)


def cancel_work(kind: str, request=None) -> int:
    """Set the stop events of the running ``kind`` operations of ``request``'s browser;
    returns how many there were."""
    with _STOPS_LOCK:
        events = list(_STOPS.get((_session(request), kind), ()))
    for event in events:
        event.set()
    return len(events)


GENERAL_SAMPLE_PARAGRAPHS = 12


def general_text() -> list[str]:
    """Bundled general English prose, paragraph by paragraph (``assets/demo/general_english.txt``,
    written for the project, CC0): text unrelated to any training data, for the forgetting check."""
    from ..paths import DEMO_DIR

    text = (DEMO_DIR / "general_english.txt").read_text(encoding="utf-8")
    return [p.strip() for p in text.split("\n\n") if len(p.strip()) > 40][:GENERAL_SAMPLE_PARAGRAPHS]


def run_texts(run_id: str, limit: int = 32) -> tuple[list[str], str]:
    """(texts, what they are): the run's validation examples as the model saw them, or its
    first training examples when it had no validation split."""
    from ..data import load_tokenizer, training_data
    from ..sessions import session_path
    from ..training.job import TrainJob

    job = TrainJob.load(session_path(run_id) / "job.json")
    tok = load_tokenizer(job.model)
    d = job.data
    _, train, val = training_data(d.path, tok, d.format, d.mapping, job.training_settings.seq_len, d.train_on_prompt,
                                  d.val_fraction, d.seed)
    split, name = (val, "validation split") if val is not None else (train, "training examples (no validation split)")
    return [tok.decode(ids) for ids in split["input_ids"][:limit]], name


def what_changed(model: str, run_ids: list[str] | None, request: gr.Request = None,
                 progress=gr.Progress()) -> tuple[str, list[list]]:
    """Perplexity of the base and each adapter on each run's data and on general text: what
    the adapter gained, and whether it forgot general ability (lower is better). Progress
    text by text; the Cancel button stops it before the next text."""
    from .chat_tab import engine_with

    run_ids = list(run_ids or [])[:MAX_ADAPTERS]
    if not run_ids:
        return "Pick at least one adapter.", []
    with stop_flag("perplexity", request) as stop:
        try:
            progress(0, desc="loading the model and the runs' texts")
            engine = engine_with(model, run_ids, user_of(request))
            general = general_text()
            jobs = [(run_id, *run_texts(run_id)) for run_id in run_ids]
            total = sum(2 * (len(texts) + len(general)) for _, texts, _ in jobs)
            done, rows = 0, []
            for run_id, texts, name in jobs:
                for who in (BASE, run_id):
                    scores = []
                    for what, batch in ((f"{run_id} {name}", texts), ("general text", general)):
                        def step(i, _n, offset=done, who=who, what=what):
                            progress((offset + i, total), desc=f"perplexity of {who} on {what}", unit="texts")
                        scores.append(round(engine.perplexity(batch, who, stop=stop, progress=step), 3))
                        done += len(batch)
                    rows.append([who, f"{run_id} {name}", *scores])
        except OperationCancelled:
            return CANCELLED, []
        except WorkbenchError as exc:
            return f"**{exc}**", []
    return ("Perplexity (lower is better): on the run's own data the adapter should beat the base; on general "
            "text a much higher value than the base means it forgot general ability."), rows


def sample_rows(results: list[dict], per_contender: int = 1, chars: int = 500) -> list[list]:
    """[model, row, answer, reference] of each contender's first samples, as plain table
    cells (the model's text is never put into Markdown)."""
    return [[r["contender"], s["row"], s["answer"][:chars], s["reference"][:chars]]
            for r in results for s in r["samples"][:per_contender]]


def task_evaluation(model: str, run_ids: list[str] | None, data_file: str | None, limit: float | None,
                    request: gr.Request = None, progress=gr.Progress()):
    """Base and the chosen adapters on held-out prompts (:mod:`workbench.evaluation`):
    (message, table rows, bar chart, sample rows). Progress batch by batch; Cancel stops
    generation at the next token."""
    from ..charts import eval_bars
    from ..evaluation import MAX_CASES, evaluate_runs, table_rows
    from .chat_tab import engine_with

    run_ids = list(run_ids or [])[:MAX_ADAPTERS]
    if not run_ids:
        return ("Pick at least one adapter: the evaluation compares it with the base on held-out prompts.", [], None,
                [])
    with stop_flag("evaluate", request) as stop:
        try:
            count = int(limit) if limit not in (None, "") else 20
            if not 1 <= count <= MAX_CASES:
                raise WorkbenchError(f"Prompts: between 1 and {MAX_CASES}, got {count}")
            progress(0, desc="loading the model and the held-out prompts")
            engine = engine_with(model, run_ids, user_of(request))

            def step(done, total, who):
                progress((done, total), desc=f"evaluating {who}", unit="prompts")

            report = evaluate_runs(run_ids, data_file or None, count, user_of(request), engine=engine, stop=stop,
                                   progress=step)
        except OperationCancelled:
            return CANCELLED, [], None, []
        except WorkbenchError as exc:
            return f"**{exc}**", [], None, []
    return (f"{report['prompts']} prompts from {report['data']}; {report['decoding']}. Saved with each run "
            "(`eval.json`). A first answer of each model is in the samples table below."), \
        table_rows(report["results"]), eval_bars(report["results"]), sample_rows(report["results"])
