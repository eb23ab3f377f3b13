"""Tab 5, Chat: the base model and finished adapters answer the same prompt, side by side,
with the same seed and sampling, streamed token by token. One base model in memory per
base name (``workbench.chat.ChatEngine``), loaded lazily in the UI process on the CPU."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import gradio as gr

from ..chat import BASE, ChatEngine, Sampling
from ..errors import WorkbenchError

MAX_ADAPTERS = 3
_ENGINES: dict[str, ChatEngine] = {}
_ENGINES_LOCK = threading.Lock()


def engine_for(model: str) -> ChatEngine:
    with _ENGINES_LOCK:
        if model not in _ENGINES:
            _ENGINES[model] = ChatEngine(model)
        return _ENGINES[model]


def finished_adapters(model: str) -> list[tuple[str, str]]:
    """(label, run id) of completed runs on ``model`` that saved a peft adapter."""
    from ..sessions import list_sessions

    out = []
    for s in list_sessions():
        if s.state == "completed" and s.model == model and s.final_adapter:
            out.append((f"{s.id} ({s.method}, {s.dataset})", s.id))
    return out


def chat_answers(model: str, run_ids: list[str] | None, prompt: str, seed: float, temperature: float,
                 max_new_tokens: float) -> Iterator[tuple[str, ...]]:
    """Yields the texts of every column as they grow: base first, then each adapter."""
    from pathlib import Path

    from ..sessions import session_path

    run_ids = list(run_ids or [])[:MAX_ADAPTERS]
    columns = ["" for _ in range(1 + MAX_ADAPTERS)]
    if not prompt or not prompt.strip():
        columns[0] = "Type a prompt."
        yield tuple(columns)
        return
    try:
        sampling = Sampling(max_new_tokens=int(max_new_tokens), temperature=float(temperature), seed=int(seed))
        engine = engine_for(model)
        for run_id in run_ids:
            if run_id not in engine.adapters:
                engine.add_adapter(run_id, Path(session_path(run_id)) / "final")
    except WorkbenchError as exc:
        columns[0] = f"**Cannot chat:** {exc}"
        yield tuple(columns)
        return
    for column, who in enumerate([BASE, *run_ids]):
        columns[column] = f"**{who}**\n\n"
        try:
            for piece in engine.stream(prompt, who, sampling):
                columns[column] += piece
                yield tuple(columns)
        except WorkbenchError as exc:
            columns[column] += f"**{exc}**"
            yield tuple(columns)


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
    refresh.click(lambda m: gr.update(choices=finished_adapters(m), value=[]), model, runs, api_name="adapters")
    ask.click(chat_answers, [model, runs, prompt, seed, temperature, max_tokens], outputs, api_name="chat")
