"""Tab 4, Train: queue a run (its worker starts when the device is free), watch its place in
the queue, predicted vs live memory, loss, learning rate and tokens/s, cancel. Polls the
run's files with ``gr.Timer``; never blocks."""

from __future__ import annotations

from typing import Any

import gradio as gr

from ..errors import WorkbenchError
from ..memory.settings import OFFLOADS, SETTING_HELP, STRATEGIES
from .views import latest_active_run, run_from_inputs, run_view, user_of


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


def run_summary(model, method, dtype, quant, batch, seq, accum, ckpt, optim, device, data_path, fmt, mapping, val,
                on_prompt, max_steps, lr, gpus, strategy, offload, report, *knob_values) -> str:
    """What Start will train, read-only: the run definition, its plan and the verdict here."""
    from ..preflight import gib, preflight
    from ..runspec import fingerprint, plan_run

    try:
        run = _run(model, method, dtype, quant, batch, seq, accum, ckpt, optim, device, data_path, fmt, mapping, val,
                   on_prompt, max_steps, lr, gpus, strategy, offload, knob_values)
        p = plan_run(run)
    except (WorkbenchError, ValueError) as exc:
        return f"**Cannot start yet:** {exc}"
    s = run.settings
    knobs = ", ".join(f"{k} {v}" for k, v in run.knobs.items()) or "no knobs"
    dataset = "**no dataset yet** (Data tab)"
    if run.data:
        rows = f", {report['rows']:,} examples, {report['truncated_fraction']:.1%} longer than {s.seq_len} tokens " \
               f"(truncated)" if report else ""
        dataset = f"`{run.data.name}`{rows}"
    try:
        check = preflight(run, p.peak_bytes)
        verdict = check.message().replace("\n", "  \n")
        verdict = ("✓ " if check.fits else "✗ ") + verdict
    except WorkbenchError as exc:
        verdict = f"✗ {exc}"
    steps = "whole epochs" if run.schedule.max_steps == -1 else f"{run.schedule.max_steps} steps"
    return (f"#### What Start will train\n"
            f"- **Model** {run.model} · **method** {run.method} ({knobs}) — *Model & method tab*\n"
            f"- **Batch** {s.batch_size} × accumulation {s.grad_accum} = {s.batch_size * s.grad_accum} examples per step · "
            f"**sequence length** {s.seq_len} (truncation) · **{s.dtype}** · checkpointing "
            f"{'on' if s.gradient_checkpointing else 'off'} · **optimizer** {s.optimizer} · **device {s.device}** "
            f"— *Model & method tab*\n"
            f"- **Data** {dataset} — *Data tab*\n"
            f"- **Schedule** {steps}, learning rate {run.schedule.learning_rate:g} — *below*\n"
            f"- **Predicted peak {gib(p.peak_bytes)}** (plan `{fingerprint(p)}`)  \n{verdict}")


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
    """The run panel of one of the signed-in user's runs (the timer and ``/run_status``); a
    run waiting for its turn says how many are ahead (and the poll dispatches the queue)."""
    from ..training.queue import describe, dispatch_soon

    view = run_view(session_id, user_of(request))
    if not session_id or "**queued**" not in str(view[0]):
        return view
    try:
        dispatch_soon()
        line = describe(session_id)
    except WorkbenchError:
        return view
    return ((view[0] + f"  \n{line[0].upper()}{line[1:]}", *view[1:]) if line else view)


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
    """The components ``run_view`` fills: status, progress, live memory, training curves."""
    status = gr.Markdown()
    progress = gr.Slider(0, 1, value=0, label="Progress", interactive=False)
    memory = gr.Plot(label="Predicted vs live memory")
    curves = gr.Plot(label="Loss, learning rate, tokens/s")
    return [status, progress, memory, curves]


def build_train_tab(plan_inputs: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    session = gr.State(None)
    summary = gr.Markdown()
    with gr.Row():
        max_steps = gr.Number(30, label="Max steps", precision=0, minimum=1)
        lr = gr.Number(2e-4, label="Learning rate")
    with gr.Row():
        gpus = gr.Number(1, label="GPUs", precision=0, minimum=1,
                         info="processes; a multi-GPU run is launched with accelerate (on CPU: gloo processes)")
        strategy = gr.Dropdown(list(STRATEGIES), value="single", label="Strategy", info=SETTING_HELP["strategy"])
        offload = gr.Dropdown(list(OFFLOADS), value="none", label="Offload", info=SETTING_HELP["offload"])
    with gr.Row():
        start_btn = gr.Button("Start training (upload a dataset first)", variant="primary", interactive=False)
        cancel_btn = gr.Button("Cancel", variant="stop")
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
        control.change(run_summary, summary_inputs, summary, api_visibility="private", trigger_mode="always_last")
    cancel_btn.click(cancel_run, run_id, message, api_name="cancel_run")  # the id is also what API clients pass
    data["report"].change(readiness, [data["upload"], data["report"]], start_btn, api_visibility="private")
    data["upload"].change(demo_schedule, data["upload"], [max_steps, lr], api_visibility="private")
    timer.tick(poll_run, session, panel, api_visibility="private")
    gr.Button(visible=False).click(poll_run, gr.Textbox(visible=False), panel,
                                   api_name="run_status")
    return {"session": session, "run_id": run_id, "summary": summary, "summary_inputs": summary_inputs}
