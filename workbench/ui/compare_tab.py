"""Tab 2, Compare: every method side by side, and what fits a GPU (teaching)."""

from __future__ import annotations

from typing import Any

import gradio as gr

from .views import compare_view


def build_compare_tab(plan_inputs: dict[str, Any]) -> None:
    with gr.Row():
        gpu = gr.Dropdown([8, 16, 24, 40, 80], value=24, label="GPU memory (GB)", info="what fits helper")
        go = gr.Button("Compare all methods", variant="primary")
    summary = gr.Markdown()
    chart = gr.Plot(label="Components per method")
    table = gr.Dataframe(headers=["method", "trainable params", "trainable %", "peak GiB", "peak / inference",
                                  "adapter file MiB"], label="Methods", wrap=True)
    fits = gr.Dataframe(headers=["method", "quant", "batch", "checkpointing", "peak GB", "relative speed", "why"],
                        label="What fits, fastest first", wrap=True)
    i = plan_inputs
    go.click(compare_view, [i["model"], i["dtype"], i["batch"], i["seq"], i["ckpt"], i["optim"], gpu],
             [summary, chart, table, fits], api_name="compare")
