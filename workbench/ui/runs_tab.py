"""Tab 7, Runs: the sessions store -- list, open (plan vs measured, charts), cancel,
resume, delete, export the adapter or merged model (a private download link, served only to the
run's owner by the export route of serving.py). Reloading the page reattaches: it is all files."""

from __future__ import annotations

import html
from pathlib import Path

import gradio as gr

from ..errors import WorkbenchError
from .train_tab import run_panel
from .run_view import run_view
from .views import sessions_rows, user_of

HEADERS = ["id", "state", "method", "model", "dataset", "step", "last loss", "predicted peak GiB",
           "measured step peak GiB", "measured as", "plan error (plan - measured) / measured"]


def act(action: str, session_id: str | None, user: str | None = None):
    """(message, export file or None) for cancel/resume/delete/zip/merged on one of ``user``'s runs;
    an export lies in the run's private folder (see :mod:`workbench.exports`), not gradio's cache."""
    from ..sessions import check_access, delete_session
    from ..exports import export_run
    from ..training.launcher import cancel, resume

    if not session_id:
        return "Pick a run first.", None
    try:
        check_access(session_id, user)
        if action == "cancel":
            return f"{session_id}: {cancel(session_id, grace=30)}", None
        if action == "resume":
            started = resume(session_id) is not None
            return (f"{session_id}: resumed from its newest complete checkpoint" if started else
                    f"{session_id}: queued to resume from its newest complete checkpoint when its device is free"), None
        if action == "delete":
            delete_session(session_id, user)
            return f"{session_id}: deleted", None
        path = export_run(session_id, action, user)
        if action == "merged":
            return f"{session_id}: merged model ready (safetensors + tokenizer)", path
        return f"{session_id}: adapter zip ready", path
    except WorkbenchError as exc:
        return f"**{exc}**", None


def export_link(message: str, path: Path | None) -> tuple[str, str]:
    """(message, the download link of an export or ""): a link to the export route, which hands
    the file to the run's owner only -- the file is never copied into gradio's cache."""
    from ..exports import max_age_seconds
    from .serving import export_url

    if path is None:
        return message, ""
    path = Path(path)
    url = export_url(path.parent.parent.name, path.name)
    size = path.stat().st_size
    size_text = f"{size / 2**20:,.1f} MiB" if size >= 2**20 else f"{size / 2**10:,.1f} KiB"
    return message, (f'<a href="{html.escape(url)}" download="{html.escape(path.name)}">Download '
                     f'{html.escape(path.name)}</a> ({size_text}; kept {max_age_seconds() / 3600:g} h, for you only)')


def job_settings(session_id: str | None, user: str | None = None) -> dict:
    """The run's job.json (model, method, knobs, settings, data, schedule) -- the dataset by
    its file name in the run's folder, never a path of the server's disk."""
    import json

    from ..sessions import check_access

    if not session_id:
        return {}
    try:
        job = json.loads((check_access(session_id, user) / "job.json").read_text())
        shown = {**(job.get("run") or job), "plan_fingerprint": job.get("plan_fingerprint")}
    except (WorkbenchError, OSError, ValueError) as exc:
        return {"error": str(exc)}
    data = shown.get("data")
    if isinstance(data, dict) and data.get("path"):
        shown["data"] = {**data, "path": f"{Path(str(data['path'])).name} (the run's copy of the dataset)"}
    return shown


def build_runs_tab() -> dict:
    refresh = gr.Button("Refresh")
    table = gr.Dataframe(headers=HEADERS, value=[], label="Runs", wrap=True)
    pick = gr.Dropdown([], label="Run", allow_custom_value=False)
    with gr.Row():
        buttons = {a: gr.Button(label) for a, label in (("open", "Open"), ("cancel", "Cancel"), ("resume", "Resume"),
                                                        ("delete", "Delete"), ("zip", "Adapter zip"),
                                                        ("merged", "Merged model (zip)"))}
    message = gr.Markdown()
    download = gr.HTML()  # the export's link (export_link)
    panel = run_panel()
    job = gr.JSON(label="Job settings")

    def reload(request: gr.Request):
        rows = sessions_rows(user_of(request))
        return rows, gr.update(choices=[r[0] for r in rows])

    def opened(sid: str | None, request: gr.Request):
        return run_view(sid, user_of(request))

    def settings(sid: str | None, request: gr.Request):
        return job_settings(sid, user_of(request))

    def follow(sid: str | None, request: gr.Request):
        return run_view(sid, user_of(request)) if sid else (gr.update(),) * 4

    refresh.click(reload, None, [table, pick], api_name="sessions")
    buttons["open"].click(opened, pick, panel, api_visibility="private")
    buttons["open"].click(settings, pick, job, api_visibility="private")
    timer = gr.Timer(2.0)  # an opened run keeps updating: reloading the page reattaches to it
    timer.tick(follow, pick, panel, api_visibility="private", show_progress="hidden")
    for action in ("cancel", "resume", "delete", "zip", "merged"):
        def run_action(sid: str | None, request: gr.Request, a: str = action):
            return export_link(*act(a, sid, user_of(request)))

        buttons[action].click(run_action, pick, [message, download], api_visibility="private")
    return {"reload": reload, "outputs": [table, pick]}  # the page fills the table on load
