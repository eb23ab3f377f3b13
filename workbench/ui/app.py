"""The workbench page: one builder per tab; only layout here (views.py has the logic)."""

from __future__ import annotations

import gradio as gr

from ..specs import default_model, load_model_spec
from .chat_tab import build_chat_tab
from .compare_tab import build_compare_tab
from .data_tab import build_data_tab
from .plan_tab import build_plan_tab, plan_view
from .runs_tab import build_runs_tab
from .train_tab import build_train_tab, reattach, run_summary

__all__ = ["build_app", "plan_view", "warm_up"]


def warm_up() -> None:
    """Before the first visitor arrives: the default model's inventory, and SmolLM2's one-time
    conversion from its GGUF file (so that no page waits ~40 s for it); a model that cannot
    be prepared leaves the page on its message, never stops the server."""
    import sys

    from ..errors import WorkbenchError
    from ..smollm2 import SMOLLM2_NAME, converted_dir, ensure_smollm2, is_converted

    model = default_model()
    load_model_spec(model).inventory
    if model == SMOLLM2_NAME and not is_converted():
        print(f"{SMOLLM2_NAME}: converting the GGUF file once into {converted_dir()} (about 40 s)...", file=sys.stderr)
        try:
            ensure_smollm2()
        except (WorkbenchError, OSError) as exc:
            print(f"{SMOLLM2_NAME} is not usable: {exc}", file=sys.stderr)


def build_app() -> gr.Blocks:
    with gr.Blocks(title="PEFT Workbench") as app:
        gr.Markdown("# PEFT Workbench\nHow much memory will fine-tuning take, and why? Every number has a formula.")
        with gr.Tab("Model & method"):
            plan_tab = build_plan_tab()
        with gr.Tab("Compare"):
            build_compare_tab(plan_tab["inputs"])
        with gr.Tab("Data"):
            data = build_data_tab(plan_tab["inputs"])
        with gr.Tab("Train"):
            train = build_train_tab(plan_tab, data)
        with gr.Tab("Chat"):
            build_chat_tab(plan_tab)
        with gr.Tab("Runs"):
            runs = build_runs_tab()
        app.load(plan_view, list(plan_tab["inputs"].values()) + plan_tab["knobs"], plan_tab["outputs"],
                 api_name="plan")
        app.load(runs["reload"], None, runs["outputs"], api_visibility="private")
        app.load(reattach, None, [train["session"], train["run_id"]], api_visibility="private")
        app.load(run_summary, train["summary_inputs"], train["summary"], api_visibility="private")
    return app
