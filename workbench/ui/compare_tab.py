"""Tab 2, Compare: every method side by side, and what fits a GPU (teaching)."""

from __future__ import annotations

from typing import Any

import gradio as gr

from ..gpus import menu_choices
from .views import compare_view

#: the card the Compare tab starts with (a consumer card: where LoRA vs full fine-tuning is the question)
COMPARE_DEFAULT = "RTX 4090 24 GB"


def shown_unless_refused(summary: str) -> list[Any]:
    """After :func:`compare_view` (whose plain values the ``/compare`` API returns): on an
    error the chart and both tables are hidden, so that nothing but the message is left."""
    shown = not str(summary).startswith("**Cannot compare:**")
    return [gr.update(visible=shown)] * 3


def build_compare_tab(plan_inputs: dict[str, Any]) -> None:
    with gr.Row():
        gpu = gr.Dropdown(menu_choices(), value=COMPARE_DEFAULT, label="GPU", allow_custom_value=True,
                          info="what fits this card (its total memory in GiB, as nvidia-smi reports it); or type a "
                               "size in GiB")
        go = gr.Button("Compare all methods", variant="primary")
    summary = gr.Markdown()
    chart = gr.Plot(label="Components per method")
    table = gr.Dataframe(headers=["method", "trainable params", "trainable %", "peak GiB", "on the GPU",
                                  "peak / inference", "adapter file MiB"], label="Methods", wrap=True)
    fits = gr.Dataframe(headers=["method", "quant", "batch", "checkpointing", "peak GiB", "relative speed", "why"],
                        label="What fits the GPU, fastest first", wrap=True)
    i = plan_inputs
    go.click(compare_view, [i["model"], i["dtype"], i["batch"], i["seq"], i["ckpt"], i["optim"], gpu],
             [summary, chart, table, fits], api_name="compare").then(
        shown_unless_refused, summary, [chart, table, fits], api_visibility="private")
