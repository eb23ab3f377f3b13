"""Inputs and plans in a real browser (issue 18): what a person sees after typing a bad
number, an absurd batch, a hub id on a server without internet, a model without weights,
and the GPU menus in real card sizes. Screenshots: ``docs/screenshots/inputs-*.png``.

The server runs as one without internet does: the hub at a loopback port nothing listens
on, offline mode not set (its ``/plan`` API is timed here too, without a browser).
"""

import re
import shutil
import socket
import time
from pathlib import Path

import pytest
from conftest import opened_page, running_app

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = Path(__file__).resolve().parents[1] / "docs" / "screenshots"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    env = {"HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0", "HF_ENDPOINT": f"http://127.0.0.1:{_closed_port()}"}
    with running_app(tmp_path_factory.mktemp("inputs"), env=env) as url:
        yield url


@pytest.mark.parametrize("name", ["gpt2", "someorg/somemodel"])
def test_an_uncached_hub_id_fails_fast_through_the_api(app_url, name):
    gradio_client = pytest.importorskip("gradio_client")
    from workbench.ui.plan_tab import KNOB_NAMES

    client = gradio_client.Client(app_url, verbose=False)
    args = ["lora", "bfloat16", "auto", 1, 64, 1, False, "adamw", "cpu", *[None] * len(KNOB_NAMES)]
    client.predict("tiny", *args, api_name="/plan")  # the server is warm
    start = time.monotonic()
    summary = client.predict(name, *args, api_name="/plan")[0]
    # under 3 s in the server (test_ui_inputs times plan_view alone); through the API, on a machine
    # busy with the browser tests, it only has to be far from a network timeout (10 s and retries)
    assert time.monotonic() - start < 8, summary
    assert summary.startswith("**Cannot plan:** the Hugging Face hub cannot be reached")
    assert repr(name) in summary and "local folder" in summary and "type that folder's path" in summary


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is not installed (apt-get install -y chromium)")
def test_what_a_person_sees_in_the_planning_screens(app_url):
    SHOTS.mkdir(parents=True, exist_ok=True)
    with opened_page(app_url) as page:
        chart = page.locator(".js-plotly-plot").first
        breakdown = page.get_by_text("Breakdown").first
        chart.wait_for(state="visible", timeout=30_000)
        assert breakdown.is_visible()
        batch = page.get_by_label("Batch size")

        def typed(field, value: str, expect: str, timeout=30_000):
            field.fill(value)
            field.press("Tab")
            page.get_by_text(expect).first.wait_for(timeout=timeout)

        typed(batch, "2.5", "Batch size must be a whole number from 1 to 1,000,000; got 2.5")
        assert batch.input_value() == "2.5"  # the field keeps what was typed: nothing rounded it to 2
        page.wait_for_function("() => !document.querySelector('.js-plotly-plot')", timeout=10_000)
        assert not breakdown.is_visible() and page.get_by_text("Predicted peak").count() == 0
        assert page.get_by_text("Cannot plan:").count() == 1  # one message, and no gradio "Error" toast
        assert page.locator(".toast-body").count() == 0
        page.screenshot(path=SHOTS / "inputs-1-batch-not-whole.png", full_page=True)
        typed(batch, "0", "Batch size must be at least 1 (a whole number from 1 to 1,000,000); got 0")
        assert page.locator(".toast-body").count() == 0
        typed(batch, "", "Batch size is empty: enter a whole number from 1 to 1,000,000")
        typed(batch, "4", "Predicted peak")
        chart.wait_for(state="visible", timeout=10_000)

        rank = page.get_by_role("textbox", name=re.compile(r"^rank "))  # its label, then its help
        typed(rank, "-1", "rank must be at least 1 (a whole number from 1 to 4,096); got -1")
        page.screenshot(path=SHOTS / "inputs-2-rank-below-range.png", full_page=True)
        typed(rank, "", "rank is empty: enter a whole number from 1 to 4,096")
        typed(rank, "8", "Predicted peak")

        typed(batch, "100000", "Too big for every GPU listed")
        page.get_by_text("Each of these is re-planned and fits one H200 141 GB").first.wait_for(timeout=10_000)
        page.screenshot(path=SHOTS / "inputs-3-absurd-batch.png", full_page=True)
        typed(batch, "4", "H100 80 GB (79.6 GiB) ✓ fits")

        page.get_by_text("Across GPUs").first.click()
        page.get_by_text(re.compile(r"✓ = fits one H100 80 GB \(79\.6 GiB usable\)")).first.wait_for(timeout=30_000)
        page.screenshot(path=SHOTS / "inputs-4-across-gpus.png", full_page=True)
        typed(batch, "-3", "Cannot plan across GPUs: Batch size must be at least 1")
        page.get_by_text("Per-GPU peak").first.wait_for(state="hidden", timeout=10_000)  # the table too
        zero3 = page.get_by_text("deepspeed-zero3")
        assert zero3.count() == 0 or not zero3.first.is_visible()
        typed(batch, "4", "Predicted peak")
        page.get_by_text("Across GPUs").first.click()

        model = page.get_by_label("Model", exact=True)
        model.fill("gpt2")
        start = time.monotonic()
        model.press("Enter")
        page.get_by_text(re.compile(r"hub cannot be reached from this server, and 'gpt2'")).first.wait_for(
            timeout=10_000)
        assert time.monotonic() - start < 10  # < 3 s on the server (test_ui_inputs); the page adds its round trips
        page.screenshot(path=SHOTS / "inputs-5-hub-offline.png", full_page=True)

        model.fill("meta-llama/Llama-2-7b-hf")
        model.press("Enter")
        page.get_by_text(re.compile(r"Cannot train here: no weights for meta-llama/Llama-2-7b-hf here")).first.wait_for(
            timeout=60_000)
        assert page.get_by_text("Predicted peak").count() >= 1  # it plans: planning needs no weights
        page.screenshot(path=SHOTS / "inputs-6-no-weights.png", full_page=True)

        page.get_by_role("tab", name="Compare").click()
        page.get_by_role("button", name="Compare all methods").click()
        page.get_by_text("fit one RTX 4090 24 GB (23.9 GiB usable)").first.wait_for(timeout=120_000)
        assert page.get_by_text("✗ too big").count() >= 1 and page.get_by_text("✓ fits").count() >= 1
        page.screenshot(path=SHOTS / "inputs-7-compare.png", full_page=True)
