"""What a reload keeps: the page's form (every plan input and knob, the Data tab's file and
options, the Train tab's schedule), the selected tab -- saved on every change in the
browser's own storage (``gr.BrowserState``) and put back when the page loads.

The browser's storage is input like any other: every saved value is checked against its
field's choices, type and range before it reaches a widget, and a dataset path is only put
back when this server handed it to this user (an HMAC of user and path, keyed by a secret
of the server process that never leaves it), it still lies inside gradio's upload folder and
is a plain file. When a run of the user is still queued or training, the form shows that
run's own settings (its ``job.json``), with a line that says so.

Putting fields back never sets others: picking a method resets its knobs and the demo
dataset sets its schedule only when the user does it (``method.input``, the demo button and
``upload.upload``, never on a change made by a restore), so a restore needs no undo.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
from pathlib import Path
from typing import Any

import gradio as gr

from ..data.formats import FORMATS
from ..errors import SettingsError, WorkbenchError
from ..memory.settings import OFFLOADS, OPTIMIZERS, PRECISIONS, QUANTS, STRATEGIES, parse_precision
from ..methods import METHODS, get_method
from ..paths import DEMO_DATASET, is_demo_dataset
from ..runspec import MAX_STEPS, form_number, whole_number
from .plan_tab import KNOB_NAMES, all_knobs
from .views import latest_active_run, safe_upload_name, user_of

#: the page's tabs: id -> label (app.py builds them in this order)
TABS = {"plan": "Model & method", "compare": "Compare", "teach": "Why so much memory", "data": "Data", "train": "Train", "chat": "Chat",
        "runs": "Runs"}
STORAGE_KEY = "peft-workbench-page"
VERSION = 1
_SECRET = secrets.token_bytes(32)  # signs dataset paths for this server process only
MAX_TEXT = 500

_CHOICES = {"dtype": tuple(PRECISIONS), "quant": ("auto", *QUANTS), "optim": tuple(OPTIMIZERS),
            "device": ("cuda", "cpu"), "strategy": tuple(STRATEGIES), "offload": tuple(OFFLOADS),
            "format": ("auto", *[f for f in FORMATS if f != "mapped"]), "method": tuple(METHODS)}
_COUNTS = {"batch": "batch_size", "seq": "seq_len", "accum": "grad_accum", "gpus": "gpus"}
#: the saved fields, in the order of :func:`form_components` (knobs are ``knob:<name>``)
FIELDS = ("model", "method", "dtype", "quant", "batch", "seq", "accum", "ckpt", "optim", "device",
          *(f"knob:{n}" for n in KNOB_NAMES), "format", "mapping", "val", "on_prompt", "max_steps", "lr", "gpus",
          "strategy", "offload")


def form_components(plan: dict[str, Any], data: dict[str, Any], train: dict[str, Any]) -> dict[str, Any]:
    """Field name -> component, for :data:`FIELDS` (the dataset file is kept apart: it is signed)."""
    widgets = {**plan["inputs"], **{f"knob:{n}": w for n, w in zip(KNOB_NAMES, plan["knobs"])},
               **{k: data[k] for k in ("format", "mapping", "val", "on_prompt")}, **train["controls"]}
    return {name: widgets[name] for name in FIELDS}


# -- checking what the browser sent --------------------------------------------------------------

def _number(value: Any) -> float | None:
    """A number, or a number as a text field holds it ("8", "2e-4"); None for anything else."""
    if isinstance(value, str) and len(value) <= 40:
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:  # an int beyond any float (10**400)
        return None
    return number if math.isfinite(number) else None


def _same(a: Any, b: Any) -> bool:
    """Equal as the form shows them: -1, -1.0 and "-1" are the same number."""
    x, y = _number(a), _number(b)
    return x == y if x is not None and y is not None else str(a) == str(b)


def _checked(value: Any, check) -> Any:
    """The saved value as it was (a text field keeps its text) when the form's own check of
    that field (:func:`workbench.runspec.form_number`: its kind and range) accepts it."""
    if value is None or (isinstance(value, str) and len(value) > 40):
        return None
    try:
        check(value)
    except SettingsError:
        return None
    return value


def _knob(name: str, value: Any) -> Any:
    knob = all_knobs()[name]
    if value is None:
        return None
    if knob.kind is bool:
        return value if isinstance(value, bool) else None
    if knob.choices:
        return value if value in knob.choices else None
    if knob.kind in (int, float):
        return _checked(value, lambda v: form_number(name, v, knob.kind, knob.minimum, knob.maximum))
    return value if isinstance(value, str) and len(value) <= MAX_TEXT else None


def clean_value(name: str, value: Any) -> Any:
    """The saved ``value`` of field ``name`` if the field accepts it, else None (not restored)."""
    if name.startswith("knob:"):
        return _knob(name[5:], value)
    if name == "dtype" and isinstance(value, str) and len(value) <= MAX_TEXT:  # a page saved before precisions:
        value = _checked(value, parse_precision)  # its dtype (float32, bfloat16) is that precision
    if name in _CHOICES:
        return value if isinstance(value, str) and value in _CHOICES[name] else None
    if name in _COUNTS:
        return _checked(value, lambda v: whole_number(_COUNTS[name], v))
    if name == "max_steps":
        return value if _same(value, -1) else _checked(value, lambda v: form_number(name, v, int, 1, MAX_STEPS))
    if name in ("ckpt", "on_prompt"):
        return value if isinstance(value, bool) else None
    if name == "val":
        number = _number(value)
        return value if number is not None and 0 <= number <= 0.5 else None
    if name == "lr":
        number = _number(value)
        return value if number is not None and 0 < number <= 10 else None
    if name == "model":
        from ..safety import check_model_name

        try:
            return check_model_name(value) if isinstance(value, str) and len(value) <= MAX_TEXT else None
        except WorkbenchError:
            return None
    if name == "mapping":
        return value if isinstance(value, str) and len(value) <= MAX_TEXT else None
    return None


def clean_form(form: Any) -> dict[str, Any]:
    """The fields of a saved form that pass :func:`clean_value`; anything else is dropped."""
    if not isinstance(form, dict):
        return {}
    checked = {name: clean_value(name, form.get(name)) for name in FIELDS if name in form}
    return {n: v for n, v in checked.items() if v is not None}


# -- the dataset file ----------------------------------------------------------------------------

def _signature(path: str, user: str | None) -> str:
    return hmac.new(_SECRET, f"{user or ''}\0{path}".encode(), hashlib.sha256).hexdigest()


def upload_entry(path: str | None, user: str | None) -> dict[str, Any] | None:
    """What is saved of the Data tab's file: the demo dataset by name, an upload by its path
    and signature (only a path gradio gave this page reaches here)."""
    if not path:
        return None
    if is_demo_dataset(path):
        return {"demo": True}
    return {"path": str(path), "sig": _signature(str(path), user)}


def upload_folder() -> Path:
    from gradio.utils import get_upload_folder

    return Path(get_upload_folder()).resolve()


def restored_upload(entry: Any, user: str | None) -> str | None:
    """The file to put back in the Data tab, or None: the bundled demo dataset, or a path this
    server signed for ``user`` that is still a plain file inside gradio's upload folder."""
    if not isinstance(entry, dict):
        return None
    if entry.get("demo") is True:
        return str(DEMO_DATASET)
    path, sig = entry.get("path"), entry.get("sig")
    if not isinstance(path, str) or not isinstance(sig, str) or len(path) > 4096:
        return None
    if not hmac.compare_digest(_signature(path, user), sig):
        return None
    candidate = Path(path)
    try:
        if candidate.is_symlink() or not candidate.is_file():
            return None
        candidate.resolve().relative_to(upload_folder())
    except (OSError, ValueError):
        return None
    return path


# -- an attached run -----------------------------------------------------------------------------

def form_of_run(session_id: str, user: str | None) -> tuple[dict[str, Any], str]:
    """(the form fields of the run's own settings, its dataset's name), from its ``job.json``."""
    from ..sessions import check_access
    from ..training.job import TrainJob

    job = TrainJob.load(check_access(session_id, user) / "job.json")
    run, s = job.run, job.run.settings
    d = job.data
    form = {"model": run.model, "method": run.method, "dtype": s.precision, "quant": s.quant or "auto",
            "batch": s.batch_size, "seq": s.seq_len, "accum": s.grad_accum, "ckpt": s.gradient_checkpointing,
            "optim": s.optimizer, "device": s.device, "gpus": s.gpus, "strategy": s.strategy, "offload": s.offload,
            "format": d.format or "auto", "mapping": ",".join(f"{k}={v}" for k, v in (d.mapping or {}).items()),
            "val": d.val_fraction, "on_prompt": d.train_on_prompt, "max_steps": job.schedule.max_steps,
            "lr": job.schedule.learning_rate}
    own = {k.name for k in get_method(run.method).knobs}
    form.update({f"knob:{n}": run.knobs.get(n) for n in KNOB_NAMES if n in own})
    return form, d.name or Path(d.path).name


_RUN_NOTICE = "**Showing the settings of run `{}`**"
_SEPARATOR = "  \n"


def without_run_notice(notice: str | None, session_id: str) -> str:
    """The notice without its line about run ``session_id`` (it has ended: the form is the
    user's own again)."""
    lines = (notice or "").split(_SEPARATOR)
    return _SEPARATOR.join(line for line in lines if not line.startswith(_RUN_NOTICE.format(session_id)))


# -- the events ----------------------------------------------------------------------------------

def save(user: str | None, upload: str | None, tab: str | None, values: list[Any]) -> dict[str, Any]:
    """The page's state as the browser keeps it."""
    return {"v": VERSION, "form": dict(zip(FIELDS, values)), "upload": upload_entry(upload, user),
            "tab": tab if tab in TABS else "plan"}


def restore(saved: Any, user: str | None) -> dict[str, Any]:
    """What the page shows after a load: {"form": fields to set, "upload": path or None,
    "tab", "session": the attached run or None, "notice": markdown}."""
    saved = saved if isinstance(saved, dict) and saved.get("v") == VERSION else {}
    form = clean_form(saved.get("form"))
    upload: str | None = restored_upload(saved.get("upload"), user)
    notes = []
    if saved.get("upload") and upload is None:
        notes.append("The dataset file chosen before is no longer on the server (it was restarted or the file "
                     "expired): upload it again on the Data tab.")
    session = latest_active_run(user)
    if session:
        try:
            run_form, dataset = form_of_run(session, user)
        except (WorkbenchError, OSError, ValueError):
            session = None
        else:
            form.update(run_form)
            if upload and safe_upload_name(upload) != dataset and not (is_demo_dataset(upload) and dataset ==
                                                                       DEMO_DATASET.name):
                upload = None
            notes.insert(0, f"{_RUN_NOTICE.format(session)}, which is still queued or training (its "
                            f"dataset: `{dataset}`); the Train tab follows it. Change any field to plan another run.")
    tab = saved.get("tab") if saved.get("tab") in TABS else None
    return {"form": form, "upload": upload, "tab": tab, "session": session, "notice": _SEPARATOR.join(notes)}


def _constant(value: Any):
    def constant():
        return value
    return constant


def _go_to(tab_id: str):
    def go_to():
        return gr.Tabs(selected=tab_id), tab_id
    return go_to


def wire(app: gr.Blocks, tabs: gr.Tabs, plan: dict[str, Any], data: dict[str, Any], train: dict[str, Any],
         notice: gr.Markdown, tab_ids: dict[str, Any]) -> gr.events.Dependency:
    """Save on every change, restore on load; returns the load event (the plan and summary
    follow it, so what they show is the plan of the restored form)."""
    saved = gr.BrowserState(None, storage_key=STORAGE_KEY)
    tab = gr.State("plan")
    fields = form_components(plan, data, train)
    widgets = list(fields.values())
    upload = data["upload"]

    def saving(request: gr.Request, upload_path, tab_id, *values):
        return save(user_of(request), upload_path, tab_id, list(values))

    gr.on([w.change for w in widgets] + [upload.change], saving, [upload, tab, *widgets], saved,
          api_visibility="private", trigger_mode="always_last")
    for tab_id, block in tab_ids.items():  # a State set by an event does not fire its own change: save after
        block.select(_constant(tab_id), None, tab, api_visibility="private", queue=False).then(
            saving, [upload, tab, *widgets], saved, api_visibility="private")
    for tab_id, buttons in train["links"].items():  # the summary's way back to where each part is set
        for button in buttons:
            button.click(_go_to(tab_id), None, [tabs, tab], api_visibility="private", queue=False).then(
                saving, [upload, tab, *widgets], saved, api_visibility="private")

    def restoring(state, request: gr.Request):
        r = restore(state, user_of(request))
        form = r["form"]
        updates = [form[n] if n in form else gr.update() for n in FIELDS]
        return (*updates, r["upload"] if r["upload"] else gr.update(), gr.Tabs(selected=r["tab"]) if r["tab"] else
                gr.update(), r["tab"] or gr.update(), r["notice"],
                r["session"] if r["session"] else gr.update(), r["session"] or gr.update())

    return app.load(restoring, saved, [*widgets, upload, tabs, tab, notice, train["session"], train["run_id"]],
                    api_visibility="private")
