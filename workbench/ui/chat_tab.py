"""Tab 6, Chat: the base model and finished adapters answer the same prompt, side by side,
with the same seed and sampling, streamed token by token. One base model in memory per
base name, in an inference worker process (``workbench.inference``: the server sends it
requests and streams its answers; it claims its memory on its device beside training runs,
and its line on the tab says what it claimed and holds).

What a model writes is shown as plain text (a read-only textbox per contender, labelled
with its name), never as Markdown: a dataset could otherwise teach an adapter to answer
with links or images. The adapter list follows finished runs by itself (a timer and the
model's change); long operations show progress and have a Cancel button
(:mod:`workbench.ui.chat_long`); the arena is blind A/B with a vote under each answer."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from contextlib import closing

import gradio as gr

from ..chat import BASE, ModelBusyError, OperationCancelled, PromptTooLongError, Sampling
from ..errors import WorkbenchError
from ..evaluation import TABLE_HEADERS
from ..inference.client import InferenceClient, WorkerGone, describe
from ..reservations import NoRoom
from ..methods import METHODS
from .chat_long import (CANCELLED, MAX_ADAPTERS, SAMPLE_HEADERS, cancel_work, general_text, run_texts, sample_rows,
                        stop_flag, task_evaluation, what_changed)
from .views import user_of

__all__ = ["MAX_ADAPTERS", "adapter_columns", "arena_next", "arena_vote", "build_chat_tab", "chat_answers",
           "engine_with", "finished_adapters", "general_text", "model_note", "refreshed_adapters", "run_texts",
           "sample_rows", "task_evaluation", "what_changed"]
MAX_ENGINES = 2  # base models kept in inference workers at once
_ENGINES: dict[str, InferenceClient] = {}
_ENGINES_LOCK = threading.Lock()


def engine_with(model: str, run_ids: list[str], user: str | None = None) -> InferenceClient:
    """The one inference worker of ``model`` (started by its first request), with the
    adapters of ``run_ids`` attached: runs of ``user`` (when signed in) trained on this model."""
    from ..safety import check_model_name
    from ..sessions import check_access
    from ..training.job import TrainJob

    model = check_model_name(model)
    for run_id in run_ids:
        trained_on = TrainJob.load(check_access(run_id, user) / "job.json").model
        if trained_on != model:
            raise WorkbenchError(f"run {run_id} was trained on {trained_on}, not {model}")
    with _ENGINES_LOCK:
        if model not in _ENGINES:
            while len(_ENGINES) >= MAX_ENGINES:  # the least recently added base model goes
                _ENGINES.pop(next(iter(_ENGINES))).close()
            _ENGINES[model] = InferenceClient(model)
        engine = _ENGINES[model]
    for run_id in run_ids:
        if run_id not in engine.adapters:
            engine.add_adapter(run_id, adapter_folder(run_id))
    return engine


def worker_line(model: str | None) -> str:
    """What the tab says about ``model``'s inference worker: where it runs, what it claimed
    (the plan's parts) and holds now; never starts one."""
    client = _ENGINES.get(model) if isinstance(model, str) else None
    return describe(client.info() if client is not None else None, client)


def release_worker(model: str | None) -> str:
    """Stop ``model``'s inference worker now (its memory goes back to training runs)."""
    client = _ENGINES.get(model) if isinstance(model, str) else None
    if client is not None:  # kept, with its adapters: the next answer starts a worker again
        client.close()
    return worker_line(model)


def finished_adapters(model: str, user: str | None = None) -> list[tuple[str, str]]:
    """(label, run id) of ``user``'s runs on ``model`` with a peft adapter to load: the final
    one of a completed run, or the newest complete checkpoint of one still running."""
    from ..sessions import list_sessions

    out = []
    for s in list_sessions(user):
        if s.model != model or not METHODS[s.method].uses_peft:  # only peft methods save adapters
            continue
        if s.state == "completed" and s.final_adapter:
            out.append((f"{s.id} ({s.method}, {s.dataset})", s.id))
        elif s.checkpoints and s.state in ("running", "loading", "saving"):
            out.append((f"{s.id} ({s.method}, {s.dataset}; {s.checkpoints[-1].rsplit('/', 1)[-1]}, running)", s.id))
    return out


def adapter_folder(run_id: str):
    """The folder to load for a run: its final adapter, else its newest complete checkpoint."""
    from ..sessions import session_path
    from ..training.checkpoints import newest_complete

    folder = newest_complete(session_path(run_id))
    if folder is None:
        raise WorkbenchError(f"run {run_id} has no complete adapter or checkpoint yet")
    return folder


def sampling_from(seed, temperature, max_new_tokens) -> Sampling:
    """The form's seed, temperature and max new tokens as :class:`Sampling`; a value that is
    missing or not a finite number is a message naming the field (API callers send anything)."""
    values = {}
    for field, value in (("Seed", seed), ("Temperature", temperature), ("Max new tokens", max_new_tokens)):
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if not math.isfinite(number) or (field != "Temperature" and number != int(number)):
            raise WorkbenchError(f"{field}: give a {'number' if field == 'Temperature' else 'whole number'}, "
                                 f"got {value!r}")
        values[field] = number
    return Sampling(max_new_tokens=int(values["Max new tokens"]), temperature=values["Temperature"],
                    seed=int(values["Seed"]))


def chat_answers(model: str, run_ids: list[str] | None, prompt: str, seed: float, temperature: float,
                 max_new_tokens: float, request: gr.Request = None) -> Iterator[tuple[str, ...]]:
    """Yields the plain texts of every column as they grow: base first, then each adapter
    (the columns' labels say who is who, :func:`adapter_columns`). A cancel -- closing this
    generator, or the Stop button's flag -- ends generation at the next token."""
    run_ids = list(run_ids or [])[:MAX_ADAPTERS]
    columns = ["" for _ in range(1 + MAX_ADAPTERS)]
    if not isinstance(prompt, str) or not prompt.strip():
        columns[0] = "Type a prompt."
        yield tuple(columns)
        return
    try:
        sampling = sampling_from(seed, temperature, max_new_tokens)
        engine = engine_with(model, run_ids, user_of(request))
    except WorkbenchError as exc:
        columns[0] = f"Cannot chat: {exc}"
        yield tuple(columns)
        return
    with stop_flag("chat", request) as stop:
        for column, who in enumerate([BASE, *run_ids]):
            if stop.is_set():
                columns[column] = "(stopped)"
                yield tuple(columns)
                return
            try:
                with closing(engine.stream(prompt, who, sampling, stop=stop)) as pieces:
                    for piece in pieces:
                        columns[column] += piece
                        yield tuple(columns)
            except (PromptTooLongError, ModelBusyError, NoRoom, WorkerGone) as exc:  # the same for the rest: said once
                columns[column] += ("\n\n" if columns[column] else "") + f"Cannot answer: {exc}"
                yield tuple(columns)
                return
            except WorkbenchError as exc:
                columns[column] += ("\n\n" if columns[column] else "") + f"Cannot answer: {exc}"
                yield tuple(columns)


def adapter_columns(run_ids: list[str] | None, choices: list | None) -> list[dict]:
    """Label and visibility of the adapter answer boxes: one per picked run, labelled with
    its entry of the adapter list (``choices``: [label, run id] pairs)."""
    labels = {value: label for label, value in (choices or [])}
    picked = list(run_ids or [])[:MAX_ADAPTERS]
    return [gr.update(label=labels.get(picked[i], picked[i]), visible=True) if i < len(picked)
            else gr.update(label=f"adapter {i + 1}", visible=False) for i in range(MAX_ADAPTERS)]


def refreshed_adapters(choices: list, selected: list[str] | None, known: list | None):
    """(new choices, kept selection), or None when ``choices`` equal the ``known`` ones:
    then the page's list is left alone (no flicker, a half-made selection stays)."""
    choices = [list(c) for c in choices]
    if known is not None and choices == [list(c) for c in known]:
        return None
    values = {value for _, value in choices}
    return choices, [v for v in (selected or []) if v in values]


def model_note(model: str | None) -> str:
    """What the Chat tab says about the model picked on the Model & method tab ("" for a
    model with real weights)."""
    from ..smollm2 import SMOLLM2_NAME
    from ..tiny import TINY_NAME

    if model == TINY_NAME:
        return (f"**The model is `{TINY_NAME}`: random weights, so every answer here is noise** (it only shows "
                f"that chat, adapters and the arena work). Pick **{SMOLLM2_NAME}** on the *Model & method* tab "
                "for real answers.")
    return ""


def arena_next(model: str, run_ids: list[str] | None, prompts: str, seed: float, temperature: float,
               max_new_tokens: float, index: int, request: gr.Request = None, progress=gr.Progress()):
    """(round for the server, prompt, answer A, answer B, message, next index). Who is A and
    who is B stays on the server until the vote; the prompt and answers are plain text."""
    from ..arena import next_round

    with stop_flag("arena", request) as stop:
        try:
            contenders = [BASE, *list(run_ids or [])[:MAX_ADAPTERS]]
            sampling = sampling_from(seed, temperature, max_new_tokens)
            if not isinstance(prompts, (str, type(None))):
                raise WorkbenchError("arena: the prompt set is text, one prompt per line")
            r = next_round((prompts or "").splitlines(), contenders, int(index or 0), sampling.seed)
            progress(0, desc="loading the model")
            engine = engine_with(model, contenders[1:], user_of(request))
            answers = []
            for i, (name, who) in enumerate((("A", r.left), ("B", r.right))):
                progress((i, 2), desc=f"writing answer {name}", unit="answers")
                answers.append(engine.answer(r.prompt, who, sampling, stop=stop))
        except OperationCancelled:
            return None, "", "", "", CANCELLED, index
        except WorkbenchError as exc:
            return None, "", "", "", f"**{exc}**", index
    state = {"prompt": r.prompt, "left": r.left, "right": r.right, "contenders": contenders}
    return (state, r.prompt, *answers, f"Round {int(index or 0) + 1}: which answer is better? Vote below it, or "
            "Tie.", int(index or 0) + 1)


MAX_PROMPT_FILE_BYTES = 1 << 20


def read_prompt_file(path: str | None) -> str:
    """An uploaded prompt set (UTF-8 text, one prompt per line, at most 1 MiB) for the arena."""
    from pathlib import Path

    if not path:
        return gr.update()
    data = Path(path).read_bytes()[: MAX_PROMPT_FILE_BYTES + 1]
    if len(data) > MAX_PROMPT_FILE_BYTES:
        return "(prompt file over 1 MiB: paste a shorter set)"
    try:
        return "\n".join(line.strip() for line in data.decode("utf-8-sig").splitlines() if line.strip())
    except UnicodeDecodeError:
        return "(the prompt file is not UTF-8 text)"


def arena_vote(choice: str, state: dict | None):
    """(message revealing who was who, standings rows, cleared round)."""
    from ..arena import record, standings

    if not state:
        return "Start a round first.", [], None
    left, right = state["left"], state["right"]
    if choice == "A":
        record(left, right)
    elif choice == "B":
        record(right, left)
    else:
        record(left, right, tie=True)
    return (f"A was **{left}**, B was **{right}**; vote saved with the runs. Press *Next pair* for another round.",
            standings(state["contenders"]), None)


ADAPTER_POLL_SECONDS = 5  # how often the adapter list looks for runs that finished


def _cancellable(start: gr.Button, cancel: gr.Button, kind: str, message, fn, inputs, outputs, **options):
    """``start`` runs ``fn``; ``cancel`` (shown only meanwhile) stops it for real (see
    :mod:`workbench.ui.chat_long`) and says so in ``message``. Returns the work's event."""
    start.click(lambda: gr.update(visible=True), None, cancel, api_visibility="private", show_progress="hidden")
    work = start.click(fn, inputs, outputs, **options)
    work.then(lambda: gr.update(visible=False), None, cancel, api_visibility="private", show_progress="hidden")

    def stop(request: gr.Request):  # shown only while the work is queued or running: either way it ends now
        cancel_work(kind, request)
        return (CANCELLED, gr.update(visible=False)) if message is not None else gr.update(visible=False)

    cancel.click(stop, None, [message, cancel] if message is not None else cancel, cancels=[work],
                 api_visibility="private", show_progress="hidden")
    return work


def build_chat_tab(plan_inputs: dict, app: gr.Blocks) -> None:
    """The Chat tab; ``app``: the page, whose load fills the adapter list at once."""
    model = plan_inputs["inputs"]["model"]
    note = gr.Markdown(model_note(model.value), visible=bool(model_note(model.value)))
    known = gr.State(None)  # the adapter list's choices as the page has them
    with gr.Row():
        runs = gr.CheckboxGroup([], label=f"Adapters (finished runs on this model, up to {MAX_ADAPTERS}; the list "
                                          "updates by itself when a run finishes)", scale=4)
        refresh = gr.Button("Refresh adapters", size="sm", variant="secondary", scale=0, min_width=140)
    with gr.Row(equal_height=True):
        worker = gr.Markdown(worker_line(model.value))
        release = gr.Button("Release the model", size="sm", variant="secondary", scale=0, min_width=160)
    prompt = gr.Textbox(label="Prompt", lines=2, placeholder="Ask all of them the same thing")
    with gr.Row():
        seed = gr.Number(0, label="Seed", precision=0)
        temperature = gr.Slider(0, 2, value=0.7, step=0.05, label="Temperature (0 = greedy)")
        max_tokens = gr.Slider(1, 512, value=64, step=1, label="Max new tokens")
    with gr.Row():
        ask = gr.Button("Ask", variant="primary")
        stop_chat = gr.Button("Stop", variant="stop", visible=False)
    with gr.Row():
        outputs = [gr.Textbox(label=BASE, interactive=False, lines=6, max_lines=30)]
        outputs += [gr.Textbox(label=f"adapter {i + 1}", interactive=False, lines=6, max_lines=30, visible=False)
                    for i in range(MAX_ADAPTERS)]

    def follow_adapters(m: str, selected: list[str], have: list | None, request: gr.Request):
        fresh = refreshed_adapters(finished_adapters(m, user_of(request)), selected, have)
        if fresh is None:
            return gr.skip(), gr.skip()
        return gr.update(choices=[tuple(c) for c in fresh[0]], value=fresh[1]), fresh[0]

    triggers = [gr.Timer(ADAPTER_POLL_SECONDS).tick, model.change, app.load]
    gr.on(triggers, follow_adapters, [model, runs, known], [runs, known], api_visibility="private", show_progress="hidden")

    def adapter_list(m: str, request: gr.Request):  # the button, and the API's list of adapters
        return gr.update(choices=finished_adapters(m, user_of(request)))

    refresh.click(adapter_list, model, runs, api_name="adapters")
    gr.on([gr.Timer(ADAPTER_POLL_SECONDS).tick, model.change], worker_line, model, worker,
          api_visibility="private", show_progress="hidden")
    release.click(release_worker, model, worker, api_visibility="private")
    def label_columns(selected: list[str], m: str, request: gr.Request):  # each answer box names its run
        return adapter_columns(selected, finished_adapters(m, user_of(request)))

    runs.change(label_columns, [runs, model], outputs[1:], api_visibility="private", show_progress="hidden")
    model.change(lambda m: gr.update(value=model_note(m), visible=bool(model_note(m))), model, note,
                 api_visibility="private", show_progress="hidden")
    chat = _cancellable(ask, stop_chat, "chat", None, chat_answers,
                        [model, runs, prompt, seed, temperature, max_tokens], outputs, api_name="chat")
    chat.then(worker_line, model, worker, api_visibility="private", show_progress="hidden")
    with gr.Accordion("Task evaluation: base vs adapters on held-out prompts", open=True):
        gr.Markdown("Greedy answers to held-out prompts, scored: exact match; for JSON or Python-literal answers "
                    "the parse rate and per-field accuracy. Held-out prompts: the file below, else "
                    "`<dataset>_heldout` beside the run's file (the demo has one), else the run's validation split.")
        with gr.Row():
            eval_file = gr.File(label="Held-out file (optional)", type="filepath",
                                file_types=[".json", ".jsonl", ".csv", ".tsv", ".parquet", ".zip"])
            eval_limit = gr.Number(20, label="Prompts", precision=0, minimum=1)
            with gr.Column(min_width=120):
                eval_btn = gr.Button("Evaluate")
                eval_cancel = gr.Button("Cancel", variant="stop", visible=False)
        eval_message = gr.Markdown()
        with gr.Row():
            eval_table = gr.Dataframe(headers=TABLE_HEADERS, label="Scores (percent of prompts)")
            eval_chart = gr.Plot(label="Scores")
        eval_samples = gr.Dataframe(headers=SAMPLE_HEADERS, label="Samples: the first answer of each model",
                                    datatype="str", wrap=True)
    _cancellable(eval_btn, eval_cancel, "evaluate", eval_message, task_evaluation,
                 [model, runs, eval_file, eval_limit], [eval_message, eval_table, eval_chart, eval_samples],
                 api_name="evaluate")
    with gr.Accordion("What changed, what was lost (perplexity)", open=False):
        with gr.Row():
            measure_btn = gr.Button("Measure perplexity")
            measure_cancel = gr.Button("Cancel", variant="stop", visible=False)
        changed_message = gr.Markdown()
        changed = gr.Dataframe(headers=["model", "data", "perplexity on that data", "perplexity on general text"],
                               label="Base vs adapters")
    _cancellable(measure_btn, measure_cancel, "perplexity", changed_message, what_changed, [model, runs],
                 [changed_message, changed], api_name="what_changed")
    with gr.Accordion("Arena: blind A/B votes", open=False):
        prompts = gr.Textbox(label="Prompt set (one per line)", lines=4)
        prompt_file = gr.File(label="...or upload a .txt prompt set", file_types=[".txt"], type="filepath")
        with gr.Row():
            next_btn = gr.Button("Next pair")
            arena_cancel = gr.Button("Cancel", variant="stop", visible=False)
        arena_message = gr.Markdown()
        round_prompt = gr.Textbox(label="Prompt of this round", interactive=False)
        with gr.Row(equal_height=True):
            answer_a = gr.Textbox(label="Answer A", interactive=False, lines=6, max_lines=30)
            answer_b = gr.Textbox(label="Answer B", interactive=False, lines=6, max_lines=30)
        with gr.Row():
            vote_buttons = {"A": gr.Button("A is better", interactive=False, scale=2),
                            "tie": gr.Button("Tie", interactive=False, scale=1, min_width=100),
                            "B": gr.Button("B is better", interactive=False, scale=2)}
        table = gr.Dataframe(headers=["contender", "wins", "losses", "ties"], label="Standings")
        round_state, index = gr.State(None), gr.State(0)

    def votes_open(state):  # a vote needs a round on screen, and counts once
        return [gr.update(interactive=state is not None)] * len(vote_buttons)

    prompt_file.change(read_prompt_file, prompt_file, prompts, api_visibility="private")
    arena = _cancellable(next_btn, arena_cancel, "arena", arena_message, arena_next,
                         [model, runs, prompts, seed, temperature, max_tokens, index],
                         [round_state, round_prompt, answer_a, answer_b, arena_message, index],
                         api_visibility="private")
    arena.then(votes_open, round_state, list(vote_buttons.values()), api_visibility="private",
               show_progress="hidden")
    for choice, button in vote_buttons.items():
        button.click(lambda s, c=choice: arena_vote(c, s), round_state, [arena_message, table, round_state],
                     api_visibility="private").then(votes_open, round_state, list(vote_buttons.values()),
                                                    api_visibility="private", show_progress="hidden")
