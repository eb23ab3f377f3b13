"""Inputs and plans (issue 18): what the planning screens do with what a person types.

- an invalid number (batch 0, -3 or 2.5, rank -1, an empty field) replaces the whole plan --
  summary, chart, breakdown, the per-GPU table, the Compare tab -- with one message that
  names the field by its label and gives the range; nothing is rounded, floored or ignored;
- an absurd but valid value (batch 100,000) plans, and the summary says at the top that no
  listed GPU holds it and what would;
- every valid hub id is a model name (``gpt2`` too); offline an uncached one fails in < 3 s;
- a run whose model has no weights here is refused before anything is queued;
- memory is in GiB; GPUs are real cards with their nvidia-smi memory, fits decided in bytes.
"""

import json
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from workbench.errors import UnknownModelError, WorkbenchError

GIB = 2**30


def _knobs(**values):
    from workbench.ui.plan_tab import KNOB_NAMES

    return [values.get(name) for name in KNOB_NAMES]


def _inputs(model="tiny", method="lora", batch=4, seq=512, accum=1, device="cpu", **knobs):
    return [model, method, "float32", "auto", batch, seq, accum, False, "adamw", device, *_knobs(**knobs)]


BAD = [  # (what the field holds, the message), as the browser sends it (numbers, None for an empty number field)
    (dict(batch=0), "**Batch size** must be at least 1 (a whole number from 1 to 1,000,000); got 0"),
    (dict(batch=-3), "**Batch size** must be at least 1 (a whole number from 1 to 1,000,000); got -3"),
    (dict(batch=2.5), "**Batch size** must be a whole number from 1 to 1,000,000; got 2.5"),
    (dict(batch=2_000_000), "**Batch size** must be at most 1,000,000 (a whole number from 1 to 1,000,000); "
                            "got 2,000,000"),
    (dict(seq=None), "**Sequence length** is empty: enter a whole number from 1 to 10,000,000"),
    (dict(accum=None), "**Gradient accumulation** is empty: enter a whole number from 1 to 1,000,000"),
    (dict(rank="-1"), "**rank** must be at least 1 (a whole number from 1 to 4,096); got -1"),
    (dict(rank="2.5"), "**rank** must be a whole number from 1 to 4,096; got 2.5"),
    (dict(rank=""), "**rank** is empty: enter a whole number from 1 to 4,096"),
    (dict(dropout=""), "**dropout** is empty: enter a number from 0 to 0.99"),
    (dict(dropout="1.5"), "**dropout** must be at most 0.99 (a number from 0 to 0.99); got 1.5"),
    (dict(alpha="much"), "**alpha** must be a number from 0 to 1,000,000; got 'much'"),
]


@pytest.mark.parametrize("fields, message", BAD, ids=[m.split("**")[1] + "=" + str(next(iter(f.values())))
                                                       for f, m in BAD])
def test_an_invalid_number_replaces_the_whole_plan_with_one_message(fields, message):
    from workbench.ui.plan_tab import per_gpu_shown, per_gpu_view, plan_page, plan_view

    args = _inputs(**fields)
    summary, figure, rows = plan_view(*args)
    assert summary == f"**Cannot plan:** {message}" and figure is None and rows == []
    summary, chart, table = plan_page(*args)  # the page hides the chart and the breakdown: nothing stale beside it
    assert summary == f"**Cannot plan:** {message}"
    assert chart["visible"] is False and table["visible"] is False and table["value"] == []
    per_gpu = per_gpu_view(*args[:10], "none", "H100 80 GB", *args[10:])
    assert per_gpu == (f"**Cannot plan across GPUs:** {message}", [])
    assert per_gpu_shown(per_gpu[0])["visible"] is False  # the page hides the table


@pytest.mark.parametrize("fields, message", [b for b in BAD if "rank" not in b[0] and "dropout" not in b[0]
                                             and "alpha" not in b[0] and "accum" not in b[0]])
def test_the_compare_tab_says_the_same(fields, message):
    from workbench.ui.compare_tab import shown_unless_refused
    from workbench.ui.views import compare_view

    args = _inputs(**fields)
    summary, chart, table, fits = compare_view(args[0], "bfloat16", args[4], args[5], False, "adamw", "RTX 4090 24 GB")
    assert (summary, chart, table, fits) == (f"**Cannot compare:** {message}", None, [], [])
    assert [u["visible"] for u in shown_unless_refused(summary)] == [False, False, False]  # the page hides them
    ok = compare_view("tiny", "bfloat16", 4, 512, False, "adamw", "RTX 4090 24 GB")[0]
    assert [u["visible"] for u in shown_unless_refused(ok)] == [True, True, True]


def test_the_same_message_reaches_the_api_and_the_cli_names_the_flag():
    from workbench.runspec import build_run

    with pytest.raises(WorkbenchError) as caught:
        build_run("tiny", "lora", {"rank": -1}, {"batch_size": 4})
    assert str(caught.value) == "**rank** must be at least 1 (a whole number from 1 to 4,096); got -1"
    with pytest.raises(WorkbenchError, match=r"^--batch-size: must be a whole number from 1 to 1,000,000; got 2.5$"):
        build_run("tiny", "lora", None, {"batch_size": "2.5"}, style="cli")
    # not given (None) is the method's default, for API callers that leave knobs out; the range is each method's own
    assert build_run("tiny", "lora", {"rank": None}).knobs["rank"] == 8
    assert build_run("tiny", "vera", {"rank": "6000"}).knobs["rank"] == 6000  # VeRA allows 8,192; LoRA 4,096
    typed = build_run("tiny", "lora", {"rank": "16", "dropout": "0.1"}).knobs
    assert {"rank": 16, "dropout": 0.1}.items() <= typed.items()


def test_the_form_fields_send_what_is_typed():
    """gradio's Number(precision=0) turned 2.5 into 2 before the server saw it, and
    minimum=1 refused 0 with a toast while the old plan stayed on the page."""
    import gradio as gr

    from workbench.ui.plan_tab import KNOB_NAMES, build_plan_tab

    with gr.Blocks():
        tab = build_plan_tab()
    for key in ("batch", "seq", "accum"):
        field = tab["inputs"][key]
        assert field.precision is None and field.minimum is None and field.maximum is None, key
        assert field.preprocess(2.5) == 2.5 and field.preprocess(0) == 0 and field.preprocess(None) is None
    knobs = dict(zip(KNOB_NAMES, tab["knobs"]))
    assert isinstance(knobs["rank"], gr.Textbox) and knobs["rank"].preprocess("") == ""  # empty stays empty
    assert "a whole number from 1 to 4,096" in knobs["rank"].info
    assert tab["inputs"]["batch"].label == "Batch size" and "from 1 to 1,000,000" in tab["inputs"]["batch"].info


def test_switching_method_keeps_hidden_knobs_filled_and_shows_each_methods_range():
    from workbench.ui.plan_tab import KNOB_NAMES, knob_updates

    updates = dict(zip(KNOB_NAMES, knob_updates("vera")))
    assert updates["rank"]["visible"] is True and updates["rank"]["value"] == 256
    assert "from 1 to 8,192" in updates["rank"]["info"]
    assert updates["alpha"] == {"__type__": "update", "visible": False}  # hidden, its value kept (never emptied)


def test_an_absurd_batch_plans_and_says_at_the_top_that_no_gpu_listed_holds_it():
    from workbench.gpus import LARGEST
    from workbench.preflight import suggestions_under
    from workbench.runspec import build_run, plan_run
    from workbench.ui.plan_tab import plan_view

    summary, figure, rows = plan_view(*_inputs(batch=100000))
    assert figure is not None and rows  # it plans
    lines = summary.splitlines()
    assert lines[1].startswith("**Too big for every GPU listed:** the predicted peak, ")
    assert "the largest card here, the H200 141 GB (140.4 GiB usable)" in lines[1]
    assert "Each of these is re-planned and fits one H200 141 GB" in lines[1]
    offered = [line for line in lines[2:] if line.startswith("- ")]
    run = build_run("tiny", "lora", None, {"batch_size": 100000, "device": "cpu", "dtype": "float32"})
    expected = suggestions_under(run, LARGEST.total_bytes)
    assert offered == [f"- {s.text}" for s in expected] and len(offered) >= 2
    assert all(plan_run(s.run).peak_bytes <= LARGEST.total_bytes for s in expected)
    assert summary.index("Too big for every GPU") < summary.index("parameters trained")  # before everything else
    small, _, _ = plan_view(*_inputs(batch=4))
    assert "Too big" not in small


def test_single_name_hub_ids_are_model_names_and_bad_ones_are_not(tmp_path, monkeypatch):
    from workbench.safety import check_model_name
    from workbench.specs import load_model_spec

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WORKBENCH_MODEL_ROOTS", str(tmp_path))
    for name in ("gpt2", "distilgpt2", "bert-base-uncased", "someorg/somemodel", "Qwen/Qwen2.5-0.5B", "x.y_z-1"):
        assert check_model_name(name) == name
    for bad in ("https://huggingface.co/gpt2", "hf://gpt2", "../gpt2", "org/../gpt2", "gpt2/x/y", "a b", "-gpt2",
                "gpt2.", "foo--bar", "gpt2.git", "gpt2é", "/etc", "a" * 97):
        with pytest.raises(UnknownModelError):
            check_model_name(bad)
    # a bundled name and a local folder of the same spelling win over the hub
    assert load_model_spec(check_model_name("meta-llama/Llama-2-7b-hf")).source == "bundled"
    (tmp_path / "gpt2").mkdir()
    (tmp_path / "gpt2" / "config.json").write_text(json.dumps(load_model_spec("tiny").config))
    local = check_model_name("gpt2")
    assert local == str(tmp_path / "gpt2") and load_model_spec(local).source == "local"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def hub_unreachable(monkeypatch):
    """The hub at a loopback port nothing listens on, offline mode *not* set: a server without
    internet. The hub module starts from a clean state."""
    from huggingface_hub import constants

    from workbench import hub

    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setattr(hub, "_STATE", {"until": 0.0, "online": None, "ours": False})
    monkeypatch.setattr(hub, "_ANSWERS", {})
    return constants


@pytest.mark.parametrize("name", ["gpt2", "someorg/somemodel"])
def test_an_uncached_hub_id_offline_fails_fast_saying_how_to_use_a_local_folder(hub_unreachable, name):
    from workbench.ui.plan_tab import plan_view

    plan_view(*_inputs())  # imports and the tiny inventory before the timing
    start = time.monotonic()
    summary, figure, rows = plan_view(*_inputs(model=name))
    assert time.monotonic() - start < 3
    assert figure is None and rows == []
    assert re.search(rf"hub cannot be reached.*{re.escape(repr(name))}.*local folder.*type that folder's path", summary)


def _fake_hub_cache(root: Path, repo: str, config: dict, weights: bool) -> Path:
    revision = "0123456789abcdef0123456789abcdef01234567"
    folder = root / f"models--{repo.replace('/', '--')}"
    (folder / "snapshots" / revision).mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(revision)
    (folder / "snapshots" / revision / "config.json").write_text(json.dumps(config))
    if weights:
        (folder / "snapshots" / revision / "model.safetensors").write_bytes(b"\0" * 16)
    return folder / "snapshots" / revision


def test_the_weights_check_is_cheap_and_knows_every_source(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from workbench.loading import weights_dir, weights_problem
    from workbench.specs import ModelSpec, load_model_spec

    assert weights_problem(load_model_spec("tiny")) is None
    start = time.monotonic()
    problem = weights_problem(load_model_spec("meta-llama/Llama-2-7b-hf"))
    assert time.monotonic() - start < 0.5  # file-system lookups only
    assert problem.startswith("no weights for meta-llama/Llama-2-7b-hf here: it is a bundled config")
    assert "a local folder with the model's *.safetensors weights" in problem and problem.endswith(", tiny")
    config = load_model_spec("tiny").config
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    snapshot = _fake_hub_cache(tmp_path / "hub", "someorg/with-weights", config, weights=True)
    _fake_hub_cache(tmp_path / "hub", "someorg/config-only", config, weights=False)
    assert weights_problem(ModelSpec("someorg/with-weights", "hub", config)) is None
    assert weights_dir(ModelSpec("someorg/with-weights", "hub", config)) == snapshot
    assert "its config is in this machine's hub cache, its *.safetensors weights are not" in weights_problem(
        ModelSpec("someorg/config-only", "hub", config))
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "pytorch_model.bin").write_bytes(b"x")
    local = weights_problem(ModelSpec(str(folder), "local", config))
    assert "no .safetensors weights (found pytorch_model.bin" in local


def _data(tmp_path: Path) -> Path:
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": f"q{i}", "completion": f"a{i}"}) for i in range(8)))
    return path


@pytest.mark.parametrize("check_memory", [True, False])
def test_a_run_without_weights_is_refused_before_it_is_queued(tmp_path, monkeypatch, check_memory):
    from workbench.training import launcher

    monkeypatch.setenv("WORKBENCH_SESSIONS", str(tmp_path / "sessions"))
    job = launcher.make_job("meta-llama/Llama-2-7b-hf", "lora", str(_data(tmp_path)),
                            settings={"device": "cpu", "dtype": "float32", "batch_size": 1, "seq_len": 64})
    with pytest.raises(UnknownModelError, match=r"^no weights for meta-llama/Llama-2-7b-hf here"):
        launcher.prepare(job, check_memory=check_memory)
    assert not (tmp_path / "sessions").exists()


def test_the_train_tab_and_the_plan_say_no_weights_and_the_planner_still_plans(tmp_path, monkeypatch):
    from workbench.preflight import preflight
    from workbench.runspec import build_run
    from workbench.ui.plan_tab import KNOB_NAMES, plan_view
    from workbench.ui.train_tab import start_run

    monkeypatch.setenv("WORKBENCH_SESSIONS", str(tmp_path / "sessions"))
    model = "meta-llama/Llama-2-7b-hf"
    result = preflight(build_run(model, "lora", None, {"device": "cpu", "batch_size": 1, "seq_len": 64}))
    assert not result.fits and result.missing_weights
    assert result.message().startswith(f"Cannot start: no weights for {model} here")
    summary, figure, rows = plan_view(*_inputs(model=model, batch=1, seq=64))
    assert "Predicted peak" in summary and figure is not None and rows  # planning needs no weights
    assert f"**✗ Cannot train here:** no weights for {model} here" in summary
    sid, _, message = start_run(None, model, "lora", "float32", "auto", 1, 64, 1, False, "adamw", "cpu",
                                str(_data(tmp_path)), "auto", "", 0, False, 2, 1e-3, 1, "single", "none",
                                *[None] * len(KNOB_NAMES))
    assert sid is None and message.startswith(f"**Cannot start:** no weights for {model} here")
    assert not (tmp_path / "sessions").exists()


def test_the_cli_refuses_a_run_without_weights_in_one_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "workbench", "train", "--model", "meta-llama/Llama-2-7b-hf",
                          "--method", "lora", "--device", "cpu", "--batch-size", "1", "--seq-len", "64",
                          "--data", str(_data(tmp_path)), "--sessions-dir", str(tmp_path / "sessions")],
                         capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 2 and "Traceback" not in out.stderr
    (line,) = out.stderr.strip().splitlines()
    assert "no weights for meta-llama/Llama-2-7b-hf here" in line and line.endswith(", tiny")
    assert not (tmp_path / "sessions").exists() or not any((tmp_path / "sessions").iterdir())


def test_gpu_cards_are_real_sizes_in_binary_units():
    import math

    from workbench.gpus import BY_NAME, CARDS, GpuCard, gpu_card, on_device

    mib = {c.name: c.total_mib for c in CARDS}
    assert mib == {"RTX 4060 8 GB": 8188, "T4 16 GB": 15360, "L4 24 GB": 23034, "RTX 4090 24 GB": 24564,
                   "A100 40 GB": 40960, "L40S 48 GB": 46068, "H100 80 GB": 81559, "A100 80 GB": 81920,
                   "H200 141 GB": 143771}
    h100 = BY_NAME["H100 80 GB"]
    assert h100.label == "H100 80 GB (79.6 GiB usable)" and h100.total_bytes == 81559 * 2**20
    assert gpu_card("H100 80 GB") is h100 and gpu_card(h100.label) is h100
    assert gpu_card(80).total_bytes == 80 * GIB and gpu_card("24").total_bytes == 24 * GIB  # a number is GiB
    # a fit is what nvidia-smi would show (allocated x the allocator's reserve + the CUDA context) against the card
    limit = h100.peak_limit_bytes
    assert h100.fits(limit) and not h100.fits(limit + 1)  # bytes against bytes
    assert on_device(limit)[0] <= h100.total_bytes < on_device(limit + 1)[0]
    ratio, context = 1.1, 512 * 2**20  # memory/constants.json, uncalibrated
    assert on_device(10 * GIB)[0] == math.ceil(10 * GIB * ratio) + context
    assert "x 1.1 (caching allocator, uncalibrated) + 0.50 GiB CUDA context (uncalibrated)" in on_device(GIB)[1]
    assert GpuCard("x", 8, 8188).usable == "7.9 GiB"  # rounded down: never shown larger than it is
    with pytest.raises(WorkbenchError, match="not a card listed here"):
        gpu_card("Voodoo 3")


def _without_card_names(text: str) -> str:
    from workbench.gpus import CARDS

    for card in CARDS:
        text = text.replace(card.name, "CARD")
    return text


def test_plan_summary_lists_cards_with_marks_decided_in_bytes():
    from workbench.gpus import CARDS, on_device
    from workbench.runspec import build_run, plan_run
    from workbench.ui.plan_tab import plan_view

    summary, _, _ = plan_view(*_inputs(model="meta-llama/Llama-2-7b-hf", batch=1, seq=512))
    peak = plan_run(build_run("meta-llama/Llama-2-7b-hf", "lora", None,
                              {"batch_size": 1, "seq_len": 512, "device": "cpu", "dtype": "float32"})).peak_bytes
    for card in CARDS:
        mark = "✓ fits" if on_device(peak)[0] <= card.total_bytes else "✗ too big"
        assert f"{card.name} ({card.usable}) {mark}" in summary
    assert f"as nvidia-smi would show it: {on_device(peak)[1]}" in summary and "CUDA context" in summary
    assert not re.search(r"\d\s*GB\b", _without_card_names(summary))  # memory in GiB; GB only in a card's name


def test_per_gpu_cells_carry_a_mark_that_agrees_with_their_bytes():
    from workbench.compare import per_gpu_table
    from workbench.gpus import BY_NAME
    from workbench.runspec import build_run
    from workbench.specs import load_model_spec
    from workbench.ui.plan_tab import per_gpu_view

    model = "meta-llama/Llama-2-7b-hf"
    args = _inputs(model=model, batch=1, seq=512, device="cuda")
    summary, rows = per_gpu_view(*args[:10], "none", "L4 24 GB", *args[10:])
    card = BY_NAME["L4 24 GB"]
    assert "✓ = fits one L4 24 GB (22.4 GiB usable), ✗ = too big for it" in summary
    run = build_run(model, "lora", None, {"batch_size": 1, "seq_len": 512, "dtype": "float32"})
    table = per_gpu_table(load_model_spec(model), "lora", run.knobs, run.settings, gpu_bytes=card.peak_limit_bytes)
    cells = {(r["strategy"], r["gpus"]): r for r in table}
    marks = set()
    for line in rows:
        for gpus, cell in zip((1, 2, 4, 8), line[1:]):
            r = cells[(line[0], gpus)]
            if r["error"]:
                assert cell == "n/a"
                continue
            expected = "✓" if card.fits(r["peak_bytes"]) else "✗"
            assert cell.endswith(" " + expected) and "GiB" in cell
            marks.add(expected)
    assert marks == {"✓", "✗"}  # both kinds occur here, each a symbol
    assert not re.search(r"\d\s*GB\b", _without_card_names(summary))


def test_compare_marks_each_method_against_the_card_in_bytes():
    from workbench.gpus import BY_NAME, gib_down
    from workbench.ui.views import compare_view

    card = BY_NAME["RTX 4090 24 GB"]
    summary, _chart, table, fits = compare_view("meta-llama/Llama-2-7b-hf", "bfloat16", 4, 512, False, "adamw",
                                                card.name)
    assert f"methods fit one {card.label}" in summary and "CUDA context" in summary
    from workbench.compare import compare_methods
    from workbench.memory import TrainingSettings
    from workbench.specs import load_model_spec

    rows = {r["method"]: r for r in compare_methods(load_model_spec("meta-llama/Llama-2-7b-hf"),
                                                    TrainingSettings(batch_size=4, seq_len=512))}
    for line in table:
        if line[3] == "-":
            continue
        assert line[4] == ("✓ fits" if card.fits(rows[line[0]]["peak_bytes"]) else "✗ too big"), line[0]
    assert {line[4] for line in table} >= {"✓ fits", "✗ too big"}
    assert fits and all(f"GiB of at most {gib_down(card.peak_limit_bytes, 2)} allocated" in f[-1]
                        and f[4] * GIB <= card.peak_limit_bytes + 0.005 * GIB for f in fits)
    assert not re.search(r"\d\s*GB\b", _without_card_names(summary + json.dumps(fits)))
    # a number still works (API callers): GiB
    assert "methods fit one GPU of 24 GiB" in compare_view("tiny", "bfloat16", 4, 512, False, "adamw", 24)[0]


def test_the_menus_show_cards_with_their_usable_gib():
    import gradio as gr

    from workbench.ui.compare_tab import build_compare_tab
    from workbench.ui.plan_tab import build_plan_tab

    with gr.Blocks() as blocks:
        tab = build_plan_tab()
        build_compare_tab(tab["inputs"])
    menus = [b for b in blocks.blocks.values() if isinstance(b, gr.Dropdown) and b.label == "GPU"]
    assert len(menus) == 2
    for menu in menus:
        assert ("H100 80 GB (79.6 GiB usable)", "H100 80 GB") in menu.choices
        assert ("H200 141 GB (140.4 GiB usable)", "H200 141 GB") in menu.choices
    assert {m.value for m in menus} == {"H100 80 GB", "RTX 4090 24 GB"}


@pytest.mark.parametrize("installed", [True, False])
def test_the_install_hint_shows_only_when_smollm2_is_missing(monkeypatch, installed):
    """The suite (and an operator) may preselect tiny with SmolLM2 installed: then the page
    does not claim that it is missing."""
    import gradio as gr

    from workbench import smollm2
    from workbench.ui.plan_tab import build_plan_tab

    monkeypatch.setenv("WORKBENCH_DEFAULT_MODEL", "tiny")
    monkeypatch.setattr(smollm2, "available", lambda: installed)
    with gr.Blocks() as page:
        build_plan_tab()
    texts = [b.value for b in page.blocks.values() if isinstance(b, gr.Markdown) and isinstance(b.value, str)]
    assert any(smollm2.INSTALL_HINT in t for t in texts) is (not installed)
