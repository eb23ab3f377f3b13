"""The Data tab and the page's labels in a real browser (Playwright driving Debian's chromium).

* The sequence length is the one cutoff: the report counts at it, the two buttons name the
  value they set (suggested cutoff, p95 length), a click sets the Model & method tab's field,
  says so next to the buttons, and the report is counted again at the new length. An empty
  field is said to be empty, with the suggested cutoff as a number.
* Every input, text area and select that a person can see has a label (issue 18's
  accessibility basics), on every tab, with the accordions opened.

Screenshots of the new states go to ``docs/screenshots/data-*.png``. The browser tests are
skipped, with the reason, where chromium or Playwright is missing; the plain tests of the
same views and of every chart (titles, axis titles with units, no state by colour alone)
run everywhere.
"""

import json
import re
import shutil
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = Path(__file__).resolve().parents[1] / "docs" / "screenshots"
TABS = ("Model & method", "Compare", "Data", "Train", "Chat", "Runs")


# Every visible input/textarea/select with what names it: its <label> elements (gradio wraps
# text fields, checkboxes and radios in one), aria-labelledby, or aria-label -- and whether
# that name is also written on screen in the component's block (a *visible* label).
# Not walked, by design: hidden inputs -- gradio's file inputs (of gr.File and of every
# gr.Dataframe) are display:none behind the upload area and all carry the generic
# aria-label "File upload"; the visible label of their block ("Dataset file") names them --
# and inputs of zero size. A slider is two inputs: the range (named by its <label>) and its
# number box (aria-label "number input for <label>"): both count, under the slider's label.
UNLABELLED_JS = """() => [...document.querySelectorAll('input, textarea, select')].filter(e => {
  const r = e.getBoundingClientRect(), s = getComputedStyle(e);
  return r.width > 0 && r.height > 0 && s.visibility !== 'hidden' && s.display !== 'none';
}).map(e => {
  const labels = e.labels ? [...e.labels].map(l => l.innerText.trim()).filter(Boolean) : [];
  const by = (e.getAttribute('aria-labelledby') || '').split(/\\s+/).filter(Boolean)
    .map(id => ((document.getElementById(id) || {}).innerText || '').trim()).filter(Boolean);
  let name = labels[0] || by[0] || (e.getAttribute('aria-label') || '').trim();
  // a slider's number box is named "number input for X" by gradio: X is the visible label
  const visibleName = name.replace(/^(number input|range slider) for /, '').split('\\n')[0];
  const block = e.closest('.block') || e.parentElement;
  const shown = !!visibleName && block.innerText.includes(visibleName);
  return {tag: e.tagName.toLowerCase(), type: e.type, name, shown,
          where: (block.innerText || '').trim().slice(0, 60), value: (e.value || '').slice(0, 30)};
}).filter(x => !x.name || !x.shown)"""


@pytest.fixture(scope="module")
def app_url(shared_app):
    return shared_app[0]


@pytest.fixture(scope="module")
def browser_page(app_url):
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed (apt-get install -y chromium; .ci/run does)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"], headless=True)
        page = browser.new_page(viewport={"width": 1300, "height": 900})
        page.goto(app_url)
        page.get_by_text("Predicted peak").first.wait_for(timeout=90_000)  # tiny + LoRA planned on load
        yield page, sync_api.expect
        browser.close()


def _peak(page) -> str:
    return page.get_by_text(re.compile(r"Predicted peak [\d.]+ GiB;")).first.inner_text().split(";")[0]


def _summary(page) -> str:
    return page.locator("p", has_text="of examples truncated").first.inner_text()


def test_the_buttons_set_the_one_sequence_length_and_say_so(browser_page, tmp_path):
    page, expect = browser_page
    data = tmp_path / "sums.jsonl"  # 30-45 tiny tokens per example: p95 < suggested cutoff (128) < 512
    data.write_text("\n".join(json.dumps({"question": f"What is {i} plus {i}? " + "so " * (i % 7),
                                          "answer": f"It is {2 * i}."}) for i in range(40)))
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.get_by_role("tab", name="Model & method").click()
    peak_at_512 = _peak(page)
    page.get_by_role("tab", name="Data").click()
    page.locator("input[type=file][accept*=jsonl]").first.set_input_files(str(data))
    page.get_by_text("prompt_completion").first.wait_for(timeout=60_000)
    summary = _summary(page)
    assert re.search(r"Sequence length 512 \(the run's cutoff, Model & method tab\): 0\.0% of examples truncated",
                     summary), summary
    suggested = int(re.search(r"Suggested cutoff for this dataset: (\d+)", summary).group(1))
    p95 = int(re.search(r"p95 (\d+)", page.get_by_text("Tokens: min").first.inner_text()).group(1))
    assert suggested == 128 and 1 <= p95 < suggested  # numbers, never 0 or "empty means ..."
    expect(page.get_by_text("green, underlined text carries loss")).to_be_visible()  # not colour alone
    p95_button = page.get_by_role("button", name=f"Plan with this dataset's p95 length: {p95} tokens")
    suggested_button = page.get_by_role(
        "button", name=f"Use the suggested cutoff as the sequence length: {suggested} tokens")
    expect(suggested_button).to_be_visible(timeout=10_000)

    p95_button.click()
    note = page.locator("p", has_text=f"Sequence length set to {p95} tokens")
    expect(note).to_be_visible(timeout=20_000)
    assert "95th-percentile (p95) length" in note.inner_text()
    assert note.bounding_box()["y"] > p95_button.bounding_box()["y"]  # said next to the buttons, on this tab
    page.get_by_text(f"Sequence length {p95} (the run's cutoff").first.wait_for(timeout=60_000)  # counted again
    assert re.search(rf"Sequence length {p95} \(the run's cutoff, Model & method tab\): [\d.]+% of examples "
                     rf"truncated", _summary(page)), _summary(page)
    page.screenshot(path=SHOTS / "data-p95-set.png", full_page=True)

    page.get_by_role("tab", name="Model & method").click()
    expect(page.get_by_label("Sequence length")).to_have_value(str(p95))  # the run's single sequence length
    page.wait_for_function(f"() => !document.body.innerText.includes({json.dumps(peak_at_512)})",
                           timeout=60_000)  # and the plan is made at it: a shorter sequence, a smaller peak

    page.get_by_role("tab", name="Data").click()
    suggested_button.click()
    expect(page.get_by_text(f"Sequence length set to {suggested} tokens")).to_be_visible(timeout=20_000)
    page.get_by_text(f"Sequence length {suggested} (the run's cutoff").first.wait_for(timeout=60_000)
    page.screenshot(path=SHOTS / "data-suggested-set.png", full_page=True)

    page.get_by_role("tab", name="Model & method").click()
    expect(page.get_by_label("Sequence length")).to_have_value(str(suggested))
    page.get_by_label("Sequence length").fill("")
    page.get_by_label("Sequence length").blur()
    page.get_by_role("tab", name="Data").click()
    message = page.locator("p", has_text="Sequence length on the Model & method tab is empty")
    expect(message).to_be_visible(timeout=60_000)
    assert f"counted at the suggested cutoff, {suggested}" in message.inner_text()
    expect(page.locator("p", has_text="Sequence length set to")).to_have_count(0)  # no stale note
    page.screenshot(path=SHOTS / "data-empty-length.png", full_page=True)
    page.get_by_role("tab", name="Model & method").click()
    page.get_by_label("Sequence length").fill("512")
    page.get_by_label("Sequence length").blur()


def test_every_visible_input_has_a_visible_label(browser_page):
    page, _expect = browser_page
    missing = {}
    for tab in TABS:
        page.get_by_role("tab", name=tab).click()
        page.wait_for_timeout(800)
        for _ in range(12):  # open this tab's accordions one by one: their inputs count too
            closed = [b for b in page.locator("button.label-wrap:not(.open)").all() if b.is_visible()]
            if not closed:
                break
            closed[0].click()
            page.wait_for_timeout(500)
        page.wait_for_timeout(800)
        found = page.evaluate(UNLABELLED_JS)
        if found:
            missing[tab] = found
    assert not missing, json.dumps(missing, indent=1)


REPORT = {"file": "f.jsonl", "note": "n", "format": "alpaca", "confidence": "high", "why": "w", "rows": 10,
          "source_rows": 10, "dropped": {"count": 0, "first": []}, "duplicates": 0, "loss_tokens_fraction": 0.2,
          "token_lengths": {"min": 30, "p50": 35, "p95": 44, "max": 60,
                            "histogram": {"edges": [30, 40, 50, 60], "counts": [5, 4, 1]}},
          "cutoff": 44, "truncated_fraction": 0.1, "truncated_tokens_fraction": 0.02, "suggested_cutoff": 128,
          "split": {"train": 10, "validation": 0}, "preview": [
              {"row": 1, "tokens": 3, "loss_tokens": 1,
               "segments": [{"text": "Q", "loss": False}, {"text": "A", "loss": True}]}]}


def test_the_report_names_the_length_in_force_and_the_suggested_cutoff():
    from workbench.ui.views import report_view

    summary, html, hist, _dropped = report_view(REPORT)
    assert "**Sequence length 44** (the run's cutoff, Model & method tab): 10.0% of examples truncated" in summary
    assert "Suggested cutoff for this dataset: **128**" in summary and "empty" not in summary
    assert "text-decoration:underline" in html and "underlined" in html  # loss is not marked by colour alone
    lines = {a.text for a in hist.layout.annotations}
    assert lines == {"sequence length 44: 10.0% truncated", "suggested 128"}
    summary, _html, hist, _dropped = report_view(REPORT, cutoff_is_sequence_length=False)
    assert "**Counted at the suggested cutoff 44**" in summary and "the run's cutoff" not in summary
    assert "suggested cutoff 44: 10.0% truncated" in {a.text for a in hist.layout.annotations}


@pytest.mark.parametrize("value, expected", [(512, 512), (64.0, 64), (None, None), (0, None), (-3, None),
                                             (2.5, None), (float("inf"), None), (float("nan"), None)])
def test_only_a_whole_positive_length_is_the_runs_sequence_length(value, expected):
    from workbench.ui.data_tab import sequence_length

    assert sequence_length(value) == expected


def test_the_buttons_and_the_note_name_the_value_they_set():
    from workbench.ui.data_tab import button_labels, use_length

    suggested, p95 = button_labels(REPORT)
    assert suggested["value"].endswith(": 128 tokens") and p95["value"].endswith(": 44 tokens")
    value, note = use_length(REPORT, "p95")
    assert value == 44 and note.startswith("**Sequence length set to 44 tokens** (this dataset's 95th-percentile")


def _figures():
    from workbench import charts

    plan = {"method": "lora", "model_label": "tiny", "peak_bytes": 4 * 2**30, "inference_bytes": 2**30,
            "inference_formula": "f", "peak_over_inference": 4.0, "peak_phase_label": "the optimizer step",
            "components": [{"name": n, "bytes": 2**29, "formula": "f"} for n in charts.COLORS],
            "peak_parts": [{"name": n, "bytes": 2**29, "formula": "f"} for n in charts.PART_COLORS]}
    rows = [{"method": m, "peak_bytes": peak, "components": {n: peak // 7 for n in charts.COLORS},
             "peak_parts": [{"name": n, "bytes": peak // 8} for n in charts.PART_COLORS]}
            for m, peak in (("lora", 2**30), ("full", 5 * 2**30))]
    logs = [{"step": 1, "loss": 2.0, "learning_rate": 1e-3, "tokens_per_second": 900}, {"step": 1, "eval_loss": 2.1}]
    samples = [{"time": t, "source": "cpu", "rss": 2**30} for t in range(3)]
    return {"plan_bar": charts.plan_bar(plan), "compare_bar": charts.compare_bar(rows, "per method"),
            "compare_bar_with_limit": charts.compare_bar(rows, "per method", limit_bytes=2 * 2**30),
            "live_memory": charts.live_memory(samples, plan), "training_curves": charts.training_curves(logs),
            "length_histogram": charts.length_histogram(REPORT), "eval_bars": charts.eval_bars(
                [{"contender": "base", "exact_match": 0.5, "parse_rate": 1.0, "mean_field_accuracy": 0.7}])}


def test_every_chart_has_a_title_and_axis_titles_with_units():
    for name, fig in _figures().items():
        layout = fig.layout
        assert layout.title.text, name
        assert layout.xaxis.title.text and layout.yaxis.title.text, name
        if name in ("plan_bar", "compare_bar", "compare_bar_with_limit", "live_memory"):
            assert "(GiB)" in layout.yaxis.title.text, name  # binary units, named on the axis


def test_no_chart_tells_a_component_or_a_state_by_colour_alone():
    figures = _figures()
    for name in ("plan_bar", "compare_bar"):
        bars = [t for t in figures[name].data if t.type == "bar"]
        for x in {v for t in bars for v in t.x}:  # within one stack: one fill pattern per part
            stack = [t for t in bars if x in t.x]
            assert len({t.marker.pattern.shape for t in stack}) == len(stack), (name, x)
    from workbench.charts import PART_COLORS

    assert len([t for t in figures["plan_bar"].data if t.type == "bar"]) == len(PART_COLORS) + 1
    marks = {t.name: t for t in figures["compare_bar_with_limit"].data if t.type == "scatter"}
    assert set(marks) == {"predicted peak: ✓ fits", "predicted peak: ✗ over"}
    assert list(marks["predicted peak: ✓ fits"].text) == ["✓ fits"]
    assert list(marks["predicted peak: ✗ over"].x) == ["full"] and list(marks["predicted peak: ✗ over"].text) == ["✗ over"]
    assert marks["predicted peak: ✓ fits"].marker.symbol != marks["predicted peak: ✗ over"].marker.symbol
    curves = {t.name: t for t in figures["training_curves"].data}
    assert curves["training loss"].marker.symbol != curves["validation loss"].marker.symbol
