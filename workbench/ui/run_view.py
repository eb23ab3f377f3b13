"""A run as the Train and Runs tabs show it, from its files (no gradio here): the status
lines (plan recorded by the worker, probe, predicted vs measured peak), the progress line
("step 27 / 60 · epoch 0.45 · 1 min 12 s left"), a failed run's paragraph with its log tail
folded away, and the live-memory and training-curve charts. Many tabs poll the same run: a
view is served again while the run's files are unchanged."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

from ..accuracy import plan_error_percent
from ..charts import GIB, live_memory, training_curves
from ..errors import WorkbenchError

MAX_POINTS = 1500
LIVE_VIEW_SECONDS = 1.0  # how long a live run's view may be served again while its files are unchanged


def run_view(session_id: str | None, user: str | None = None):
    """(status markdown, progress line, memory chart, curves) of a run, from its files; only
    ``user``'s runs when the server has sign-in."""
    return run_view_and_state(session_id, user)[0]


def run_view_and_state(session_id: str | None, user: str | None = None):
    """(the four parts of :func:`run_view`, the run's state or None when there is no run of
    ``user`` by that id): the Train tab enables Cancel only while its run is active."""
    from ..sessions import check_access, info

    if not session_id:
        return ("No run yet.", "", None, None), None
    try:
        folder = check_access(session_id, user)
        key = (session_id, *_stamp(folder / "events.jsonl"), *_stamp(folder / "plan_effective.json"))
        with _VIEW_LOCK:  # nothing new since the last poll: many tabs poll the same run, the worker keeps the CPU
            hit = _VIEWS.get(key)
            if hit and hit[1] > time.monotonic():
                return hit[0]
        s = info(session_id)  # also notices a vanished worker (interrupted)
    except WorkbenchError as exc:
        return (f"**{exc}**", "", None, None), None
    view = (_run_view(session_id, folder, s), s.state)
    settled = s.state in ("completed", "failed", "cancelled", "interrupted")
    with _VIEW_LOCK:  # a finished run's view holds until its files change; a live one for a second
        _VIEWS[(session_id, *_stamp(folder / "events.jsonl"), *_stamp(folder / "plan_effective.json"))] = (
            view, float("inf") if settled else time.monotonic() + LIVE_VIEW_SECONDS)
        while len(_VIEWS) > 64:
            _VIEWS.popitem(last=False)
    return view


_VIEWS: OrderedDict = OrderedDict()
_VIEW_LOCK = threading.Lock()


def _stamp(path: Path) -> tuple[int, int]:
    try:
        st = path.stat()
        return st.st_size, st.st_mtime_ns
    except OSError:
        return -1, -1


def _run_view(session_id: str, folder: Path, s):
    from ..sessions import predicted_plan
    from ..training.events import read_events

    events, _ = read_events(folder / "events.jsonl")
    memory = [e for e in events if e["kind"] == "memory"]
    if len(memory) > MAX_POINTS:
        memory = memory[:: len(memory) // MAX_POINTS + 1] + memory[-1:]
    steps = [e for e in events if e["kind"] == "step_memory"]
    logs = [e for e in events if e["kind"] == "log"]
    plan = predicted_plan(folder)
    last = next((e for e in reversed(events) if e["kind"] == "status"), {})
    lines = [f"### Run {s.id}: **{s.state}**", f"{s.method} on {s.model}, data {s.dataset}"]
    recorded = next((e for e in reversed(events) if e["kind"] == "plan"), None)
    if recorded:
        same = "the same plan as shown before the start ✓" if recorded.get("matches_shown") else \
            f"**another plan than the one shown**: {recorded.get('mismatch', '')}"
        lines.append(f"Plan `{recorded['fingerprint']}` recorded by the worker: {same}")
        if recorded.get("reason"):
            lines.append(f"Predicted peak for the batches this data forms: {recorded['effective_peak_bytes'] / GIB:.3f} GiB "
                         f"(shown plan {recorded['peak_bytes'] / GIB:.3f} GiB at sequence length {recorded['seq_len']}), "
                         f"because {recorded['reason']}")
    probe = next((e for e in events if e["kind"] in ("probe", "step_check")), None)
    if probe:
        what = (f"Probe (step {probe['step']}, the longest examples)" if probe["kind"] == "probe"
                else f"Step {probe['step']}")
        limit = f"; memory limit {probe['limit_bytes'] / GIB:.2f} GiB {'✓ fits' if probe['fits'] else '✗ over'}" \
            if probe.get("limit_bytes") else ""
        lines.append(f"{what}: measured {probe['measured_bytes'] / GIB:.3f} GiB of {probe['quantity']} vs predicted "
                     f"peak {probe['predicted_bytes'] / GIB:.3f} GiB (plan "
                     f"{_over(plan_error_percent(probe['predicted_bytes'], probe['measured_bytes']))}){limit}")
    if s.predicted_peak_bytes and s.measured_peak_bytes:
        lines.append(f"Predicted peak {s.predicted_peak_bytes / GIB:.3f} GiB; measured step peak "
                     f"{s.measured_peak_bytes / GIB:.3f} GiB ({s.measured_peak_source}): the plan is "
                     f"**{_over(s.plan_error_percent)}**")
    if s.state in ("failed", "interrupted"):
        lines.append(failure_paragraph(s.state, last) + log_tail_details(folder))
    elif s.state == "cancelled" and last.get("reason"):
        lines.append(f"Cancelled: {last['reason']}.")
    if s.final_adapter:
        lines.append(f"adapter: `{s.final_adapter}`")
    return "  \n".join(lines), progress_line(session_id, s.state, events), live_memory(memory, plan, steps), training_curves(logs)


def _over(error: float | None) -> str:
    """``1.4% over the measured peak`` / ``0.3% under ...``: the plan's error said in words."""
    if error is None:
        return "not comparable (nothing measured)"
    return f"{abs(error):.1f}% {'over' if error >= 0 else 'under'} the measured peak"


def human_duration(seconds: float) -> str:
    """A duration as people say it: "45 s", "1 min 12 s", "2 h 3 min" (under a second: "under 1 s")."""
    seconds = max(0, int(round(float(seconds))))
    if seconds < 1:
        return "under 1 s"
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        minutes, rest = divmod(seconds, 60)
        return f"{minutes} min {rest} s" if rest else f"{minutes} min"
    hours, rest = divmod(seconds, 3600)
    return f"{hours} h {rest // 60} min" if rest // 60 else f"{hours} h"


def progress_line(session_id: str, state: str, events: list[dict[str, Any]]) -> str:
    """One line of where a run is: "step 27 / 60 · epoch 0.45 · 1 min 12 s left" while it
    trains; its place in the queue while it waits (no time estimate then); "done in 3 min 4 s"
    when it completed; where it stopped, without any estimate, when it failed or was cancelled."""
    logs = [e for e in events if e.get("kind") == "log"]
    statuses = [e for e in events if e.get("kind") == "status"]
    last = logs[-1] if logs else None
    where = ""
    if last:
        epoch = f" · epoch {last['epoch']:.2f}" if last.get("epoch") is not None else ""
        where = f"step {last['step']} / {last['max_steps']}{epoch}"
    if state == "queued":
        from ..training.queue import describe

        try:
            line = describe(session_id)
        except (WorkbenchError, OSError):
            line = None
        waits = statuses[-1].get("waiting_for") if statuses else None
        if waits:  # its worker holds the device's lock but a chat model's memory is in the way
            line = f"queued: {waits}"
        return (line or "queued: waiting for its turn") + "; no time estimate until it starts"
    if state == "loading":
        return "loading the model and the data" + (f" (resuming after {where})" if where else "")
    if state == "running":
        if not last:
            return "training started; the time left is known after the first step"
        eta = last.get("eta_seconds")
        return where + (f" · {human_duration(eta)} left" if eta is not None else "")
    if state == "saving":
        return (where + " · " if where else "") + "saving the adapter"
    if state == "completed":
        begun = next((e["time"] for e in statuses if e.get("status") not in ("queued",)), None)
        took = f"done in {human_duration(statuses[-1]['time'] - begun)}" if begun is not None else "done"
        return took + (f" · {last['step']} / {last['max_steps']} steps" if last else "")
    return f"{state} at {where}" if where else f"{state} before the first step"


#: what a failure's error means, by the kind of error the worker reported (its first word)


_ERROR_KINDS = {
    "DataFileError": ("the dataset could not be used", "check the file on the Data tab (its format and column "
                      "mapping), fix or replace it, and start again"),
    "TemplateError": ("the examples could not be put into the model's chat format", "pick another format on the "
                      "Data tab, or map the columns yourself, and start again"),
    "SettingsError": ("a setting of the run cannot be used", "change it on the Model & method or Train tab and "
                      "start again"),
    "UnknownModelError": ("the model could not be found", "pick a bundled model on the Model & method tab"),
    "ConfigError": ("the model could not be read", "pick a bundled model on the Model & method tab"),
}


def failure_paragraph(state: str, last: dict[str, Any]) -> str:
    """One paragraph a non-engineer can act on: what happened and what to try, from the run's
    final status event (its ``reason``, ``message``/``error`` and ``suggestions``). The
    worker's log is not part of it (see :func:`log_tail_details`)."""
    import re

    reason = last.get("reason") or "error"
    told = str(last.get("message") or last.get("error") or "").strip()
    if state == "interrupted":
        return (f"**Interrupted**: the training process stopped before it finished ({reason}). Its steps up to the "
                "newest complete checkpoint are kept: pick the run on the Runs tab and press **Resume**, or start "
                "it again here.")
    if reason == "oom":
        tips = last.get("suggestions") or []
        head = ("**Failed (oom)**: the run ran out of memory -- training needed more memory than it had"
                + (f" ({told})" if told else "") + ".")
        if not tips:
            return head + (" What to try: a smaller batch size or sequence length, gradient checkpointing on, or a "
                           "method that trains fewer weights (Model & method tab); the plan there shows what fits.")
        return head + " What to try -- each of these is planned to fit the memory this run had:  \n" + \
            "  \n".join(f"- {tip}" for tip in tips)
    if reason == "disk_full":
        return ("**Failed (disk full)**: the server's disk is full, so the run could not be saved"
                + (f" ({told})" if told else "") + ". What to try: delete runs you no longer need on the Runs "
                "tab, then resume this one there.")
    kind, _, text = told.partition(": ")
    if not re.fullmatch(r"[A-Za-z_]\w*", kind or "-"):
        kind, text = "", told
    if kind in _ERROR_KINDS:
        what, tip = _ERROR_KINDS[kind]
        return f"**Failed ({reason})**: {what}: {text}. What to try: {tip}."
    if "exited with code" in told or "could not be started" in told:
        return (f"**Failed ({reason})**: the training process ended unexpectedly ({told}). What to try: start the "
                "run again; if it fails the same way, give the details below to whoever runs this server.")
    return (f"**Failed ({reason})**: the training stopped with an error"
            + (f": {text or told}" if told else "") + ". What to try: start it again; if it fails the same way, "
            "check the dataset (Data tab) and the settings, or give the details below to whoever runs this server.")


LOG_TAIL_LINES = 30
LOG_TAIL_BYTES = 16 * 2**10


def log_tail_details(folder: Path) -> str:
    """The end of the run's ``worker.log`` as a collapsed HTML "Details (log tail)" block,
    escaped, for whoever wants to look closer. Tracebacks are left out (their exception line
    stays) and absolute paths are cut to their last part, like every failure message: the
    whole log stays in the run's folder on the server. Empty when there is no log."""
    import html

    from ..training.worker import _PATH

    try:
        with open(folder / "worker.log", "rb") as fh:
            fh.seek(max(0, fh.seek(0, 2) - LOG_TAIL_BYTES))
            text = fh.read().decode(errors="replace")
    except OSError:
        return ""
    kept, in_traceback = [], False
    for line in text.splitlines()[1:] if len(text) >= LOG_TAIL_BYTES else text.splitlines():
        line = line.rsplit("\r", 1)[-1].rstrip()  # a progress bar redrawn in place: its last state
        if line.startswith("Traceback (most recent call last)"):
            in_traceback = True
            continue
        if in_traceback and (line.startswith((" ", "\t")) or not line):
            continue
        in_traceback = False
        if line and not line.startswith(("During handling of the above exception", "The above exception was")):
            kept.append(_PATH.sub(lambda m: m.group(0).rstrip("/").rsplit("/", 1)[-1] or "/", line))
    if not kept:
        return ""
    return ("\n\n<details><summary>Details (log tail)</summary><pre>" + html.escape("\n".join(kept[-LOG_TAIL_LINES:]))
            + "</pre></details>\n")
