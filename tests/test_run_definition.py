"""What you plan is what runs: one run definition from the page, the API and the CLI; the
sequence length is the truncation length; the device is the planned one; a run that cannot
fit is refused with suggestions that each fit; the measured step peak is the planned quantity."""

import json
import random

import pytest

from workbench.errors import SettingsError, WorkbenchError
from workbench.methods import METHODS, get_method
from workbench.runspec import build_run, fingerprint, plan_run
from workbench.training import launcher
from workbench.ui.plan_tab import KNOB_NAMES

#: a value other than the default for one knob of each method (the count of trained parameters changes)
NON_DEFAULT = {
    "freeze": {"unfreeze_layers": 1}, "bitfit": {}, "ia3": {"target_modules": "k_proj,v_proj,o_proj,down_proj"},
    "adalora": {"init_rank": 6}, "prefix": {"num_virtual_tokens": 7}, "prompt": {"num_virtual_tokens": 7},
    "lokr": {"decompose_factor": 4}, "oft": {"block_size": 16}, "vera": {"rank": 64},
}


def knob_choice(method: str) -> dict:
    if method in NON_DEFAULT:
        return NON_DEFAULT[method]
    return {"rank": 16} if any(k.name == "rank" for k in get_method(method).knobs) else {}


def write_rows(path, rows=24, longest_words=120, seed=0):
    rng = random.Random(seed)
    lines = [json.dumps({"instruction": " ".join(["explain"] * rng.randint(4, longest_words)),
                         "output": " ".join(["answer"] * rng.randint(4, 40))}) for _ in range(rows)]
    path.write_text("\n".join(lines))
    return path


@pytest.fixture()
def no_spawn(monkeypatch, tmp_path):
    """Runs are prepared for real; the worker is not started (recorded instead)."""
    spawned = []
    monkeypatch.setenv("WORKBENCH_SESSIONS", str(tmp_path / "sessions"))
    monkeypatch.setattr(launcher, "spawn", lambda sid, resume=False: spawned.append(sid) or type("P", (), {"pid": 0})())
    return spawned


def ui_start(method, knobs, data, device="cpu", batch=2, seq=64):
    from workbench.ui.train_tab import start_run

    values = [knobs.get(name) for name in KNOB_NAMES]
    return start_run(None, "tiny", method, "float32", "auto", batch, seq, 1, False, "adamw", device, str(data), "auto",
                     "", 0, False, 5, 2e-4, 1, "single", "none", *values)


@pytest.mark.parametrize("method", list(METHODS))
def test_knobs_set_in_the_page_reach_job_json_and_the_model(method, no_spawn, tmp_path):
    from workbench.loading import load_for_training
    from workbench.sessions import session_path
    from workbench.specs import load_model_spec
    from workbench.training.job import TrainJob

    chosen = knob_choice(method)
    if method == "bitfit":  # tiny has no biases: its one knob, off, is refused -- so it reached the planner
        sid, _, message = ui_start(method, {"norms": False}, write_rows(tmp_path / "d.jsonl"))
        assert sid is None and "no bias terms" in message
    for name, value in chosen.items():
        assert value != next(k.default for k in get_method(method).knobs if k.name == name)
    sid, _, message = ui_start(method, chosen, write_rows(tmp_path / "d.jsonl"))
    assert sid and no_spawn == [sid], message
    job = TrainJob.load(session_path(sid) / "job.json")
    assert {k: job.knobs[k] for k in chosen} == chosen
    shown = plan_run(job.run)
    assert job.plan_fingerprint == fingerprint(shown)
    assert json.loads((session_path(sid) / "plan.json").read_text())["fingerprint"] == job.plan_fingerprint
    model = load_for_training(load_model_spec("tiny"), get_method(method), job.knobs, job.training_settings)
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trained == shown.trainable_params  # the model built from job.json is the planned one
    if chosen:
        default = plan_run(build_run("tiny", method, None, job.settings))
        assert default.trainable_params != trained  # and the knob changed it
    if method == "lora":
        a = next(p for n, p in model.named_parameters() if "lora_A" in n and "q_proj" in n)
        assert a.shape == (16, 256)  # rank 16 x in_features of tiny's q_proj


def test_a_form_value_that_is_not_a_whole_number_is_refused_by_name(no_spawn, tmp_path):
    for batch, words in ((2.5, "whole number"), (0, "at least 1"), (-3, "at least 1"), ("", "empty")):
        sid, _, message = ui_start("lora", {}, write_rows(tmp_path / "d.jsonl"), batch=batch)
        assert sid is None and "Batch size" in message and words in message
    assert no_spawn == []


def test_cuda_without_a_gpu_is_refused_and_no_worker_starts(no_spawn, tmp_path, monkeypatch):
    import workbench.devices as devices

    monkeypatch.setattr(devices, "visible_gpus", lambda: [])
    sid, _, message = ui_start("lora", {}, write_rows(tmp_path / "d.jsonl"), device="cuda")
    assert sid is None and "no visible GPU" in message and "nothing was started" in message
    assert no_spawn == [] and not (tmp_path / "sessions").exists()
    assert devices.default_device() == "cpu"


def test_a_run_that_cannot_fit_is_refused_with_suggestions_that_each_fit(no_spawn, tmp_path, monkeypatch):
    import workbench.preflight as preflight

    budget = preflight.Budget("cpu", 400 * 2**20, 100 * 2**20, "a test machine with 300 MiB usable")
    monkeypatch.setattr(preflight, "device_budget", lambda device: budget)
    job = launcher.make_job("tiny", "lora", str(write_rows(tmp_path / "d.jsonl")),
                            settings={"device": "cpu", "dtype": "float32", "batch_size": 64, "seq_len": 512})
    with pytest.raises(launcher.PreflightRefused) as refused:
        launcher.prepare(job)
    result = refused.value.result
    assert not result.fits and result.peak_bytes > budget.limit_bytes and "Does not fit" in str(refused.value)
    assert len(result.suggestions) >= 2
    for s in result.suggestions:  # re-planned, each under the limit; the examples per step are kept
        assert plan_run(s.run).peak_bytes == s.peak_bytes <= budget.limit_bytes
        assert s.run.settings.batch_size * s.run.settings.grad_accum >= 64
    assert any("gradient checkpointing" in s.text for s in result.suggestions)
    assert no_spawn == [] and not (tmp_path / "sessions").exists()
    # the absurd batch of the bug report on this machine's real budget
    huge = launcher.make_job("tiny", "lora", str(tmp_path / "d.jsonl"),
                             settings={"device": "cpu", "dtype": "float32", "batch_size": 100000})
    monkeypatch.undo()
    monkeypatch.setenv("WORKBENCH_SESSIONS", str(tmp_path / "sessions"))
    with pytest.raises(launcher.PreflightRefused) as refused:
        launcher.prepare(huge)
    assert all(s.peak_bytes <= refused.value.result.budget.limit_bytes for s in refused.value.result.suggestions)


def test_build_run_is_the_one_builder(tmp_path):
    run = build_run("tiny", "lora", {"rank": 16.0}, {"batch_size": "2", "seq_len": 128.0, "device": "cpu",
                                                     "dtype": "float32", "quant": "auto"},
                    data={"path": str(tmp_path / "x.jsonl"), "format": "auto"}, schedule={"max_steps": 30})
    assert run.knobs["rank"] == 16 and run.settings.batch_size == 2 and run.settings.quant is None
    assert run.data.format is None and run.schedule.max_steps == 30
    with pytest.raises(SettingsError, match="has no knob rank"):
        build_run("tiny", "full", {"rank": 4})
    with pytest.raises(WorkbenchError, match="--batch-size"):
        build_run("tiny", "lora", None, {"batch_size": "x"}, style="cli")


def test_the_longest_examples_make_the_second_step_the_rest_a_seeded_shuffle():
    from workbench.training.sampling import LongestFirstSampler, probe_step

    lengths = [5, 90, 7, 60, 3, 90, 11, 2]
    sampler = LongestFirstSampler(lengths, first=3, seed=1, step=2)
    order = list(sampler)
    assert order[3:6] == [1, 5, 3] and sorted(order) == list(range(8)) and list(sampler) == order
    assert list(LongestFirstSampler(lengths, first=3, seed=1))[:3] == [1, 5, 3]  # step 1
    sampler.set_epoch(1)
    assert sorted(list(sampler)) == list(range(8))
    # the second step holds the optimizer's state; a run without a second step probes its first
    assert probe_step(8, 3) == 2 and probe_step(5, 3) == 1 and probe_step(8, 3, max_steps=1) == 1
    assert probe_step(100, 4, epochs=0.05) == 1 and probe_step(100, 4, max_steps=5) == 2


def test_the_run_truncates_at_the_planned_sequence_length_and_measures_the_planned_quantity(tmp_path, monkeypatch):
    """Plan with sequence length 128 on examples that are longer: the run's recorded plan is
    the shown one (sequence length 128), no batch is wider than 128 tokens, and the measured
    step peak (live tensor bytes, the planned quantity) is within 10% of the prediction."""
    from workbench.sessions import info, session_path
    from workbench.training.events import read_events
    from workbench.training.job import Schedule
    from workbench.ui.views import sessions_rows
    from workbench.ui.run_view import run_view

    monkeypatch.setenv("WORKBENCH_SESSIONS", str(tmp_path / "sessions"))
    data = write_rows(tmp_path / "long.jsonl", rows=32, longest_words=300)
    job = launcher.make_job("tiny", "lora", str(data), settings={"device": "cpu", "dtype": "float32",
                                                                 "batch_size": 4, "seq_len": 128},
                            schedule=Schedule(max_steps=4, logging_steps=1))
    shown = plan_run(job.run)
    sid, proc = launcher.start(job)
    assert proc.wait(timeout=300) == 0, (session_path(sid) / "worker.log").read_text()[-2000:]
    events, _ = read_events(session_path(sid) / "events.jsonl")
    recorded = next(e for e in events if e["kind"] == "plan")
    plan_file = json.loads((session_path(sid) / "plan.json").read_text())
    assert recorded["seq_len"] == plan_file["settings"]["seq_len"] == 128 and recorded["matches_shown"]
    assert recorded["fingerprint"] == fingerprint(shown) == plan_file["fingerprint"]
    assert "reason" not in recorded  # the data reaches 128 tokens: nothing forced another plan
    widths = [e["widest_batch"] for e in events if e["kind"] == "log"]
    assert max(widths) == 128  # the longest examples make the probe step, truncated at the planned length
    probe = next(e for e in events if e["kind"] == "probe")
    assert probe["step"] == 2 and probe["fits"] and probe["quantity"] == "live tensor bytes"
    assert abs(probe["plan_error_percent"]) <= 10, probe  # the benchmark's sign: (plan - measured) / measured
    assert probe["plan_error_percent"] == round((probe["predicted_bytes"] - probe["measured_bytes"])
                                                / probe["measured_bytes"] * 100, 2)
    s = info(sid)
    assert s.state == "completed" and s.measured_peak_source == "live tensor bytes"
    assert s.predicted_peak_bytes == shown.peak_bytes
    assert abs(s.plan_error_percent) <= 10, s
    assert s.plan_error_percent == round((s.predicted_peak_bytes - s.measured_peak_bytes) / s.measured_peak_bytes * 100, 2)
    row = sessions_rows()[0]
    assert row[0] == sid and row[-1] == f"{s.plan_error_percent:+.1f}%"
    _, _, chart, _ = run_view(sid)
    measured = next(t for t in chart.data if "measured step peak" in t.name)
    steps = [e["peak_bytes"] / 2**30 for e in events if e["kind"] == "step_memory"]
    assert "live tensor bytes" in measured.name and list(measured.y) == pytest.approx(steps)
    assert any("process RSS" in t.name for t in chart.data)  # another quantity, its own labelled line
    assert not any("tensors (params" in (t.name or "") for t in chart.data)


def test_a_probe_over_the_limit_stops_the_run_as_oom_with_suggestions_that_fit(tmp_path, monkeypatch):
    """The worker's limit set below the plan (as if the machine had less memory free when the
    worker started than at preflight): the probe step measures more than the limit, the run
    stops there as ``oom`` and the suggestions are each re-planned under that limit."""
    from workbench.preflight import suggestions_under
    from workbench.sessions import session_path
    from workbench.training import worker
    from workbench.training.events import read_events
    from workbench.training.job import Schedule

    monkeypatch.setenv("WORKBENCH_SESSIONS", str(tmp_path / "sessions"))
    job = launcher.make_job("tiny", "lora", str(write_rows(tmp_path / "long.jsonl", rows=32, longest_words=300)),
                            settings={"device": "cpu", "dtype": "float32", "batch_size": 4, "seq_len": 128},
                            schedule=Schedule(max_steps=6))
    limit = int(plan_run(job.run).peak_bytes * 0.75)
    monkeypatch.setattr(worker, "_cap_memory", lambda *a, **k: limit)  # the limit, without a real cap
    sid = launcher.prepare(job)
    assert worker.main([str(session_path(sid) / "job.json")]) == 1
    events, _ = read_events(session_path(sid) / "events.jsonl")
    probe = next(e for e in events if e["kind"] == "probe")
    assert probe["step"] == 2 and not probe["fits"] and probe["limit_bytes"] == limit
    assert probe["measured_bytes"] > limit
    final = [e for e in events if e["kind"] == "status"][-1]
    assert final["status"] == "failed" and final["reason"] == "oom" and "probe step" in final["message"]
    assert max(e["step"] for e in events if e["kind"] == "step_memory") == 2  # it stopped at the probe
    expected = [s.text for s in suggestions_under(job.run, limit)]
    assert expected and final["suggestions"] == expected
    assert all(s.peak_bytes <= limit for s in suggestions_under(job.run, limit))


def test_a_number_beyond_any_float_is_refused_in_a_short_message():
    """10**400 from the API or a saved browser state: no OverflowError, no 400-digit echo."""
    from workbench.errors import SettingsError
    from workbench.runspec import form_number
    from workbench.ui.state import clean_form

    for value in (10**400, "9" * 500):
        with pytest.raises(SettingsError, match=r"\*\*Batch size\*\* must be a whole number from 1 to 1,000,000; got "
                                                r".{1,41}… \(\d{3} characters\)$"):
            form_number("batch_size", value, int, 1, 1_000_000)
    assert clean_form({"batch": 10**400, "val": 10**400, "lr": 10**400, "knob:rank": 10**400, "seq": 64}) == {"seq": 64}
