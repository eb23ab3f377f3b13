"""Planned bytes equal measured bytes on the tiny model, for every registered method.

weights / trainable_weights / gradients / optimizer: exact. activations: within 5% of the
saved-tensor bytes of the widest padded micro-batch (attention mask, -100 labels). The peak:
within 5% of the step peak the worker's ``StepPeakCallback`` measures inside the worker's own
Trainer step (``workbench.measure``), planned at the width of the step that peaked. Each run
trains real optimizer steps, so every method is also checked to train: its trainable
tensors change and its frozen ones do not.
"""

from dataclasses import replace

import math

import pytest

from workbench.memory import TrainingSettings, plan
from workbench.memory.settings import PRECISIONS
from workbench.measure import measure
from workbench.methods import METHODS
from workbench.specs import load_model_spec

EXACT = ("weights", "trainable_weights", "gradients", "optimizer")
# Under gradient checkpointing, adapters that materialise a full-size delta weight allocate
# more in the recomputed block than their methods' transient formulas count: with the logits
# still held during the recompute now counted, 4.5% (DoRA) and 4.0% (LoHa) low on tiny in
# bfloat16 (one fp32 out x in weight-sized tensor more than DoraMethod.adapter_transient_constant).
# known gaps on the Trainer loop, each an over-prediction being worked on (issue 13, item 7):
# LoKr with checkpointing is planned 5.3% above its measured peak (29.05 vs 27.60 MB, fp32 b2 s64)
WIDER_PEAK_TOLERANCE = {("dora", True): 0.10, ("loha", True): 0.10, ("lokr", True): 0.07}
SHAPES = [(2, 64, "float32"), (1, 96, "bfloat16")]


def _cases():
    for name, method in METHODS.items():
        for batch, seq, dtype in SHAPES:
            for gc in (False, True):
                if gc and not method.supports_gradient_checkpointing:
                    continue
                yield pytest.param(name, batch, seq, dtype, gc, id=f"{name}-b{batch}-s{seq}-{dtype}-gc{int(gc)}")


def _compare(spec, method, knobs, settings):
    """Components planned at the sequence length (the widest micro-batch, where they are
    measured); the returned plan is at the width of the step whose peak was measured."""
    planned = plan(spec, method, knobs, settings)
    measured = measure(spec, method, knobs, settings, steps=2)
    for name in EXACT:
        assert planned.component(name) == measured.components[name], name
    acts = measured.components["activations"]
    assert abs(planned.component("activations") - acts) <= 0.05 * acts
    assert measured.device_peak["peak_step"] >= 2  # the steady state: the optimizer state exists
    return plan(spec, method, knobs, replace(settings, seq_len=measured.device_peak["peak_width"])), measured


@pytest.mark.parametrize("name, batch, seq, dtype, gc", list(_cases()))
def test_plan_equals_measurement_and_method_trains(name, batch, seq, dtype, gc):
    spec = load_model_spec("tiny")
    settings = TrainingSettings(dtype=dtype, batch_size=batch, seq_len=seq, gradient_checkpointing=gc, device="cpu")
    planned, measured = _compare(spec, METHODS[name], {}, settings)
    assert all(math.isfinite(x) for x in measured.losses)
    assert measured.changed_trainable and measured.frozen_unchanged
    assert measured.trainable_params == planned.trainable_params
    assert measured.total_params == planned.total_params
    # the peak of a whole optimizer step in the worker's Trainer: every tensor byte alive at once
    peak = measured.device_peak["peak_tensor_bytes"]
    tolerance = WIDER_PEAK_TOLERANCE.get((name, gc), 0.05)
    assert abs(planned.peak_bytes - peak) <= tolerance * peak, measured.device_peak["peak_at_op"]


@pytest.mark.parametrize("optimizer", ["adamw_8bit", "paged_adamw_8bit", "sgd", "sgd_momentum", "adafactor"])
@pytest.mark.parametrize("name", ["full", "lora", "ia3"])
def test_optimizer_states_exact(name, optimizer):
    spec = load_model_spec("tiny")
    settings = TrainingSettings(dtype="float32", batch_size=1, seq_len=32, optimizer=optimizer, device="cpu")
    _compare(spec, METHODS[name], {}, settings)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("name", ["full", "lora", "ia3"])
def test_eager_attention(name, dtype):
    spec = load_model_spec("tiny")
    settings = TrainingSettings(dtype=dtype, batch_size=2, seq_len=64, attention="eager", device="cpu")
    planned, measured = _compare(spec, METHODS[name], {}, settings)
    peak = measured.device_peak["peak_tensor_bytes"]
    assert abs(planned.peak_bytes - peak) <= 0.05 * peak


@pytest.mark.parametrize("knobs", [{"dropout": 0.0, "rank": 4, "target_modules": "q_proj,v_proj"},
                                   {"double_quant": False, "quant_type": "fp4"}])
def test_qlora_variants_exact(knobs):
    spec = load_model_spec("tiny")
    settings = TrainingSettings(dtype="bfloat16", batch_size=2, seq_len=48, device="cpu")
    _compare(spec, METHODS["qlora"], knobs, settings)


@pytest.mark.parametrize("name", ["full", "lora", "dora", "ia3", "prefix"])
def test_each_block_matches_measured_block(name):
    """Block by block, not only in total: the walk knows where autograd starts saving."""
    from workbench.memory.activations import estimate_activations

    spec = load_model_spec("tiny")
    method = METHODS[name]
    knobs = method.resolve({})
    settings = TrainingSettings(dtype="bfloat16", batch_size=2, seq_len=64, device="cpu")
    measured = measure(spec, method, knobs, settings, steps=1)
    planned = estimate_activations(spec, method, knobs, settings, method.trains_base(spec, knobs),
                                   settings.seq_len + method.extra_tokens(knobs)).per_layer_bytes
    for block, (p, m) in enumerate(zip(planned, measured.per_block_bytes)):
        assert abs(p - m) <= 0.05 * m, f"block {block}: planned {p:,} measured {m:,}"


# --- the end of backward and the optimizer step: the peaks of full fine-tuning ----------------

@pytest.fixture(scope="module")
def tied_model(tmp_path_factory):
    """A small Llama with tied input/output embeddings (random weights, saved as safetensors):
    the tiny model's widths, one block and a 16,384-token vocabulary, so that the embedding is
    most of the model as in SmolLM2 / Qwen2.5 / Llama-3.2."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from workbench.tiny import TINY_CONFIG

    config = {k: v for k, v in TINY_CONFIG.items() if k not in ("architectures", "workbench_demo", "torch_dtype")}
    config.update(tie_word_embeddings=True, num_hidden_layers=1, vocab_size=16384)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config))
    folder = tmp_path_factory.mktemp("tied-llama")
    model.save_pretrained(folder, safe_serialization=True)
    spec = load_model_spec(str(folder))
    assert spec.inventory.tied_embeddings
    return spec


def _peak_term(planned, name):
    return next(t.bytes for t in planned.peak_terms if t.name == name)


@pytest.mark.parametrize("optimizer, gc, term, op", [("sgd", False, "end_of_backward", "aten.add."),
                                                  ("adamw", False, "end_of_backward", "aten.add."),
                                                  ("adafactor", False, "step", "aten.mul."),
                                                  ("sgd", True, "end_of_backward", "aten.add.")])
def test_tied_embeddings_full_fine_tuning_peak(tied_model, optimizer, gc, term, op):
    """At the end of backward every gradient exists and autograd sums the shared weight's two
    gradients (the head's, a view, and the embedding's) out of place; that is the peak unless
    the optimizer step allocates more (Adafactor's fp32 temporaries of the embedding)."""
    settings = TrainingSettings(dtype="float32", batch_size=2, seq_len=64, optimizer=optimizer,
                                gradient_checkpointing=gc, device="cpu")
    planned, measured = _compare(tied_model, METHODS["full"], {}, settings)
    peak = measured.device_peak["peak_tensor_bytes"]
    assert abs(planned.peak_bytes - peak) <= 0.05 * peak, measured.device_peak["peak_at_op"]
    assert measured.device_peak["peak_at_op"].startswith(op)  # the op of the term the plan says peaks
    assert planned.peak_bytes == _peak_term(planned, "persistent") + _peak_term(planned, term)
    g = 16384 * 256 * 4
    assert _peak_term(planned, "embedding_backward") == 2 * g


@pytest.mark.parametrize("optimizer", ["sgd", "adamw_8bit"])
def test_untied_full_fine_tuning_end_of_backward(optimizer):
    """Untied: the peak is in embedding_dense_backward (all other gradients, the logits still
    held by the caller, the embedding output's gradient and the embedding's new gradient)."""
    spec = load_model_spec("tiny")
    settings = TrainingSettings(dtype="float32", batch_size=2, seq_len=64, optimizer=optimizer, device="cpu")
    planned, measured = _compare(spec, METHODS["full"], {}, settings)
    peak = measured.device_peak["peak_tensor_bytes"]
    assert abs(planned.peak_bytes - peak) <= 0.05 * peak, measured.device_peak["peak_at_op"]
    assert measured.device_peak["peak_at_op"] == "aten.embedding_dense_backward.default"


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_adafactor_full_fine_tuning_step_peak(dtype):
    """Adafactor's step allocates fp32 temporaries as large as the largest tensor (and, for a
    16-bit model, fp32 copies of its gradient and of the parameter)."""
    spec = load_model_spec("tiny")
    settings = TrainingSettings(dtype=dtype, batch_size=2, seq_len=64, optimizer="adafactor", device="cpu")
    planned, measured = _compare(spec, METHODS["full"], {}, settings)
    peak = measured.device_peak["peak_tensor_bytes"]
    assert abs(planned.peak_bytes - peak) <= 0.05 * peak, measured.device_peak["peak_at_op"]
    assert planned.peak_bytes == _peak_term(planned, "persistent") + _peak_term(planned, "step")
    largest = 4096 * 256  # lm_head, stepped right after the last block's down_proj, whose update is still bound
    down = next(p.numel for p in spec.inventory.params if p.name.endswith(f".{spec.num_layers - 1}.mlp.down_proj.weight"))
    assert _peak_term(planned, "step") - planned.component("gradients") == 4 * (
        down + largest * (2 if dtype == "float32" else 4))


def test_the_cuda_attention_kernel_follows_torchs_selection_rules(monkeypatch):
    """flash/cuDNN for 16-bit, memory-efficient for fp32, math (the s x s probabilities saved)
    where no fused kernel takes the inputs; CPU keeps the measured CPU flash walk; every CUDA
    choice says it is not yet measured on a GPU (issue 16, defect 9)."""
    from dataclasses import replace as swap

    from workbench.memory import attention
    from workbench.memory.attention import attention_kernel
    from workbench.runspec import build_run, plan_run
    from workbench.specs import load_model_spec

    smol = load_model_spec("HuggingFaceTB/SmolLM2-135M-Instruct")  # 9 heads, 3 kv heads, head dim 64
    run = build_run(smol.name, "lora", None, {"device": "cuda", "dtype": "bfloat16", "batch_size": 1, "seq_len": 1024})
    s = run.settings
    assert attention_kernel(smol, s, masked=False).shown == "flash (or cuDNN)"
    assert attention_kernel(smol, s, masked=True).shown == "cuDNN (or memory-efficient)"
    fp32 = swap(s, dtype="float32")
    assert attention_kernel(smol, fp32, masked=False).shown == "memory-efficient"
    assert attention_kernel(smol, swap(s, device="cpu"), masked=True).name == "cpu-flash"
    assert attention_kernel(smol, swap(s, attention="eager"), masked=False).name == "eager"
    assert not attention_kernel(smol, s, False).measured and attention_kernel(smol, swap(s, device="cpu"), False).measured
    fused = plan_run(swap(run, settings=fp32))
    assert "not yet measured on a GPU" in fused.attention and "memory-efficient" in fused.attention
    # before torch had a grouped-query memory-efficient kernel, fp32 + GQA without a mask ran math
    monkeypatch.setattr(attention, "_torch_version", lambda: (2, 9))
    assert attention_kernel(smol, fp32, masked=False).name == "math"
    assert attention_kernel(smol, fp32, masked=True).shown == "memory-efficient"  # k/v repeated: no GQA to refuse
    math_plan = plan_run(swap(run, settings=fp32))
    assert math_plan.attention.startswith("math")
    grown = math_plan.component("activations") - fused.component("activations")
    L, heads, seq = smol.num_layers, smol.num_heads, 1024
    assert grown >= L * heads * seq * seq * 4  # at least the fp32 probabilities of every layer
    # a head dim no fused kernel aligns to: math in 16-bit too
    odd = load_model_spec("tiny")
    monkeypatch.setattr(type(odd), "head_dim", property(lambda self: 36))
    assert attention_kernel(odd, s, masked=False).name == "math"


def _settings(precision: str, **kw) -> TrainingSettings:
    """CPU settings in a storage dtype (``float32``, ``bfloat16``) or a mode (``bf16-mixed``:
    fp32 master weights under bf16 autocast, the Trainer's ``bf16=True``)."""
    dtype, autocast = PRECISIONS[precision] if precision in PRECISIONS else (precision, "none")
    return TrainingSettings(dtype=dtype, autocast=autocast, device="cpu", **kw)


def _random_init(tmp_path_factory, tag: str, source: str, drop: tuple[str, ...] = (), **changes):
    """A random-init copy of bundled ``source`` (seed 0) with its config ``changes`` (2 blocks,
    a small vocabulary ...) and without the keys ``drop``, saved as safetensors, as a spec."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = {k: v for k, v in load_model_spec(source).config.items()
              if not k.startswith("_") and k not in ("architectures", "auto_map", *drop)}
    config.update(changes)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp(tag)
    AutoModelForCausalLM.from_config(AutoConfig.for_model(**config)).save_pretrained(folder, safe_serialization=True)
    return load_model_spec(str(folder))


@pytest.fixture(scope="module")
def qwen3(tmp_path_factory):
    """Qwen3-0.6B's real block widths (16 heads / 8 kv of head dim 128, q/k RMSNorms per head,
    tied embeddings), cut to 2 blocks and an 8,192-token vocabulary, random weights."""
    return _random_init(tmp_path_factory, "qwen3", "Qwen/Qwen3-0.6B", num_hidden_layers=2, max_window_layers=2,
                        vocab_size=8192)


@pytest.mark.parametrize("name, dtype, batch, seq, gc", [("full", "float32", 2, 64, False),
                                                         ("full", "bf16-mixed", 2, 64, False),
                                                         ("ia3", "bfloat16", 1, 96, False),
                                                         ("lora", "bfloat16", 2, 64, True),
                                                         ("lora", "bf16-mixed", 2, 64, True)])
def test_qwen3_blocks_follow_the_measured_walk(qwen3, name, dtype, batch, seq, gc):
    """Qwen3's q/k norms: an fp32 copy of each head's q and k and an rsqrt per head, as the
    block's own RMSNorms; under autocast their trained gains keep the normalised q/k in the
    projections' bf16 (issue 17): exact, no longer the textbook fallback."""
    from workbench.memory.activations import estimate_activations, is_llama_like

    assert is_llama_like(qwen3)
    settings = _settings(dtype, batch_size=batch, seq_len=seq, gradient_checkpointing=gc)
    planned, measured = _compare(qwen3, METHODS[name], {}, settings)
    assert planned.activations_exact and not planned.activations_note
    peak = measured.device_peak["peak_tensor_bytes"]
    # under autocast a recomputed block peaks in its forward, at down_proj's LoRA (its fp32 copies
    # of the bf16 product): -0.93% when only the MLP backward's temporaries were planned, -0.09% now
    tolerance = 0.005 if gc and dtype == "bf16-mixed" else 0.05
    assert abs(planned.peak_bytes - peak) <= tolerance * peak, measured.device_peak["peak_at_op"]
    if not gc:
        knobs = METHODS[name].resolve({})
        per_block = estimate_activations(qwen3, METHODS[name], knobs, settings, METHODS[name].trains_base(qwen3, knobs),
                                         seq).per_layer_bytes
        for p, m in zip(per_block, measured.per_block_bytes):
            assert abs(p - m) <= 0.02 * m


@pytest.fixture(scope="module")
def phi3(tmp_path_factory):
    """Phi-3-mini's block (fused qkv_proj and gate_up_proj, rotary ending in a cat) at its real
    widths, 2 blocks, an 8,192-token vocabulary, random weights: as published (32 heads, no
    grouping) and with 8 kv heads (Phi-4's grouped-query layout)."""
    return {tag: _random_init(tmp_path_factory, f"phi3-{tag}", "microsoft/Phi-3-mini-4k-instruct",
                              num_hidden_layers=2, vocab_size=8192, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                              **extra)
            for tag, extra in (("mha", {}), ("gqa", {"num_key_value_heads": 8}))}


@pytest.mark.parametrize("tag, name, dtype, batch, seq, gc", [("mha", "lora", "float32", 2, 64, False),
                                                              ("mha", "full", "bfloat16", 1, 64, False),
                                                              ("gqa", "lora", "bf16-mixed", 2, 64, False),
                                                              ("gqa", "full", "float32", 1, 64, False),
                                                              ("gqa", "lora", "bfloat16", 2, 64, True)])
def test_phi3_fused_blocks_follow_the_measured_walk(phi3, tag, name, dtype, batch, seq, gc):
    """Fused projections (issue 17): v is a view of qkv_proj's output, so sdpa keeps that whole
    output unless a mask with grouped heads makes a copy; gate and up are halves of one output;
    o_proj gets a copy of sdpa's output; under autocast as in pure precision. Exact, no longer
    the textbook fallback."""
    from workbench.memory.activations import is_llama_like

    spec = phi3[tag]
    assert is_llama_like(spec)
    settings = _settings(dtype, batch_size=batch, seq_len=seq, gradient_checkpointing=gc)
    planned, measured = _compare(spec, METHODS[name], {}, settings)
    assert not planned.activations_note
    assert planned.component("activations") == measured.components["activations"]
    peak = measured.device_peak["peak_tensor_bytes"]
    assert abs(planned.peak_bytes - peak) <= 0.05 * peak, measured.device_peak["peak_at_op"]


@pytest.fixture(scope="module")
def gemma(tmp_path_factory):
    """Gemma 2 (gemma-2-2b's widths: 8 heads / 4 kv of head dim 256, attention and final logit
    soft-capping, which transformers runs in eager attention only) and Gemma 3 (gemma-3-1b's:
    4 heads / 1 kv head, q/k norms, a sliding layer and a full layer with their own rotary
    pairs, the window cut to 64 so that a 96-token sequence reaches it), 2 blocks, an
    8,192-token vocabulary, random weights."""
    return {tag: _random_init(tmp_path_factory, tag, source, drop=("sliding_window_pattern",), num_hidden_layers=2,
                              vocab_size=8192, **extra)
            for tag, source, extra in (("gemma2", "google/gemma-2-2b", {}),
                                       ("gemma3", "google/gemma-3-1b-pt",
                                        {"sliding_window": 64, "layer_types": ["sliding_attention", "full_attention"]}))}


@pytest.mark.parametrize("tag, name, dtype, batch, seq, gc", [("gemma2", "full", "float32", 2, 64, False),
                                                              ("gemma2", "lora", "bf16-mixed", 1, 96, False),
                                                              ("gemma2", "lora", "float32", 2, 64, True),
                                                              ("gemma3", "full", "bf16-mixed", 2, 64, False),
                                                              ("gemma3", "ia3", "bfloat16", 1, 96, False),
                                                              ("gemma3", "prefix", "bf16-mixed", 2, 64, False),
                                                              ("gemma3", "lora", "bfloat16", 1, 48, True)])
def test_gemma_blocks_follow_the_measured_walk(gemma, tag, name, dtype, batch, seq, gc):
    """Gemma 2 / 3 (issue 17): four fp32 norms per block scaled by (1 + w), GeGLU, Gemma 2's
    tanh soft-capping of the scores (eager) and of the logits, Gemma 3's q/k norms, one kv head
    (repeat_kv stays a view, which autocast's cast copies per head), a rotary pair per layer
    type and a sliding window's mask, in pure precision and under bf16 autocast (with a prefix,
    whose fp32 values make v a cast copy per head too). Exact, no
    longer the textbook fallback; the optimizer step is AdamW's single-tensor loop."""
    from workbench.memory.activations import is_llama_like

    spec = gemma[tag]
    assert is_llama_like(spec)
    settings = _settings(dtype, batch_size=batch, seq_len=seq, gradient_checkpointing=gc)
    planned, measured = _compare(spec, METHODS[name], {}, settings)
    assert not planned.activations_note
    acts = measured.components["activations"]
    assert abs(planned.component("activations") - acts) <= 0.001 * acts
    assert abs(planned.component("logits") - measured.components["logits"]) <= 8
    peak = measured.device_peak["peak_tensor_bytes"]
    # a checkpointed block's backward is planned with every saved tensor alive: 1-2% over here
    tolerance = 0.05 if gc else 0.01
    assert abs(planned.peak_bytes - peak) <= tolerance * peak, measured.device_peak["peak_at_op"]
    if tag == "gemma2":
        assert planned.attention.startswith("eager: Gemma2ForCausalLM has no sdpa attention")
        assert planned.settings["attention"] == "eager"


@pytest.mark.parametrize("family, tag, name, knobs, dtype, batch, seq, tolerance", [
    # a materialised delta's backward (3 / 5 fp32 out x in matrices less the saved delta) sets the
    # peak on Phi-3's 16,384-wide gate_up_proj: -19.4% / -18% before it was planned
    ("phi3", "gqa", "lokr", {"target_modules": "gate_up_proj,o_proj"}, "float32", 2, 64, 0.01),
    ("phi3", "gqa", "loha", {"target_modules": "gate_up_proj,o_proj"}, "bf16-mixed", 2, 64, 0.03),
    # fp32 outputs under autocast: Qwen3's q/k norms over an fp32 q/k, Gemma 3's one kv head with a
    # sliding window's mask (an fp32 v is cast per head), GeGLU over an fp32 up
    ("qwen3", None, "vera", {}, "bf16-mixed", 2, 64, 0.005),
    ("gemma", "gemma3", "vera", {}, "bf16-mixed", 1, 96, 0.005),
    ("gemma", "gemma3", "oft", {"target_modules": "q_proj,k_proj,v_proj,up_proj"}, "bf16-mixed", 2, 64, 0.005)])
def test_fp32_outputs_and_delta_backward_in_the_families(request, family, tag, name, knobs, dtype, batch, seq,
                                                         tolerance):
    spec = request.getfixturevalue(family)
    spec = spec[tag] if tag else spec
    settings = _settings(dtype, batch_size=batch, seq_len=seq)
    planned, measured = _compare(spec, METHODS[name], knobs, settings)
    assert not planned.activations_note
    assert planned.component("activations") == measured.components["activations"]
    peak = measured.device_peak["peak_tensor_bytes"]
    assert abs(planned.peak_bytes - peak) <= tolerance * peak, measured.device_peak["peak_at_op"]
    if family == "phi3":  # the plan says what sets the peak, and the composition at the peak reaches it
        d = planned.as_dict()
        backward = next(t["formula"] for t in d["peak_terms"] if t["name"] == "backward")
        assert "an adapter's backward" in backward and "outgrows the loss's" in backward
        assert sum(t["bytes"] for t in d["peak_parts"]) == planned.peak_bytes
