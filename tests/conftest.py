"""Test set-up: offline, a private cache for the tiny model (built once per session)."""

import contextlib
import os
import socket
import subprocess
import sys
import time

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# the page preselects tiny in tests (fast, built in-process); tests/test_smollm2.py checks the
# real default, SmolLM2-135M-Instruct, with this variable unset
os.environ.setdefault("WORKBENCH_DEFAULT_MODEL", "tiny")


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    if "WORKBENCH_TEST_CACHE" in os.environ:
        os.environ["WORKBENCH_CACHE"] = os.environ["WORKBENCH_TEST_CACHE"]
    else:
        os.environ["WORKBENCH_CACHE"] = str(tmp_path_factory.mktemp("workbench-cache"))
    yield


@contextlib.contextmanager
def running_app(folder, *args, env=None):
    """``python app.py [args]`` on a free loopback port with its sessions under ``folder``;
    yields the URL and stops the server afterwards. Output goes to ``folder/app.log``."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "WORKBENCH_SESSIONS": str(folder / "sessions"), **(env or {})}
    with open(folder / "app.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "app.py", "--port", str(port), *args], stdout=log,
                                stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.time() + 180
            while time.time() < deadline:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.5)
            yield f"http://127.0.0.1:{port}/"
        finally:
            proc.terminate()
            proc.wait(timeout=30)


CHROMIUM = "/usr/bin/chromium"


@contextlib.contextmanager
def opened_page(url, height=1000):
    """A headless chromium page on ``url``, 1300 px wide, once the plan is drawn (the page's
    first answer); closes the browser afterwards."""
    import shutil

    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium") or CHROMIUM, args=["--no-sandbox"],
                                    headless=True)
        try:
            page = browser.new_page(viewport={"width": 1300, "height": height})
            page.goto(url)
            page.get_by_text("Predicted peak").first.wait_for(timeout=120_000)
            yield page
        finally:
            browser.close()


@pytest.fixture(scope="session")
def shared_app(tmp_path_factory):
    """(URL, sessions folder) of one ``python app.py`` that the browser modules needing no
    environment of their own share (a start takes 20-45 s); their runs and files meet in it
    as they would on a real server."""
    folder = tmp_path_factory.mktemp("browser-app")
    with running_app(folder) as url:
        yield url, folder / "sessions"


def pytest_collection_modifyitems(config, items):
    """Everything under ``tests/security/`` (issue 7's hostile-input and fault tests) carries
    the ``security`` marker: ``pytest -m security`` runs those plus the related tests marked
    elsewhere; ``pytest tests/security`` runs the folder alone."""
    import pytest as _pytest

    for item in items:
        if "/tests/security/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(_pytest.mark.security)
