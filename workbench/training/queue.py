"""The run queue: a run is a record on disk until its turn, and :func:`dispatch` starts it.

A queued run is its session folder -- ``job.json`` and a last status event ``queued`` -- with
no ``worker.pid``: no process exists for it, so a hundred queued runs cost a hundred small
folders, not a hundred interpreters. :func:`dispatch` starts, oldest first, each queued run
whose device is free:

- one worker tree per device at a time: the CPU is one device; each GPU is one, and a run
  of k GPUs holds k of them (its ranks, launcher and supervisor are one tree);
- first in, first out per device: a younger run never overtakes an older one waiting for
  its device (a 2-GPU run is not starved by 1-GPU runs behind it);
- a device is busy while any process of a run on it is alive, whatever its status says (a
  worker that wrote ``completed`` but has not exited yet still holds it).

It runs under the queue lock (:func:`workbench.sessions.queue_lock`: ``flock`` on the
sessions folder), so two server threads, the server and a CLI, or two servers never start
two workers for one device; each start also holds that run's control lock, so a run being
cancelled is never started. It is called when a run is queued (``launcher.start``,
``launcher.resume``), by a worker that has just finished (its successor starts without
waiting for anyone), by the page's status poll and the CLI's ``follow``, and by the server's
daemon thread (:func:`start_dispatcher`), which also starts the next run when a worker was
killed (the OOM killer, ``kill -9``) and the queued runs left from before a restart.

Limits on waiting runs (a refused start leaves nothing behind): ``WORKBENCH_MAX_QUEUED_PER_USER``
(default 4) per signed-in user -- all runs of a server without sign-in are one user's -- and
``WORKBENCH_MAX_QUEUED`` (default 16) in all.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import WorkbenchError
from ..sessions import (control_lock, last_status, owner_of, queue_lock, sessions_dir, waiting, worker_alive)
from .events import EventWriter
from .job import SESSION_ID

MAX_QUEUED_PER_USER = 4
MAX_QUEUED = 16
DISPATCH_SECONDS = 2.0  # the daemon thread's period
POLL_DISPATCH_SECONDS = 1.0  # the status poll dispatches at most this often
TAIL_BYTES = 16384
#: how long dispatch waits for a run's control lock (a resume checking it, a cancel writing
#: it): bounded, because a resume holding that lock may be waiting for the queue lock
CONTROL_WAIT_SECONDS = 3.0


class QueueFull(WorkbenchError):
    """Too many runs are waiting: the user's own, or the server's."""


@dataclass(frozen=True)
class Waiting:
    session_id: str
    owner: str | None
    device: str
    units: int  # GPUs it holds (1 on CPU)
    since: float  # when it was queued (or queued again to resume)
    resume: bool


@dataclass
class Snapshot:
    waiting: list[Waiting] = field(default_factory=list)  # oldest first
    held: Counter = field(default_factory=Counter)  # device -> units held by live worker trees
    running: Counter = field(default_factory=Counter)  # device -> live worker trees


def _limit(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(float(raw))
    except ValueError:
        value = -1
    if value < 1:
        raise WorkbenchError(f"{name}={raw!r}: give a whole number of runs of at least 1 (default {default})")
    return value


def _demand(folder: Path) -> tuple[str, int]:
    """(device, units) of a run from its job.json (a GPU run holds one unit per GPU)."""
    try:
        job = json.loads((folder / "job.json").read_text(encoding="utf-8"))
        settings = (job.get("run") or job).get("settings") or {}
        device = "cuda" if settings.get("device") == "cuda" else "cpu"
        return device, max(1, int(settings.get("gpus") or 1)) if device == "cuda" else 1
    except (OSError, ValueError, TypeError, AttributeError):
        return "cpu", 1


def _tail_status(path: Path) -> dict | None:
    """The last status event, read from the end of the file (a queued record ends with it)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - TAIL_BYTES))
            lines = fh.read().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("kind") == "status":
            return event
    return None if size <= TAIL_BYTES else {"status": last_status(path.parent)}


def capacity(device: str) -> int:
    """How many units of ``device`` runs may hold at once: 1 CPU; every visible GPU (NVML,
    never CUDA), at least one so that a GPU run queued here still gets to fail clearly."""
    if device != "cuda":
        return 1
    from ..devices import gpu_count

    return max(1, gpu_count())


def scan(finishing: str | None = None) -> Snapshot:
    """The queue as the files say: waiting records (oldest first) and the devices live worker
    trees hold. ``finishing``: a session whose worker is on its way out (it dispatches its
    successor) and holds nothing any more."""
    snap = Snapshot()
    root = sessions_dir()
    if not root.is_dir():
        return snap
    for folder in sorted(root.iterdir()):
        if not SESSION_ID.match(folder.name) or not (folder / "job.json").is_file():
            continue
        if (folder / "worker.pid").exists():
            if folder.name != finishing and worker_alive(folder):
                device, units = _demand(folder)
                snap.held[device] += units
                snap.running[device] += 1
            continue
        event = _tail_status(folder / "events.jsonl")
        if event is not None and event.get("status") == "queued":
            device, units = _demand(folder)
            snap.waiting.append(Waiting(folder.name, owner_of(folder), device, units, float(event.get("time") or 0),
                                        bool(event.get("resume"))))
    snap.waiting.sort(key=lambda w: (w.since, w.session_id))
    return snap


def check_room(owner: str | None, snap: Snapshot | None = None) -> None:
    """Refuse one more waiting run of ``owner`` beyond the limits (call under the queue lock)."""
    snap = snap or scan()
    per_user = _limit("WORKBENCH_MAX_QUEUED_PER_USER", MAX_QUEUED_PER_USER)
    total = _limit("WORKBENCH_MAX_QUEUED", MAX_QUEUED)
    mine = sum(1 for w in snap.waiting if w.owner == owner)
    if mine >= per_user:
        raise QueueFull(f"you already have {mine} runs waiting (at most {per_user} may wait per user); cancel one "
                        "in the Runs tab or wait until one has started")
    if len(snap.waiting) >= total:
        raise QueueFull(f"the server has {len(snap.waiting)} runs waiting (at most {total}); try again when one "
                        "has started")


def dispatch(block: bool = True, finishing: str | None = None, env: dict | None = None) -> dict:
    """Start every queued run whose turn it is (see the module docstring); returns
    ``{session id: Popen}`` of the workers started here. ``block=False``: do nothing when
    another thread or process is dispatching right now. ``env``: the workers' environment."""
    started: dict = {}
    with queue_lock(block) as locked:
        if not locked:
            return started
        snap = scan(finishing)
        for device in dict.fromkeys(w.device for w in snap.waiting):
            room = capacity(device)
            for run in (w for w in snap.waiting if w.device == device):
                units = min(run.units, room)  # more than exist: it holds them all, and its worker says why
                if snap.held[device] + units > room:
                    break  # first in, first out: nothing younger overtakes it
                try:
                    proc = _start_one(run, env)
                except WorkbenchError:  # deleted since the scan
                    continue
                if proc is False:
                    break  # being cancelled or resumed right now: next round
                if proc is None:
                    continue  # cancelled (or started) since the scan, or it could not be started
                started[run.session_id] = proc
                snap.held[device] += units
                snap.running[device] += 1
    _cache.update(time=time.monotonic(), root=str(sessions_dir()), snap=None)
    return started


def _start_one(run: Waiting, env: dict | None):
    """Start the worker of one waiting run under its control lock: the Popen, None when it is
    no longer waiting (or no process could be made: it fails, the queue moves on), False when
    its lock stayed held (it is being cancelled or resumed: the next round starts it)."""
    from .launcher import spawn

    with control_lock(run.session_id, timeout=CONTROL_WAIT_SECONDS) as mine:
        if not mine:
            return False
        folder = sessions_dir() / run.session_id
        if not waiting(folder):
            return None
        try:
            proc = spawn(run.session_id, resume=run.resume, **({"env": env} if env is not None else {}))
        except OSError as exc:
            events = EventWriter(folder / "events.jsonl")
            events.status("failed", reason="error", error=f"the worker could not be started ({type(exc).__name__}, "
                                                          f"errno {exc.errno}); try again when the machine has room")
            events.close()
            return None
        (folder / "worker.pid").write_text(str(proc.pid))  # started: no longer a waiting record
        return proc


_cache: dict = {"time": 0.0, "root": None, "snap": None}


def dispatch_soon() -> None:
    """The status poll's dispatch: at most once a second, and never waiting for a lock."""
    if time.monotonic() - _cache["time"] >= POLL_DISPATCH_SECONDS:
        _cache["time"] = time.monotonic()
        dispatch(block=False)


def position(session_id: str) -> tuple[int, int] | None:
    """(runs waiting ahead of it on its device, runs training on that device now) for a
    waiting run; None when it is not waiting. Computed at most once a second."""
    now, root = time.monotonic(), str(sessions_dir())
    snap = _cache.get("snap")
    if snap is None or _cache.get("root") != root or now - _cache.get("snap_time", 0.0) >= POLL_DISPATCH_SECONDS:
        snap = scan()
        _cache.update(snap=snap, snap_time=now, root=root)
    mine = next((w for w in snap.waiting if w.session_id == session_id), None)
    if mine is None:
        return None
    order = (mine.since, mine.session_id)
    ahead = sum(1 for w in snap.waiting if w.device == mine.device and (w.since, w.session_id) < order)
    return ahead, snap.running[mine.device]


def describe(session_id: str) -> str | None:
    """The queue line of a waiting run, e.g. "queued: 2 runs ahead, 1 training now"."""
    where = position(session_id)
    if where is None:
        return None
    ahead, running = where
    return (f"queued: {ahead} run{'s' if ahead != 1 else ''} ahead, {running} training now; it starts by itself "
            "when its device is free")


class Dispatcher:
    """The server's daemon thread: :func:`dispatch` every ``interval`` seconds."""

    def __init__(self, interval: float = DISPATCH_SECONDS) -> None:
        self.interval = interval
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="workbench-dispatcher", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                dispatch()
            except Exception as exc:  # a bad record or a full disk must not end the thread
                print(f"dispatcher: {type(exc).__name__}: {exc}", flush=True)
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(timeout=30)


_dispatcher: Dispatcher | None = None


def start_dispatcher(interval: float = DISPATCH_SECONDS) -> Dispatcher:
    """Start the daemon thread once per process (the web server calls this before it serves);
    returns it (``.stop()`` ends it)."""
    global _dispatcher
    if _dispatcher is None or not _dispatcher.thread.is_alive():
        _dispatcher = Dispatcher(interval)
        _dispatcher.thread.start()
    return _dispatcher
