"""The page: a real plan for the tiny model on load, and the named API endpoints of a
running server on 127.0.0.1 (plan, compare, inspect, start/poll a run, sessions)."""

import json
import time

import pytest
from conftest import running_app

from workbench.ui.app import plan_view


def test_plan_view_for_tiny():
    summary, figure, rows = plan_view("tiny", "lora", "bfloat16", "auto", 4, 512, 1, False, "adamw", "cuda")
    assert "demo with random weights" in summary and "Predicted peak" in summary
    assert "H100 80 GB (79.6 GiB) ✓ fits" in summary and "no visible GPU" in summary  # planning for a GPU not here is fine
    cpu_summary, _, _ = plan_view("tiny", "lora", "bfloat16", "auto", 4, 512, 1, False, "adamw", "cpu")
    assert "✓ Fits here" in cpu_summary and "RAM available now" in cpu_summary
    assert rows[0][0].startswith("PEAK (at ") and rows[0][3].startswith("alive at ")  # the deciding row first
    assert f"Predicted peak **{rows[0][1]:.2f} GiB**" in summary
    assert sum(1 for r in rows if r[0].endswith("◀ sets the peak")) == 1
    assert [r[0] for r in rows][1:8] == ["weights", "trainable_weights", "gradients", "optimizer", "activations",
                                        "logits", "overhead"]
    assert {trace.name for trace in figure.data} >= {"weights", "activations"}


def test_plan_view_reports_bad_input():
    summary, figure, rows = plan_view("tiny", "full", "bfloat16", "4bit", 4, 512, 1, False, "adamw", "cuda")
    assert summary.startswith("**Cannot plan:**") and figure is None and rows == []


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    gradio_client = pytest.importorskip("gradio_client")
    with running_app(tmp_path_factory.mktemp("ui")) as url:
        yield gradio_client.Client(url, verbose=False)


def test_api_plan_and_compare(client):
    summary, _figure, _table = client.predict("tiny", "qlora", "bfloat16", "auto", 2, 256, 1, True, "adamw", "cuda",
                                              *knobs(), api_name="/plan")
    assert "qlora" in summary and "Predicted peak" in summary
    big, _, _ = client.predict("tiny", "lora", "bfloat16", "auto", 2, 256, 1, True, "adamw", "cuda",
                               *knobs(rank=64), api_name="/plan")
    assert "**1,196,032** of" in big  # the rank knob reaches the planner
    summary, _chart, table, fits = client.predict("meta-llama/Llama-2-7b-hf", "bfloat16", 4, 512, False, "adamw", 24,
                                                  api_name="/compare")
    assert "Full fine-tuning needs" in summary
    assert [row[0] for row in table["data"]][:4] == ["full", "freeze", "bitfit", "lora"]
    assert fits["data"] and "full" not in [row[0] for row in fits["data"]]


def knobs(**values):
    from workbench.ui.plan_tab import KNOB_NAMES

    return [values.get(name) for name in KNOB_NAMES]


def test_api_inspect_start_and_poll_a_run(client, tmp_path):
    from gradio_client import handle_file

    data = tmp_path / "faq.jsonl"
    data.write_text("\n".join(json.dumps({"question": f"What is {i}?", "answer": f"It is {i}."}) for i in range(16)))
    summary, html, _hist, _dropped = client.predict(handle_file(str(data)), "tiny", "auto", "", None, 0, False,
                                                    api_name="/inspect")
    assert "prompt_completion" in summary and "carries loss" in html
    run_id, message = client.predict("tiny", "lora", "float32", "auto", 2, 128, 1, False, "adamw", "cpu",
                                     handle_file(str(data)), "auto", "", 0, False, 12, 5e-3, 1, "single", "none",
                                     *knobs(rank=16), api_name="/start_run")
    assert run_id and "Started" in message
    deadline = time.time() + 300
    while time.time() < deadline:
        status, progress, _memory, _curves = client.predict(run_id, api_name="/run_status")
        if "completed" in status or "failed" in status:
            break
        time.sleep(1)
    assert "completed" in status and "Predicted peak" in status and "the measured peak" in status
    assert progress.startswith("done in ") and progress.endswith("· 12 / 12 steps")  # a line, not a slider
    assert client.predict(run_id, api_name="/cancel_run") == f"Run `{run_id}`: completed"
    choices = client.predict("tiny", api_name="/adapters")
    assert run_id in [c[1] for c in choices["choices"]]
    answers = client.predict("tiny", [run_id], "What is 3?", 0, 0.0, 8, api_name="/chat")
    base, adapter = answers[:2]  # plain text per column; the page labels each column with who answered
    assert base and adapter and base != adapter  # same prompt and seed, different weights
    table, _choices = client.predict(api_name="/sessions")
    assert table["data"][0][0] == run_id and table["data"][0][1] == "completed"
    _, message = client.predict("tiny", "lora", "float32", "auto", 2, 128, 1, False, "adamw", "cpu", None, "auto", "",
                                0, False, 6, 1e-3, 1, "single", "none", *knobs(), api_name="/start_run")
    assert "upload a dataset" in message


def test_plan_a_local_folder_typed_as_the_model(tmp_path, monkeypatch):
    import json as _json

    from workbench.specs import load_model_spec

    (tmp_path / "config.json").write_text(_json.dumps(load_model_spec("Qwen/Qwen2.5-0.5B").config))
    args = ("lora", "bfloat16", "auto", 1, 256, 1, False, "adamw", "cuda")
    summary, _figure, rows = plan_view(str(tmp_path), *args)
    assert "outside the model folders" in summary and not rows  # not a configured model root
    monkeypatch.setenv("WORKBENCH_MODEL_ROOTS", str(tmp_path.parent))
    summary, _figure, rows = plan_view(str(tmp_path), *args)
    assert "Predicted peak" in summary and rows


def test_the_server_answers_while_a_model_generates(client):
    """Generation runs in the inference worker, not the server: /plan answers in under a
    second while a long answer streams (issue 16)."""
    plan = ("tiny", "lora", "bfloat16", "auto", 2, 256, 1, True, "adamw", "cuda", *knobs())
    client.predict(*plan, api_name="/plan")  # warm: the timing below is the server's, not a first import
    job = client.submit("tiny", [], "Tell me a long story about the sky.", 0, 0.7, 512, api_name="/chat")
    deadline = time.time() + 180
    while time.time() < deadline and not (job.outputs() and job.outputs()[-1][0]):
        time.sleep(0.05)  # until the first piece: the worker is up and generating
    assert job.outputs(), "no answer started"
    times = []
    for _ in range(3):
        started = time.perf_counter()
        summary, _figure, _table = client.predict(*plan, api_name="/plan")
        times.append(time.perf_counter() - started)
        assert "Predicted peak" in summary
    generating = not job.done()
    job.cancel()
    assert generating, "the answer ended before the plans were asked: nothing was measured"
    assert max(times) < 1.0, times
