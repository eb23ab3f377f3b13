"""The Chat tab in a real browser (issue 18): an adapter trained to answer with Markdown and
HTML (``**bold** # head [link](http://evil) <img ...>``) shows that text literally; the
adapter list fills by itself; the arena has a vote under each answer, locked until a round
is shown; an evaluation shows progress and its Cancel stops it, the model answering right
after. Screenshots go to ``docs/screenshots/chat-*.png``."""

import json
import os
import re
import shutil
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = Path(__file__).resolve().parents[1] / "docs" / "screenshots"
SHOT = {"full_page": True, "animations": "disabled", "timeout": 90_000}  # a busy machine draws slowly
HOSTILE = "**bold** # head [link](http://evil) <img src=x onerror=alert(1)>"

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason="chromium is not installed (apt-get install -y chromium; .ci/run does)")


@pytest.fixture(scope="module")
def app(shared_app, tmp_path_factory):
    """(URL, a held-out file of 400 prompts) of the app, with one finished tiny LoRA run that
    learned to answer ``HOSTILE``."""
    from workbench.sessions import session_path
    from workbench.training.job import Schedule
    from workbench.training.launcher import make_job, start

    folder = tmp_path_factory.mktemp("browser-chat")
    before = os.environ.get("WORKBENCH_SESSIONS")
    os.environ["WORKBENCH_SESSIONS"] = str(shared_app[1])
    try:
        data = folder / "markup.jsonl"
        data.write_text("\n".join(json.dumps({"instruction": "Say it.", "output": HOSTILE}) for _ in range(32)))
        (folder / "markup_heldout.jsonl").write_text(  # enough prompts for an evaluation to be cancelled midway
            "\n".join(json.dumps({"instruction": f"Say it, number {i}.", "output": HOSTILE}) for i in range(400)))
        # through the queue, as the page starts runs: the shared app's own dispatch never starts it twice
        sid, proc = start(make_job("tiny", "lora", str(data), schedule=Schedule(max_steps=80, learning_rate=5e-3)))
        assert proc is not None and proc.wait(timeout=600) == 0, (session_path(sid) / "worker.log").read_text()[-2000:]
    finally:
        os.environ.pop("WORKBENCH_SESSIONS") if before is None else os.environ.update(WORKBENCH_SESSIONS=before)
    return shared_app[0], folder / "markup_heldout.jsonl"


def _no_markup_from_model(page) -> None:
    """Nothing on the page was built from the model's Markdown or HTML."""
    found = page.evaluate("""() => ({
        links: [...document.querySelectorAll('a')].filter(a => (a.href || '').includes('evil')).length,
        images: [...document.querySelectorAll('img')].filter(i => i.getAttribute('src') === 'x').length,
        headings: [...document.querySelectorAll('h1, h2, h3')].filter(h => h.textContent.trim() === 'head').length,
        bold: [...document.querySelectorAll('strong, b')].filter(b => b.textContent.trim() === 'bold').length})""")
    assert found == {"links": 0, "images": 0, "headings": 0, "bold": 0}, found


def test_chat_tab_in_a_browser(app):
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    expect = sync_api.expect
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"], headless=True)
        page = browser.new_page(viewport={"width": 1300, "height": 900})
        url, heldout = app
        page.goto(url)
        page.get_by_text("Predicted peak").first.wait_for(timeout=60_000)
        page.get_by_role("tab", name="Chat").click()
        expect(page.get_by_text("random weights, so every answer here is noise")).to_be_visible()
        adapter = page.get_by_role("checkbox", name=re.compile(r"\(lora, markup\.jsonl\)"))
        adapter.check(timeout=30_000)  # listed by itself: nobody pressed "Refresh adapters"
        page.get_by_role("textbox", name="Prompt", exact=True).fill("Say it.")
        page.get_by_label("number input for Temperature (0 = greedy)").fill("0")
        page.get_by_role("button", name="Ask", exact=True).click()
        answer = page.get_by_role("textbox", name=re.compile(r"\(lora, markup\.jsonl\)"))
        starts_hostile = re.compile("^" + re.escape(HOSTILE))  # the adapter's text, exactly (it may go on)
        expect(answer).to_have_value(starts_hostile, timeout=60_000)
        expect(page.get_by_role("textbox", name="base", exact=True)).not_to_have_value("", timeout=30_000)
        _no_markup_from_model(page)
        page.screenshot(path=SHOTS / "chat-plain-text.png", **SHOT)

        page.locator("input[type=file][accept*=jsonl]").last.set_input_files(str(heldout))
        page.get_by_label("Prompts", exact=True).fill("400")
        page.get_by_role("button", name="Evaluate", exact=True).click()
        page.get_by_text(re.compile(r"evaluating (base|\d{8}-)")).first.wait_for(timeout=90_000)  # progress
        page.screenshot(path=SHOTS / "chat-evaluation-progress.png", **SHOT)
        page.get_by_role("button", name="Cancel", exact=True).first.click()
        page.get_by_text("Cancelled: the model stopped.").first.wait_for(timeout=30_000)
        page.get_by_role("button", name="Ask", exact=True).click()  # the model is free again at once
        expect(answer).to_have_value(starts_hostile, timeout=20_000)
        page.screenshot(path=SHOTS / "chat-evaluation-cancelled.png", **SHOT)

        page.get_by_text("Arena: blind A/B votes").click()
        page.get_by_label("Prompt set (one per line)").fill("Say it.")
        votes = [page.get_by_role("button", name=n, exact=True) for n in ("A is better", "Tie", "B is better")]
        for vote in votes:
            expect(vote).to_be_disabled()  # nothing to vote on yet
        page.get_by_role("button", name="Next pair").click()
        for name in ("Answer A", "Answer B"):
            expect(page.get_by_role("textbox", name=name, exact=True)).not_to_have_value("", timeout=60_000)
        expect(votes[0]).to_be_enabled(timeout=10_000)
        assert any(page.get_by_role("textbox", name=name, exact=True).input_value().startswith(HOSTILE)
                   for name in ("Answer A", "Answer B"))  # the adapter's answer, literally
        _no_markup_from_model(page)
        page.screenshot(path=SHOTS / "chat-arena-round.png", **SHOT)
        votes[0].click()
        page.get_by_text(re.compile(r"A was \S+, B was \S+; vote saved")).first.wait_for(timeout=10_000)
        for vote in votes:
            expect(vote).to_be_disabled()  # one vote per round
        page.screenshot(path=SHOTS / "chat-arena-revealed.png", **SHOT)
        browser.close()
