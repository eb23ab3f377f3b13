"""The Train tab in a real browser: the run definition with its way back to each tab, a
reload that keeps the form, the file and the tab, a running run's progress line and Cancel,
a reload that shows the attached run's own settings, and a failed run's paragraph with its
log tail folded away. Screenshots go to ``docs/screenshots/train-*.png``."""

import json
import os
import re
import shutil
import time
from pathlib import Path

import pytest
from conftest import opened_page

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = Path(__file__).resolve().parents[1] / "docs" / "screenshots"

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is not installed")


@pytest.fixture(scope="module")
def app(shared_app):
    return shared_app


STORED = "() => localStorage.getItem('peft-workbench-page')"


def _saved(page, before):
    """Wait until the page's state in the browser's storage has changed since ``before`` and
    then stayed the same for 3 s (every change saves it again)."""
    page.wait_for_function(f"() => ({STORED})() !== null && ({STORED})() !== {json.dumps(before)}", timeout=120_000)
    value, since = page.evaluate(STORED), time.time()
    while time.time() - since < 3:
        time.sleep(0.5)
        now = page.evaluate(STORED)
        if now != value:
            value, since = now, time.time()


def _rank(page):
    return page.locator("label", has=page.get_by_text("rank", exact=True)).locator("textarea").first


def test_train_tab_summary_reload_progress_and_failure(app, tmp_path, monkeypatch):
    sync_api = pytest.importorskip("playwright.sync_api")
    url, sessions = app
    SHOTS.mkdir(parents=True, exist_ok=True)
    with opened_page(url) as page:
        page.get_by_label("Method").click()
        page.get_by_role("option", name=re.compile(r"\(rslora\)")).click()
        page.wait_for_function("() => document.body.innerText.includes('rslora on tiny')", timeout=90_000)
        _rank(page).fill("32")
        page.get_by_role("tab", name="Data").click(no_wait_after=True)
        page.get_by_role("button", name=re.compile("Use the demo dataset")).click()
        page.get_by_text("alpaca").first.wait_for(timeout=120_000)
        page.get_by_role("tab", name="Train").click(no_wait_after=True)
        page.get_by_text(re.compile(r"320 examples.*41,577 tokens")).first.wait_for(timeout=120_000)
        page.wait_for_function("() => document.querySelector('input[aria-label=\"Max steps\"]')?.value === '12'",
                               timeout=90_000)  # the demo's schedule has arrived
        page.get_by_label("Max steps").fill("300")
        page.get_by_text("300 optimizer steps").first.wait_for(timeout=90_000)
        assert page.get_by_role("button", name="Cancel").is_disabled()  # no run of mine yet
        page.screenshot(path=SHOTS / "train-summary.png", full_page=True)

        page.get_by_role("button", name="Change on the Data tab").click(no_wait_after=True)
        page.get_by_role("tab", name="Data", selected=True).wait_for(timeout=10_000)
        before = page.evaluate(STORED)
        page.get_by_role("tab", name="Train").click(no_wait_after=True)
        _saved(page, before)

        page.reload()  # the form, the dataset file and the tab are kept
        page.get_by_role("tab", name="Train", selected=True).wait_for(timeout=120_000)
        page.get_by_text("orders.jsonl").first.wait_for(timeout=120_000)
        try:
            page.get_by_text("300 optimizer steps").first.wait_for(timeout=120_000)
        except sync_api.TimeoutError:
            page.screenshot(path=tmp_path / "restore-failed.png", full_page=True)
            raise AssertionError(page.get_by_label("Max steps").input_value() + page.locator("body").inner_text()[:1500])
        assert page.get_by_label("Max steps").input_value() == "300"
        page.get_by_text("method rslora (rank 32").first.wait_for(timeout=120_000)  # the method's knobs come back too
        page.get_by_role("button", name="Change on the Model & method tab").first.click(no_wait_after=True)
        page.get_by_role("tab", name="Model & method", selected=True).wait_for(timeout=10_000)
        page.wait_for_function("() => [...document.querySelectorAll('textarea')].some(t => t.value === '32')",
                               timeout=120_000)  # the rank knob, put back after the method's change reset it
        assert "rslora" in page.get_by_label("Method").input_value()
        page.get_by_text("598,016").first.wait_for(timeout=120_000)  # trainable parameters of rank 32
        plan = re.search(r"Plan `?(\w{16})", page.locator("body").inner_text()).group(1)
        page.get_by_role("tab", name="Train").click(no_wait_after=True)
        try:  # the Train tab's summary shows the same plan (innerText: what is visible)
            page.wait_for_function(f"() => document.body.innerText.includes('(plan {plan})')", timeout=120_000)
        except sync_api.TimeoutError:
            page.screenshot(path=tmp_path / "plan-differs.png", full_page=True)
            raise AssertionError(plan + page.locator("body").inner_text()[:1200])
        page.get_by_role("tab", name="Train").click(no_wait_after=True)
        page.get_by_role("button", name="Start training").click()
        page.get_by_text("Started run").wait_for(timeout=120_000)
        run_id = page.get_by_label("Run id").input_value()
        page.get_by_text(re.compile(r"step \d+ / 300 · epoch [\d.]+ · .* left")).first.wait_for(timeout=120_000)
        assert page.get_by_role("button", name="Cancel").is_enabled()
        page.screenshot(path=SHOTS / "train-running.png", full_page=True)

        before = page.evaluate(STORED)
        page.get_by_label("Max steps").fill("7")  # saved in the browser, but the run trains 300
        _saved(page, before)
        page.reload()
        page.get_by_text(f"Showing the settings of run {run_id}").first.wait_for(timeout=120_000)
        page.get_by_role("tab", name="Train").click(no_wait_after=True)
        page.wait_for_function("() => document.querySelector('input[aria-label=\"Max steps\"]')?.value === '300'",
                               timeout=90_000)
        page.get_by_role("button", name="Cancel").click()
        page.get_by_text(re.compile(rf"Run {run_id}: cancelled")).first.wait_for(timeout=120_000)
        line = page.locator(".run-progress").first.inner_text()
        assert "cancelled at step" in line and "left" not in line
        page.wait_for_function("() => [...document.querySelectorAll('button')].some(b => b.textContent.trim() === "
                               "'Cancel' && b.disabled)", timeout=90_000)
        page.screenshot(path=SHOTS / "train-cancelled.png", full_page=True)

        failed = _failed_run(sessions, tmp_path, monkeypatch)
        page.get_by_role("tab", name="Runs").click(no_wait_after=True)
        page.get_by_role("button", name="Refresh").click()
        page.get_by_role("combobox", name="Run", exact=True).click()
        page.get_by_role("option", name=failed).click()
        page.get_by_role("button", name="Open").click()
        page.get_by_text("the training stopped with an error").first.wait_for(timeout=120_000)
        assert page.locator("pre", has_text="set-up failed").count() == 0 or \
            not page.locator("pre", has_text="set-up failed").first.is_visible()  # folded until asked for
        page.get_by_text("Details (log tail)").first.click()
        page.locator("pre", has_text="set-up failed").first.wait_for(timeout=10_000)
        assert "Traceback" not in page.locator("body").inner_text()
        page.screenshot(path=SHOTS / "train-failed.png", full_page=True)


def _failed_run(sessions: Path, tmp_path: Path, monkeypatch) -> str:
    """A run of the page's store whose worker fails at set-up (``WORKBENCH_FAULT``). Started
    here once the device is free (the cancelled run's worker may still be exiting), so that
    this process's dispatch starts it, with the fault in its environment."""
    from workbench.sessions import list_sessions, session_path, worker_alive
    from workbench.training.events import FINAL
    from workbench.training.job import Schedule
    from workbench.training.launcher import make_job, start

    data = tmp_path / "qa.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": f"What is {i}?", "completion": f"It is {i}."}) for i in range(24)))
    monkeypatch.setenv("WORKBENCH_SESSIONS", str(sessions))
    monkeypatch.setenv("WORKBENCH_FAULT", "error_at_setup")
    deadline = time.time() + 120
    while any(s.state not in FINAL or worker_alive(session_path(s.id)) for s in list_sessions()) and \
            time.time() < deadline:
        time.sleep(0.5)
    sid, proc = start(make_job("tiny", "lora", str(data), schedule=Schedule(max_steps=4)))
    assert proc is not None, "the device was still busy: the run was queued"
    assert proc.wait(timeout=300) != 0
    assert os.environ["WORKBENCH_FAULT"] == "error_at_setup"
    return sid
