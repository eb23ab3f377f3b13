"""Tab 1, Model & method: pick a model, a method and settings; the plan updates live."""

from __future__ import annotations

from typing import Any

import gradio as gr

from ..accuracy import planner_accuracy
from ..charts import GIB, plan_bar
from ..compare import GPU_COUNTS, per_gpu_table
from ..errors import WorkbenchError
from ..devices import default_device
from ..gpus import CARDS, LARGEST, RUNTIME_NOTE, gpu_card, menu_choices, on_device
from ..memory import plan
from ..memory.settings import (OFFLOADS, OPTIMIZERS, PRECISION_HELP, PRECISIONS, QUANTS, SETTING_HELP, SETTING_RANGES,
                               default_precision)
from ..methods import METHODS, get_method
from ..runspec import allowed_range, fingerprint, label, plan_run
from ..specs import bundled_names, default_model
from .. import smollm2
from ..smollm2 import INSTALL_HINT, SMOLLM2_LABEL, SMOLLM2_NAME
from ..tiny import TINY_NAME
from .views import approximate_activations, model_spec, run_from_inputs

#: the card the "Across GPUs" table marks fits for, until the user picks another (gpus.CARDS)
PER_GPU_DEFAULT = "H100 80 GB"
PER_GPU_HEADERS = ["strategy"] + [f"{n} GPU{'s' if n > 1 else ''}" for n in GPU_COUNTS]


def all_knobs() -> dict[str, Any]:
    """Every knob name across the registry (first definition wins for the widget's type)."""
    knobs: dict[str, Any] = {}
    for method in METHODS.values():
        for knob in method.knobs:
            knobs.setdefault(knob.name, knob)
    return knobs


KNOB_NAMES = tuple(all_knobs())


def run_of(model: str, method: str, dtype: str, quant: str, batch_size: float, seq_len: float, grad_accum: float,
           gradient_checkpointing: bool, optimizer: str, device: str, knob_values):
    """The RunSpec the plan inputs describe (``knob_values`` follow ``KNOB_NAMES``)."""
    return run_from_inputs(model, method, dtype, quant, batch_size, seq_len, grad_accum, gradient_checkpointing,
                           optimizer, device, knob_values, KNOB_NAMES)


def plan_view(model: str, method: str, dtype: str, quant: str, batch_size: float, seq_len: float,
              grad_accum: float, gradient_checkpointing: bool, optimizer: str, device: str, *knob_values):
    """(markdown summary, figure, table rows) for the inputs; errors become one message that
    replaces the plan (no figure, no rows). ``knob_values`` follow ``KNOB_NAMES``; only the
    chosen method's knobs are used (None: the method's default; an empty field: an error)."""
    try:
        run = run_of(model, method, dtype, quant, batch_size, seq_len, grad_accum, gradient_checkpointing,
                     optimizer, device, knob_values)
        result = plan_run(run)
    except (WorkbenchError, ValueError) as exc:
        return f"**Cannot plan:** {exc}", None, []
    d = result.as_dict()
    return _summary(d, run, fingerprint(result)), plan_bar(d), _rows(d)


def plan_page(*inputs):
    """:func:`plan_view` for the page: on an error the chart and the breakdown are hidden,
    so that nothing stale stands beside the message."""
    summary, figure, rows = plan_view(*inputs)
    shown = figure is not None
    return summary, gr.update(value=figure, visible=shown), gr.update(value=rows, visible=shown)


def per_gpu_view(model: str, method: str, dtype: str, quant: str, batch_size: float, seq_len: float,
                 grad_accum: float, gradient_checkpointing: bool, optimizer: str, device: str, offload: str,
                 gpu: str | float, *knob_values):
    """(markdown, rows) of the "Across GPUs" table: one row per strategy, one column per GPU
    count (one node), each cell the per-GPU peak in GiB, ``+ host`` where offloading puts
    bytes in host memory (per node), ✓ where it fits the card ``gpu`` (a name of
    :data:`workbench.gpus.CARDS`, or a number of GiB) and ✗ where it does not -- decided in
    bytes; ``n/a`` where the combination cannot run, with the reasons under the table.
    ``knob_values`` follow ``KNOB_NAMES``."""
    try:
        run = run_of(model, method, dtype, quant, batch_size, seq_len, grad_accum, gradient_checkpointing,
                     optimizer, device, knob_values)
        settings, chosen, knobs = run.settings, get_method(run.method), run.knobs
        spec = model_spec(run.model)
        if offload not in OFFLOADS:
            raise WorkbenchError(f"offload {offload!r}: choose from {', '.join(OFFLOADS)}")
        card = gpu_card(gpu)
        plan(spec, chosen, knobs, settings)  # what no strategy can fix (a 4-bit base for full training ...)
        rows = per_gpu_table(spec, chosen, knobs, settings, gpu_bytes=card.peak_limit_bytes, offload=offload)
    except (WorkbenchError, ValueError, TypeError) as exc:
        return f"**Cannot plan across GPUs:** {exc}", []
    table, reasons, first = [], {}, []
    for strategy in dict.fromkeys(r["strategy"] for r in rows):
        cells = [r for r in rows if r["strategy"] == strategy]
        line = [strategy]
        for r in cells:
            if r["error"]:
                line.append("n/a")
                reasons.setdefault(r["error"], []).append(f"{strategy} x{r['gpus']}")
                continue
            cell = f"{r['peak_bytes'] / GIB:.1f} GiB"
            if r["host_bytes"]:
                cell += f" + {r['host_bytes'] / GIB:.0f} GiB host"
            line.append(cell + (" ✓" if r["fits"] else " ✗"))
        fitting = next((r for r in cells if r["fits"]), None)
        if fitting:
            first.append(f"{strategy} from {fitting['gpus']} GPU{'s' if fitting['gpus'] > 1 else ''}")
        table.append(line)
    offloaded = f", offload {offload}" if offload != "none" else ""
    summary = (f"**Per-GPU peak** of {chosen.name} on {spec.label}{offloaded}: batch {settings.batch_size} per GPU; "
               f"✓ = fits one {card.label}, ✗ = too big for it. Host memory is per node (8 GPUs on one node).  \n"
               + (f"Fits: {'; '.join(first)}." if first else f"**Nothing here fits one {card.label}**: "
                  "try offloading, gradient checkpointing, a smaller batch or a PEFT method."))
    if reasons:
        summary += "\n\n" + "\n".join(f"- n/a ({', '.join(where)}): {why}" for why, where in reasons.items())
    return summary, table


def per_gpu_shown(summary: str) -> Any:
    """After :func:`per_gpu_view` (whose plain values the ``/per_gpu`` API returns): on an
    error the table is hidden, so that nothing but the message is left."""
    return gr.update(visible=not str(summary).startswith("**Cannot plan across GPUs:**"))


def machine_verdict(run) -> str:
    """The preflight's verdict for this machine, when it has the plan's device; else what
    is missing (planning for a GPU one does not have here is fine; starting is refused).
    A model without weights here plans, and the verdict says it cannot train here."""
    from ..preflight import preflight

    try:
        result = preflight(run)
    except WorkbenchError as exc:
        return f"This machine: {exc}"
    lines = result.message().splitlines()
    head = lines[1] if result.missing_weights else lines[0]
    memory = ("**✓ Fits here:**" + head.removeprefix("Fits:") if result.memory_fits else
              "**✗ Does not fit here:**" + head.removeprefix("Does not fit:") + " (the Train tab lists what would fit)")
    if result.missing_weights:
        return f"**✗ Cannot train here:** {result.missing_weights}.  \nMemory: {memory}"
    return memory


def too_big_for_every_card(run, peak_bytes: int) -> str:
    """When the peak is more than the largest card listed: that, in plain words, and what
    would fit that card (each suggestion re-planned: :func:`workbench.preflight.suggestions_under`)."""
    if LARGEST.fits(peak_bytes):
        return ""
    from ..preflight import gib, suggestions_under

    head = (f"**Too big for every GPU listed:** the predicted peak, {gib(peak_bytes)}, is more than the largest card "
            f"here, the {LARGEST.label}.")
    found = suggestions_under(run, LARGEST.peak_limit_bytes)
    if not found:
        return (head + " No smaller batch, gradient checkpointing, 8-bit optimizer, 4-bit base or shorter sequence "
                "brings it under: choose a smaller model or a PEFT method, or spread it over several GPUs (Across GPUs, "
                "below).\n\n")
    return (head + f" Each of these is re-planned and fits one {LARGEST.name}:\n"
            + "".join(f"- {s.text}\n" for s in found) + "\n")


def gpu_line(peak_bytes: int) -> str:
    """What nvidia-smi would show for the peak, and every card of :data:`workbench.gpus.CARDS`
    with a fit mark, decided in bytes on that figure."""
    marks = [f"{c.name} ({c.usable}) {'✓ fits' if c.fits(peak_bytes) else '✗ too big'}" for c in CARDS]
    return f"On a GPU, as nvidia-smi would show it: {on_device(peak_bytes)[1]}.  \nGPU cards: {'; '.join(marks)}. {RUNTIME_NOTE}"


def _summary(p: dict[str, Any], run, mark: str) -> str:
    demo = ("\n\n> The `tiny` model is a **demo with random weights** that works offline." if p["model"] == TINY_NAME
            else f"\n\n> {SMOLLM2_LABEL}." if p["model"] == SMOLLM2_NAME else "")
    device = p["settings"]["device"]
    measured = planner_accuracy(device)
    accuracy = (f"  \nHow far to trust it: {measured} (`bench/results/planner_accuracy.md`)." if measured else
                f"  \nHow far to trust it: no measured accuracy on {'a GPU' if device == 'cuda' else device} is "
                "committed yet (run `bench/planner_accuracy.py` there).")
    return (
        f"### {p['method']} on {p['model_label']}, planned for {device}\n"
        + too_big_for_every_card(run, p["peak_bytes"]) +
        f"**{p['trainable_params']:,}** of {p['total_params']:,} parameters trained ({p['trainable_percent']:.3f}%).  \n"
        f"Predicted peak **{p['peak_bytes'] / GIB:.2f} GiB**; inference needs "
        f"{p['inference_bytes'] / GIB:.2f} GiB: training takes **{p['peak_over_inference']:.2f}x** the memory of inference.  \n"
        + peak_line(p) + approximate_activations(p) + attention_line(p) +
        f"{machine_verdict(run)}  \n"
        f"{gpu_line(p['peak_bytes'])}  \nPlan `{mark}` (the run started from these settings records the same "
        f"fingerprint)." + accuracy + demo
    )


def attention_line(p: dict[str, Any]) -> str:
    """Which attention kernel the activations are planned for (CUDA: torch's rules, unmeasured)."""
    return f"Attention kernel planned: {p['attention']}.  \n" if p.get("attention") else ""


def peak_line(p: dict[str, Any]) -> str:
    """What sets the peak: its phase and what is alive then (the parts add up to the peak)."""
    parts = " + ".join(f"{t['name'].replace('_', ' ')} {t['bytes'] / GIB:.2f}" for t in p["peak_parts"])
    return f"The peak is at **{p['peak_phase_label']}**: {parts} GiB alive then.  \n"


def _rows(p: dict[str, Any]) -> list[list[Any]]:
    """The peak first (the row that decides whether a run fits), what is alive then, then every
    component and each phase of the step; the phase that sets the peak is marked."""
    parts = " + ".join(f"{t['name']} {t['bytes']:,}" for t in p["peak_parts"])
    rows = [[f"PEAK (at {p['peak_phase'].replace('_', ' ')})", round(p["peak_bytes"] / GIB, 4),
             f"{p['peak_bytes']:,}", f"alive at {p['peak_phase_label']}: {parts} B"]]
    rows += [[c["name"], round(c["bytes"] / GIB, 4), f"{c['bytes']:,}", c["formula"]] for c in p["components"]]
    rows += [[f"peak: {t['name']}" + (" ◀ sets the peak" if t["name"] == p["peak_phase"] else ""),
              round(t["bytes"] / GIB, 4), f"{t['bytes']:,}", t["formula"]] for t in p["peak_terms"]]
    return rows


def method_summary(name: str) -> str:
    method = METHODS.get(name)
    return f"*{method.summary}*" if method else ""


def _knob_info(knob) -> str:
    """A knob's help and its range (the method's own: ``rank`` is 1-4,096 for LoRA, 1-8,192 for VeRA)."""
    if knob.kind in (int, float) and knob.choices is None:
        return f"{knob.help}; {allowed_range(knob.kind, knob.minimum, knob.maximum)}"
    return knob.help


def knob_updates(name: str, values: bool = True) -> list[Any]:
    """Show the method's knobs with their ranges -- and its defaults, with ``values`` (the
    user picked the method) -- and hide the others (keeping their values, so that no event
    reads an empty field in between)."""
    method = METHODS.get(name)
    own = {k.name: k for k in method.knobs} if method else {}
    return [gr.update(visible=True, info=_knob_info(own[n]), **({"value": own[n].default} if values else {}))
            if n in own else gr.update(visible=False) for n in KNOB_NAMES]


def knob_visibility(name: str) -> list[Any]:
    """:func:`knob_updates` without the defaults: a method set by the page (a reload puts the
    saved method and its saved knobs back together) keeps the knobs it was given."""
    return knob_updates(name, values=False)


def _knob_widget(knob):
    """A number is typed into a text field: the browser sends what is typed -- an empty field
    stays empty (an error, not the default) and 2.5 stays 2.5 -- and the server checks it
    (:func:`workbench.runspec.build_run`); gradio's own number field rounds or refuses
    without saying so on the page."""
    name = label(knob.name)
    if knob.kind is bool:
        return gr.Checkbox(knob.default, label=name, info=knob.help)
    if knob.choices:
        return gr.Dropdown(list(knob.choices), value=knob.default, label=name, info=knob.help)
    return gr.Textbox(str(knob.default), label=name, info=_knob_info(knob))


def _number_info(name: str) -> str:
    low, high = SETTING_RANGES[name]
    return f"{SETTING_HELP[name]}; {allowed_range(int, low, high)}"


def build_plan_tab() -> dict[str, Any]:
    """Layout; returns the input components other tabs read."""
    with gr.Row():
        with gr.Column(scale=1):
            chosen = default_model()
            model = gr.Dropdown(bundled_names(), value=chosen, label="Model", allow_custom_value=True,
                                info="a bundled config (no download), a local folder, or a hub id. "
                                     f"{SMOLLM2_LABEL}; tiny: an offline demo with random weights")
            if chosen == TINY_NAME and not smollm2.available():  # not when an operator chose tiny
                gr.Markdown(f"*{INSTALL_HINT}*")
            method = gr.Dropdown([(f"{m.title} ({n})", n) for n, m in METHODS.items()], value="lora",
                                 label="Method", info="how the model is fine-tuned; defaults for its knobs")
            method_help = gr.Markdown(method_summary("lora"))
            with gr.Accordion("Method knobs", open=True):
                lora_knobs = {k.name for k in METHODS["lora"].knobs}
                knob_widgets = []
                for name, knob in all_knobs().items():
                    widget = _knob_widget(knob)
                    widget.visible = name in lora_knobs
                    knob_widgets.append(widget)
            # custom values: the API and old pages may spell a precision their way (bfloat16, mixed-bf16)
            dtype = gr.Dropdown([(f"{k}: {PRECISION_HELP[k]}", k) for k in PRECISIONS],
                                value=default_precision(default_device()), label="Precision",
                                info=SETTING_HELP["precision"], allow_custom_value=True)
            quant = gr.Dropdown(["auto", *QUANTS], value="auto", label="Quantization", info=SETTING_HELP["quant"])
            # no precision/minimum: gradio would round 2.5 to 2 or refuse 0 before the server could say why
            batch = gr.Number(4, label=label("batch_size"), info=_number_info("batch_size"))
            seq = gr.Number(512, label=label("seq_len"), info=_number_info("seq_len"))
            accum = gr.Number(1, label=label("grad_accum"), info=_number_info("grad_accum"))
            ckpt = gr.Checkbox(False, label="Gradient checkpointing", info=SETTING_HELP["gradient_checkpointing"])
            optim = gr.Dropdown(list(OPTIMIZERS), value="adamw", label="Optimizer", info=SETTING_HELP["optimizer"])
            device = gr.Radio(["cuda", "cpu"], value=default_device(), label="Device",
                              info="where the run trains and what it is planned for (default: cuda when this "
                                   "machine has a GPU, else cpu)")
        with gr.Column(scale=2):
            summary = gr.Markdown()
            chart = gr.Plot(label="Predicted memory of one training step")
            # the formula column takes the room left, wrapped (never clipped)
            table = gr.Dataframe(headers=["component", "GiB", "bytes", "formula"], wrap=True, label="Breakdown",
                                 column_widths=["20%", "9%", "15%", "56%"])
            with gr.Accordion("Across GPUs", open=False) as across:
                gr.Markdown("Per-GPU memory of the same training under each strategy on 1, 2, 4 and 8 GPUs of one "
                            "node: where a large model starts to fit. Every figure is per GPU; offloaded bytes are "
                            "host memory.")
                with gr.Row():
                    offload = gr.Dropdown(list(OFFLOADS), value="none", label="Offload", info=SETTING_HELP["offload"])
                    gpu_size = gr.Dropdown(menu_choices(), value=PER_GPU_DEFAULT, label="GPU",
                                           info="its total memory in GiB (nvidia-smi); ✓ fits, ✗ too big")
                per_gpu_summary = gr.Markdown()
                per_gpu_rows = gr.Dataframe(headers=PER_GPU_HEADERS, wrap=True, label="Per-GPU peak")
    inputs = {"model": model, "method": method, "dtype": dtype, "quant": quant, "batch": batch, "seq": seq,
              "accum": accum, "ckpt": ckpt, "optim": optim, "device": device}
    ordered = list(inputs.values()) + knob_widgets
    gpu_inputs = list(inputs.values()) + [offload, gpu_size] + knob_widgets
    method.change(method_summary, method, method_help, api_visibility="private")
    # the user's new method: its knobs' defaults first, then its plan (never the old method's knob
    # values); a method the page sets (a reload) only shows its knobs, whose values it sets itself
    method.change(knob_visibility, method, knob_widgets, api_visibility="private")
    method.input(knob_updates, method, knob_widgets, api_visibility="private").then(
        plan_page, ordered, [summary, chart, table], api_visibility="private").then(
        per_gpu_view, gpu_inputs, [per_gpu_summary, per_gpu_rows], api_visibility="private").then(
        per_gpu_shown, per_gpu_summary, per_gpu_rows, api_visibility="private")
    device.input(default_precision, device, dtype, api_visibility="private")  # the user's switch: its precision too
    for control in ordered:
        if control is not method:
            control.change(plan_page, ordered, [summary, chart, table], api_visibility="private")
    gpu_triggers = [across.expand, offload.change, gpu_size.change] + [c.change for c in ordered if c is not method]
    gr.on(gpu_triggers, per_gpu_view, gpu_inputs, [per_gpu_summary, per_gpu_rows], api_name="per_gpu",
          trigger_mode="always_last").then(per_gpu_shown, per_gpu_summary, per_gpu_rows, api_visibility="private")
    return {"inputs": inputs, "knobs": knob_widgets, "outputs": [summary, chart, table]}
