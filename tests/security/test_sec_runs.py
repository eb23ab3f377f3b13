"""Runs are records, not processes, until their turn (issue 15, findings 2 and 3): concurrent
starts leave one worker per device and bounded queues; the next run starts by itself; GPU
and process counts are bounded by the machine; resume and cancel of one run are single
flight; the worker's memory cap holds during set-up; a failed run tells the user one
sentence without the server's paths."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from workbench.errors import SettingsError, WorkbenchError
from workbench.training.events import EventWriter, read_events
from workbench.training.job import Schedule

ROWS = "\n".join(json.dumps({"prompt": f"What is {i}?", "completion": f"It is {i}."}) for i in range(24))
ABSOLUTE_PATH = re.compile(r"""(^|[\s'"(=\[,])/[\w.-]+/""")


@pytest.fixture
def sessions(tmp_path, monkeypatch):
    root = tmp_path / "sessions"
    monkeypatch.setenv("WORKBENCH_SESSIONS", str(root))
    return root


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text(ROWS)
    return path


def _job(data, **settings):
    from workbench.training.launcher import make_job

    return make_job("tiny", "lora", str(data), settings={"device": "cpu", "dtype": "float32", **settings},
                    schedule=Schedule(max_steps=100000, logging_steps=1))


def _workers(where) -> list[int]:
    """Live (not zombie) worker processes whose command line names ``where``."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "workbench.training.worker" in cmd and str(where) in cmd:
            found.append(int(pid))
    return found


def _wait_for(predicate, timeout=60.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def _statuses(folder):
    return [e for e in read_events(folder / "events.jsonl")[0] if e["kind"] == "status"]


def _cancel_all(ids):
    from workbench.training.launcher import cancel

    for sid in reversed(ids):  # the waiting ones first: cancelling the running one starts the next
        try:
            cancel(sid, grace=0)
        except WorkbenchError:
            pass


def test_concurrent_starts_leave_one_worker_and_a_bounded_queue(sessions, data, monkeypatch):
    """Finding 2: six simultaneous starts while one run trains start no process; three wait
    as records, three are refused and leave nothing behind; the server-wide cap refuses too."""
    from workbench.sessions import refresh
    from workbench.training.launcher import start
    from workbench.training.queue import QueueFull

    monkeypatch.setenv("WORKBENCH_MAX_QUEUED_PER_USER", "3")
    monkeypatch.setenv("WORKBENCH_MAX_QUEUED", "4")
    first, proc = start(_job(data), owner="alice")
    ids = [first]
    try:
        assert proc is not None
        barrier = threading.Barrier(6)

        def one(_):
            barrier.wait()
            try:
                return start(_job(data), owner="alice")
            except WorkbenchError as exc:
                return exc

        with ThreadPoolExecutor(6) as pool:
            results = list(pool.map(one, range(6)))
        queued = [r for r in results if not isinstance(r, Exception)]
        refused = [r for r in results if isinstance(r, Exception)]
        ids += [sid for sid, _ in queued]
        assert len(queued) == 3 and len(refused) == 3, results
        assert all(isinstance(e, QueueFull) and "you already have 3 runs waiting" in str(e) for e in refused)
        assert all(p is None for _, p in queued)
        assert sorted(p.name for p in sessions.iterdir()) == sorted(ids)  # the refused left nothing
        assert _workers(sessions) == [proc.pid]
        assert all(refresh(sid) == "queued" and not (sessions / sid / "worker.pid").exists() for sid, _ in queued)
        bob, bob_proc = start(_job(data), owner="bob")
        ids.append(bob)
        assert bob_proc is None
        with pytest.raises(QueueFull, match="the server has 4 runs waiting"):
            start(_job(data), owner="bob")
        assert len(list(sessions.iterdir())) == 5 and _workers(sessions) == [proc.pid]
    finally:
        _cancel_all(ids)
    assert _wait_for(lambda: not _workers(sessions), 30)
    assert {_statuses(sessions / sid)[-1]["status"] for sid in ids} == {"cancelled"}


def test_the_next_queued_run_starts_when_the_running_one_is_killed(sessions, data):
    """A queued run is a record until its turn; when the running worker is SIGKILLed (as the
    OOM killer does), the dispatcher -- as a restarted server's would -- starts it."""
    from workbench.sessions import refresh
    from workbench.training.launcher import start
    from workbench.training.queue import start_dispatcher

    first, proc = start(_job(data))
    second, second_proc = start(_job(data))
    dispatcher = None
    try:
        assert proc is not None and second_proc is None
        dispatcher = start_dispatcher(interval=0.2)
        time.sleep(0.6)
        assert _workers(sessions / second) == [] and not (sessions / second / "worker.pid").exists()
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        assert _wait_for(lambda: bool(_workers(sessions / second)), 60), _statuses(sessions / second)
        assert refresh(first) == "interrupted" and _workers(sessions / first) == []
        assert len(_workers(sessions)) == 1
    finally:
        if dispatcher is not None:
            dispatcher.stop()
        _cancel_all([first, second])
    assert _wait_for(lambda: not _workers(sessions), 30)


def test_gpu_and_process_counts_are_bounded_by_the_machine(sessions, data, monkeypatch):
    """Finding 2: more GPUs than are visible, or more CPU processes than cores, are refused
    by name with the range allowed, and the refused start leaves nothing behind."""
    from workbench import devices
    from workbench.preflight import check_device
    from workbench.runspec import build_run
    from workbench.training.launcher import start

    two = [devices.GpuInfo(i, "fake", 80 * 2**30, 80 * 2**30) for i in range(2)]
    monkeypatch.setattr(devices, "visible_gpus", lambda: two)
    monkeypatch.setattr(devices, "cpu_cores", lambda: 2)
    settings = {"device": "cuda", "dtype": "bfloat16", "strategy": "ddp"}
    with pytest.raises(SettingsError, match=r"^GPUs \(--gpus\): the run asks for 3; .* 2 visible GPUs: choose 1 to 2"):
        start(_job(data, **{**settings, "gpus": 3}))
    check_device(build_run("tiny", "lora", None, {**settings, "gpus": 2}).settings)  # as many as there are: fine
    for processes in (3, 1024):
        with pytest.raises(SettingsError, match=rf"^GPUs \(--gpus\): on cpu .* {processes} is more than this "
                                                r"machine's 2 CPU cores: choose 1 to 2"):
            start(_job(data, gpus=processes, strategy="ddp"))
    with pytest.raises(SettingsError, match=r"^\*\*GPUs\*\* must be at most 1,024 .*; got 100,000"):
        start(_job(data, gpus=100000, strategy="ddp"))  # beyond any machine: the field's own range first
    check_device(build_run("tiny", "lora", None, {"device": "cpu", "gpus": 2, "strategy": "ddp"}).settings)
    assert not sessions.exists() or list(sessions.iterdir()) == []
    assert _workers(sessions) == []


def test_simultaneous_resumes_start_one_worker_and_cancel_ends_it(sessions, data):
    """Finding 3: four Resume calls at once on an interrupted run start exactly one worker;
    Cancel then leaves no process of the run, and nothing writes a status after it."""
    from workbench.training.launcher import cancel, prepare, resume

    sid = prepare(_job(data))
    folder = sessions / sid
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (folder / "worker.pid").write_text(str(gone.pid))  # it ran; its worker vanished
    writer = EventWriter(folder / "events.jsonl")
    writer.status("interrupted", reason="the worker process is gone (killed or the machine restarted)")
    writer.close()
    barrier = threading.Barrier(4)

    def one(_):
        barrier.wait()
        try:
            return resume(sid)
        except WorkbenchError as exc:
            return exc

    try:
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(one, range(4)))
        started = [r for r in results if not isinstance(r, Exception)]
        refused = [r for r in results if isinstance(r, Exception)]
        assert len(started) == 1 and started[0] is not None and len(refused) == 3, results
        assert all("already" in str(e) for e in refused), refused
        assert _workers(folder) == [started[0].pid]
        assert [e["status"] for e in _statuses(folder)].count("queued") == 2  # prepared, then resumed once
    finally:
        assert cancel(sid, grace=1) == "cancelled"
    assert _workers(folder) == []
    seen = len(_statuses(folder))
    time.sleep(2.0)  # a second tree would be loading or running by now
    statuses = _statuses(folder)
    assert len(statuses) == seen and statuses[-1]["status"] == "cancelled"


def test_the_memory_cap_holds_during_set_up(sessions, tmp_path, monkeypatch):
    """WORKBENCH_WORKER_MAX_MEMORY written as an operator writes it (5e7 bytes) binds the
    worker while it loads the data: a set-up that needs more fails as oom, it never trains."""
    from workbench.sessions import info
    from workbench.training.launcher import make_job, start

    big = tmp_path / "big.jsonl"
    big.write_text("\n".join(json.dumps({"prompt": "word " * 400 + str(i), "completion": "done " * 50})
                             for i in range(1500)))
    monkeypatch.setenv("WORKBENCH_WORKER_MAX_MEMORY", "5e7")
    sid, proc = start(make_job("tiny", "lora", str(big), schedule=Schedule(max_steps=1)))
    assert proc.wait(timeout=300) != 0
    # Python's MemoryError is reported by the worker ("during set-up"); an allocation failure in
    # the tokenizer's Rust code ends the process (SIGABRT), and the store reads it from the log
    assert info(sid).state == "failed"
    events = read_events(sessions / sid / "events.jsonl")[0]
    final = [e for e in events if e["kind"] == "status"][-1]
    assert (final["status"], final["reason"]) == ("failed", "oom"), final
    assert "during set-up" in final["message"] or "memory cap inside a library" in final["message"]
    assert not any(e["kind"] in ("log", "step_memory") for e in events)


def test_a_failed_run_tells_one_sentence_without_paths_or_traceback(sessions, data):
    """A run that fails (here: a 2-node run, which the workbench does not start) says why in
    one sentence, with no absolute path of the server and no traceback; worker.log has it."""
    from workbench.training.launcher import start
    from workbench.ui.run_view import run_view

    sid, proc = start(_job(data, nodes=2))
    assert proc.wait(timeout=120) == 1
    final = _statuses(sessions / sid)[-1]
    assert (final["status"], final["reason"]) == ("failed", "error") and "log_tail" not in final
    shown = {k: v for k, v in final.items() if k not in ("kind", "time")}
    text = json.dumps(shown) + run_view(sid)[0]
    assert "2-node run is started by hand" in final["error"] and "\n" not in final["error"]
    assert not ABSOLUTE_PATH.search(text) and str(sessions) not in text and "Traceback" not in text, text
    assert "Traceback" in (sessions / sid / "worker.log").read_text()


def test_failure_messages_cut_absolute_paths():
    from workbench.training.worker import public_message

    message = public_message(FileNotFoundError(2, "No such file or directory", "/srv/wb/sessions/x/dataset.jsonl"))
    assert message == "FileNotFoundError: [Errno 2] No such file or directory: 'dataset.jsonl'"
    message = public_message(RuntimeError("failed in /usr/lib/python3/torch/nn/x.py:12\n  File \"/a/b.py\", line 3"))
    assert message == "RuntimeError: failed in x.py:12" and not ABSOLUTE_PATH.search(message)
