"""The ``sessions/`` store: every run in its own folder, named by an id we generate.

``sessions/<id>/``: ``job.json`` (the run), ``plan.json`` (the prediction made before it),
``events.jsonl`` (what happened), ``worker.log``, ``worker.pid``, ``dataset.*`` (a copy of
the data), ``checkpoints/`` and ``final/`` (complete ones carry a ``COMPLETE`` marker), and
``owner`` (the signed-in user who started it, when the server has ``--auth``).
A run whose worker has vanished (killed, machine rebooted) is shown as ``interrupted``.

Ownership: with a user name (``--auth`` on) a session is visible only to its owner; a
session of someone else reads exactly like one that does not exist. Without a user (a
single-user server on loopback) every session is visible.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .errors import WorkbenchError
from .paths import REPO_DIR
from .training.checkpoints import complete_checkpoints, final_adapter
from .training.events import FINAL, EventWriter, read_events
from .training.job import check_session_id

HEARTBEAT_SECONDS = 60.0


def sessions_dir() -> Path:
    return Path(os.environ.get("WORKBENCH_SESSIONS") or REPO_DIR / "sessions")


def session_path(session_id: str) -> Path:
    return sessions_dir() / check_session_id(session_id)


OWNER_FILE = "owner"


def owner_of(folder: Path) -> str | None:
    try:
        return (folder / OWNER_FILE).read_text(encoding="utf-8") or None
    except OSError:
        return None


def check_access(session_id: str, user: str | None) -> Path:
    """The session's folder if ``user`` may see it (see the module docstring); otherwise
    the same error as for a session that does not exist."""
    folder = session_path(session_id)
    if not (folder / "job.json").is_file() or (user is not None and owner_of(folder) != user):
        raise WorkbenchError(f"no session {session_id}")
    return folder


@dataclass
class SessionInfo:
    id: str
    state: str
    reason: str | None
    model: str
    method: str
    dataset: str
    step: int | None
    max_steps: int | None
    last_loss: float | None
    final_adapter: str | None
    checkpoints: list[str]
    created: float
    finished: float | None
    pid: int | None  # while a worker runs
    events_path: str
    predicted_peak_bytes: int | None
    measured_peak_bytes: int | None
    measured_peak_source: str | None
    prediction_error_percent: float | None = None  # measured step peak vs predicted, once measured

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def worker_alive(folder: Path) -> bool:
    """Is the worker of this session still running? (pid file + the pid's command line)."""
    try:
        pid = int((folder / "worker.pid").read_text().strip())
    except (OSError, ValueError):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True
    return "workbench.training.worker" in cmdline and folder.name in cmdline


def last_status(folder: Path) -> str:
    events, _ = read_events(folder / "events.jsonl")
    return next((e["status"] for e in reversed(events) if e.get("kind") == "status"), "queued")


def refresh(session_id: str) -> str:
    """The session's status; a non-final status whose worker is gone becomes ``interrupted``
    (recorded as an event, so every later reader agrees)."""
    folder = session_path(session_id)
    events, _ = read_events(folder / "events.jsonl")
    statuses = [e for e in events if e.get("kind") == "status"]
    status = statuses[-1]["status"] if statuses else "queued"
    if status in FINAL:
        return status
    last_beat = events[-1]["time"] if events else (folder / "job.json").stat().st_mtime
    alive = worker_alive(folder)
    if not alive or time.time() - last_beat > HEARTBEAT_SECONDS:
        if alive:
            return status  # alive but quiet: a long load; the heartbeat resumes with the sampler
        writer = EventWriter(folder / "events.jsonl")
        writer.status("interrupted", reason="the worker process is gone (killed or the machine restarted)")
        writer.close()
        return "interrupted"
    return status


def info(session_id: str) -> SessionInfo:
    folder = session_path(session_id)
    if not (folder / "job.json").is_file():
        raise WorkbenchError(f"no session {session_id}")
    job = json.loads((folder / "job.json").read_text())
    job = job.get("run") or job  # job.json: {"session_id", "plan_fingerprint", "run": {...}} (flat before)
    status = refresh(session_id)
    events, _ = read_events(folder / "events.jsonl")
    final_status = next((e for e in reversed(events) if e.get("kind") == "status"), {})
    logs = [e for e in events if e.get("kind") == "log"]
    losses = [e["loss"] for e in logs if e.get("loss") is not None]
    final = final_adapter(folder)
    measured, source, predicted, error = measured_vs_predicted(folder, events)
    pid = None
    if status not in FINAL and worker_alive(folder):
        pid = int((folder / "worker.pid").read_text().strip())
    return SessionInfo(
        id=session_id, state=status, reason=final_status.get("reason"), model=job["model"], method=job["method"],
        dataset=job["data"].get("name") or Path(job["data"]["path"]).name,
        step=logs[-1]["step"] if logs else None, max_steps=logs[-1]["max_steps"] if logs else None,
        last_loss=losses[-1] if losses else None, final_adapter=str(final) if final else None,
        checkpoints=[str(p) for p in complete_checkpoints(folder)], created=(folder / "job.json").stat().st_mtime,
        finished=final_status.get("time") if status in FINAL else None, pid=pid,
        events_path=str(folder / "events.jsonl"), predicted_peak_bytes=predicted, measured_peak_bytes=measured,
        measured_peak_source=source, prediction_error_percent=error,
    )


def predicted_plan(folder: Path) -> dict[str, Any] | None:
    """The plan of the batches the run forms: ``plan_effective.json`` when the data forced a
    narrower one (its reason inside), else ``plan.json``, the plan shown before the start."""
    for name in ("plan_effective.json", "plan.json"):
        try:
            return json.loads((folder / name).read_text())
        except (OSError, ValueError):
            continue
    return None


def measured_vs_predicted(folder: Path, events: list[dict[str, Any]]):
    """(measured step peak, its quantity, predicted peak, error %): the largest step peak
    the worker measured (``step_memory`` events: live tensor bytes on CPU, CUDA
    max_memory_allocated) against the predicted peak -- the same quantity."""
    steps = [e for e in events if e.get("kind") == "step_memory" and e.get("rank") in (None, 0)]
    plan = predicted_plan(folder)
    predicted = plan.get("peak_bytes") if plan else None
    if not steps:
        return None, None, predicted, None
    measured = max(e["peak_bytes"] for e in steps)
    error = round((measured - predicted) / predicted * 100, 2) if predicted else None
    return measured, steps[-1].get("quantity"), predicted, error


def list_sessions(user: str | None = None) -> list[SessionInfo]:
    """Newest first; with ``user``, only that user's sessions."""
    root = sessions_dir()
    if not root.is_dir():
        return []
    out = []
    for folder in sorted(root.iterdir(), reverse=True):
        try:
            check_access(folder.name, user)
            out.append(info(folder.name))
        except WorkbenchError:
            continue  # not one of ours
    return out


def delete_session(session_id: str, user: str | None = None) -> None:
    folder = check_access(session_id, user)
    if worker_alive(folder):
        raise WorkbenchError(f"session {session_id} is running; cancel it first")
    shutil.rmtree(folder)
