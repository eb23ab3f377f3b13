"""The page: a real plan for the tiny model on load, and a running server on 127.0.0.1."""

import socket
import subprocess
import sys
import time

import pytest

from workbench.ui.app import plan_view


def test_plan_view_for_tiny():
    summary, figure, rows = plan_view("tiny", "lora", "bfloat16", "auto", 4, 512, 1, False, "adamw", "cuda")
    assert "demo with random weights" in summary and "Predicted peak" in summary
    assert [r[0] for r in rows][:7] == ["weights", "trainable_weights", "gradients", "optimizer", "activations",
                                        "logits", "overhead"]
    assert {trace.name for trace in figure.data} >= {"weights", "activations"}


def test_plan_view_reports_bad_input():
    summary, figure, rows = plan_view("tiny", "full", "bfloat16", "4bit", 4, 512, 1, False, "adamw", "cuda")
    assert summary.startswith("**Cannot plan:**") and figure is None and rows == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_non_loopback_without_auth_refuses():
    out = subprocess.run([sys.executable, "app.py", "--host", "0.0.0.0"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "--auth" in out.stderr


def test_server_answers_plan_on_loopback():
    gradio_client = pytest.importorskip("gradio_client")
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "app.py", "--port", str(port)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.5)
        client = gradio_client.Client(f"http://127.0.0.1:{port}/", verbose=False)
        summary, _figure, _table = client.predict("tiny", "qlora", "bfloat16", "auto", 2, 256, 1, True, "adamw", "cuda",
                                                  api_name="/plan")
        assert "qlora" in summary and "Predicted peak" in summary
    finally:
        proc.terminate()
        proc.wait(timeout=30)
