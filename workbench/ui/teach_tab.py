"""Tab 3, the teacher's view: why training needs more memory than inference, for every
method of the selected model, against the bands people quote (:mod:`workbench.teach`)."""

from __future__ import annotations

from typing import Any

import gradio as gr

from .views import teach_view


def build_teach_tab(plan_inputs: dict[str, Any], tab: gr.Tab) -> None:
    gr.Markdown("For the model, precision, batch and sequence of the Model & method tab (planned for a GPU): "
                "every method's training peak over inference, against the bands people quote, and what dominates "
                "each. Hover a bar for its formula; the Model & method tab shows any one method in full.")
    explain = gr.Button("Explain again with the current settings", variant="secondary")
    text = gr.Markdown()
    chart = gr.Plot(label="Training / inference memory per method")
    details = gr.Markdown()
    i = plan_inputs
    inputs = [i["model"], i["dtype"], i["batch"], i["seq"], i["ckpt"], i["optim"]]
    explain.click(teach_view, inputs, [text, chart, details], api_name="teach")
    tab.select(teach_view, inputs, [text, chart, details], api_visibility="private")  # drawn when the tab is opened
