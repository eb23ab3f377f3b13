"""The ``sessions/`` store: every run in its own folder, named by an id we generate.

``sessions/<id>/``: ``job.json`` (the run), ``plan.json`` (the prediction made before it),
``events.jsonl`` (what happened), ``worker.log``, ``worker.pid``, ``dataset.*`` (a copy of
the data), ``checkpoints/`` and ``final/`` (complete ones carry a ``COMPLETE`` marker), and
``owner`` (the signed-in user who started it, when the server has ``--auth``).

A run is a record before it is a process: ``queued`` with no ``worker.pid`` is waiting for
its turn (:mod:`workbench.training.queue` starts it); once started, ``worker.pid`` names
the worker, the leader of its own process group (every process of the run is in that
group and names the session folder on its command line). A run whose worker has vanished
(killed, machine rebooted) is shown as ``interrupted``.

Locks (``flock`` on directories, so no lock file appears anywhere; plus a thread lock for
threads of one process): :func:`queue_lock` on the sessions folder serialises creating
records and starting workers; :func:`control_lock` on one session's folder serialises
start, resume, cancel and delete of that run. Order: a holder of the queue lock waits for a
control lock for a bounded time only (then gives up for this round), so the two never
deadlock.

Ownership: with a user name (``--auth`` on) a session is visible only to its owner; a
session of someone else reads exactly like one that does not exist. Without a user (a
single-user server on loopback) every session is visible.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .accuracy import plan_error_percent
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
    the same error as for a session that does not exist. Constant shape: a missing and a
    foreign session take the same steps (the job file looked up, the owner file read, the
    names compared in constant time) and raise the same message, so neither the text nor
    the time tells whether another user's run exists."""
    import hmac

    folder = session_path(session_id)
    exists = (folder / "job.json").is_file()
    owner = owner_of(folder)  # read whatever ``exists`` says (None for a missing folder)
    same_user = hmac.compare_digest((owner or "").encode(), (user or "").encode()) and owner is not None
    if not exists or (user is not None and not same_user):
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
    plan_error_percent: float | None = None  # (predicted - measured step peak) / measured, once measured: + = plan over

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _cmdline(pid: int) -> str | None:
    """A process's command line, "" for a zombie, None when it cannot be read (no /proc)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except FileNotFoundError:
        return ""
    except OSError:
        return None


def _names_run(cmdline: str, folder: Path) -> bool:
    return "workbench.training.worker" in cmdline and folder.name in cmdline


def _group_members(pgid: int) -> list[int]:
    """Processes whose process group is ``pgid`` (read from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[2]) == pgid:  # field 5, after "pid (comm) state ppid"
                found.append(int(entry))
    return found


def recorded_pid(folder: Path) -> int | None:
    try:
        return int((folder / "worker.pid").read_text().strip())
    except (OSError, ValueError):
        return None


def worker_processes(folder: Path) -> list[int]:
    """The live processes of this session's worker tree: the process ``worker.pid`` names,
    or else the members of its process group (the worker leads one), whose command line
    names the session -- a recycled pid or group id names someone else's processes and is
    never taken for ours."""
    pid = recorded_pid(folder)
    if pid is None or pid <= 1:
        return []
    leader = _cmdline(pid)
    if leader is None:  # no /proc: the pid is all we can check
        try:
            os.kill(pid, 0)
            return [pid]
        except OSError:
            return []
    if _names_run(leader, folder):
        return [pid]
    try:
        os.killpg(pid, 0)  # the leader is gone (or not ours): is anything left in its group?
    except OSError:
        return []
    return [p for p in _group_members(pid) if _names_run(_cmdline(p) or "", folder)]


def worker_alive(folder: Path) -> bool:
    """Is any process of this session's worker tree still running (see :func:`worker_processes`)?"""
    return bool(worker_processes(folder))


def waiting(folder: Path, status: str | None = None) -> bool:
    """Is this a queued record whose worker has not been started yet?"""
    return not (folder / "worker.pid").exists() and (status or last_status(folder)) == "queued"


_THREAD_LOCKS: dict[str, threading.Lock] = {}
_THREAD_LOCKS_GUARD = threading.Lock()


@contextlib.contextmanager
def _dir_lock(path: Path, block: bool = True, timeout: float | None = None):
    """Exclusive lock on a directory: a thread lock (threads of this process) and ``flock``
    on the directory itself (other processes). Yields whether it was taken: ``block=False``
    does not wait, ``timeout`` waits at most that long."""
    with _THREAD_LOCKS_GUARD:
        thread_lock = _THREAD_LOCKS.setdefault(str(path), threading.Lock())
    deadline = None if timeout is None else time.monotonic() + timeout
    if not thread_lock.acquire(blocking=block, timeout=-1 if timeout is None or not block else timeout):
        yield False
        return
    try:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            raise WorkbenchError(f"no session {path.name}") from None
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | (0 if block and deadline is None else fcntl.LOCK_NB))
                    break
                except BlockingIOError:
                    if deadline is None or time.monotonic() >= deadline:
                        yield False
                        return
                    time.sleep(0.02)
            yield True
        finally:
            os.close(fd)  # releases the flock
    finally:
        thread_lock.release()


def queue_lock(block: bool = True):
    """The lock under which records are created and workers started (see the module docstring)."""
    root = sessions_dir()
    root.mkdir(parents=True, exist_ok=True)
    return _dir_lock(root, block)


def control_lock(session_id: str, block: bool = True, timeout: float | None = None):
    """The lock of one run: its start, resume, cancel and delete happen one at a time."""
    return _dir_lock(session_path(session_id), block, timeout)


def last_status(folder: Path) -> str:
    events, _ = read_events(folder / "events.jsonl")
    return next((e["status"] for e in reversed(events) if e.get("kind") == "status"), "queued")


def refresh(session_id: str) -> str:
    """The session's status; a non-final status whose worker is gone becomes ``interrupted``
    (or ``failed``/``oom`` when its log shows it died of a failed allocation), recorded as
    an event, so every later reader agrees."""
    folder = session_path(session_id)
    events, _ = read_events(folder / "events.jsonl")
    statuses = [e for e in events if e.get("kind") == "status"]
    status = statuses[-1]["status"] if statuses else "queued"
    if status in FINAL:
        return status
    if status == "queued" and not (folder / "worker.pid").exists():
        return status  # a record waiting for its turn: no worker yet, nothing has vanished
    last_beat = events[-1]["time"] if events else (folder / "job.json").stat().st_mtime
    alive = worker_alive(folder)
    if not alive or time.time() - last_beat > HEARTBEAT_SECONDS:
        if alive:
            return status  # alive but quiet: a long load; the heartbeat resumes with the sampler
        ended, detail = _vanished(folder)
        writer = EventWriter(folder / "events.jsonl")
        writer.status(ended, **detail)
        writer.close()
        return ended
    return status


#: what a library prints when an allocation fails and it ends the process instead of raising
#: (Rust's tokenizers abort, C++ terminate on bad_alloc): the worker had no chance to report it
ALLOCATION_FAILED = ("memory allocation of ", "std::bad_alloc", "Cannot allocate memory")


def _vanished(folder: Path) -> tuple[str, dict[str, Any]]:
    """How a worker that ended without a final status ended: out of memory, when the end of
    its log shows a failed allocation, else ``interrupted``."""
    try:
        with open(folder / "worker.log", "rb") as fh:
            fh.seek(max(0, fh.seek(0, os.SEEK_END) - 4096))
            tail = fh.read().decode(errors="replace")
    except OSError:
        tail = ""
    if any(mark in tail for mark in ALLOCATION_FAILED):
        return "failed", {"reason": "oom", "message": "out of memory: the worker reached its memory cap inside a "
                          "library that ends the process instead of reporting it (worker.log has the details); "
                          "plan a smaller batch or sequence, or give the worker more memory"}
    return "interrupted", {"reason": "the worker process is gone (killed or the machine restarted)"}


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
    pid = recorded_pid(folder) if status not in FINAL and worker_alive(folder) else None
    return SessionInfo(
        id=session_id, state=status, reason=final_status.get("reason"), model=job["model"], method=job["method"],
        dataset=job["data"].get("name") or Path(job["data"]["path"]).name,
        step=logs[-1]["step"] if logs else None, max_steps=logs[-1]["max_steps"] if logs else None,
        last_loss=losses[-1] if losses else None, final_adapter=str(final) if final else None,
        checkpoints=[str(p) for p in complete_checkpoints(folder)], created=(folder / "job.json").stat().st_mtime,
        finished=final_status.get("time") if status in FINAL else None, pid=pid,
        events_path=str(folder / "events.jsonl"), predicted_peak_bytes=predicted, measured_peak_bytes=measured,
        measured_peak_source=source, plan_error_percent=error,
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
    """(measured step peak, its quantity, predicted peak, plan error %): the largest step
    peak the worker measured (``step_memory`` events: live tensor bytes on CPU, CUDA
    max_memory_allocated) against the predicted peak -- the same quantity. The error is the
    planner-accuracy benchmark's: (predicted - measured) / measured, positive when the plan
    is over."""
    steps = [e for e in events if e.get("kind") == "step_memory" and e.get("rank") in (None, 0)]
    plan = predicted_plan(folder)
    predicted = plan.get("peak_bytes") if plan else None
    if not steps:
        return None, None, predicted, None
    measured = max(e["peak_bytes"] for e in steps)
    error = round(plan_error_percent(predicted, measured), 2) if predicted and measured else None
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
    with control_lock(session_id):  # not while it is being started, resumed or cancelled
        if worker_alive(folder):
            raise WorkbenchError(f"session {session_id} is running; cancel it first")
        shutil.rmtree(folder)
