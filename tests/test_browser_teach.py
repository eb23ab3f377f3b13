"""The teacher's view in a real browser: every method's training peak over inference against
the quoted bands, with a sentence per method, for the default model and for Llama-2-7B in
bf16-mixed (where full fine-tuning's model state is 16 B per parameter). Screenshots:
``docs/screenshots/teach-*.png``."""

import re
from pathlib import Path

import shutil

import pytest
from conftest import opened_page

SHOTS = Path(__file__).resolve().parents[1] / "docs" / "screenshots"
pytestmark = pytest.mark.skipif(not shutil.which("chromium") and not Path("/usr/bin/chromium").exists(),
                                reason="chromium is not installed")
BANDS = ("low-memory PEFT 1.1–1.5x", "PEFT 1.5–3x", "full fine-tuning 4–20x")


@pytest.fixture(scope="module")
def app_url(shared_app):
    return shared_app[0]


def _bands_and_sentences(page):
    text = page.get_by_text("Bands people quote (training peak / inference)").first
    text.wait_for(timeout=60_000)
    for band in BANDS:
        assert band in text.inner_text(), band
    page.get_by_text("What dominates each method's peak, and why").first.wait_for(timeout=10_000)
    for method in ("full", "lora", "ia3", "prompt"):  # one line each: its ratio, its band, what dominates
        line = page.locator("li", has_text=re.compile(rf"^{method} \d+\.\d\dx, (in|above|below) the ")).first
        assert re.search(r"\(\d+\.\d\d GiB, \d+% of the peak\)", line.inner_text()), method
    chart = page.locator(".js-plotly-plot:visible").first
    for band in ("low-memory PEFT", "PEFT", "full fine-tuning"):  # the bands are drawn and named on the chart
        assert chart.get_by_text(band, exact=True).count() >= 1, band
    assert chart.locator(".bars path").count() >= 10  # one bar per method


def test_teachers_view_for_the_default_model_and_llama2_7b(app_url):
    SHOTS.mkdir(parents=True, exist_ok=True)
    with opened_page(app_url, height=1100) as page:
        page.get_by_role("tab", name="Why so much memory").click()  # drawn when the tab opens
        _bands_and_sentences(page)
        page.screenshot(path=SHOTS / "teach-default.png", full_page=True)

        page.get_by_role("tab", name="Model & method").click()
        model = page.get_by_label("Model", exact=True)
        model.fill("meta-llama/Llama-2-7b-hf")
        model.press("Enter")
        page.get_by_text(re.compile(r"no weights for meta-llama/Llama-2-7b-hf here")).first.wait_for(timeout=60_000)
        page.get_by_label("Precision").click()
        page.get_by_role("option", name=re.compile(r"^bf16-mixed")).click()
        page.get_by_text(re.compile(r"The peak is at .*optimizer 0\.15")).first.wait_for(timeout=30_000)  # lora, mixed

        page.get_by_role("tab", name="Why so much memory").click()
        page.get_by_text("Llama-2-7b-hf (bundled config), bf16-mixed").first.wait_for(timeout=60_000)
        headline = page.locator("p", has_text=re.compile(r"Full fine-tuning: \d+\.\dx inference")).first
        assert "Model state alone is 16.0 B per parameter" in headline.inner_text()
        _bands_and_sentences(page)
        page.screenshot(path=SHOTS / "teach-llama2-7b-bf16-mixed.png", full_page=True)
