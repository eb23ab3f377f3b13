"""Start, follow and cancel training workers.

The worker is a fresh interpreter started by argument list (never a shell string, never a
fork of a process that may hold CUDA state), in its own process group so that cancelling
can end the whole tree.
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
from ..sessions import OWNER_FILE, last_status, refresh, session_path, sessions_dir, worker_alive
from .distributed import is_distributed, write_launch_files
from .events import FINAL, EventWriter
from .job import TrainJob, new_session_id

CANCEL_GRACE_SECONDS = 30.0


class PreflightRefused(WorkbenchError):
    """The run's predicted peak does not fit what its device has free here."""

    def __init__(self, result) -> None:
        self.result = result
        super().__init__(result.message())


def start(job: TrainJob | RunSpec, owner: str | None = None, check_memory: bool = True) -> tuple[str, subprocess.Popen]:
    """Write the session folder (job, plan, a copy of the data) and start the worker.
    ``job.session_id`` is replaced by a fresh id; the data file is copied in."""
    session_id = prepare(job, owner, check_memory)
    return session_id, spawn(session_id)


def prepare(job: TrainJob | RunSpec, owner: str | None = None, check_memory: bool = True) -> str:
    """Check the run can start here (its device exists; with ``check_memory``, its plan fits
    what the device has free: :mod:`workbench.preflight`), then create ``sessions/<new id>/``
    with job.json (the run and its plan's fingerprint), plan.json, the data copy, the owner
    (a signed-in user name, or none) and a ``queued`` event; returns the id. The worker is
    not started. A refused run leaves nothing behind."""
    from ..preflight import check_device, preflight

    run = job.run if isinstance(job, TrainJob) else job
    if run.data is None:
        raise WorkbenchError("no dataset: upload one in the Data tab (or give --data)")
    source = Path(run.data.path)
    suffix = source.suffix.lower()
    if suffix not in DATA_SUFFIXES + (".zip",):
        raise DataFileError(source.name, f"unsupported file type {suffix!r}")
    check_device(run.settings)
    shown = plan_run(run)
    if check_memory:
        result = preflight(run, shown.peak_bytes)
        if not result.fits:
            raise PreflightRefused(result)
    session_id = new_session_id()
    folder = sessions_dir() / session_id
    folder.mkdir(parents=True)
    if owner is not None:
        _write(folder / OWNER_FILE, owner)
    copy = folder / f"dataset{suffix}"
    shutil.copyfile(source, copy)
    heldout = _heldout_of(source)
    if heldout is not None:  # the task evaluation's prompts travel with the run
        shutil.copyfile(heldout, folder / f"dataset_heldout{suffix}")
    run = replace(run, data=replace(run.data, path=str(copy), name=run.data.name or source.name))
    mark = fingerprint(shown)
    job = TrainJob(session_id=session_id, run=run, plan_fingerprint=mark)
    _write(folder / "job.json", job.to_json())
    _write(folder / "plan.json", json.dumps({**shown.as_dict(), "fingerprint": mark}, indent=2))
    if is_distributed(run.settings):  # visible at once; the run rewrites them when it starts
        write_launch_files(folder, run.settings)
    events = EventWriter(folder / "events.jsonl")
    events.status("queued")
    events.close()
    return session_id


def _heldout_of(source: Path) -> Path | None:
    """The held-out file of a dataset: ``<stem>_heldout<suffix>`` beside it, or the bundled
    demo's when the file is the demo dataset (the page uploads a copy of it, alone)."""
    from ..paths import DEMO_HELDOUT, is_demo_dataset

    beside = source.with_name(f"{source.stem}_heldout{source.suffix}")
    if beside.is_file() and not beside.is_symlink():
        return beside
    return DEMO_HELDOUT if is_demo_dataset(source) else None


def spawn(session_id: str, resume: bool = False) -> subprocess.Popen:
    """Start the worker of a prepared session (``resume``: from its newest complete checkpoint)."""
    folder = session_path(session_id)
    log = open(folder / "worker.log", "ab")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_DIR), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen(
        [sys.executable, "-m", "workbench.training.worker", str(folder / "job.json")] + (["--resume"] if resume else []),
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=str(REPO_DIR), env=env,
        start_new_session=True, close_fds=True,
    )
    log.close()
    (folder / "worker.pid").write_text(str(proc.pid))
    return proc


def resume(session_id: str) -> subprocess.Popen:
    """Start a stopped run again from its newest complete checkpoint."""
    folder = session_path(session_id)
    status = refresh(session_id)
    if status not in ("interrupted", "failed", "cancelled"):
        raise WorkbenchError(f"session {session_id} is {status}; only interrupted, failed or cancelled runs resume")
    (folder / "cancel").unlink(missing_ok=True)
    events = EventWriter(folder / "events.jsonl")
    events.status("queued", resume=True)
    events.close()
    return spawn(session_id, resume=True)


def _write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def cancel(session_id: str, grace: float = CANCEL_GRACE_SECONDS) -> str:
    """Ask the worker to stop (it saves at the next step); after ``grace`` seconds end the
    whole process group. Returns the final status."""
    folder = session_path(session_id)
    (folder / "cancel").touch()
    deadline = time.time() + grace
    while time.time() < deadline:
        status = refresh(session_id)
        if status in FINAL:
            return status
        time.sleep(0.2)
    try:
        os.killpg(int((folder / "worker.pid").read_text()), signal.SIGKILL)
    except (OSError, ValueError):
        pass
    for _ in range(50):
        if not worker_alive(folder):
            break
        time.sleep(0.1)
    if last_status(folder) not in FINAL:
        events = EventWriter(folder / "events.jsonl")
        events.status("cancelled", reason=f"did not stop within {grace:.0f} s; the process tree was killed")
        events.close()
    return refresh(session_id)


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
