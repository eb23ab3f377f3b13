"""Tab 4, Data: upload, detected format and why, column mapping, preview with the loss
highlighted, token-length histogram with the cutoff, dropped rows.

There is one cutoff: the run's sequence length (the Model & method tab's field). The report
counts truncation at it and shows the suggested cutoff and the p95 length as numbers, on the
two buttons that set the field too; what a button set is said next to the buttons."""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import gradio as gr

from ..data import inspect, parse_mapping
from ..data.formats import FORMATS
from ..errors import WorkbenchError
from ..paths import DEMO_DATASET, DEMO_SETTINGS
from .views import report_view, safe_upload_name


def inspect_view(path: str | None, model: str, fmt: str, mapping: str, cutoff: float | None, val_fraction: float,
                 train_on_prompt: bool):
    """(summary, preview html, histogram, dropped rows, report dict) -- or the error, cleanly.
    ``cutoff`` is the run's sequence length (the Model & method tab's field): the one
    truncation length the report counts with and the run trains with."""
    if not path:
        return "Upload a data file (.json, .jsonl, .csv, .tsv, .parquet, .txt or a .zip of one).", "", None, [], None
    try:
        st = Path(path).stat()
        key = (path, st.st_size, st.st_mtime_ns, model, fmt, mapping, cutoff, val_fraction, train_on_prompt)
    except OSError:
        key = None
    with _LOCK:
        if key in _REPORTS:  # the same upload and options again (every control change re-inspects)
            _REPORTS.move_to_end(key)
            return _REPORTS[key]
    view = _inspect(path, model, fmt, mapping, cutoff, val_fraction, train_on_prompt)
    if key is not None and view[4] is not None:
        with _LOCK:
            _REPORTS[key] = view
            while len(_REPORTS) > 16:
                _REPORTS.popitem(last=False)
    return view


_REPORTS: OrderedDict = OrderedDict()
_LOCK = threading.Lock()


def _inspect(path: str, model: str, fmt: str, mapping: str, cutoff: float | None, val_fraction: float,
             train_on_prompt: bool):
    length = sequence_length(cutoff)
    try:
        tokenizer, note = tokenizer_for(model)
        report = inspect(path, tokenizer=tokenizer, format=None if fmt == "auto" else fmt,
                         mapping=parse_mapping(mapping), cutoff=length,
                         train_on_prompt=bool(train_on_prompt), val_fraction=float(val_fraction or 0),
                         display=safe_upload_name(path)).as_dict()
    except WorkbenchError as exc:
        return f"**Cannot use this file:** {exc}", "", None, [], None
    summary, html, hist, dropped = report_view(report, cutoff_is_sequence_length=length is not None)
    if length is None:
        shown = "empty" if cutoff is None else f"{cutoff:g}"
        summary = (f"**Sequence length on the Model & method tab is {shown}, not a whole number of tokens of at least "
                   f"1:** set it there or with a button below. Until then truncation is counted at the suggested "
                   f"cutoff, {report['suggested_cutoff']}.  \n" + summary)
    return summary + note, html, hist, dropped, report


def sequence_length(value: float | None) -> int | None:
    """The run's sequence length from its field, or None when the field holds no valid one."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if math.isfinite(number) and number >= 1 and number == int(number) else None


def button_labels(report: dict | None):
    """The two buttons name the value they set (suggested cutoff, p95 length)."""
    if not report:
        return gr.update(value=SUGGESTED_LABEL), gr.update(value=P95_LABEL)
    return (gr.update(value=f"{SUGGESTED_LABEL}: {report['suggested_cutoff']} tokens"),
            gr.update(value=f"{P95_LABEL}: {report['token_lengths']['p95']} tokens"))


SUGGESTED_LABEL = "Use the suggested cutoff as the sequence length"
P95_LABEL = "Plan with this dataset's p95 length"
LENGTH_NOTE = ("The cutoff is the run's **sequence length** (Model & method tab): the plan uses it and the run "
               "truncates every example at it.")


def use_length(report: dict | None, which: str):
    """(the sequence length field, a message on the Data tab): the dataset's suggested
    cutoff or p95 length becomes the run's single sequence length."""
    if not report:
        return gr.update(), "Upload a dataset first."
    value = int(report["suggested_cutoff"] if which == "suggested" else report["token_lengths"]["p95"])
    name = "suggested cutoff" if which == "suggested" else "95th-percentile (p95) length"
    return value, (f"**Sequence length set to {value} tokens** (this dataset's {name}) in the Model & method tab: "
                   f"the plan uses it, the report above is counted at it, and the run truncates every example at it.")


def _set_length(report: dict | None, which: str):
    value, message = use_length(report, which)
    return value, message, value if isinstance(value, int) else None


def tokenizer_for(model: str):
    """The model's tokenizer, or the tiny one with a note when it is not available here.
    The name is checked first (:mod:`workbench.safety`): a refused name is an error."""
    from ..data import load_tokenizer
    from ..safety import check_model_name

    model = check_model_name(model)
    try:
        return load_tokenizer(model), ""
    except WorkbenchError:
        return load_tokenizer("tiny"), f"  \n*Token counts use the tiny tokenizer: {model}'s is not available here.*"


DEMO_NOTE = (f"Demo dataset chosen: batch size {DEMO_SETTINGS['batch']} and sequence length {DEMO_SETTINGS['seq']} set "
             f"on the Model & method tab; on the Train tab {DEMO_SETTINGS['max_steps']} steps at learning rate "
             f"{DEMO_SETTINGS['learning_rate']:g}. Then evaluate base vs adapter on the Chat tab.")


def build_data_tab(plan_inputs: dict[str, Any]) -> dict[str, Any]:
    with gr.Row():
        with gr.Column(scale=1):
            upload = gr.File(label="Dataset file", type="filepath",
                             file_types=[".json", ".jsonl", ".csv", ".tsv", ".parquet", ".txt", ".zip"])
            demo = gr.Button("Use the demo dataset: order extraction to JSON (320 rows, 60 held out)", size="sm")
            fmt = gr.Dropdown(["auto", *[f for f in FORMATS if f != "mapped"]], value="auto", label="Format",
                              info="detected automatically; override here")
            mapping = gr.Textbox(label="Column mapping", placeholder="prompt=question,response=answer,system=persona",
                                 info="for files in no known format")
            val = gr.Slider(0, 0.5, value=0.0, step=0.05, label="Validation share", info="seeded split")
            on_prompt = gr.Checkbox(False, label="Train on the prompt too", info="default: loss on answers only")
        with gr.Column(scale=2):
            summary = gr.Markdown()
            preview = gr.HTML(label="What the model sees (green, underlined text carries loss)")
            hist = gr.Plot(label="Token lengths")
            dropped = gr.Dataframe(headers=["row", "reason"], label="Dropped rows", wrap=True)
    with gr.Row():
        use_suggested = gr.Button(SUGGESTED_LABEL)
        use_p95 = gr.Button(P95_LABEL)
    length_note = gr.Markdown(LENGTH_NOTE)
    noted_length = gr.State(None)  # the sequence length the note above speaks of
    report = gr.State(None)
    report.change(button_labels, report, [use_suggested, use_p95], api_visibility="private")
    seq = plan_inputs["seq"]
    # a note about a length no longer in force (typed over, another file) gives way to the general one
    seq.change(lambda v, noted: gr.update() if noted is not None and v == noted else (LENGTH_NOTE, None),
               [seq, noted_length], [length_note, noted_length], api_visibility="private")
    upload.upload(lambda: (LENGTH_NOTE, None), None, [length_note, noted_length], api_visibility="private")
    controls = [upload, plan_inputs["model"], fmt, mapping, seq, val, on_prompt]
    for c in controls:
        c.change(inspect_view, controls, [summary, preview, hist, dropped, report], api_visibility="private")
    gr.Button("Inspect", visible=False).click(inspect_view, controls, [summary, preview, hist, dropped, report],
                                              api_name="inspect")
    demo.click(lambda: (str(DEMO_DATASET), DEMO_SETTINGS["batch"], DEMO_SETTINGS["seq"], DEMO_NOTE,
                        DEMO_SETTINGS["seq"]), None,
               [upload, plan_inputs["batch"], seq, length_note, noted_length], api_visibility="private")
    for button, which in ((use_suggested, "suggested"), (use_p95, "p95")):
        button.click(lambda r, which=which: _set_length(r, which), report, [seq, length_note, noted_length],
                     api_visibility="private")
    return {"upload": upload, "demo": demo, "format": fmt, "mapping": mapping, "val": val, "on_prompt": on_prompt,
            "report": report}
