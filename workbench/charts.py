"""Plotly figures from plain plan data (no gradio here).

Every figure has a title and axis titles that name the quantity and its unit (memory in
binary GiB, ``GIB`` below). Nothing is told by colour alone: each memory component has its
own fill pattern and, where it is wide enough, its name written on the bar; lines differ in
dash or marker too; a state (fits / over the limit) is a word and a marker symbol."""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go

COLORS = {
    "weights": "#4C78A8", "trainable_weights": "#72B7B2", "gradients": "#F58518", "optimizer": "#E45756",
    "activations": "#54A24B", "logits": "#EECA3B", "overhead": "#9D755D",
}
#: what is alive at the peak (``Plan.peak_parts``): the components, the runtime's buffers
#: (cuBLAS workspace, a strategy's communication buffers) and the phase's temporaries
PART_COLORS = {**{k: v for k, v in COLORS.items() if k != "overhead"}, "buffers": "#9D755D",
               "temporaries": "#B279A2"}
GIB = 1024**3
PATTERNS = {  # a second, colour-free cue per component (legend and bars)
    "weights": "", "trainable_weights": "/", "gradients": "\\", "optimizer": "x", "activations": ".",
    "logits": "-", "overhead": "|", "buffers": "|", "temporaries": "+",
}
MEMORY_AXIS = "predicted memory (GiB)"


def plan_bar(plan: dict[str, Any]) -> go.Figure:
    """What is alive when the step peaks, stacked (the stack reaches the peak line), beside
    inference (weights + KV cache). Hover shows bytes and the formula of each part."""
    fig = go.Figure()
    step = "training step at its peak"
    for c in plan["peak_parts"]:
        fig.add_bar(
            name=c["name"], x=[step], y=[c["bytes"] / GIB], marker_color=PART_COLORS.get(c["name"]),
            marker_pattern_shape=PATTERNS.get(c["name"], ""), text=[f"{c['name']} {c['bytes'] / GIB:.2f} GiB"],
            textposition="inside", insidetextanchor="middle",
            customdata=[[f"{c['bytes']:,}", c["formula"]]],
            hovertemplate="<b>%{fullData.name}</b><br>%{y:.3f} GiB (%{customdata[0]} B)<br>%{customdata[1]}<extra></extra>",
        )
    fig.add_bar(name="inference", x=["inference"], y=[plan["inference_bytes"] / GIB], marker_color="#BAB0AC",
                marker_pattern_shape=".", marker_pattern_fgcolor="#555", text=[f"{plan['inference_bytes'] / GIB:.2f} GiB"],
                textposition="inside", customdata=[[f"{plan['inference_bytes']:,}", plan["inference_formula"]]],
                hovertemplate="<b>inference</b><br>%{y:.3f} GiB (%{customdata[0]} B)<br>%{customdata[1]}<extra></extra>")
    fig.add_hline(y=plan["peak_bytes"] / GIB, line_dash="dash", line_color="black",
                  annotation_text=f"predicted peak {plan['peak_bytes'] / GIB:.2f} GiB")
    fig.update_layout(barmode="stack", yaxis_title=MEMORY_AXIS,
                      xaxis_title=f"alive at {plan.get('peak_phase_label') or 'the peak'}", legend_title_text="part",
                      uniformtext=dict(minsize=10, mode="hide"), height=420, margin=dict(l=50, r=20, t=40, b=40),
                      title=f"{plan['method']} on {plan['model_label']}: peak / inference = {plan['peak_over_inference']:.2f}x")
    return fig


def compare_bar(rows: list[dict[str, Any]], title: str, limit_bytes: int | None = None) -> go.Figure:
    """Stacked components per method (peak as a marker): the teaching chart. With
    ``limit_bytes`` (a device's memory) the limit is a line and each peak says in words and
    symbol whether it fits: "✓ fits" (circle) or "✗ over" (cross)."""
    rows = [r for r in rows if "error" not in r]
    methods = [r["method"] for r in rows]
    fig = go.Figure()
    # what is alive at each method's peak (its phase may differ), so each stack reaches its peak
    parts = [{p["name"]: p["bytes"] for p in r["peak_parts"]} for r in rows]
    for name, color in PART_COLORS.items():
        if not any(p.get(name) for p in parts):
            continue
        fig.add_bar(name=name, x=methods, y=[p.get(name, 0) / GIB for p in parts], marker_color=color,
                    marker_pattern_shape=PATTERNS.get(name, ""),
                    hovertemplate="%{x}: %{y:.2f} GiB<extra>" + name + "</extra>")
    if limit_bytes is None:
        fig.add_scatter(name="predicted peak", x=methods, y=[r["peak_bytes"] / GIB for r in rows], mode="markers",
                        marker=dict(symbol="line-ew-open", size=24, color="black"),
                        hovertemplate="%{x}: peak %{y:.2f} GiB<extra></extra>")
    else:
        for fits, label, symbol in ((True, "✓ fits", "circle"), (False, "✗ over", "x")):
            mine = [r for r in rows if (r["peak_bytes"] <= limit_bytes) == fits]
            if mine:
                fig.add_scatter(name=f"predicted peak: {label}", x=[r["method"] for r in mine],
                                y=[r["peak_bytes"] / GIB for r in mine], mode="markers+text", text=[label] * len(mine),
                                textposition="top center", textfont_size=10,
                                marker=dict(symbol=symbol, size=12, color="black"),
                                hovertemplate="%{x}: peak %{y:.2f} GiB, " + label + "<extra></extra>")
        fig.add_hline(y=limit_bytes / GIB, line_dash="dash", line_color="black",
                      annotation_text=f"device memory {limit_bytes / GIB:.2f} GiB")
    fig.update_layout(barmode="stack", yaxis_title=MEMORY_AXIS, xaxis_title="method", legend_title_text="component",
                      title=title, height=460, margin=dict(l=50, r=20, t=50, b=60))
    return fig


def live_memory(samples: list[dict[str, Any]], plan: dict[str, Any] | None,
                step_peaks: list[dict[str, Any]] | None = None) -> go.Figure:
    """Measured memory over time against the prediction. The measured step peak (live
    tensor bytes on CPU, ``max_memory_allocated`` on CUDA: one point per measured optimizer
    step) is the quantity the predicted peak line predicts; process RSS, reserved and NVML
    are other quantities, drawn as their own labelled lines."""
    fig = go.Figure()
    step_peaks = step_peaks or []
    ranks = sorted({s["rank"] for s in samples + step_peaks if s.get("rank") is not None})
    everything = samples + step_peaks
    t0 = min((s["time"] for s in everything), default=0)
    cuda = any(s.get("source") == "cuda" for s in everything)
    series = ({"reserved": "reserved (caching allocator)", "nvml_used": "device used (NVML)"} if cuda
              else {"rss": "process RSS (Python + libraries + tensors; not the planned quantity)"})
    for rank in ranks or [None]:
        who = "" if rank is None else (f"GPU {rank}: " if cuda else f"process {rank}: ")
        peaks = [s for s in step_peaks if s.get("rank") == rank]
        if peaks:
            fig.add_scatter(x=[s["time"] - t0 for s in peaks], y=[s["peak_bytes"] / GIB for s in peaks],
                            mode="lines+markers", name=who + f"measured step peak ({peaks[-1].get('quantity', '')})",
                            customdata=[[s["step"]] for s in peaks], line=dict(color="#D62728"),
                            hovertemplate="step %{customdata[0]}: %{y:.3f} GiB<extra></extra>")
        mine = [s for s in samples if s.get("rank") == rank]
        for key, label in series.items():
            ys = [(s.get(key) or None) and s[key] / GIB for s in mine]
            if any(y is not None for y in ys):
                fig.add_scatter(x=[s["time"] - t0 for s in mine], y=ys, mode="lines", name=who + label,
                                line=dict(dash="dot"))
    if plan:
        per = " per GPU" if plan.get("per_gpu") or len(ranks) > 1 else ""
        fig.add_hline(y=plan["peak_bytes"] / GIB, line_dash="dash", line_color="black",
                      annotation_text=f"predicted peak{per} {plan['peak_bytes'] / GIB:.3f} GiB")
        persistent = next((t["bytes"] for t in plan.get("peak_terms", []) if t["name"] == "persistent"), None)
        if persistent:
            fig.add_hline(y=persistent / GIB, line_dash="dot", line_color="gray",
                          annotation_text="predicted weights + optimizer", annotation_position="bottom right")
    fig.update_layout(xaxis_title="seconds since the run started", yaxis_title="memory (GiB)", height=380,
                      title="Predicted vs measured memory", legend=dict(orientation="h", y=-0.25),
                      margin=dict(l=40, r=20, t=50, b=40))
    return fig


def training_curves(logs: list[dict[str, Any]]) -> go.Figure:
    """Loss and eval loss against step; learning rate and tokens/s on a second axis."""
    fig = go.Figure()
    train = [e for e in logs if e.get("loss") is not None]
    evals = [e for e in logs if e.get("eval_loss") is not None]
    fig.add_scatter(x=[e["step"] for e in train], y=[e["loss"] for e in train], name="training loss",
                    mode="lines+markers", marker_symbol="circle")
    if evals:
        fig.add_scatter(x=[e["step"] for e in evals], y=[e["eval_loss"] for e in evals], name="validation loss",
                        mode="lines+markers", marker=dict(symbol="diamond", size=9), line=dict(dash="longdash"))
    fig.add_scatter(x=[e["step"] for e in train], y=[e.get("learning_rate") for e in train], name="learning rate",
                    yaxis="y2", mode="lines", line=dict(dash="dot"))
    fig.add_scatter(x=[e["step"] for e in train], y=[e.get("tokens_per_second") for e in train],
                    name="throughput (tokens/s)",
                    yaxis="y3", mode="lines", line=dict(dash="dash"))
    # two right-hand axes side by side (autoshift), the legend under the plot so that it never
    # covers their labels, learning rates as 2.0e-4 (not a clipped 0.0002)
    fig.update_layout(height=420, title="Training loss, learning rate and throughput", xaxis_title="optimizer step",
                      yaxis_title="loss (mean cross-entropy per token)",
                      yaxis2=dict(overlaying="y", side="right", title="learning rate", showgrid=False,
                                  tickformat=".1e"),
                      yaxis3=dict(overlaying="y", side="right", anchor="free", autoshift=True,
                                  title="throughput (tokens/s)", showgrid=False),
                      legend=dict(orientation="h", yanchor="top", y=-0.2, xanchor="left", x=0),
                      margin=dict(l=60, r=40, t=50, b=40))
    return fig


def length_histogram(report: dict[str, Any], cutoff_name: str = "sequence length") -> go.Figure:
    """Token lengths with the cutoff in force (the run's sequence length) and the truncated
    share; the suggested cutoff as a second, dotted line where it differs."""
    hist = report["token_lengths"]["histogram"]
    edges, counts = hist["edges"], hist["counts"]
    centers = [(a + b) / 2 for a, b in zip(edges, edges[1:])]
    widths = [b - a for a, b in zip(edges, edges[1:])]
    fig = go.Figure(go.Bar(x=centers, y=counts, width=widths, name="examples",
                           hovertemplate="%{y} examples around %{x:.0f} tokens<extra></extra>"))
    fig.add_vline(x=report["cutoff"], line_dash="dash", line_color="red",
                  annotation_text=f"{cutoff_name} {report['cutoff']}: {report['truncated_fraction']:.1%} truncated")
    if report.get("suggested_cutoff") and report["suggested_cutoff"] != report["cutoff"]:
        fig.add_vline(x=report["suggested_cutoff"], line_dash="dot", line_color="gray",
                      annotation_text=f"suggested {report['suggested_cutoff']}", annotation_position="bottom right")
    fig.update_layout(height=300, xaxis_title="tokens per example", yaxis_title="number of examples",
                      title="Token lengths per example", showlegend=False, margin=dict(l=50, r=20, t=50, b=40))
    return fig


def eval_bars(results: list[dict[str, Any]]) -> go.Figure:
    """Task evaluation: exact match, parse rate and mean field accuracy (percent) per model."""
    fig = go.Figure()
    metrics = [("exact_match", "exact match", ""), ("parse_rate", "parse rate", "/"),
               ("mean_field_accuracy", "field accuracy", ".")]
    names = [r["contender"] for r in results]
    for key, label, pattern in metrics:
        values = [None if r.get(key) is None else 100 * r[key] for r in results]
        if all(v is None for v in values):
            continue
        fig.add_bar(name=label, x=names, y=values, marker_pattern_shape=pattern,
                    text=[f"{v:.0f}%" if v is not None else "" for v in values])
    fig.update_layout(barmode="group", title="Held-out prompts, greedy: higher is better", yaxis_title="% of prompts",
                      xaxis_title="model (base or adapter)", legend_title_text="metric",
                      yaxis_range=[0, 100], height=320, margin=dict(t=40, b=30, l=50, r=10))
    return fig


BAND_STYLE = {"low-memory PEFT": ("#72B7B2", "."), "PEFT": ("#54A24B", "/"), "full fine-tuning": ("#E45756", "x")}


def _wrap(text: str, width: int = 110) -> str:
    """Hover text, escaped, in lines of at most ``width`` characters."""
    import html
    import textwrap

    return "<br>".join(html.escape(line) for line in textwrap.wrap(text, width))


def teach_bar(t: dict[str, Any]) -> go.Figure:
    """Peak training memory / inference memory per method (log scale), against the quoted
    bands (shaded, named). Each bar is drawn in its method's band style and says its ratio;
    hover gives the sentence and the formula."""
    import math

    fig = go.Figure()
    order = sorted(t["rows"], key=lambda r: r["ratio"])
    for band, (low, high) in t["bands"].items():
        color, _ = BAND_STYLE[band]
        # over the bars, faintly, with dotted edges; plotly.js 3 places shapes on a log axis by data
        # value, annotations by log10 (checked in chromium)
        fig.add_vrect(x0=low, x1=high, fillcolor="#777", opacity=0.10, layer="above", line_width=0)
        for edge in (low, high):
            fig.add_vline(x=edge, line=dict(color="#333", width=1, dash="dot"), layer="above")
        fig.add_annotation(x=math.log10((low * high) ** 0.5), y=1.0, xref="x", yref="paper", yanchor="bottom",
                           showarrow=False, text=f"<b>{band}</b><br>{low:g}–{high:g}x", font=dict(size=11))
    for band, (color, pattern) in BAND_STYLE.items():
        mine = [r for r in order if r["band"] == band]
        if not mine:
            continue
        fig.add_bar(name=f"usually {band}", orientation="h", y=[r["method"] for r in mine], base=1,
                    x=[r["ratio"] - 1 for r in mine], marker_color=color, marker_pattern_shape=pattern,
                    text=[f"{r['ratio']:.2f}x" for r in mine], textposition="outside",
                    customdata=[[_wrap(r["why"].replace("**", "")), _wrap(r["formula"])] for r in mine],
                    hovertemplate="<b>%{y}</b>: %{text} inference<br>%{customdata[0]}<br>"
                                  "<i>%{customdata[1]}</i><extra></extra>")
    top = max([25.0] + [r["ratio"] * 1.4 for r in order])
    # ticks named in full (plotly's own log ticks label 20x as a bare "2"), at the band edges
    ticks = [v for v in (1, 1.1, 1.5, 2, 3, 4, 5, 10, 20, 50, 100, 200, 500, 1000) if v <= top]
    fig.update_layout(xaxis=dict(type="log", range=[0, math.log10(top)], tickvals=ticks,
                                 ticktext=[f"{v:g}x" for v in ticks], title="training peak / inference memory "
                                 "(x, log scale; a bar starts at 1x, the memory of inference)"),
                      yaxis=dict(title="method", categoryorder="array", categoryarray=[r["method"] for r in order]),
                      legend_title_text="method family", barmode="overlay", height=max(420, 28 * len(order) + 120),
                      margin=dict(l=80, r=40, t=100, b=50), hoverlabel=dict(align="left"),
                      title=f"Training / inference memory per method: {t['model']} ({t['precision']})")
    return fig
