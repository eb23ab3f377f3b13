"""Sessions under hostile use: per-user ownership with sign-in, reattaching after a page
reload, many clients at once while a run trains, and a clear answer when the queue is full."""

import json
import threading
import time
from types import SimpleNamespace

import pytest

from conftest import running_app

from workbench.ui.plan_tab import KNOB_NAMES

ROWS = "\n".join(json.dumps({"prompt": f"What is {i}?", "completion": f"It is {i}."}) for i in range(24))


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_SESSIONS", str(tmp_path / "sessions"))
    data = tmp_path / "qa.jsonl"
    data.write_text(ROWS)
    return data


def _prepared(data, owner):
    from workbench.training.launcher import make_job, prepare

    return prepare(make_job("tiny", "lora", str(data)), owner=owner)


def _as(user):
    return SimpleNamespace(username=user)


def test_a_user_cannot_see_or_touch_another_users_runs(store):
    from workbench.sessions import list_sessions, session_path
    from workbench.ui.chat_tab import engine_with, finished_adapters
    from workbench.ui.runs_tab import act, job_settings
    from workbench.ui.train_tab import cancel_run, poll_run
    from workbench.ui.views import sessions_rows

    alice, bob = _prepared(store, "alice"), _prepared(store, "bob")
    assert [s.id for s in list_sessions("alice")] == [alice]
    assert [r[0] for r in sessions_rows("bob")] == [bob]
    assert {s.id for s in list_sessions(None)} == {alice, bob}  # no sign-in: one local user sees all
    for sid, user in ((alice, "bob"), (bob, "alice"), (alice, "carol")):
        hidden = f"no session {sid}"
        assert hidden in poll_run(sid, _as(user))[0]
        assert hidden in cancel_run(sid, _as(user))
        for action in ("cancel", "resume", "delete", "zip", "merged"):
            assert hidden in act(action, sid, user)[0]
        assert hidden in job_settings(sid, user)["error"]
        with pytest.raises(Exception, match=hidden):
            engine_with("tiny", [sid], user)
        assert sid not in [v for _, v in finished_adapters("tiny", user)]
        assert (session_path(sid) / "job.json").is_file() and not (session_path(sid) / "cancel").exists()
    assert f"Run {alice}" in poll_run(alice, _as("alice"))[0]  # the owner does see it
    assert act("delete", bob, "bob")[0].endswith("deleted") and not session_path(bob).exists()


def test_an_unknown_and_a_foreign_session_read_the_same(store):
    from workbench.training.job import new_session_id
    from workbench.ui.run_view import run_view

    alice = _prepared(store, "alice")
    missing = new_session_id()
    assert run_view(alice, "bob")[0].replace(alice, "ID") == run_view(missing, "bob")[0].replace(missing, "ID")


def _pretend_worker(folder):
    """A live process whose command line reads like this session's worker."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", "workbench.training.worker",
                             str(folder / "job.json")])
    (folder / "worker.pid").write_text(str(proc.pid))
    return proc


def test_page_load_reattaches_to_the_running_run(store):
    """A reload is a new page load: the Train tab gets the user's newest unfinished run
    (another user's running run is not theirs to reattach to)."""
    from workbench.sessions import session_path
    from workbench.ui.train_tab import reattach

    older, newer, other = _prepared(store, "alice"), _prepared(store, "alice"), _prepared(store, "bob")
    workers = [_pretend_worker(session_path(sid)) for sid in (older, other)]
    (session_path(newer) / "worker.pid").write_text("999999999")  # started once; its worker is gone (a queued
    # run without a worker.pid is waiting for its turn, unfinished: the page would reattach to it)
    try:
        assert reattach(_as("alice")) == (older, older)
        assert reattach(_as("bob")) == (other, other)
        assert reattach(_as("carol")) == (None, "")
    finally:
        for w in workers:
            w.kill()
            w.wait()
    assert reattach(_as("alice")) == (None, "")  # workers gone: interrupted runs are not reattached to
    assert newer


def _knobs():
    from workbench.ui.plan_tab import KNOB_NAMES

    return [None] * len(KNOB_NAMES)


def _wait_final(client, run_id, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = client.predict(run_id, api_name="/run_status")[0]
        if any(s in status for s in ("completed", "failed", "cancelled", "interrupted")):
            return status
        time.sleep(1)
    raise AssertionError(f"run {run_id} did not finish: {status}")


def test_sign_in_gives_each_user_their_own_runs(tmp_path):
    gradio_client = pytest.importorskip("gradio_client")
    import urllib.error
    import urllib.request

    data = tmp_path / "qa.jsonl"
    data.write_text(ROWS)
    with running_app(tmp_path, "--auth", "alice:wonderland", "--auth", "bob:builder") as url:
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{url}gradio_api/info", timeout=30)
        assert refused.value.code in (401, 403)
        with pytest.raises(Exception):
            gradio_client.Client(url, auth=("alice", "wrong"), verbose=False)
        alice = gradio_client.Client(url, auth=("alice", "wonderland"), verbose=False)
        bob = gradio_client.Client(url, auth=("bob", "builder"), verbose=False)
        run_id, message = alice.predict("tiny", "lora", "float32", "auto", 2, 64, 1, False, "adamw", "cpu",
                                        gradio_client.handle_file(str(data)), "auto", "", 0, False, 4, 1e-3, 1, "single", "none",
                                        *[None] * len(KNOB_NAMES),
                                        api_name="/start_run")
        assert run_id and "Started" in message
        assert (tmp_path / "sessions" / run_id / "owner").read_text() == "alice"
        assert bob.predict(run_id, api_name="/run_status")[0] == f"**no session {run_id}**"
        assert bob.predict(run_id, api_name="/cancel_run") == f"**no session {run_id}**"
        assert run_id not in json.dumps(bob.predict(api_name="/sessions"))
        assert run_id not in json.dumps(bob.predict("tiny", api_name="/adapters"))
        assert "completed" in _wait_final(alice, run_id)
        assert run_id in json.dumps(alice.predict(api_name="/sessions")[0])
        assert run_id in json.dumps(alice.predict("tiny", api_name="/adapters"))
        try:  # gradio refuses a choice the adapter list never offered bob; our own check is behind it
            answer = bob.predict("tiny", [run_id], "What is 3?", 0, 0.0, 4, api_name="/chat")[0]
        except gradio_client.exceptions.AppError as exc:
            answer = str(exc)
        assert f"no session {run_id}" in answer or "is not in the list of choices" in answer


def test_twenty_clients_while_a_run_trains(tmp_path):
    """20 clients (bounded loops, loopback) plan, inspect and poll while a run trains: every
    request is answered without error and the run completes. Its speed under this load is
    measured by ``bench/concurrency.py``, not asserted here."""
    gradio_client = pytest.importorskip("gradio_client")
    data = tmp_path / "qa.jsonl"
    data.write_text(ROWS)
    with running_app(tmp_path) as url:
        main = gradio_client.Client(url, verbose=False)
        run_id, _ = main.predict("tiny", "lora", "float32", "auto", 2, 64, 1, False, "adamw", "cpu",
                                 gradio_client.handle_file(str(data)), "auto", "", 0, False, 30, 1e-3, 1, "single", "none",
                                 *[None] * len(KNOB_NAMES),
                                 api_name="/start_run")
        answered, failures, full = [], [], []
        barrier = threading.Barrier(20)

        def client_loop(i: int) -> None:
            try:
                c = gradio_client.Client(url, verbose=False)
                barrier.wait(timeout=120)
            except Exception as exc:  # noqa: BLE001 -- reported below
                failures.append(f"client {i}: {exc!r}")
                return
            for _ in range(3):
                for api, args in (("/plan", ("tiny", "lora", "bfloat16", "auto", 1 + i % 4, 128, 1, False, "adamw",
                                             "cuda", *_knobs())),
                                  ("/inspect", (gradio_client.handle_file(str(data)), "tiny", "auto", "", None, 0,
                                                False)),
                                  ("/run_status", (run_id,))):
                    try:
                        out = c.predict(*args, api_name=api)
                        answered.append(api)
                        assert out[0], api
                    except Exception as exc:  # noqa: BLE001
                        (full if "Queue is full" in str(exc) else failures).append(f"client {i} {api}: {exc!r}")

        threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=600)
        assert not failures and not full, (failures + full)[:5]
        assert len(answered) == 20 * 9
        assert "completed" in _wait_final(main, run_id)


def test_a_full_queue_answers_busy_instead_of_hanging(tmp_path):
    """A queue of one, four slow chats running: the requests beyond are told at once."""
    gradio_client = pytest.importorskip("gradio_client")
    with running_app(tmp_path, "--max-queue", "1") as url:
        main = gradio_client.Client(url, verbose=False)
        jobs = [main.submit("tiny", [], "Tell me a long story.", i, 1.0, 400, api_name="/chat") for i in range(12)]
        outcomes = []
        for job in jobs:
            try:
                job.result(timeout=300)
                outcomes.append("ok")
            except Exception as exc:  # noqa: BLE001
                outcomes.append(str(exc))
        assert "ok" in outcomes
        busy = [o for o in outcomes if o != "ok"]
        assert busy and all("Queue is full" in o for o in busy), outcomes
