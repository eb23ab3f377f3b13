"""A real browser through the whole flow: Playwright driving Debian's chromium.

Pick tiny + LoRA, upload a small dataset, start training, reload the page mid-run (the Train
tab reattaches), watch the live memory chart gain
points, chat with the base and the adapter side by side. Screenshots of each tab go to
``docs/screenshots/``. Skipped, with the reason, where chromium or Playwright is missing.
"""

import json
import re
import shutil
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = Path(__file__).resolve().parents[1] / "docs" / "screenshots"

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason="chromium is not installed (apt-get install -y chromium; .ci/run does)")


@pytest.fixture(scope="module")
def app_url(shared_app):
    return shared_app[0]


def test_whole_flow_in_a_browser(app_url, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    data = tmp_path / "faq.jsonl"
    data.write_text("\n".join(json.dumps({"question": f"What is {i} plus {i}?", "answer": f"It is {2 * i}."})
                              for i in range(24)))
    heldout = tmp_path / "faq_heldout.jsonl"
    heldout.write_text("\n".join(json.dumps({"question": f"What is {i} plus {i}?", "answer": f"It is {2 * i}."})
                                 for i in range(30, 34)))
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"], headless=True)
        page = browser.new_page(viewport={"width": 1300, "height": 900})
        page.goto(app_url)
        page.get_by_text("Predicted peak").first.wait_for(timeout=60_000)  # tiny + LoRA planned on load
        page.screenshot(path=SHOTS / "1-model-and-method.png", full_page=True)

        page.get_by_role("tab", name="Compare").click()
        page.get_by_role("button", name="Compare all methods").click()
        page.get_by_text("fit one RTX 4090 24 GB").first.wait_for(timeout=60_000)
        page.screenshot(path=SHOTS / "2-compare.png", full_page=True)

        page.get_by_role("tab", name="Data").click()
        page.locator("input[type=file][accept*=jsonl]").first.set_input_files(str(data))
        page.get_by_text("prompt_completion").first.wait_for(timeout=60_000)
        page.screenshot(path=SHOTS / "3-data.png", full_page=True)

        page.get_by_role("tab", name="Train").click()
        page.get_by_text("What Start will train").first.wait_for(timeout=60_000)  # the run definition, read only
        page.get_by_text(re.compile(r"Fits: predicted peak [\d.]+ GiB")).first.wait_for(timeout=60_000)
        start = page.get_by_role("button", name="Start training")
        page.wait_for_function("() => [...document.querySelectorAll('button')].some("
                               "b => b.textContent.trim() === 'Start training' && !b.disabled)", timeout=30_000)
        page.get_by_label("Max steps").fill("40")
        start.click()
        page.get_by_text("Started run").wait_for(timeout=60_000)
        run_id = page.get_by_label("Run id").input_value()
        assert re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{8}", run_id)
        page.reload()  # a reload during training loses nothing: the Train tab reattaches to the run
        page.get_by_role("tab", name="Train").click()
        page.wait_for_function(f"() => [...document.querySelectorAll('textarea, input')].some(e => e.value === "
                               f"'{run_id}')", timeout=60_000)
        page.get_by_text(re.compile(rf"Run {run_id}: (loading|running|saving|completed)")).first.wait_for(timeout=60_000)
        page.get_by_text(re.compile(r"Probe \(step 2, the longest examples\): measured")).first.wait_for(timeout=120_000)
        page.get_by_text(re.compile(r"Predicted peak [\d.]+ GiB; measured step peak")).first.wait_for(timeout=300_000)
        page.get_by_text(re.compile(r"Run \d{8}-\d{6}-\w+: completed")).first.wait_for(timeout=300_000)
        assert page.locator(".js-plotly-plot .scatterlayer .trace").count() > 0  # live memory lines drawn
        page.screenshot(path=SHOTS / "4-train.png", full_page=True)

        page.get_by_role("tab", name="Chat").click()
        page.get_by_role("button", name="Refresh adapters").click()
        page.get_by_role("checkbox", name=re.compile(r"\(lora, faq\.jsonl\)")).first.check(timeout=30_000)
        page.get_by_role("textbox", name="Prompt").fill("What is 2 plus 2?")
        page.get_by_role("button", name="Ask", exact=True).click()
        for who in ("base", re.compile(r"\(lora, faq\.jsonl\)")):  # each answer plain text, labelled by who
            sync_api.expect(page.get_by_role("textbox", name=who, exact=True)).not_to_have_value("", timeout=120_000)
        page.screenshot(path=SHOTS / "5-chat.png", full_page=True)
        # the task evaluation: base vs the adapter on held-out prompts given as a file
        page.locator("input[type=file][accept*=jsonl]").last.set_input_files(str(heldout))
        page.get_by_role("button", name="Evaluate", exact=True).click()
        page.get_by_text(re.compile(r"4 prompts from faq_heldout\.jsonl")).first.wait_for(timeout=120_000)
        page.get_by_text("exact match %").first.wait_for(timeout=10_000)
        page.screenshot(path=SHOTS / "5b-evaluation.png", full_page=True)

        page.get_by_role("tab", name="Runs").click()
        page.get_by_role("button", name="Refresh").click()
        page.wait_for_function("() => document.body.innerText.includes('completed')", timeout=30_000)
        page.screenshot(path=SHOTS / "6-runs.png", full_page=True)
        browser.close()
    assert len(list(SHOTS.glob("*.png"))) >= 7
