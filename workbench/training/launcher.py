"""Queue, start, resume and cancel training runs.

:func:`start` writes the run's record (:func:`prepare`) and asks the queue to start what
may start (:func:`workbench.training.queue.dispatch`): the run's worker exists only once
its device is free. The worker is a fresh interpreter started by argument list (never a
shell string, never a fork of a process that may hold CUDA state), in its own process
group so that cancelling ends the whole tree.

Start, resume, cancel and delete of one run are serialised by its control lock
(:func:`workbench.sessions.control_lock`); a run has at most one worker tree, and once
:func:`cancel` has returned, nothing of the run is left to write another status.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

from ..data.archive import DATA_SUFFIXES
from ..errors import DataFileError, WorkbenchError
from ..paths import REPO_DIR
from ..runspec import RunSpec, Schedule, build_run, fingerprint, plan_run
from ..sessions import (OWNER_FILE, control_lock, last_status, owner_of, queue_lock, recorded_pid, refresh,
                        session_path, sessions_dir, waiting, worker_alive, worker_processes)
from .distributed import is_distributed, write_launch_files
from .events import FINAL, EventWriter
from .job import TrainJob, new_session_id

CANCEL_GRACE_SECONDS = 30.0


class PreflightRefused(WorkbenchError):
    """The run's predicted peak does not fit what its device has free here."""

    def __init__(self, result) -> None:
        self.result = result
        super().__init__(result.message())


def start(job: TrainJob | RunSpec, owner: str | None = None,
          check_memory: bool = True) -> tuple[str, subprocess.Popen | None]:
    """Queue the run (:func:`prepare`) and start what may start now. Returns the new session
    id and its worker when it started here at once, or None when it waits for its device
    (it starts by itself: :mod:`workbench.training.queue`)."""
    from .queue import dispatch

    session_id = prepare(job, owner, check_memory)
    return session_id, dispatch().get(session_id)


def prepare(job: TrainJob | RunSpec, owner: str | None = None, check_memory: bool = True) -> str:
    """Check the run can start here (its device exists with enough GPUs or cores; its model's
    weights are on this machine: :func:`workbench.loading.check_weights`; with
    ``check_memory``, its plan fits what the device has free: :mod:`workbench.preflight`)
    and that the queue has room for it (:func:`workbench.training.queue.check_room`), then
    create ``sessions/<new id>/`` with job.json (the run and its plan's fingerprint),
    plan.json, the data copy, the owner (a signed-in user name, or none) and a ``queued``
    event; returns the id. The worker is not started. A refused run leaves nothing behind."""
    from ..preflight import check_device, preflight
    from .queue import check_room

    run = job.run if isinstance(job, TrainJob) else job
    if run.data is None:
        raise WorkbenchError("no dataset: upload one in the Data tab (or give --data)")
    source = Path(run.data.path)
    suffix = source.suffix.lower()
    if suffix not in DATA_SUFFIXES + (".zip",):
        raise DataFileError(source.name, f"unsupported file type {suffix!r}")
    check_device(run.settings)
    from ..loading import check_weights
    from ..specs import load_model_spec

    check_weights(load_model_spec(run.model))  # refused here, not after queueing, loading and a traceback
    shown = plan_run(run)
    if check_memory:
        result = preflight(run, shown.peak_bytes)
        if not result.fits:
            raise PreflightRefused(result)
    mark = fingerprint(shown)
    with queue_lock():  # counting the waiting runs and adding one is one step
        check_room(owner)
        session_id = new_session_id()
        folder = sessions_dir() / session_id
        folder.mkdir(parents=True)
        try:
            _write_record(folder, run, source, suffix, owner, shown, mark, session_id)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)  # a half-written record is no record
            raise
    return session_id


def _write_record(folder: Path, run: RunSpec, source: Path, suffix: str, owner: str | None, shown, mark: str,
                  session_id: str) -> None:
    if owner is not None:
        _write(folder / OWNER_FILE, owner)
    copy = folder / f"dataset{suffix}"
    shutil.copyfile(source, copy)
    heldout = _heldout_of(source)
    if heldout is not None:  # the task evaluation's prompts travel with the run
        shutil.copyfile(heldout, folder / f"dataset_heldout{suffix}")
    run = replace(run, data=replace(run.data, path=str(copy), name=run.data.name or source.name))
    job = TrainJob(session_id=session_id, run=run, plan_fingerprint=mark)
    _write(folder / "job.json", job.to_json())
    _write(folder / "plan.json", json.dumps({**shown.as_dict(), "fingerprint": mark}, indent=2))
    if is_distributed(run.settings):  # visible at once; the run rewrites them when it starts
        write_launch_files(folder, run.settings)
    events = EventWriter(folder / "events.jsonl")
    events.status("queued")  # the last thing: only now is it a waiting record
    events.close()


def _heldout_of(source: Path) -> Path | None:
    """The held-out file of a dataset: ``<stem>_heldout<suffix>`` beside it, or the bundled
    demo's when the file is the demo dataset (the page uploads a copy of it, alone)."""
    from ..paths import DEMO_HELDOUT, is_demo_dataset

    beside = source.with_name(f"{source.stem}_heldout{source.suffix}")
    if beside.is_file() and not beside.is_symlink():
        return beside
    return DEMO_HELDOUT if is_demo_dataset(source) else None


def spawn(session_id: str, resume: bool = False, env: dict | None = None) -> subprocess.Popen:
    """Start the worker of a prepared session now (``resume``: from its newest complete
    checkpoint). The queue calls this when the run's turn has come; anything else that
    calls it directly (a benchmark that runs one worker) bypasses the queue."""
    folder = session_path(session_id)
    log = open(folder / "worker.log", "ab")
    base = os.environ if env is None else env
    env = {**base, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_DIR), base.get("PYTHONPATH")]))}
    proc = subprocess.Popen(
        [sys.executable, "-m", "workbench.training.worker", str(folder / "job.json")] + (["--resume"] if resume else []),
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=str(REPO_DIR), env=env,
        start_new_session=True, close_fds=True,
    )
    log.close()
    (folder / "worker.pid").write_text(str(proc.pid))  # the leader of the run's process group
    return proc


def resume(session_id: str) -> subprocess.Popen | None:
    """Queue a stopped run again, to continue from its newest complete checkpoint; returns
    its worker when it started at once. Refused while the run has a live worker or is
    already queued: a run has at most one worker tree."""
    from ..preflight import check_device
    from .queue import check_room, dispatch

    folder = session_path(session_id)
    with control_lock(session_id):
        if worker_alive(folder):
            raise WorkbenchError(f"session {session_id} is already running; cancel it first or wait for it to end")
        status = refresh(session_id)
        if status == "queued":
            raise WorkbenchError(f"session {session_id} is already queued; it starts by itself when its device is free")
        if status not in ("interrupted", "failed", "cancelled"):
            raise WorkbenchError(f"session {session_id} is {status}; only interrupted, failed or cancelled runs resume")
        check_device(TrainJob.load(folder / "job.json").training_settings)
        with queue_lock():
            check_room(owner_of(folder))
            (folder / "worker.pid").unlink(missing_ok=True)  # first: a queued run with a dead pid reads as vanished
            (folder / "cancel").unlink(missing_ok=True)
            events = EventWriter(folder / "events.jsonl")
            events.status("queued", resume=True)
            events.close()
    return dispatch().get(session_id)


def _write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def cancel(session_id: str, grace: float = CANCEL_GRACE_SECONDS) -> str:
    """Stop the run and return its final status. A run still waiting for its turn is
    cancelled as a record (it never starts). A running one is asked to stop (it saves at the
    next step and exits); after ``grace`` seconds the whole process group it was started in
    is killed. When this returns, no process of the run is left."""
    from .queue import dispatch

    folder = session_path(session_id)
    with control_lock(session_id):
        status = refresh(session_id)
        if waiting(folder, status):
            _final(folder, "cancelled while queued; it never started")
            return "cancelled"
        if not worker_alive(folder):
            return status if status in FINAL else refresh(session_id)
        (folder / "cancel").touch()
        deadline = time.time() + grace
        while time.time() < deadline and worker_alive(folder):  # it writes its status, then exits
            time.sleep(0.2)
        if _kill_tree(folder) and last_status(folder) not in FINAL:
            _final(folder, f"did not stop within {grace:.0f} s; the process tree was killed")
        status = refresh(session_id)  # a worker that ended without a word reads as interrupted (or oom)
    dispatch()  # its device is free: the next queued run starts
    return status


def _kill_tree(folder: Path, wait: float = 10.0) -> bool:
    """SIGKILL the run's process group while any of its processes lives; True if it had to."""
    pgid = recorded_pid(folder)
    alive = worker_processes(folder)
    if pgid is None or not alive:
        return False
    try:
        os.killpg(pgid, signal.SIGKILL)  # the worker leads its group: its ranks and launcher go with it
    except OSError:
        pass
    for pid in alive:  # and whatever of the run is left outside it
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    deadline = time.time() + wait
    while time.time() < deadline and worker_alive(folder):
        time.sleep(0.05)
    return True


def _final(folder: Path, reason: str) -> None:
    events = EventWriter(folder / "events.jsonl")
    events.status("cancelled", reason=reason)
    events.close()


def make_job(model: str, method: str, data_path: str, knobs: dict | None = None, settings: dict | None = None,
             schedule: Schedule | dict | None = None, cutoff: int | None = None, **data_options) -> TrainJob:
    """A job with a placeholder session id (``start`` assigns the real one), built by
    :func:`workbench.runspec.build_run` like every run. ``cutoff`` is the sequence length
    (the run's truncation length)."""
    settings = dict(settings or {"device": "cpu", "dtype": "float32"})
    if cutoff is not None:
        if settings.get("seq_len", cutoff) != cutoff:
            raise WorkbenchError(f"cutoff {cutoff} and seq_len {settings['seq_len']} differ: the sequence length is "
                                 "the run's truncation length; give one")
        settings["seq_len"] = cutoff
    sched = asdict(schedule) if isinstance(schedule, Schedule) else dict(schedule or {})
    run = build_run(model, method, knobs, settings, data={"path": data_path, **data_options}, schedule=sched)
    return TrainJob(session_id=new_session_id(), run=run)
