"""Workers that die -- at set-up, while saving a checkpoint, from OOM or SIGKILL -- never take
the server down, leave the right state, offer only complete checkpoints and never replace a
complete result with a partial one."""

import errno
import json
import os
import signal
import time

import pytest

from conftest import running_app

ROWS = "\n".join(json.dumps({"prompt": f"What is {i}?", "completion": f"It is {i}."}) for i in range(24))


@pytest.fixture
def data(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_SESSIONS", str(tmp_path / "sessions"))
    path = tmp_path / "qa.jsonl"
    path.write_text(ROWS)
    return path


def _finish(sid, proc, timeout=300):
    from workbench.sessions import info

    proc.wait(timeout=timeout)
    return info(sid)


def test_exception_at_set_up_fails_the_run_with_its_reason(data, monkeypatch):
    from workbench.training.job import Schedule
    from workbench.training.launcher import make_job, start
    from workbench.ui.run_view import run_view

    monkeypatch.setenv("WORKBENCH_FAULT", "error_at_setup")
    sid, proc = start(make_job("tiny", "lora", str(data), schedule=Schedule(max_steps=4)))
    s = _finish(sid, proc)
    assert s.state == "failed" and s.reason == "error" and not s.final_adapter and not s.checkpoints
    status = run_view(sid)[0]
    assert "**Failed (error)**" in status and "set-up failed (injected" in status


def test_exception_while_writing_a_checkpoint_publishes_nothing(data, monkeypatch):
    from workbench.sessions import session_path
    from workbench.training.checkpoints import newest_complete
    from workbench.training.job import Schedule
    from workbench.training.launcher import make_job, start
    from workbench.ui.chat_tab import finished_adapters

    monkeypatch.setenv("WORKBENCH_FAULT", "error_on_save")
    sid, proc = start(make_job("tiny", "lora", str(data), schedule=Schedule(max_steps=6, save_steps=2)))
    s = _finish(sid, proc)
    folder = session_path(sid)
    assert s.state == "failed" and "checkpoint writer failed" in json.dumps(s.as_dict()) + (folder / "events.jsonl").read_text()
    assert s.checkpoints == [] and newest_complete(folder) is None and not (folder / "final").exists()
    assert not any((folder / "checkpoints").glob("*")) if (folder / "checkpoints").exists() else True
    assert sid not in [v for _, v in finished_adapters("tiny")]


def test_a_failed_save_never_replaces_the_complete_result(tmp_path):
    from workbench.training.checkpoints import complete_checkpoints, newest_complete, save_atomically

    final = tmp_path / "final"
    save_atomically(final, lambda tmp: (tmp / "adapter_model.safetensors").write_bytes(b"good" * 1000))

    def half_then_disk_full(tmp):
        (tmp / "adapter_model.safetensors").write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError):
        save_atomically(final, half_then_disk_full)
    assert (final / "adapter_model.safetensors").read_bytes() == b"good" * 1000
    assert newest_complete(tmp_path) == final and complete_checkpoints(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]  # no partial folder left behind


def test_the_server_stays_up_while_its_workers_die(tmp_path):
    """Through the web API: one run hits an (injected) CUDA OOM, one worker is SIGKILLed
    mid-run. Both show the right state; the server answers plans throughout; neither is
    offered as an adapter."""
    gradio_client = pytest.importorskip("gradio_client")
    from workbench.ui.plan_tab import KNOB_NAMES

    data = tmp_path / "qa.jsonl"
    data.write_text(ROWS)
    with running_app(tmp_path, env={"WORKBENCH_FAULT": "oom_at_step=3"}) as url:
        client = gradio_client.Client(url, verbose=False)
        start = ("tiny", "lora", "float32", "auto", 2, 64, 1, False, "adamw", "cpu", gradio_client.handle_file(str(data)),
                 "auto", "", 0, False, 20, 1e-3, 1, "single", "none", *[None] * len(KNOB_NAMES))

        def status(run_id):
            return client.predict(run_id, api_name="/run_status")[0]

        def wait(run_id, words, timeout=300):
            deadline = time.time() + timeout
            while time.time() < deadline:
                text = status(run_id)
                if any(w in text for w in words):
                    return text
                time.sleep(0.5)
            raise AssertionError(text)

        oom_run, _ = client.predict(*start, api_name="/start_run")
        text = wait(oom_run, ["failed", "completed"])
        assert "**Failed (oom)**" in text and "out of memory" in text.lower() and "\n- " in text  # with suggestions
        killed_run, _ = client.predict(*start, api_name="/start_run")
        wait(killed_run, ["loading", "running"])
        pid = int((tmp_path / "sessions" / killed_run / "worker.pid").read_text())
        os.killpg(pid, signal.SIGKILL)
        assert "interrupted" in wait(killed_run, ["interrupted"], timeout=60)
        plan = client.predict("tiny", "lora", "bfloat16", "auto", 1, 64, 1, False, "adamw", "cuda",
                              *[None] * len(KNOB_NAMES), api_name="/plan")[0]
        assert "Predicted peak" in plan
        table = client.predict(api_name="/sessions")[0]["data"]
        assert {row[0]: row[1] for row in table} == {oom_run: "failed", killed_run: "interrupted"}
        assert client.predict("tiny", api_name="/adapters")["choices"] == []
