"""Tab 6, Runs: the sessions store -- list, open (plan vs measured, charts), cancel,
resume, delete, download the adapter zip. Reloading the page reattaches: it is all files."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import gradio as gr

from ..errors import WorkbenchError
from .train_tab import run_panel
from .views import run_view, sessions_rows

HEADERS = ["id", "state", "method", "model", "dataset", "step", "last loss", "predicted peak GiB",
           "measured peak GiB"]


def act(action: str, session_id: str | None):
    """(message, download file) for cancel/resume/delete/zip on one run."""
    from ..sessions import delete_session, session_path
    from ..training.artifacts import export_merged, export_zip
    from ..training.checkpoints import final_adapter
    from ..training.launcher import cancel, resume

    if not session_id:
        return "Pick a run first.", None
    try:
        if action == "cancel":
            return f"{session_id}: {cancel(session_id, grace=30)}", None
        if action == "resume":
            resume(session_id)
            return f"{session_id}: resumed from its newest complete checkpoint", None
        if action == "delete":
            delete_session(session_id)
            return f"{session_id}: deleted", None
        final = final_adapter(session_path(session_id))
        if final is None:
            return f"{session_id} has no finished result yet.", None
        folder = Path(tempfile.mkdtemp(prefix="wb-export-"))
        if action == "merged":
            merged = export_merged(final, folder / f"{session_id}-merged")
            archive = shutil.make_archive(str(folder / f"{session_id}-merged"), "zip", merged)
            return f"{session_id}: merged model ready (safetensors + tokenizer)", archive
        return f"{session_id}: adapter zip ready", str(export_zip(final, folder / f"{session_id}-adapter.zip"))
    except WorkbenchError as exc:
        return f"**{exc}**", None


def job_settings(session_id: str | None) -> dict:
    """The run's job.json (model, method, knobs, settings, data, schedule)."""
    import json

    from ..sessions import session_path

    if not session_id:
        return {}
    try:
        return json.loads((session_path(session_id) / "job.json").read_text())
    except (WorkbenchError, OSError, ValueError) as exc:
        return {"error": str(exc)}


def build_runs_tab() -> None:
    refresh = gr.Button("Refresh")
    table = gr.Dataframe(headers=HEADERS, value=sessions_rows, label="Runs", wrap=True)
    pick = gr.Dropdown([], label="Run", allow_custom_value=False)
    with gr.Row():
        buttons = {a: gr.Button(label) for a, label in (("open", "Open"), ("cancel", "Cancel"), ("resume", "Resume"),
                                                        ("delete", "Delete"), ("zip", "Adapter zip"),
                                                        ("merged", "Merged model (zip)"))}
    message = gr.Markdown()
    download = gr.File(label="Download", interactive=False)
    panel = run_panel()
    job = gr.JSON(label="Job settings")

    def reload():
        rows = sessions_rows()
        return rows, gr.update(choices=[r[0] for r in rows])

    refresh.click(reload, None, [table, pick], api_name="sessions")
    buttons["open"].click(run_view, pick, panel, api_name=False)
    buttons["open"].click(job_settings, pick, job, api_name=False)
    timer = gr.Timer(2.0)  # an opened run keeps updating: reloading the page reattaches to it
    timer.tick(lambda sid: run_view(sid) if sid else (gr.update(),) * 4, pick, panel,
               api_name=False)
    for action in ("cancel", "resume", "delete", "zip", "merged"):
        buttons[action].click(lambda sid, a=action: act(a, sid), pick, [message, download], api_name=False)
