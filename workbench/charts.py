"""Plotly figures from plain plan data (no gradio here)."""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go

COLORS = {
    "weights": "#4C78A8", "trainable_weights": "#72B7B2", "gradients": "#F58518", "optimizer": "#E45756",
    "activations": "#54A24B", "logits": "#EECA3B", "overhead": "#9D755D",
}
GIB = 1024**3


def plan_bar(plan: dict[str, Any]) -> go.Figure:
    """One stacked bar of the resident components, the peak and inference as reference lines.
    Hover shows bytes and the formula of each component."""
    fig = go.Figure()
    for c in plan["components"]:
        fig.add_bar(
            name=c["name"], x=["training step"], y=[c["bytes"] / GIB], marker_color=COLORS.get(c["name"]),
            customdata=[[f"{c['bytes']:,}", c["formula"]]],
            hovertemplate="<b>%{fullData.name}</b><br>%{y:.3f} GiB (%{customdata[0]} B)<br>%{customdata[1]}<extra></extra>",
        )
    fig.add_hline(y=plan["peak_bytes"] / GIB, line_dash="dash", line_color="black",
                  annotation_text=f"predicted peak {plan['peak_bytes'] / GIB:.2f} GiB")
    fig.add_hline(y=plan["inference_bytes"] / GIB, line_dash="dot", line_color="gray",
                  annotation_text=f"inference {plan['inference_bytes'] / GIB:.2f} GiB", annotation_position="bottom right")
    fig.update_layout(barmode="stack", yaxis_title="GiB", height=420, margin=dict(l=40, r=20, t=40, b=40),
                      title=f"{plan['method']} on {plan['model_label']}: peak / inference = {plan['peak_over_inference']:.2f}x")
    return fig
