"""The Train tab without a browser: the run summary, the progress line (human durations, no
ETA for a queued, failed or cancelled run), the failure paragraph with its escaped log tail
(a real failing worker), Cancel only while a run is active, and what a reload keeps
(:mod:`workbench.ui.state`: hostile browser state refused, an attached run's own settings)."""

import json
from types import SimpleNamespace

import pytest

from workbench.ui.plan_tab import KNOB_NAMES

ROWS = "\n".join(json.dumps({"prompt": f"What is {i}?", "completion": f"It is {i}."}) for i in range(24))


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_SESSIONS", str(tmp_path / "sessions"))
    data = tmp_path / "qa.jsonl"
    data.write_text(ROWS)
    return data


def _as(user):
    return SimpleNamespace(username=user)


def test_durations_read_as_people_say_them():
    from workbench.ui.run_view import human_duration

    assert [human_duration(s) for s in (0.2, 45, 72, 180, 7380, 7200)] == \
        ["under 1 s", "45 s", "1 min 12 s", "3 min", "2 h 3 min", "2 h"]


def _log(step, max_steps, eta, epoch=0.45):
    return {"kind": "log", "step": step, "max_steps": max_steps, "epoch": epoch, "eta_seconds": eta}


def test_progress_line_per_state():
    from workbench.ui.run_view import progress_line

    status = [{"kind": "status", "status": "loading", "time": 100.0}, {"kind": "status", "status": "running", "time": 110}]
    events = status + [_log(27, 60, 72.4)]
    assert progress_line("x", "running", events) == "step 27 / 60 · epoch 0.45 · 1 min 12 s left"
    for state in ("failed", "cancelled", "interrupted"):
        line = progress_line("x", state, events)
        assert line == f"{state} at step 27 / 60 · epoch 0.45" and "left" not in line
    done = events + [_log(60, 60, 0.0, 1.0), {"kind": "status", "status": "completed", "time": 284.0}]
    assert progress_line("x", "completed", done) == "done in 3 min 4 s · 60 / 60 steps"
    queued = progress_line("20260101-000000-abcdef12", "queued", [])
    assert queued.startswith("queued") and "no time estimate" in queued and " left" not in queued


def test_failure_paragraphs_say_what_happened_and_what_to_try():
    from workbench.ui.run_view import failure_paragraph

    oom = failure_paragraph("failed", {"reason": "oom", "message": "out of memory under the cap of 2.00 GiB",
                                       "suggestions": ["batch size 2: 1.2 GiB", "gradient checkpointing on"]})
    assert oom.startswith("**Failed (oom)**: the run ran out of memory") and "What to try" in oom
    assert "\n- batch size 2: 1.2 GiB" in oom and "\n- gradient checkpointing on" in oom
    data = failure_paragraph("failed", {"reason": "error", "error": "DataFileError: qa.jsonl row 3: no prompt"})
    assert "the dataset could not be used: qa.jsonl row 3" in data and "Data tab" in data and "DataFileError" not in data
    disk = failure_paragraph("failed", {"reason": "disk_full", "message": "no space left on device while saving"})
    assert "disk is full" in disk and "Runs tab" in disk
    gone = failure_paragraph("interrupted", {"reason": "the worker process is gone"})
    assert "Resume" in gone and "Runs tab" in gone


def test_log_tail_is_escaped_without_traceback_or_paths(tmp_path):
    from workbench.ui.run_view import log_tail_details

    (tmp_path / "worker.log").write_text(
        "loading <img src=x onerror=alert(1)> & co\n\nTraceback (most recent call last):\n  File \"/srv/wb/workbench/x.py\", line 3, in f\n"
        "    raise RuntimeError('x')\nRuntimeError: broken in /srv/wb/sessions/abc/dataset.jsonl\n")
    details = log_tail_details(tmp_path)
    assert details.strip().startswith("<details><summary>Details (log tail)</summary><pre>")
    assert "&lt;img src=x onerror=alert(1)&gt; &amp; co" in details and "<img" not in details
    assert "Traceback" not in details and "/srv" not in details and "RuntimeError: broken in dataset.jsonl" in details
    assert "\n\n" not in details.strip()  # a blank line would end the HTML block inside markdown
    assert log_tail_details(tmp_path / "missing") == ""


def test_a_real_failed_run_shows_the_paragraph_and_the_details(store, monkeypatch):
    from workbench.training.job import Schedule
    from workbench.training.launcher import make_job, start
    from workbench.ui.train_tab import poll_with_cancel

    monkeypatch.setenv("WORKBENCH_FAULT", "error_at_setup")
    sid, proc = start(make_job("tiny", "lora", str(store), schedule=Schedule(max_steps=4)))
    proc.wait(timeout=300)
    status, progress, _memory, _curves, cancel = poll_with_cancel(sid, None)
    assert "**Failed (error)**: the training stopped with an error: set-up failed (injected" in status
    assert "What to try" in status and "<details><summary>Details (log tail)</summary><pre>" in status
    assert "Traceback" not in status and "```" not in status
    assert progress == "failed before the first step" and cancel["interactive"] is False


def test_cancel_is_enabled_only_while_a_run_of_yours_is_active(store):
    from workbench.training.launcher import make_job, prepare
    from workbench.ui.train_tab import poll_with_cancel

    sid = prepare(make_job("tiny", "lora", str(store)), owner="alice")  # queued, waiting for its turn
    assert poll_with_cancel(None, _as("alice"))[-1]["interactive"] is False
    assert poll_with_cancel(sid, _as("bob"))[-1]["interactive"] is False  # not bob's run
    view = poll_with_cancel(sid, _as("alice"))
    assert view[-1]["interactive"] is True and "no time estimate" in view[1]


def test_the_attached_run_notice_goes_when_its_run_ends(store):
    from workbench.training.launcher import cancel, make_job, prepare
    from workbench.ui.state import FIELDS, restore, save
    from workbench.ui.train_tab import poll_page

    sid = prepare(make_job("tiny", "lora", str(store)), owner="alice")
    gone = "The dataset file chosen before is no longer on the server"
    saved = {**save("alice", None, "plan", [None] * len(FIELDS)), "upload": {"path": "/nowhere", "sig": "x"}}
    notice = restore(saved, "alice")["notice"]
    assert notice.startswith(f"**Showing the settings of run `{sid}`**") and gone in notice
    assert poll_page(sid, notice, _as("alice"))[-1] == {"__type__": "update"}  # still queued: kept
    assert cancel(sid) == "cancelled"  # while queued: it never starts
    left = poll_page(sid, notice, _as("alice"))[-1]
    assert left.startswith(gone) and "Showing the settings" not in left  # the other line stays


def _summary(**changes):
    from workbench.paths import DEMO_DATASET
    from workbench.ui.data_tab import inspect_view
    from workbench.ui.train_tab import run_summary

    report = inspect_view(str(DEMO_DATASET), "tiny", "auto", "", 128, 0.2, False)[4]
    args = dict(model="tiny", method="lora", dtype="float32", quant="auto", batch=8, seq=128, accum=2, ckpt=False,
                optim="adamw", device="cpu", data_path=str(DEMO_DATASET), fmt="auto", mapping="", val=0.2,
                on_prompt=False, max_steps=12, lr=1e-3, gpus=1, strategy="single", offload="none", report=report)
    args.update(changes)
    return run_summary(*args.values(), *[None] * len(KNOB_NAMES))


def test_summary_names_everything_start_will_train():
    model, settings, data, schedule, verdict = _summary()
    assert "tiny" in model and "lora" in model and "rank 8" in model
    assert "**Batch size** 8 × **gradient accumulation** 2 = 16 examples per optimizer step" in settings
    assert "**sequence length** 128 tokens" in settings and "**precision** fp32" in settings
    assert "**device** cpu" in settings
    assert "**320 examples** (256 for training, 64 held out)" in data and "41,577 tokens**" in data
    assert "12 optimizer steps ≈ 0.75 epochs" in schedule and "learning rate 0.001" in schedule
    assert verdict.startswith("**Predicted peak") and "GiB" in verdict and "✓ Fits" in verdict
    refused = _summary(batch="x")
    assert refused[0].startswith("**Cannot start yet:**") and "Batch size" in refused[0] and refused[1:] == ("",) * 4


# -- what a reload keeps ---------------------------------------------------------------------------

def test_hostile_browser_state_is_dropped_field_by_field():
    from workbench.ui.state import clean_form

    form = clean_form({"model": "https://evil.example/x", "method": "rslora", "dtype": "float128", "batch": "1e99",
                       "seq": "256", "accum": 2.5, "ckpt": "yes", "val": 0.9, "lr": float("nan"), "max_steps": -1,
                       "mapping": "x" * 10_000, "knob:rank": "32", "knob:dropout": 5, "knob:quant_type": "evil",
                       "device": "cpu", "strategy": "single", "unknown": 1})
    assert form == {"method": "rslora", "seq": "256", "max_steps": -1, "knob:rank": "32", "device": "cpu",
                    "strategy": "single"}
    assert clean_form("not a dict") == {} and clean_form({"model": "tiny"}) == {"model": "tiny"}


def test_a_dataset_path_is_restored_only_when_this_server_gave_it_to_this_user(tmp_path, monkeypatch):
    from workbench.paths import DEMO_DATASET
    from workbench.ui.state import restored_upload, upload_entry

    uploads = tmp_path / "gradio"
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(uploads))
    (uploads / "abc").mkdir(parents=True)
    mine = uploads / "abc" / "qa.jsonl"
    mine.write_text(ROWS)
    outside = tmp_path / "secret.jsonl"
    outside.write_text(ROWS)
    entry = upload_entry(str(mine), "alice")
    assert restored_upload(entry, "alice") == str(mine)
    assert restored_upload(entry, "bob") is None  # signed for another user
    assert restored_upload({**entry, "path": str(outside)}, "alice") is None  # a path the browser chose
    assert restored_upload(upload_entry(str(outside), "alice"), "alice") is None  # signed, but not an upload
    link = uploads / "abc" / "link.jsonl"
    link.symlink_to(outside)
    assert restored_upload(upload_entry(str(link), "alice"), "alice") is None
    mine.unlink()
    assert restored_upload(entry, "alice") is None  # gone (the server restarted, the file expired)
    assert upload_entry(str(DEMO_DATASET), None) == {"demo": True}
    assert restored_upload({"demo": True}, None) == str(DEMO_DATASET)
    assert restored_upload({"path": 3, "sig": None}, None) is None and restored_upload("x", None) is None


def test_reload_restores_the_saved_form_and_tab(store):
    from workbench.ui.state import FIELDS, restore, save

    values = {"method": "rslora", "knob:rank": "32", "batch": 2, "max_steps": 5, "device": "cpu"}
    saved = save(None, None, "train", [values.get(name) for name in FIELDS])
    r = restore(saved, None)
    assert r["tab"] == "train" and r["session"] is None and r["notice"] == ""
    assert {k: r["form"][k] for k in values} == values
    assert restore({"v": 99, "form": values}, None)["form"] == {}  # another version's state


def test_an_active_run_shows_its_own_settings(store):
    from workbench.training.job import Schedule
    from workbench.training.launcher import make_job, prepare
    from workbench.ui.state import FIELDS, restore, save

    job = make_job("tiny", "dora", str(store), knobs={"rank": 4}, settings={"device": "cpu", "batch_size": 3},
                   schedule=Schedule(max_steps=300, learning_rate=5e-4))
    sid = prepare(job, owner="alice")
    saved = save("alice", None, "plan", [{"max_steps": 30}.get(name) for name in FIELDS])
    r = restore(saved, "alice")
    assert r["session"] == sid and f"Showing the settings of run `{sid}`" in r["notice"] and "qa.jsonl" in r["notice"]
    form = r["form"]
    assert (form["method"], form["knob:rank"], form["batch"], form["max_steps"], form["lr"]) == \
        ("dora", 4, 3, 300, 5e-4)
    assert restore(saved, "bob")["session"] is None  # not bob's run


def test_only_the_users_own_pick_of_a_method_or_the_demo_resets_knobs_or_schedule():
    """A reload sets the method, its knobs, the file and the schedule together: the handlers
    that reset knobs and set the demo's schedule answer the user's events only."""
    import gradio as gr

    from workbench.ui.app import build_app
    from workbench.ui.plan_tab import knob_updates, knob_visibility

    rank = KNOB_NAMES.index("rank")
    assert knob_updates("vera")[rank]["value"] == 256 and "value" not in knob_visibility("vera")[rank]
    assert knob_visibility("vera")[rank]["visible"] is True and "8,192" in knob_visibility("vera")[rank]["info"]
    app = build_app()
    by_id = {b._id: b for b in app.blocks.values()}
    triggers = {}
    for dep in app.fns.values():
        for block_id, event in dep.targets:
            if dep.fn is not None:
                triggers.setdefault(dep.fn.__name__, set()).add((type(by_id.get(block_id)).__name__, event))
    assert triggers["knob_updates"] == {("Dropdown", "input")}
    assert triggers["knob_visibility"] == {("Dropdown", "change")}
    assert ("File", "upload") in triggers["demo_schedule"] and ("File", "change") not in triggers["demo_schedule"]
    assert isinstance(app, gr.Blocks)


def test_a_restored_demo_file_comes_back_with_its_restored_schedule():
    from workbench.paths import DEMO_DATASET
    from workbench.ui.state import FIELDS, restore, save

    values = {"max_steps": 300, "lr": 1e-3}
    r = restore(save(None, str(DEMO_DATASET), "train", [values.get(n) for n in FIELDS]), None)
    assert r["upload"] == str(DEMO_DATASET) and r["form"]["max_steps"] == 300 and r["form"]["lr"] == 1e-3
