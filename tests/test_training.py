"""The background worker: real training on tiny, events, cancel, kill, OOM, crashes, and
checkpoints that are complete or invisible."""

import json
import os
import signal
import time

import pytest

from workbench.errors import WorkbenchError
from workbench.sessions import info, list_sessions, refresh, session_path
from workbench.training.checkpoints import complete_checkpoints, newest_complete, save_atomically
from workbench.training.events import EventWriter, read_events
from workbench.training.job import Schedule, TrainJob, check_session_id
from workbench.training.launcher import cancel, make_job, start

FACTS = [("What is the capital of France?", "Paris."), ("What colour is the sky?", "Blue."),
         ("How many legs has a cat?", "Four."), ("What do bees make?", "Honey."), ("Opposite of hot?", "Cold."),
         ("What is frozen water?", "Ice."), ("Name a fruit.", "Apple."), ("What is 2 plus 2?", "Four.")]


@pytest.fixture(autouse=True)
def _sessions(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_SESSIONS", str(tmp_path / "sessions"))


@pytest.fixture
def qa_file(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text("\n".join(json.dumps({"instruction": q, "input": "", "output": a}) for q, a in FACTS * 8))
    return path


def _events(sid):
    return read_events(session_path(sid) / "events.jsonl")[0]


def _wait(sid, proc, predicate, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate(_events(sid)):
            return
        if proc.poll() is not None and not predicate(_events(sid)):
            raise AssertionError(open(session_path(sid) / "worker.log").read()[-3000:])
        time.sleep(0.2)
    raise AssertionError("timed out")


def test_job_round_trip_and_validation(qa_file):
    job = make_job("tiny", "lora", str(qa_file), knobs={"rank": 4})
    again = TrainJob.from_dict(json.loads(job.to_json()))
    assert again == job and again.knobs["rank"] == 4 and again.knobs["alpha"] == 16.0
    with pytest.raises(WorkbenchError):
        make_job("tiny", "lora", str(qa_file), knobs={"rank": 0})
    with pytest.raises(WorkbenchError):
        Schedule(warmup_ratio=1.5)


@pytest.mark.parametrize("bad", ["../x", "20261125-143239-6ccf141c/..", "a" * 10, "20261125-143239-6CCF141C",
                                 "20261125-143239-6ccf141c\0", "/etc/passwd", ""])
def test_session_ids_are_validated(bad):
    with pytest.raises(WorkbenchError, match="invalid session id"):
        check_session_id(bad)
    with pytest.raises(WorkbenchError):
        session_path(bad)


def test_events_are_read_by_offset_and_torn_lines_are_skipped(tmp_path):
    w = EventWriter(tmp_path / "events.jsonl")
    w.status("running")
    w.emit("log", step=1, loss=2.0)
    w.close()
    events, offset = read_events(tmp_path / "events.jsonl")
    assert [e["kind"] for e in events] == ["status", "log"]
    with open(tmp_path / "events.jsonl", "a") as fh:
        fh.write('{"kind": "log", "step": 2')  # a writer killed mid-line
    more, offset2 = read_events(tmp_path / "events.jsonl", offset)
    assert more == [] and offset2 == offset


def test_training_lowers_loss_and_saves_a_complete_adapter(qa_file):
    job = make_job("tiny", "lora", str(qa_file), settings={"device": "cpu", "dtype": "float32", "batch_size": 4},
                   schedule=Schedule(max_steps=32, learning_rate=2e-3, logging_steps=4, save_steps=16, eval_steps=16),
                   val_fraction=0.125)
    sid, proc = start(job)
    assert proc.wait(timeout=600) == 0, open(session_path(sid) / "worker.log").read()[-3000:]
    events = _events(sid)
    statuses = [e["status"] for e in events if e["kind"] == "status"]
    assert statuses == ["queued", "loading", "running", "saving", "completed"]
    losses = [e["loss"] for e in events if e["kind"] == "log" and e["loss"] is not None]
    evals = [e["eval_loss"] for e in events if e["kind"] == "log" and e["eval_loss"] is not None]
    assert losses[-1] < losses[0] - 1.0 and evals[-1] < evals[0]
    logs = [e for e in events if e["kind"] == "log" and e["loss"] is not None]
    assert all(e["learning_rate"] is not None and e["grad_norm"] is not None for e in logs)
    assert logs[-1]["tokens_per_second"] > 0 and logs[-1]["eta_seconds"] is not None
    memory = [e for e in events if e["kind"] == "memory"]
    assert len(memory) >= 4 and all(e["source"] == "cpu" and e["rss"] > 0 for e in memory)
    steps = [e for e in events if e["kind"] == "step_memory"]  # the planned quantity, on sampled steps
    assert steps and steps[0]["step"] == 2 and all(e["quantity"] == "live tensor bytes" for e in steps)  # the probe
    assert all(e["peak_bytes"] > e["persistent_bytes"] > 0 for e in steps)
    folder = session_path(sid)
    plan = json.loads((folder / "plan.json").read_text())
    assert plan["method"] == "lora" and plan["peak_bytes"] > 0
    effective = json.loads((folder / "plan_effective.json").read_text())
    assert effective["settings"]["seq_len"] < plan["settings"]["seq_len"] and effective["peak_bytes"] < plan["peak_bytes"]
    final = newest_complete(folder)
    assert final.name == "final" and (final / "adapter_model.safetensors").is_file()
    assert not (final / "training_args.bin").exists()
    assert [p.name for p in complete_checkpoints(folder)] == ["checkpoint-16", "checkpoint-32"]
    s = info(sid)
    assert s.state == "completed" and s.step == 32 and s.final_adapter
    assert [x.id for x in list_sessions()] == [sid]


def test_cancel_stops_at_the_next_step_and_saves(qa_file):
    job = make_job("tiny", "lora", str(qa_file), schedule=Schedule(max_steps=100000, logging_steps=1))
    sid, proc = start(job)
    _wait(sid, proc, lambda ev: any(e["kind"] == "log" for e in ev))
    assert cancel(sid, grace=120) == "cancelled"
    proc.wait(timeout=60)
    assert complete_checkpoints(session_path(sid)), "a graceful stop saves a checkpoint"
    assert info(sid).state == "cancelled"


@pytest.mark.security
def test_killed_worker_is_interrupted_not_running(qa_file):
    job = make_job("tiny", "lora", str(qa_file), schedule=Schedule(max_steps=100000, logging_steps=1))
    sid, proc = start(job)
    _wait(sid, proc, lambda ev: any(e["kind"] == "log" for e in ev))
    assert refresh(sid) == "running"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert refresh(sid) == "interrupted"
    assert info(sid).state == "interrupted" and newest_complete(session_path(sid)) is None


def test_out_of_memory_fails_cleanly_with_suggestions(tmp_path, monkeypatch):
    path = tmp_path / "long.jsonl"
    path.write_text("\n".join(json.dumps({"text": "word " * 900}) for _ in range(64)))
    monkeypatch.setenv("WORKBENCH_WORKER_MAX_MEMORY", str(150 * 2**20))
    job = make_job("tiny", "full", str(path), settings={"device": "cpu", "dtype": "float32", "batch_size": 16},
                   schedule=Schedule(max_steps=5), cutoff=1024)
    sid, proc = start(job)
    assert proc.wait(timeout=600) == 1
    final = [e for e in _events(sid) if e["kind"] == "status"][-1]
    assert final["status"] == "failed" and final["reason"] == "oom", final
    assert final["suggestions"] and all("predicted peak" in s for s in final["suggestions"])
    limit = 150 * 2**20  # every suggestion re-plans under what the run had
    assert all(float(s.rsplit("predicted peak ", 1)[1].split()[0]) * 2**30 <= limit for s in final["suggestions"])
    assert any("gradient checkpointing" in s or "batch 16 →" in s for s in final["suggestions"])


def test_crash_at_setup_reports_one_sentence_and_logs_the_traceback(tmp_path):
    path = tmp_path / "odd.jsonl"
    path.write_text('{"foo": 1, "bar": 2}\n')
    sid, proc = start(make_job("tiny", "lora", str(path)))
    assert proc.wait(timeout=300) == 1
    final = [e for e in _events(sid) if e["kind"] == "status"][-1]
    assert final["status"] == "failed" and final["reason"] == "error" and "log_tail" not in final
    assert final["error"].startswith("DataFileError: ") and "cannot tell the format" in final["error"]
    log = (session_path(sid) / "worker.log").read_text()
    assert "Traceback" in log and "DataFileError" in log  # the details stay in the log


def test_only_complete_checkpoints_are_offered(tmp_path):
    folder = tmp_path / "20261125-000000-0000abcd"
    (folder / "checkpoints" / "checkpoint-3").mkdir(parents=True)
    (folder / "checkpoints" / "checkpoint-3" / "COMPLETE").write_text("{}")
    (folder / "checkpoints" / "checkpoint-5").mkdir()  # crashed while saving: no marker
    assert [p.name for p in complete_checkpoints(folder)] == ["checkpoint-3"]
    assert newest_complete(folder).name == "checkpoint-3"
    save_atomically(folder / "final", lambda tmp: (tmp / "adapter.safetensors").write_text("v1"))

    def crash(tmp):
        (tmp / "adapter.safetensors").write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        save_atomically(folder / "final", crash)
    assert (folder / "final" / "adapter.safetensors").read_text() == "v1"  # the previous one survives
    assert newest_complete(folder).name == "final"
    assert not [p for p in folder.iterdir() if p.name.startswith(".final")]


def _status_events(sid):
    return [e for e in _events(sid) if e["kind"] == "status"]


@pytest.mark.security
def test_kill_during_checkpoint_save_leaves_no_complete_checkpoint(qa_file, monkeypatch):
    monkeypatch.setenv("WORKBENCH_FAULT", "sleep_on_save=60")
    job = make_job("tiny", "lora", str(qa_file), schedule=Schedule(max_steps=1000, save_steps=3, logging_steps=1))
    sid, proc = start(job)
    folder = session_path(sid)
    _wait(sid, proc, lambda ev: (folder / ".staging" / "checkpoint-3").is_dir())
    time.sleep(1.0)  # the Trainer has written the files; the marker is not there yet
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert refresh(sid) == "interrupted"
    assert complete_checkpoints(folder) == [] and newest_complete(folder) is None
    assert not (folder / "checkpoints" / "checkpoint-3").exists()


@pytest.mark.security
def test_cancel_kills_the_process_tree_after_the_grace_period(qa_file, monkeypatch):
    monkeypatch.setenv("WORKBENCH_FAULT", "sleep_on_save=120")
    job = make_job("tiny", "lora", str(qa_file), schedule=Schedule(max_steps=1000, save_steps=2, logging_steps=1))
    sid, proc = start(job)
    _wait(sid, proc, lambda ev: (session_path(sid) / ".staging" / "checkpoint-2").is_dir())
    started = time.time()
    assert cancel(sid, grace=2) == "cancelled"
    assert proc.wait(timeout=30) is not None and time.time() - started < 30
    assert "killed" in _status_events(sid)[-1]["reason"]


def test_keep_last_k_checkpoints(qa_file):
    sid, rc = _run_in_process(make_job("tiny", "lora", str(qa_file),
                                       schedule=Schedule(max_steps=8, save_steps=2, keep_checkpoints=2)))
    assert rc == 0
    assert [p.name for p in complete_checkpoints(session_path(sid))] == ["checkpoint-6", "checkpoint-8"]


def test_resume_continues_from_the_newest_complete_checkpoint(qa_file):
    from workbench.training.launcher import resume

    job = make_job("tiny", "lora", str(qa_file), schedule=Schedule(max_steps=24, save_steps=6, logging_steps=1))
    sid, proc = start(job)
    folder = session_path(sid)
    _wait(sid, proc, lambda ev: bool(complete_checkpoints(folder)))
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert refresh(sid) == "interrupted"
    step = int(complete_checkpoints(folder)[-1].name.split("-")[1])
    seen = len(_events(sid))
    proc = resume(sid)
    assert proc.wait(timeout=600) == 0, open(folder / "worker.log").read()[-3000:]
    after = _events(sid)[seen:]
    assert next(e for e in after if e["kind"] == "resume")["checkpoint"].endswith(f"checkpoint-{step}")
    assert min(e["step"] for e in after if e["kind"] == "log") > step
    assert info(sid).state == "completed" and info(sid).step == 24


@pytest.mark.security
def test_injected_cuda_oom_at_step_k(qa_file, monkeypatch):
    monkeypatch.setenv("WORKBENCH_FAULT", "oom_at_step=3")
    job = make_job("tiny", "lora", str(qa_file), settings={"device": "cpu", "dtype": "float32", "batch_size": 8},
                   schedule=Schedule(max_steps=50, logging_steps=1))
    sid, proc = start(job)
    assert proc.wait(timeout=300) == 1
    final = _status_events(sid)[-1]
    assert (final["status"], final["reason"]) == ("failed", "oom") and "injected" in final["message"]
    assert final["suggestions"] and max(e["step"] for e in _events(sid) if e["kind"] == "log") == 2


@pytest.mark.security
def test_disk_full_while_saving_keeps_the_previous_checkpoint(qa_file, monkeypatch):
    monkeypatch.setenv("WORKBENCH_FAULT", "enospc_on_save")
    job = make_job("tiny", "lora", str(qa_file), schedule=Schedule(max_steps=6, save_steps=3))
    sid, proc = start(job)
    assert proc.wait(timeout=300) == 1
    final = _status_events(sid)[-1]
    assert final["reason"] == "disk_full" and "checkpoint-6 is still usable" in final["message"]
    assert newest_complete(session_path(sid)).name == "checkpoint-6"


def test_two_runs_take_turns(qa_file):
    """The second run waits as a record (no process) and the first worker, as it ends,
    starts it: no server or dispatcher thread is running here."""
    jobs = [make_job("tiny", "lora", str(qa_file), schedule=Schedule(max_steps=6)) for _ in range(2)]
    (first, p1), (second, p2) = start(jobs[0]), start(jobs[1])
    assert p2 is None and not (session_path(second) / "worker.pid").exists()
    assert p1.wait(timeout=600) == 0
    deadline = time.time() + 600
    while refresh(second) not in ("completed", "failed", "interrupted", "cancelled") and time.time() < deadline:
        time.sleep(0.5)
    assert refresh(second) == "completed", (session_path(second) / "worker.log").read_text()[-3000:]
    first_done = _status_events(first)[-1]["time"]
    second_loading = next(e["time"] for e in _status_events(second) if e["status"] == "loading")
    assert second_loading >= first_done


def _run_in_process(job):
    import resource

    from workbench.training.launcher import prepare
    from workbench.training.worker import main

    sid = prepare(job)
    before = resource.getrlimit(resource.RLIMIT_AS)
    rc = main([str(session_path(sid) / "job.json")])
    # the CPU worker caps its address space; run in-process it must hand the caller its limit
    # back (a browser launched later by this process crashed at start under the leftover cap)
    assert resource.getrlimit(resource.RLIMIT_AS) == before
    return sid, rc


def _probe_matches(final):
    import torch

    from workbench.training.artifacts import load_result, logits_probe, read_meta

    model, tok = load_result(final)
    expected, got = read_meta(final)["probe"], logits_probe(model, tok)
    assert torch.allclose(torch.tensor(got["last"]), torch.tensor(expected["last"]), rtol=1e-4, atol=1e-4)
    assert abs(got["sum"] - expected["sum"]) <= 1e-3 * max(1.0, abs(expected["sum"]))


@pytest.mark.parametrize("method", ["full", "freeze", "bitfit", "lora", "rslora", "dora", "qlora", "lora-8bit", "ia3",
                                    "adalora", "prefix", "prompt", "loha", "lokr", "oft", "vera"])
def test_every_method_completes_and_reloads_identically(qa_file, method):
    from workbench.methods import METHODS

    assert method in METHODS
    knobs = {"total_step": 3} if method == "adalora" else {}
    job = make_job("tiny", method, str(qa_file), knobs=knobs, settings={"device": "cpu", "dtype": "float32",
                                                                        "batch_size": 2},
                   schedule=Schedule(max_steps=3, learning_rate=1e-3))
    sid, rc = _run_in_process(job)
    assert rc == 0, _status_events(sid)[-1]
    final = newest_complete(session_path(sid))
    assert final.name == "final" and all(p.suffix != ".bin" for p in final.iterdir())
    _probe_matches(final)


def test_export_zip_and_merged(qa_file, tmp_path):
    import zipfile

    from workbench.training.artifacts import export_merged, export_zip, read_meta

    sid, rc = _run_in_process(make_job("tiny", "lora", str(qa_file), schedule=Schedule(max_steps=3)))
    final = newest_complete(session_path(sid))
    meta = read_meta(final)
    assert meta["dataset"]["name"] == "qa.jsonl" and len(meta["dataset"]["sha256"]) == 64 and meta["steps"] == 3
    names = zipfile.ZipFile(export_zip(final, tmp_path / "a.zip")).namelist()
    assert any(n.endswith("adapter_model.safetensors") for n in names)
    merged = export_merged(final, tmp_path / "merged")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from workbench.training.artifacts import logits_probe

    model = AutoModelForCausalLM.from_pretrained(merged, use_safetensors=True)
    got = logits_probe(model, AutoTokenizer.from_pretrained(merged))
    assert abs(got["sum"] - meta["probe"]["sum"]) <= 1e-3 * max(1.0, abs(meta["probe"]["sum"]))


def test_cli_train_json_and_sessions_show(qa_file, tmp_path):
    import subprocess
    import sys

    root = tmp_path / "runs"
    out = subprocess.run([sys.executable, "-m", "workbench", "train", "--model", "tiny", "--method", "ia3",
                          "--data", str(qa_file), "--max-steps", "3", "--sessions-dir", str(root), "--json"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["state"] == "completed"
    show = subprocess.run([sys.executable, "-m", "workbench", "sessions", "show", result["id"], "--sessions-dir",
                           str(root), "--json"], capture_output=True, text=True, timeout=300)
    data = json.loads(show.stdout)
    assert data["id"] == result["id"] and data["state"] == "completed" and data["pid"] is None
    assert data["events_path"].endswith("events.jsonl") and data["final_adapter"].endswith("final")
    assert data["predicted_peak_bytes"] > 0 and data["measured_peak_bytes"] > 0 and data["dataset"] == "qa.jsonl"
    bad = subprocess.run([sys.executable, "-m", "workbench", "sessions", "show", "../etc", "--sessions-dir", str(root)],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "invalid session id" in bad.stderr and "Traceback" not in bad.stderr


def test_hand_edited_job_with_unknown_fields_is_refused(qa_file):
    data = json.loads(make_job("tiny", "lora", str(qa_file)).to_json())
    data["run"]["schedule"]["learning_rte"] = 1.0
    with pytest.raises(WorkbenchError, match="unknown field.*learning_rte"):
        TrainJob.from_dict(data)


def test_the_samplers_peak_never_counts_set_up(tmp_path):
    """Issue 16, defect 7: loading the model is not training. Samples say their phase, and
    the sampler's peak counts the training phase only (on CUDA the step callback also resets
    the peak statistics when training begins)."""
    import json

    from workbench.training.events import EventWriter
    from workbench.training.telemetry import MemorySampler

    events = EventWriter(tmp_path / "events.jsonl")
    sampler = MemorySampler(events, "cpu", interval=10)
    setup = sampler.sample()
    assert setup["phase"] == "setup" and setup["rss"] > 0 and sampler.peak == 0
    sampler.training()
    during = sampler.sample()
    assert during["phase"] == "training" and sampler.peak == during["rss"]
    sampler.start()
    sampler.stop()
    events.close()
    phases = [json.loads(line)["phase"] for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert phases and set(phases) == {"training"}
