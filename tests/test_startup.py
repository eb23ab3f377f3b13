"""What ``python app.py`` prints (issue 18): one clean line with the URL once the page
answers, nothing that contradicts our own flags (gradio's "set `share=True` in `launch()`",
"pip install ..."), no traceback; a port in use is one line at once, before the slow start."""

import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

from conftest import running_app

ROOT = Path(__file__).resolve().parents[1]


def _log_once_ready(log: Path, line: str, timeout: float = 20) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        text = log.read_text(errors="replace")
        if line in text:
            return text
        time.sleep(0.2)
    return log.read_text(errors="replace")


def test_the_first_lines_are_the_url_and_nothing_else(tmp_path):
    with running_app(tmp_path) as url:
        expected = f"PEFT Workbench is running at {url} (Ctrl+C to stop)"
        text = _log_once_ready(tmp_path / "app.log", expected)
        assert text.splitlines() == [expected], text  # tiny needs no conversion notice: one line
    text = (tmp_path / "app.log").read_text(errors="replace")
    for noise in ("share=True", "launch()", "pip install", "Traceback", "Running on local URL", "Closing server"):
        assert noise not in text, text
    assert text.splitlines()[-1] == "PEFT Workbench stopped."  # SIGTERM closes it like Ctrl+C


def test_a_port_in_use_is_one_line_before_the_slow_start():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.time()
        out = subprocess.run([sys.executable, "app.py", "--port", str(port)], capture_output=True, text=True,
                             timeout=120, cwd=ROOT)
    assert out.returncode == 2 and time.time() - started < 30
    assert out.stderr == f"error: port {port} on 127.0.0.1 is in use (another workbench?): stop it or pick another " \
                         "with --port\n" and out.stdout == ""


def test_library_notices_for_developers_are_silenced_by_name_only():
    import importlib.util

    spec = importlib.util.spec_from_file_location("workbench_app_startup", ROOT / "app.py")
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        app._quiet_libraries()
        warnings.warn("`is_gradient_checkpointing` is deprecated and will be removed in v6.", FutureWarning)
        warnings.warn("something real", FutureWarning)
        warnings.warn("`is_gradient_checkpointing` is deprecated", UserWarning)  # another category: kept
    assert [str(w.message) for w in caught] == ["something real", "`is_gradient_checkpointing` is deprecated"]
    out = subprocess.run([sys.executable, "-c", "import app; app._quiet_libraries()\n"
                          "from transformers.utils import logging; print(logging.is_progress_bar_enabled())"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT,
                         env={k: v for k, v in __import__("os").environ.items() if k != "HF_HUB_DISABLE_PROGRESS_BARS"})
    assert out.stdout.strip() == "False", out.stderr[-1000:]


def test_gradio_usage_reports_are_off_unless_the_operator_turns_them_on():
    """Offline by default: app.py tells gradio not to phone home, and an operator's own
    setting of the variable wins."""
    import os

    code = "import os, app; print(os.environ['GRADIO_ANALYTICS_ENABLED'])"
    env = {k: v for k, v in os.environ.items() if k != "GRADIO_ANALYTICS_ENABLED"}
    off = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    on = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**env, "GRADIO_ANALYTICS_ENABLED": "True"},
                        capture_output=True, text=True, timeout=120)
    assert (off.stdout.strip(), on.stdout.strip()) == ("False", "True")
