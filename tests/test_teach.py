"""The teacher's view (workbench.teach): every method's peak / inference against the quoted
bands, what dominates each and why, and what checkpointing and an 8-bit optimizer change."""

import pytest

from workbench.charts import teach_bar
from workbench.memory import TrainingSettings, plan
from workbench.methods import METHODS
from workbench.specs import load_model_spec
from workbench.teach import BANDS, band_of, teach, teach_markdown
from workbench.ui.views import teach_view

MIXED = TrainingSettings(dtype="float32", autocast="bfloat16", device="cuda")


def test_every_method_is_placed_against_a_band():
    t = teach(load_model_spec("tiny"), TrainingSettings(dtype="bfloat16", device="cuda"))
    assert {r["method"] for r in t["rows"]} | {r["method"] for r in t["refused"]} == set(METHODS)
    assert BANDS == {"low-memory PEFT": (1.1, 1.5), "PEFT": (1.5, 3.0), "full fine-tuning": (4.0, 20.0)}
    assert band_of("full") == "full fine-tuning" and band_of("lora") == "PEFT" and band_of("ia3") == "low-memory PEFT"
    for r in t["rows"]:
        p = plan(load_model_spec("tiny"), METHODS[r["method"]], {}, TrainingSettings(dtype="bfloat16", device="cuda"))
        assert r["ratio"] == round(p.peak_bytes / p.inference_bytes, 4)  # the planner's own figure
        low, high = BANDS[r["band"]]
        where = "below" if r["ratio"] < low else "above" if r["ratio"] > high else "in"
        assert r["verdict"].startswith(f"{where} the {r['band']} band")
        assert r["dominant"] == max(p.peak_parts, key=lambda t: t.bytes).name
        assert f"**{r['dominant'].replace('_', ' ')}**" in r["why"] and "of the peak" in r["why"]


def test_llama2_7b_in_mixed_precision_shows_the_familiar_facts():
    t = teach(load_model_spec("meta-llama/Llama-2-7b-hf"), MIXED)
    rows = {r["method"]: r for r in t["rows"]}
    full, lora = rows["full"], rows["lora"]
    assert full["model_state_bytes_per_param"] == pytest.approx(16, abs=0.01) and full["peak_bytes"] > 80e9
    assert full["verdict"] == "in the full fine-tuning band (4–20x)"
    assert "optimizer" in full["why"] and "16.0 B per parameter of model state (bf16-mixed)" in full["why"]
    assert "dropout mask" in lora["why"] and "bfloat16 copy of its input" in lora["why"]
    assert any(w.startswith("8-bit AdamW") and "-48%" in w for w in full["what_if"])
    # the peak of full fine-tuning is at the optimizer step: checkpointing cannot lower it, and it says so
    assert any("gradient checkpointing" in w and "changes little: the peak is at the optimizer step" in w
               for w in full["what_if"])
    assert any(w.startswith("gradient checkpointing") and "→" in w for w in lora["what_if"])
    assert {r["method"] for r in t["refused"]} == {"qlora", "lora-8bit"}  # no fp32 master for a quantized base
    summary, details = teach_markdown(t)
    assert "Model state alone is **16.0 B per parameter**" in summary
    assert all(f"{k} " in summary for k in BANDS)
    assert "not planned: precision bf16-mixed keeps fp32 master weights" in details


def test_lora_above_full_on_tiny_is_explained():
    """On the tiny model LoRA can peak above full fine-tuning: the sentence says why."""
    t = teach(load_model_spec("tiny"), TrainingSettings(dtype="bfloat16", device="cuda", batch_size=4, seq_len=512))
    rows = {r["method"]: r for r in t["rows"]}
    assert rows["lora"]["peak_bytes"] > rows["full"]["peak_bytes"]
    assert "fp32 copy of its input" in rows["lora"]["why"] and "more than full fine-tuning" in rows["lora"]["why"]


def test_chart_bands_and_bars():
    t = teach(load_model_spec("tiny"), MIXED)
    fig = teach_bar(t)
    rects = [s for s in fig.layout.shapes if s.type == "rect"]
    assert [(r.x0, r.x1) for r in rects] == list(BANDS.values())  # data values (plotly.js 3 on a log axis)
    assert [a.text.split("<br>")[0] for a in fig.layout.annotations] == [f"<b>{b}</b>" for b in BANDS]
    bars = [b for b in fig.data if b.type == "bar"]
    assert sum(len(b.y) for b in bars) == len(t["rows"])
    assert len({b.marker.pattern.shape for b in bars}) == len(bars)  # a band is told by pattern, not colour alone
    assert all(base == 1 for b in bars for base in ([b.base] if not isinstance(b.base, tuple) else b.base))
    ticks = dict(zip(fig.layout.xaxis.tickvals, fig.layout.xaxis.ticktext))  # every band edge named in full
    assert all(ticks[v] == f"{v:g}x" for band in BANDS.values() for v in band) and ticks[20] == "20x"


def test_view_refuses_bad_input_with_the_field():
    text, chart, details = teach_view("tiny", "fp8", 4, 512, False, "adamw")
    assert text.startswith("**Cannot explain:** precision 'fp8'") and chart is None and details == ""
    text, chart, _ = teach_view("tiny", "fp32", 0, 512, False, "adamw")
    assert "Cannot explain" in text and "batch" in text.lower()
