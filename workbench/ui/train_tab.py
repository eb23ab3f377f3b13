"""Tab 4, Train: start a run in a background worker, watch predicted vs live memory, loss,
learning rate and tokens/s, cancel. Polls the run's files with ``gr.Timer``; never blocks."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import gradio as gr

from ..errors import WorkbenchError
from ..memory.settings import OFFLOADS, SETTING_HELP, STRATEGIES
from .views import latest_active_run, run_view, settings_from, user_of


def start_run(model: str, method: str, dtype: str, quant: str, batch: float, seq: float, accum: float, ckpt: bool,
              optim: str, train_device: str, data_path: str | None, fmt: str, mapping: str, cutoff: float | None,
              val: float, on_prompt: bool, max_steps: float, lr: float, gpus: float = 1, strategy: str = "single",
              offload: str = "none", request: gr.Request = None):
    """(session id for the page, session id for API clients, message). The run belongs to
    the signed-in user, if any."""
    from ..data import parse_mapping
    from ..safety import check_model_name
    from ..training.job import Schedule
    from ..training.launcher import make_job, start
    from .views import safe_upload_name

    if not data_path:
        return None, "", "**Cannot start:** upload a dataset in the Data tab first."
    try:
        model = check_model_name(model)
        settings = replace(settings_from(dtype, quant, batch, seq, accum, ckpt, optim, train_device),
                           gpus=int(gpus or 1), strategy=strategy or "single", offload=offload or "none")
        job = make_job(model, method, data_path, settings=settings.as_dict(),
                       schedule=Schedule(max_steps=int(max_steps) if max_steps else -1, learning_rate=float(lr),
                                         logging_steps=1),
                       name=safe_upload_name(data_path), format=None if fmt == "auto" else fmt,
                       mapping=parse_mapping(mapping), cutoff=int(cutoff) if cutoff else None,
                       val_fraction=float(val or 0), train_on_prompt=bool(on_prompt))
        session_id, _ = start(job, owner=user_of(request))
    except (WorkbenchError, ValueError) as exc:
        return None, "", f"**Cannot start:** {exc}"
    return session_id, session_id, f"Started run `{session_id}`."


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
    """The run panel of one of the signed-in user's runs (the timer and ``/run_status``)."""
    return run_view(session_id, user_of(request))


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


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def run_panel() -> list[Any]:
    """The components ``run_view`` fills: status, progress, live memory, training curves."""
    status = gr.Markdown()
    progress = gr.Slider(0, 1, value=0, label="Progress", interactive=False)
    memory = gr.Plot(label="Predicted vs live memory")
    curves = gr.Plot(label="Loss, learning rate, tokens/s")
    return [status, progress, memory, curves]


def build_train_tab(plan_inputs: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    session = gr.State(None)
    with gr.Row():
        train_device = gr.Radio(["cuda", "cpu"], value=default_device(), label="Train on")
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
              train_device, data["upload"], data["format"], data["mapping"], data["cutoff"], data["val"],
              data["on_prompt"], max_steps, lr, gpus, strategy, offload]
    start_btn.click(start_run, inputs, [session, run_id, message], api_name="start_run")
    cancel_btn.click(cancel_run, run_id, message, api_name="cancel_run")  # the id is also what API clients pass
    data["report"].change(readiness, [data["upload"], data["report"]], start_btn, api_visibility="private")
    timer.tick(poll_run, session, panel, api_visibility="private")
    gr.Button(visible=False).click(poll_run, gr.Textbox(visible=False), panel,
                                   api_name="run_status")
    return {"session": session, "run_id": run_id}
