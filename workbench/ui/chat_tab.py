"""Tab 5, Chat: the base model and finished adapters answer the same prompt, side by side,
with the same seed and sampling, streamed token by token. One base model in memory per
base name (``workbench.chat.ChatEngine``), loaded lazily in the UI process on the CPU."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from contextlib import closing

import gradio as gr

from ..chat import BASE, ChatEngine, ModelBusyError, PromptTooLongError, Sampling
from ..errors import WorkbenchError
from ..evaluation import TABLE_HEADERS
from ..methods import METHODS
from .views import user_of

MAX_ADAPTERS = 3
MAX_ENGINES = 2  # base models kept in memory at once
_ENGINES: dict[str, ChatEngine] = {}
_ENGINES_LOCK = threading.Lock()


def engine_with(model: str, run_ids: list[str], user: str | None = None) -> ChatEngine:
    """The one engine of ``model``, with the adapters of ``run_ids`` attached: runs of
    ``user`` (when signed in) trained on this model."""
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
                _ENGINES.pop(next(iter(_ENGINES)))
            _ENGINES[model] = ChatEngine(model)
        engine = _ENGINES[model]
    for run_id in run_ids:
        if run_id not in engine.adapters:
            engine.add_adapter(run_id, adapter_folder(run_id))
    return engine


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
    """Yields the texts of every column as they grow: base first, then each adapter. A
    cancel closes this generator, which closes the engine's stream and so stops generation."""
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
        columns[0] = f"**Cannot chat:** {exc}"
        yield tuple(columns)
        return
    for column, who in enumerate([BASE, *run_ids]):
        columns[column] = f"**{who}**\n\n"
        try:
            with closing(engine.stream(prompt, who, sampling)) as pieces:
                for piece in pieces:
                    columns[column] += piece
                    yield tuple(columns)
        except (PromptTooLongError, ModelBusyError) as exc:  # the same for the columns left: said once
            columns[column] += f"**Cannot answer:** {exc}"
            yield tuple(columns)
            return
        except WorkbenchError as exc:
            columns[column] += f"**{exc}**"
            yield tuple(columns)


def arena_next(model: str, run_ids: list[str] | None, prompts: str, seed: float, temperature: float,
               max_new_tokens: float, index: int, request: gr.Request = None):
    """(round for the server, answer A, answer B, message, next index). Who is A and who is
    B stays on the server until the vote."""
    from ..arena import next_round

    try:
        contenders = [BASE, *list(run_ids or [])[:MAX_ADAPTERS]]
        sampling = sampling_from(seed, temperature, max_new_tokens)
        if not isinstance(prompts, (str, type(None))):
            raise WorkbenchError("arena: the prompt set is text, one prompt per line")
        r = next_round((prompts or "").splitlines(), contenders, int(index or 0), sampling.seed)
        engine = engine_with(model, contenders[1:], user_of(request))
        a, b = engine.answer(r.prompt, r.left, sampling), engine.answer(r.prompt, r.right, sampling)
    except WorkbenchError as exc:
        return None, "", "", f"**{exc}**", index
    state = {"prompt": r.prompt, "left": r.left, "right": r.right, "contenders": contenders}
    return state, a, b, f"Prompt: *{r.prompt}* -- which answer is better?", int(index or 0) + 1


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
    return (f"A was **{left}**, B was **{right}**; vote saved with the runs.", standings(state["contenders"]), None)


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
    from ..training.job import TrainJob
    from ..sessions import session_path

    job = TrainJob.load(session_path(run_id) / "job.json")
    tok = load_tokenizer(job.model)
    d = job.data
    _, train, val = training_data(d.path, tok, d.format, d.mapping, job.training_settings.seq_len, d.train_on_prompt,
                                  d.val_fraction, d.seed)
    split, name = (val, "validation split") if val is not None else (train, "training examples (no validation split)")
    return [tok.decode(ids) for ids in split["input_ids"][:limit]], name


def what_changed(model: str, run_ids: list[str] | None, request: gr.Request = None) -> tuple[str, list[list]]:
    """Perplexity of the base and each adapter on each run's data and on general text: what
    the adapter gained, and whether it forgot general ability (lower is better)."""
    run_ids = list(run_ids or [])[:MAX_ADAPTERS]
    if not run_ids:
        return "Pick at least one adapter.", []
    try:
        engine = engine_with(model, run_ids, user_of(request))
        general = general_text()
        rows = []
        for run_id in run_ids:
            texts, name = run_texts(run_id)
            for who in (BASE, run_id):
                rows.append([who, f"{run_id} {name}", round(engine.perplexity(texts, who), 3),
                             round(engine.perplexity(general, who), 3)])
    except WorkbenchError as exc:
        return f"**{exc}**", []
    return ("Perplexity (lower is better): on the run's own data the adapter should beat the base; on general "
            "text a much higher value than the base means it forgot general ability."), rows


def task_evaluation(model: str, run_ids: list[str] | None, data_file: str | None, limit: float | None,
                    request: gr.Request = None):
    """Base and the chosen adapters on held-out prompts (:mod:`workbench.evaluation`):
    (message, table rows, bar chart)."""
    from ..charts import eval_bars
    from ..evaluation import MAX_CASES, evaluate_runs, table_rows

    run_ids = list(run_ids or [])[:MAX_ADAPTERS]
    if not run_ids:
        return "Pick at least one adapter: the evaluation compares it with the base on held-out prompts.", [], None
    try:
        count = int(limit) if limit not in (None, "") else 20
        if not 1 <= count <= MAX_CASES:
            raise WorkbenchError(f"Prompts: between 1 and {MAX_CASES}, got {count}")
        engine = engine_with(model, run_ids, user_of(request))
        report = evaluate_runs(run_ids, data_file or None, count, user_of(request), engine=engine)
    except WorkbenchError as exc:
        return f"**{exc}**", [], None
    def code(text: str) -> str:  # a model's answer shown verbatim, whatever backticks it holds
        return "`" + text[:160].replace("`", "'").replace("\n", " ") + "`"

    samples = "\n".join(f"- **{r['contender']}**, row {s['row']}: {code(s['answer'])} (reference {code(s['reference'])})"
                        for r in report["results"] for s in r["samples"][:1])
    return (f"{report['prompts']} prompts from {report['data']}; {report['decoding']}. Saved with each run "
            f"(`eval.json`).\n\n{samples}"), table_rows(report["results"]), eval_bars(report["results"])


def build_chat_tab(plan_inputs: dict) -> None:
    model = plan_inputs["inputs"]["model"]
    with gr.Row():
        runs = gr.CheckboxGroup([], label=f"Adapters (finished runs on this model, up to {MAX_ADAPTERS})")
        refresh = gr.Button("Refresh adapters")
    prompt = gr.Textbox(label="Prompt", lines=2, placeholder="Ask all of them the same thing")
    with gr.Row():
        seed = gr.Number(0, label="Seed", precision=0)
        temperature = gr.Slider(0, 2, value=0.7, step=0.05, label="Temperature (0 = greedy)")
        max_tokens = gr.Slider(1, 512, value=64, step=1, label="Max new tokens")
    ask = gr.Button("Ask", variant="primary")
    with gr.Row():
        outputs = [gr.Markdown(label="base", value="**base**")]
        outputs += [gr.Markdown(label=f"adapter {i + 1}") for i in range(MAX_ADAPTERS)]
    def adapters(m: str, request: gr.Request):
        return gr.update(choices=finished_adapters(m, user_of(request)), value=[])

    refresh.click(adapters, model, runs, api_name="adapters")
    ask.click(chat_answers, [model, runs, prompt, seed, temperature, max_tokens], outputs, api_name="chat")
    with gr.Accordion("Task evaluation: base vs adapters on held-out prompts", open=True):
        gr.Markdown("Greedy answers to held-out prompts, scored: exact match; for JSON or Python-literal answers "
                    "the parse rate and per-field accuracy. Held-out prompts: the file below, else "
                    "`<dataset>_heldout` beside the run's file (the demo has one), else the run's validation split.")
        with gr.Row():
            eval_file = gr.File(label="Held-out file (optional)", type="filepath",
                                file_types=[".json", ".jsonl", ".csv", ".tsv", ".parquet", ".zip"])
            eval_limit = gr.Number(20, label="Prompts", precision=0, minimum=1)
            eval_btn = gr.Button("Evaluate")
        eval_message = gr.Markdown()
        with gr.Row():
            eval_table = gr.Dataframe(headers=TABLE_HEADERS, label="Scores (percent of prompts)")
            eval_chart = gr.Plot(label="Scores")
    eval_btn.click(task_evaluation, [model, runs, eval_file, eval_limit], [eval_message, eval_table, eval_chart],
                   api_name="evaluate")
    with gr.Accordion("What changed, what was lost (perplexity)", open=False):
        measure_btn = gr.Button("Measure perplexity")
        changed_message = gr.Markdown()
        changed = gr.Dataframe(headers=["model", "data", "perplexity on that data", "perplexity on general text"],
                               label="Base vs adapters")
    measure_btn.click(what_changed, [model, runs], [changed_message, changed], api_name="what_changed")
    with gr.Accordion("Arena: blind A/B votes", open=False):
        prompts = gr.Textbox(label="Prompt set (one per line)", lines=4)
        prompt_file = gr.File(label="...or upload a .txt prompt set", file_types=[".txt"], type="filepath")
        next_btn = gr.Button("Next pair")
        arena_message = gr.Markdown()
        with gr.Row():
            answer_a, answer_b = gr.Markdown(label="A"), gr.Markdown(label="B")
        with gr.Row():
            vote_buttons = {c: gr.Button(label) for c, label in (("A", "A is better"), ("B", "B is better"),
                                                                 ("tie", "Tie"))}
        table = gr.Dataframe(headers=["contender", "wins", "losses", "ties"], label="Standings")
        round_state, index = gr.State(None), gr.State(0)
    prompt_file.change(read_prompt_file, prompt_file, prompts, api_visibility="private")
    next_btn.click(arena_next, [model, runs, prompts, seed, temperature, max_tokens, index],
                   [round_state, answer_a, answer_b, arena_message, index], api_visibility="private")
    for choice, button in vote_buttons.items():
        button.click(lambda s, c=choice: arena_vote(c, s), round_state, [arena_message, table, round_state],
                     api_visibility="private")
