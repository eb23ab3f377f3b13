"""The workbench page: one builder per tab; only layout here (views.py has the logic).

Which events may run at once is decided here, in one place (:func:`limit_slow_events`):
events that load weights, generate, read a whole dataset or start a worker share small
concurrency groups, so that however many of them are asked for, the queue's workers stay
free for the fast events -- plan, run status, the sessions list -- and those always answer.
"""

from __future__ import annotations

import re

import gradio as gr

from ..specs import default_model, load_model_spec
from .chat_tab import build_chat_tab
from .compare_tab import build_compare_tab
from .data_tab import build_data_tab
from .plan_tab import build_plan_tab, plan_view
from .runs_tab import build_runs_tab
from .state import TABS, wire as wire_state
from .teach_tab import build_teach_tab
from .train_tab import build_train_tab, run_summary

__all__ = ["SLOW_EVENTS", "build_app", "limit_slow_events", "plan_view", "warm_up"]

#: concurrency group -> (events of it running at once, the api names of its events). An api name
#: counts with gradio's numbered copies (``inspect_view_3``). Everything else keeps the queue's
#: default (``default_concurrency_limit`` per function).
SLOW_EVENTS: dict[str, tuple[int, frozenset[str]]] = {
    # a base model in this process: load, generate, score
    "generation": (2, frozenset({"chat", "arena_next", "evaluate", "what_changed"})),
    # a whole dataset tokenized, every method planned, a worker started, an export written
    "heavy": (2, frozenset({"inspect", "inspect_view", "compare", "teach", "teach_view", "start_run", "run_action"})),
}


def warm_up() -> None:
    """Before the first visitor arrives: whether the hub is reachable (:mod:`workbench.hub`),
    the default model's inventory, and SmolLM2's one-time conversion from its GGUF file (so
    that no page waits ~40 s for it); a model that cannot be prepared leaves the page on its
    message, never stops the server."""
    import sys

    from ..errors import WorkbenchError
    from ..hub import hub_online
    from ..smollm2 import SMOLLM2_NAME, converted_dir, ensure_smollm2, is_converted

    hub_online()  # decided once now: offline, every hub lookup of a visitor answers at once
    model = default_model()
    load_model_spec(model).inventory
    if model == SMOLLM2_NAME and not is_converted():
        print(f"{SMOLLM2_NAME}: converting the GGUF file once into {converted_dir()} (about 40 s)...", file=sys.stderr)
        try:
            ensure_smollm2()
        except (WorkbenchError, OSError) as exc:
            print(f"{SMOLLM2_NAME} is not usable: {exc}", file=sys.stderr)


def build_app() -> gr.Blocks:
    """The page. On load the saved form (or the attached run's settings) is put back first
    (:mod:`.state`), then the plan and the Train tab's summary are drawn from that form."""
    with gr.Blocks(title="PEFT Workbench") as app:
        gr.Markdown("# PEFT Workbench\nHow much memory will fine-tuning take, and why? Every number has a formula.")
        notice = gr.Markdown()  # "showing the settings of run X", a dataset that is gone
        blocks = {}
        with gr.Tabs() as tabs:
            with gr.Tab(TABS["plan"], id="plan") as blocks["plan"]:
                plan_tab = build_plan_tab()
            with gr.Tab(TABS["compare"], id="compare") as blocks["compare"]:
                build_compare_tab(plan_tab["inputs"])
            with gr.Tab(TABS["teach"], id="teach") as blocks["teach"]:
                build_teach_tab(plan_tab["inputs"], blocks["teach"])
            with gr.Tab(TABS["data"], id="data") as blocks["data"]:
                data = build_data_tab(plan_tab["inputs"])
            with gr.Tab(TABS["train"], id="train") as blocks["train"]:
                train = build_train_tab(plan_tab, data, notice)
            with gr.Tab(TABS["chat"], id="chat") as blocks["chat"]:
                build_chat_tab(plan_tab, app)
            with gr.Tab(TABS["runs"], id="runs") as blocks["runs"]:
                runs = build_runs_tab()
        restored = wire_state(app, tabs, plan_tab, data, train, notice, blocks)
        restored.then(plan_view, list(plan_tab["inputs"].values()) + plan_tab["knobs"], plan_tab["outputs"],
                      api_name="plan")
        restored.then(run_summary, train["summary_inputs"], train["summary"], api_visibility="private")
        app.load(runs["reload"], None, runs["outputs"], api_visibility="private")
    limit_slow_events(app)
    order_plan_events(app)
    return app


#: events that draw the plan of the form: one at a time, in the order they were asked for, so the
#: plan drawn last is the plan of the form as it is last (a restore and the method's knob reset
#: ask for several at once; any of them finishing late would leave an older form's plan shown)
ORDERED_EVENTS = frozenset({"plan_page", "plan_view", "run_summary"})


def order_plan_events(app: gr.Blocks) -> list[str]:
    """Put the functions named in :data:`ORDERED_EVENTS` into one queue of limit 1 (they
    take milliseconds); returns their api names."""
    placed = []
    for fn in app.fns.values():
        if fn.name in ORDERED_EVENTS and fn.concurrency_id is not None and not fn.concurrency_id.startswith("workbench-"):
            fn.concurrency_id, fn.concurrency_limit = "workbench-plan", 1
            placed.append(fn.api_name)
    return placed


def limit_slow_events(app: gr.Blocks) -> dict[str, list[str]]:
    """Put every event named in :data:`SLOW_EVENTS` into its concurrency group (gradio
    reads ``concurrency_id`` / ``concurrency_limit`` of each function when the first event of
    it is queued, so this must run before the server starts). Returns group -> api names."""
    placed: dict[str, list[str]] = {group: [] for group in SLOW_EVENTS}
    for fn in app.fns.values():
        base = re.sub(r"_\d+$", "", fn.api_name or "")
        for group, (limit, names) in SLOW_EVENTS.items():
            if fn.api_name in names or base in names:
                fn.concurrency_id, fn.concurrency_limit = f"workbench-{group}", limit
                placed[group].append(fn.api_name)
    return placed
