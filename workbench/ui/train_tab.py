"""Tab 5, Train: what Start will train (the run definition, read-only, with a button to the
tab where each part is set), queue a run (its worker starts when the device is free), its
progress line ("step 27 / 60 · epoch 0.45 · 1 min 12 s left"), predicted vs live memory, loss,
learning rate and tokens/s, cancel (enabled only while the page's run is active). Polls the
run's files with ``gr.Timer``; never blocks."""

from __future__ import annotations

from typing import Any

import gradio as gr

from ..errors import WorkbenchError
from ..memory.settings import OFFLOADS, SETTING_HELP, STRATEGIES
from ..paths import DEMO_DATASET
from .run_view import run_view_and_state
from .views import latest_active_run, run_from_inputs, user_of


SCHEDULE_HELP = "examples per optimizer step = batch size x gradient accumulation"


def _run(model, method, dtype, quant, batch, seq, accum, ckpt, optim, device, data_path, fmt, mapping, val, on_prompt,
         max_steps, lr, gpus, strategy, offload, knob_values):
    """The RunSpec of the page (the plan inputs, the knobs, the data and the schedule)."""
    from ..data import parse_mapping
    from .plan_tab import KNOB_NAMES
    from .views import safe_upload_name

    data = None
    if data_path:
        data = {"path": data_path, "name": safe_upload_name(data_path), "format": fmt, "mapping": parse_mapping(mapping),
                "val_fraction": val or 0, "train_on_prompt": bool(on_prompt)}
    return run_from_inputs(model, method, dtype, quant, batch, seq, accum, ckpt, optim, device, knob_values,
                           KNOB_NAMES, data=data, schedule={"max_steps": max_steps, "learning_rate": lr, "logging_steps": 1},
                           gpus=gpus, strategy=strategy, offload=offload)


def start_run(request: gr.Request, model: str, method: str, dtype: str, quant: str, batch: float, seq: float,
              accum: float, ckpt: bool, optim: str, device: str, data_path: str | None, fmt: str, mapping: str,
              val: float, on_prompt: bool, max_steps: float, lr: float, gpus: float, strategy: str, offload: str,
              *knob_values):
    """(session id for the page, session id for API clients, message). Queues exactly the
    run the page shows (its plan's fingerprint is recorded); it starts at once when its
    device is free, else when its turn comes. Refused, with the reason and what would fit,
    when the device is missing, the plan does not fit its free memory or too many runs are
    waiting. The run belongs to the signed-in user, if any. ``knob_values`` follow
    ``workbench.ui.plan_tab.KNOB_NAMES`` (None: the method's default)."""
    from ..training.launcher import start
    from ..training.queue import describe

    if not data_path:
        return None, "", "**Cannot start:** upload a dataset in the Data tab first."
    try:
        run = _run(model, method, dtype, quant, batch, seq, accum, ckpt, optim, device, data_path, fmt, mapping, val,
                   on_prompt, max_steps, lr, gpus, strategy, offload, knob_values)
        session_id, proc = start(run, owner=user_of(request))
    except (WorkbenchError, ValueError) as exc:
        return None, "", "**Cannot start:** " + str(exc).replace("\n", "  \n")
    line = None if proc is not None else describe(session_id)  # another start may have started it
    if line is None:
        return session_id, session_id, f"Started run `{session_id}`."
    return session_id, session_id, f"Run `{session_id}` {line}."


SUMMARY_PARTS = ("model", "settings", "data", "schedule", "verdict")


def run_summary(model, method, dtype, quant, batch, seq, accum, ckpt, optim, device, data_path, fmt, mapping, val,
                on_prompt, max_steps, lr, gpus, strategy, offload, report, *knob_values) -> tuple[str, ...]:
    """What Start will train, read-only, one markdown per :data:`SUMMARY_PARTS`: model and
    method with its knobs; batch, accumulation, sequence length, precision, device; the
    dataset and its size (examples, tokens); the schedule; the predicted peak and the verdict
    here. The page puts a button to the tab that sets each part beside it."""
    from ..preflight import gib, preflight
    from ..runspec import fingerprint, plan_run

    try:
        run = _run(model, method, dtype, quant, batch, seq, accum, ckpt, optim, device, data_path, fmt, mapping, val,
                   on_prompt, max_steps, lr, gpus, strategy, offload, knob_values)
        p = plan_run(run)
    except (WorkbenchError, ValueError) as exc:
        return (f"**Cannot start yet:** {exc}", "", "", "", "")
    s = run.settings
    knobs = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in run.knobs.items()) or "no knobs"
    precision = s.precision + (f", base weights in {s.quant}" if s.quant else "")
    processes = f" · {s.gpus} GPUs, {s.strategy}" + (f", offload {s.offload}" if s.offload != "none" else "") \
        if s.gpus > 1 or s.strategy != "single" else ""
    per_step = s.batch_size * s.grad_accum * s.gpus
    dataset = "**Data** none yet: upload a file or pick the demo dataset"
    epochs = ""
    if run.data:
        dataset = f"**Data** `{run.data.name}`"
        if report:
            t = report["token_lengths"]
            train_rows = report["split"]["train"]
            dataset += (f" ({report['format']}): **{report['rows']:,} examples** ({train_rows:,} for training, "
                        f"{report['split']['validation']:,} held out), **{t['total']:,} tokens** (mean {t['mean']:.0f} "
                        f"per example); {report['truncated_fraction']:.1%} are longer than {s.seq_len} tokens and "
                        "get truncated")
            if run.schedule.max_steps > 0 and train_rows:
                epochs = f" ≈ {run.schedule.max_steps * per_step / train_rows:.2f} epochs of this data"
        else:
            dataset += " (not readable yet: see the Data tab)"
    steps = "whole epochs" if run.schedule.max_steps == -1 else f"{run.schedule.max_steps} optimizer steps"
    try:
        check = preflight(run, p.peak_bytes)
        verdict = ("✓ " if check.fits else "✗ ") + check.message().replace("\n", "  \n")
    except WorkbenchError as exc:
        verdict = f"✗ {exc}"
    return (f"**Model** {run.model} · **method** {run.method} ({knobs})",
            f"**Batch size** {s.batch_size} × **gradient accumulation** {s.grad_accum}{' × ' + str(s.gpus) + ' GPUs' if s.gpus > 1 else ''}"
            f" = {per_step} examples per optimizer step · **sequence length** {s.seq_len} tokens (longer examples are "
            f"truncated) · **precision** {precision} · gradient checkpointing {'on' if s.gradient_checkpointing else 'off'}"
            f" · **optimizer** {s.optimizer} · **device** {s.device}{processes}",
            dataset,
            f"**Schedule** {steps}{epochs}, learning rate {run.schedule.learning_rate:g} (set below)",
            f"**Predicted peak {gib(p.peak_bytes)}** of memory (plan `{fingerprint(p)}`)  \n{verdict}")


def cancel_run(session_id: str | None, request: gr.Request = None) -> str:
    from ..sessions import check_access
    from ..training.launcher import cancel

    if not session_id:
        return "No run to cancel."
    try:
        check_access(session_id, user_of(request))
        return f"Run `{session_id}`: {cancel(session_id, grace=30)}"
    except WorkbenchError as exc:
        return f"**{exc}**"


def poll_run(session_id: str | None, request: gr.Request = None):
    """The run panel of one of the signed-in user's runs (``/run_status``): status, progress
    line, memory chart, curves; a run waiting for its turn says how many are ahead (and the
    poll dispatches the queue)."""
    return _poll(session_id, request)[0]


def poll_with_cancel(session_id: str | None, request: gr.Request = None):
    """The Train tab's timer: the run panel, and Cancel enabled only while the page's run
    (one of the user's own) is queued or training."""
    from ..training.events import FINAL

    view, state = _poll(session_id, request)
    return (*view, gr.update(interactive=state is not None and state not in FINAL))


def poll_page(session_id: str | None, notice: str | None, request: gr.Request = None):
    """:func:`poll_with_cancel`, and the page's notice without its "Showing the settings of
    run X" line once run X has ended (the rest of the notice stays)."""
    from ..training.events import FINAL
    from .state import without_run_notice

    view, state = _poll(session_id, request)
    ended = session_id and (state is None or state in FINAL)
    kept = without_run_notice(notice, session_id) if ended else notice
    return (*view, gr.update(interactive=state is not None and state not in FINAL),
            gr.update() if kept == notice else kept)


def _poll(session_id: str | None, request: gr.Request = None):
    from ..training.queue import dispatch_soon

    view, state = run_view_and_state(session_id, user_of(request))
    if state == "queued":
        try:
            dispatch_soon()
        except WorkbenchError:
            pass
    return view, state


def reattach(request: gr.Request = None):
    """On page load: (session, run id) of the user's newest run still queued or training,
    so a reload during training shows it again."""
    session_id = latest_active_run(user_of(request))
    return session_id, session_id or ""


def readiness(data_path: str | None, report: dict | None) -> Any:
    """The start button, enabled only when there is a usable dataset, with the reason."""
    if not data_path:
        return gr.update(interactive=False, value="Start training (upload a dataset first)")
    if report is None:
        return gr.update(interactive=False, value="Start training (fix the dataset first)")
    return gr.update(interactive=True, value="Start training")


def demo_schedule(path: str | None):
    """The demo dataset's schedule (12 steps at 1e-3: bench/demo.py); any other file keeps the form's."""
    from ..paths import DEMO_SETTINGS, is_demo_dataset

    if is_demo_dataset(path):
        return DEMO_SETTINGS["max_steps"], DEMO_SETTINGS["learning_rate"]
    return gr.update(), gr.update()


def run_panel() -> list[Any]:
    """The components ``run_view`` fills: status, progress line, live memory, training curves."""
    status = gr.Markdown()
    progress = gr.Markdown(elem_classes=["run-progress"])  # "step 27 / 60 · epoch 0.45 · 1 min 12 s left"
    memory = gr.Plot(label="Predicted vs live memory (GiB)")
    curves = gr.Plot(label="Loss, learning rate, tokens/s")
    return [status, progress, memory, curves]


def build_train_tab(plan_inputs: dict[str, Any], data: dict[str, Any], notice: gr.Markdown) -> dict[str, Any]:
    """Layout; returns the run controls (for the page's saved state), the summary and the
    buttons that lead to the tab where each part of the summary is set (the page wires them)."""
    session = gr.State(None)
    gr.Markdown("#### What Start will train")
    links: dict[str, list[Any]] = {"plan": [], "data": []}
    parts = []
    for part in SUMMARY_PARTS:
        with gr.Row(equal_height=True):
            parts.append(gr.Markdown())
            if part in ("model", "settings"):
                links["plan"].append(gr.Button("Change on the Model & method tab", size="sm", scale=0, min_width=240))
            elif part == "data":
                links["data"].append(gr.Button("Change on the Data tab", size="sm", scale=0, min_width=240))
    with gr.Row():
        # no precision/minimum: gradio would round 2.5 to 2 or refuse 0 before the server could say why
        max_steps = gr.Number(30, label="Max steps", info="optimizer steps to train; -1: whole epochs of the data")
        lr = gr.Number(2e-4, label="Learning rate")
    with gr.Row():
        gpus = gr.Number(1, label="GPUs",
                         info="processes; a multi-GPU run is launched with accelerate (on CPU: gloo processes)")
        strategy = gr.Dropdown(list(STRATEGIES), value="single", label="Strategy", info=SETTING_HELP["strategy"])
        offload = gr.Dropdown(list(OFFLOADS), value="none", label="Offload", info=SETTING_HELP["offload"])
    with gr.Row():
        start_btn = gr.Button("Start training (upload a dataset first)", variant="primary", interactive=False)
        cancel_btn = gr.Button("Cancel", variant="stop", interactive=False)
    message = gr.Markdown()
    run_id = gr.Textbox(label="Run id", interactive=False)
    panel = run_panel()
    timer = gr.Timer(1.0)
    p = plan_inputs["inputs"]
    inputs = [p["model"], p["method"], p["dtype"], p["quant"], p["batch"], p["seq"], p["accum"], p["ckpt"], p["optim"],
              p["device"], data["upload"], data["format"], data["mapping"], data["val"], data["on_prompt"], max_steps,
              lr, gpus, strategy, offload]
    knobs = plan_inputs["knobs"]
    start_btn.click(start_run, inputs + knobs, [session, run_id, message], api_name="start_run")
    summary_inputs = inputs + [data["report"]] + knobs
    for control in summary_inputs:
        control.change(run_summary, summary_inputs, parts, api_visibility="private", trigger_mode="always_last",
                       show_progress="hidden")  # it follows every keystroke: no fading while it redraws
    cancel_btn.click(cancel_run, run_id, message, api_name="cancel_run")  # the id is also what API clients pass
    data["report"].change(readiness, [data["upload"], data["report"]], start_btn, api_visibility="private")
    # the demo's schedule when the user picks the demo (its button, or an upload of the same file); a
    # reload that puts the file back keeps the schedule it puts back with it
    data["demo"].click(lambda: demo_schedule(str(DEMO_DATASET)), None, [max_steps, lr], api_visibility="private")
    data["upload"].upload(demo_schedule, data["upload"], [max_steps, lr], api_visibility="private")
    timer.tick(poll_page, [session, notice], panel + [cancel_btn, notice], api_name="poll_run",
               api_visibility="private", show_progress="hidden")  # every second: no loading marks over the panel
    gr.Button(visible=False).click(poll_run, gr.Textbox(visible=False), panel,
                                   api_name="run_status")
    return {"session": session, "run_id": run_id, "summary": parts, "summary_inputs": summary_inputs, "links": links,
            "controls": {"max_steps": max_steps, "lr": lr, "gpus": gpus, "strategy": strategy, "offload": offload}}
