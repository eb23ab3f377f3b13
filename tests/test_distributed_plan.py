"""The per-GPU planner (issue 9): what each strategy divides by N, what it adds as
communication buffers, what offloading moves to the host -- by hand-checked arithmetic,
against DeepSpeed's own model-state estimators where deepspeed is installed, and through the
CLI, ``per_gpu_table`` and the UI's ``/per_gpu`` function."""

import json
import math
import subprocess
import sys

import pytest

from workbench.compare import per_gpu_table
from workbench.errors import SettingsError
from workbench.memory import COMPONENTS, TrainingSettings, plan
from workbench.memory.distributed import buffer_bytes
from workbench.methods import METHODS
from workbench.specs import load_model_spec

LLAMA7 = "meta-llama/Llama-2-7b-hf"
QWEN05 = "Qwen/Qwen2.5-0.5B"
LLAMA70 = "meta-llama/Llama-2-70b-hf"
GIB = 2**30

# Llama-2-7b, by hand from its config.json: h = 4096, i = 11008, V = 32000, 32 blocks, 32 kv heads
H, I, V, LAYERS = 4096, 11008, 32000, 32
BLOCK = 4 * H * H + 3 * H * I + 2 * H  # q, k, v, o + gate, up, down + two RMSNorm gains
ROOT = V * H + V * H + H  # embed_tokens + lm_head (untied) + final norm
P7 = LAYERS * BLOCK + ROOT
BUFFERS7 = 512  # rotary inv_freq: 64 fp32 (+ original_inv_freq), see test_known_figures


def _plan(model, method="full", **settings):
    return plan(load_model_spec(model), METHODS[method], {}, TrainingSettings(**settings))


def _peak(p, name):
    return next(t.bytes for t in p.peak_terms if t.name == name)


def _step_tmp(p):
    """The optimizer-step temporaries: the ``step`` peak term minus the gradients."""
    return _peak(p, "step") - p.component("gradients")


def test_hand_counted_llama_7b():
    spec = load_model_spec(LLAMA7)
    assert spec.total_params == P7 == 6_738_415_616
    assert buffer_bytes(spec, 2) == BUFFERS7


def test_single_gpu_plan_is_unchanged():
    p = _plan(LLAMA7)
    assert [t.name for t in p.components] == list(COMPONENTS[:7])  # communication only in per-GPU plans
    assert p.component("communication") == 0 and p.host_bytes == 0 and not p.per_gpu and p.world_size == 1
    d = p.as_dict()
    assert d["per_gpu"] is False and d["world_size"] == 1 and d["host_bytes"] == 0


@pytest.mark.parametrize("strategy", ["ddp", "fsdp", "fsdp-grad-op"])
def test_one_process_is_the_single_plan(strategy):
    """accelerate does not wrap one process in DDP; torch runs one-process FSDP as NO_SHARD."""
    single, one = _plan(LLAMA7), _plan(LLAMA7, strategy=strategy)
    assert one.per_gpu and one.component("communication") == 0
    assert one.peak_bytes == single.peak_bytes
    for name in COMPONENTS[:7]:
        assert one.component(name) == single.component(name), name


@pytest.mark.parametrize("n", [2, 4, 8])
def test_ddp_replicates_and_adds_gradient_buckets(n):
    single, ddp = _plan(LLAMA7), _plan(LLAMA7, gpus=n, strategy="ddp")
    for name in ("weights", "trainable_weights", "gradients", "optimizer", "activations", "logits", "overhead"):
        assert ddp.component(name) == single.component(name), name
    assert ddp.component("communication") == single.component("gradients") == 2 * P7  # a flat copy of every grad
    assert ddp.peak_bytes == single.peak_bytes + 2 * P7  # the buckets live for the whole run
    assert ddp.host_bytes == 0 and ddp.per_gpu and ddp.world_size == n
    assert all(f"[ddp, N={n}]" in t.formula for t in ddp.components if t.name in ("weights", "communication"))


@pytest.mark.parametrize("n", [2, 8])
def test_fsdp_full_shard_divides_everything_by_n(n):
    single, p = _plan(LLAMA7), _plan(LLAMA7, gpus=n, strategy="fsdp")
    assert p.component("weights") == math.ceil(2 * P7 / n) + BUFFERS7
    assert p.component("gradients") == math.ceil(2 * P7 / n)
    spec = load_model_spec(LLAMA7)
    # AdamW on the 1-D shards: exp_avg + exp_avg_sq in bf16 + one 4 B step per tensor
    shards = sum(2 * 2 * math.ceil(q.numel / n) for q in spec.inventory.params)
    assert p.component("optimizer") == shards + 4 * len(spec.inventory.params)
    # root unit unsharded + current and prefetched block unsharded + the root's grads (larger than a block's)
    assert p.component("communication") == 2 * ROOT + 2 * (2 * BLOCK) + 2 * ROOT
    assert "FULL_SHARD" in next(t.formula for t in p.components if t.name == "communication")
    assert p.component("activations") == single.component("activations")  # per device, unchanged
    assert p.component("logits") == single.component("logits")
    assert p.host_bytes == 0


def test_fsdp_shard_grad_op_keeps_parameters_gathered_through_backward():
    p = _plan(LLAMA7, gpus=4, strategy="fsdp-grad-op")
    assert p.component("weights") == 2 * P7 // 4 + BUFFERS7
    assert p.component("gradients") == 2 * P7 // 4
    assert p.component("communication") == 2 * P7 + 2 * ROOT  # every unit unsharded + one unit's grads
    full_shard = _plan(LLAMA7, gpus=4, strategy="fsdp")
    assert p.peak_bytes > full_shard.peak_bytes


def test_fsdp_cpu_offload_moves_shards_and_the_step_to_the_host():
    p = _plan(LLAMA7, gpus=4, nodes=2, strategy="fsdp", offload="params")
    assert p.component("weights") == BUFFERS7
    assert p.component("gradients") == p.component("optimizer") == p.component("trainable_weights") == 0
    assert _step_tmp(p) == 0
    rank = 2 * P7 // 8 + 2 * P7 // 8 + _plan(LLAMA7, gpus=8, strategy="fsdp").component("optimizer")
    assert p.host_bytes == 4 * rank  # per node: 4 ranks
    assert _plan(LLAMA7, gpus=4, nodes=2, strategy="fsdp", offload="both").host_bytes == p.host_bytes


def test_fsdp_optimizer_sees_flat_shards():
    """Adafactor cannot factor a 1-D shard: under FSDP it keeps a full fp32 second moment."""
    single = _plan(LLAMA7, optimizer="adafactor")
    sharded = _plan(LLAMA7, optimizer="adafactor", gpus=2, strategy="fsdp")
    assert sharded.component("optimizer") > single.component("optimizer")  # 4 B/2 per element > rows + cols
    assert sharded.component("optimizer") == pytest.approx(4 * P7 / 2, rel=1e-6)


def test_sharded_checkpointing_keeps_only_this_gpus_gradients():
    single = _plan(LLAMA7, gradient_checkpointing=True)
    p = _plan(LLAMA7, gradient_checkpointing=True, gpus=8, strategy="fsdp")
    assert p.component("activations") == single.component("activations")
    # block 0's recompute term carries the gradients of every trained weight after the embedding;
    # sharded, only this GPU's eighth of them
    assert _peak(single, "recompute") - _peak(p, "recompute") == pytest.approx(2 * (P7 - V * H) * 7 / 8, rel=1e-6)


N8_PART = P7 // 8  # 842,301,952 elements: P is divisible by 8


def test_zero2_hand_checked():
    p = _plan(LLAMA7, gpus=8, strategy="deepspeed-zero2")
    assert p.component("weights") == 2 * P7 + BUFFERS7  # 16-bit parameters, replicated
    assert p.component("gradients") == 2 * N8_PART  # 16-bit gradient partition
    assert p.component("optimizer") == 12 * N8_PART  # fp32 master 4 + Adam m, v 8
    assert _step_tmp(p) == 4 * N8_PART  # fp32 gradient partition made for the step
    assert p.component("communication") == 2 * H * H * 2  # two h^2 buckets (overlap_comm) in bf16
    # DeepSpeed's 2P + 18P/N, by hand
    assert p.component("weights") - BUFFERS7 + _peak(p, "step") + p.component("optimizer") == 2 * P7 + 18 * P7 // 8


def test_zero1_keeps_full_gradients():
    p = _plan(LLAMA7, gpus=8, strategy="deepspeed-zero1")
    assert p.component("gradients") == 2 * P7
    assert p.component("optimizer") == 12 * N8_PART


def test_zero3_hand_checked():
    p = _plan(LLAMA7, gpus=8, strategy="deepspeed-zero3")
    assert p.component("weights") == 2 * N8_PART + BUFFERS7
    assert p.component("gradients") == 2 * N8_PART
    assert p.component("optimizer") == 12 * N8_PART
    assert _step_tmp(p) == 4 * N8_PART  # one sub-group: 842M < 1e9 elements
    largest_layer = V * H  # embed_tokens (= lm_head)
    assert p.component("communication") == 4 * largest_layer + int(0.9 * H * H) * 2 + H * H * 2
    assert p.host_bytes == 0


def test_zero3_offload_hand_checked():
    opt = _plan(LLAMA7, gpus=8, strategy="deepspeed-zero3", offload="optimizer")
    assert opt.component("weights") == 2 * N8_PART + BUFFERS7
    assert opt.component("gradients") == opt.component("optimizer") == _step_tmp(opt) == 0
    # per node, 8 ranks x (16-bit gradient partition 2 + fp32 master 4 + states 8 + fp32 gradients 4)
    assert opt.host_bytes == 8 * 18 * N8_PART == 18 * P7
    both = _plan(LLAMA7, gpus=4, nodes=2, strategy="deepspeed-zero3", offload="both")
    assert both.component("weights") == BUFFERS7
    assert both.host_bytes == 4 * 20 * N8_PART == 10 * P7  # two nodes share it
    assert "per node: 4 ranks" in both.host_formula


def test_deepspeed_lora_casts_adapters_and_shards_frozen_weights_in_zero3():
    single = _plan(LLAMA7, "lora")
    adapters = single.trainable_params
    z2 = _plan(LLAMA7, "lora", gpus=4, strategy="deepspeed-zero2")
    assert z2.component("trainable_weights") == 2 * adapters  # cast to bf16 (fp32 on one GPU)
    assert z2.component("weights") == single.component("weights")  # frozen base replicated
    z3 = _plan(LLAMA7, "lora", gpus=4, strategy="deepspeed-zero3")
    assert z3.component("weights") == math.ceil((single.component("weights") - BUFFERS7) / 4) + BUFFERS7
    assert z3.component("optimizer") == 12 * math.ceil(adapters / 4)


@pytest.mark.parametrize("settings, message", [
    (dict(gpus=4, strategy="fsdp", offload="optimizer"), "FSDP has no optimizer-only offload"),
    (dict(gpus=4, strategy="fsdp-grad-op", offload="optimizer"), "FSDP has no optimizer-only offload"),
    (dict(gpus=4, strategy="deepspeed-zero2", optimizer="adafactor"), "DeepSpeed brings its own optimizer"),
    (dict(gpus=4, strategy="deepspeed-zero3", optimizer="adamw_8bit"), "choose adamw, sgd or sgd_momentum"),
])
def test_invalid_combinations_are_settings_errors(settings, message):
    with pytest.raises(SettingsError, match=message):
        _plan("tiny", **settings)


def test_settings_validation_reaches_the_planner():
    with pytest.raises(SettingsError, match="need a strategy"):
        _plan("tiny", gpus=8)
    with pytest.raises(SettingsError, match="fsdp or deepspeed-zero3"):
        _plan("tiny", gpus=2, strategy="deepspeed-zero2", offload="params")


# --- against DeepSpeed's own estimators ------------------------------------------------------

def _largest_layer(spec):
    """DeepSpeed's ``model_to_params``: the most parameters any module holds itself."""
    return max(sum(p.numel() for p in m.parameters(recurse=False)) for m in spec.meta_model().modules())


def _gpu_model_states(p, spec):
    """weights + gradients + optimizer + the step's fp32 gradient copy, without buffers, +
    for ZeRO-3 the gathered largest layer (communication minus the two 'auto' buckets)."""
    states = p.component("weights") - buffer_bytes(spec, 2) + _peak(p, "step") + p.component("optimizer")
    if p.settings["strategy"] == "deepspeed-zero3":
        h, e = spec.hidden_size, 2
        states += p.component("communication") - int(0.9 * h * h) * e - h * h * e
    return states


@pytest.mark.parametrize("model", [LLAMA7, QWEN05])
@pytest.mark.parametrize("n", [1, 2, 4, 8])
def test_zero2_matches_deepspeed_estimator(model, n):
    pytest.importorskip("deepspeed")
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    spec = load_model_spec(model)
    total = spec.total_params
    for offload in ("none", "optimizer"):
        p = _plan(model, gpus=n, strategy="deepspeed-zero2", offload=offload)
        cpu, gpu = estimate_zero2_model_states_mem_needs(total, n, 1, offload != "none", additional_buffer_factor=1.0)
        assert _gpu_model_states(p, spec) == gpu, offload
        if offload != "none":
            # DeepSpeed: P x max(4 x gpus, 16); the 4 x gpus is the fp32 model each process loads
            assert p.host_bytes == 16 * total
            assert cpu == max(p.host_bytes, 4 * total * n)
            assert (p.host_bytes == cpu) == (n <= 4)


@pytest.mark.parametrize("model", [LLAMA7, QWEN05])
@pytest.mark.parametrize("n", [1, 2, 4, 8])
def test_zero3_matches_deepspeed_estimator(model, n):
    pytest.importorskip("deepspeed")
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

    spec = load_model_spec(model)
    total, largest = spec.total_params, _largest_layer(spec)
    part = math.ceil(total / n)
    for offload in ("none", "optimizer", "both"):
        p = _plan(model, gpus=n, strategy="deepspeed-zero3", offload=offload)
        cpu, gpu, layer = estimate_zero3_model_states_mem_needs(
            total, largest, n, 1, cpu_offload=offload != "none", cpu_offload_params=offload == "both",
            zero_init=True, additional_buffer_factor=1.0)
        assert layer == 4 * largest
        if offload == "none":
            # DeepSpeed's 18 P / N has no 16-bit gradient partition (stage3.py allocates one: + 2 P / N)
            # and counts the fp32 gradient copy whole (it is made per sub-group of <= 1e9 elements)
            assert _gpu_model_states(p, spec) == gpu + 2 * part - 4 * (part - min(part, 10**9))
            assert p.host_bytes == 0
        else:
            assert _gpu_model_states(p, spec) == gpu  # exact
            assert p.host_bytes == cpu + 2 * total  # + the 16-bit gradient partition, pinned on the host


# --- CLI, table, UI ------------------------------------------------------------------------------

def _cli(*args):
    """``plan`` for GPUs: the default device is this machine's (cpu without a GPU)."""
    device = ["--device", "cuda"] if args[:1] == ("plan",) and "--device" not in args else []
    return subprocess.run([sys.executable, "-m", "workbench", *args, *device], capture_output=True, text=True,
                          timeout=300)


def _cli_here(capsys, *args):
    """:func:`_cli` in this process (the same ``main``, without a 10 s interpreter start)."""
    from types import SimpleNamespace

    from workbench.cli import main

    device = ["--device", "cuda"] if args[:1] == ("plan",) and "--device" not in args else []
    capsys.readouterr()
    try:
        code = main([*args, *device])
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    out = capsys.readouterr()
    return SimpleNamespace(returncode=code, stdout=out.out, stderr=out.err)


def test_cli_plan_json_per_gpu():
    out = _cli("plan", "--model", LLAMA7, "--method", "full", "--gpus", "4", "--strategy", "deepspeed-zero3",
               "--offload", "both", "--json")
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    assert d["per_gpu"] is True and d["world_size"] == 4
    assert d["settings"]["strategy"] == "deepspeed-zero3" and d["settings"]["offload"] == "both"
    names = [c["name"] for c in d["components"]]
    assert names == list(COMPONENTS)
    assert d["host_bytes"] == 4 * 20 * (P7 // 4) and "per node: 4 ranks" in d["host_formula"]
    assert all("N=4" in c["formula"] for c in d["components"] if c["name"] in ("weights", "communication"))


def test_cli_plan_human_per_gpu_and_errors(capsys):
    out = _cli("plan", "--model", "tiny", "--method", "lora", "--gpus", "2", "--strategy", "fsdp", "--offload",
               "params")
    assert out.returncode == 0, out.stderr
    assert "per GPU (2 GPUs, fsdp, offload params)" in out.stdout and "host" in out.stdout
    assert "communication" in out.stdout
    ddp = _cli_here(capsys, "plan", "--model", "tiny", "--method", "lora", "--gpus", "2")  # several GPUs: ddp by default
    assert ddp.returncode == 0 and "per GPU (2 GPUs, ddp)" in ddp.stdout
    for args, message in [(["--gpus", "2", "--strategy", "single"], "need a strategy"),
                          (["--gpus", "4", "--strategy", "fsdp", "--offload", "optimizer"], "optimizer-only"),
                          (["--gpus", "two"], "--gpus")]:
        bad = _cli_here(capsys, "plan", "--model", "tiny", "--method", "lora", *args)
        assert bad.returncode == 2 and message in bad.stderr and "Traceback" not in bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1


def test_per_gpu_table_70b_fits_only_when_sharded():
    spec = load_model_spec(LLAMA70)
    budget = 80 * 10**9
    settings = TrainingSettings(batch_size=1, seq_len=512, gradient_checkpointing=True)
    rows = per_gpu_table(spec, "lora", {}, settings, gpu_bytes=budget)
    cell = {(r["strategy"], r["gpus"]): r for r in rows}
    assert len(rows) == 7 * 4
    assert cell[("single", 1)]["fits"] is False and cell[("single", 1)]["peak_bytes"] > 128 * GIB  # bf16 weights alone
    assert cell[("single", 8)]["error"] and "need a strategy" in cell[("single", 8)]["error"]
    assert cell[("deepspeed-zero3", 8)]["fits"] is True and cell[("deepspeed-zero3", 8)]["peak_bytes"] < 30 * GIB
    assert cell[("fsdp", 8)]["fits"] is True
    assert cell[("ddp", 8)]["fits"] is False and cell[("deepspeed-zero2", 8)]["fits"] is False  # replicated weights
    # full fine-tuning: 16+ B per parameter; ZeRO-3 on 8 GPUs fits only with the optimizer offloaded
    full = {(r["strategy"], r["gpus"]): r for r in per_gpu_table(spec, "full", {}, settings, gpu_bytes=budget,
                                                                 offload="optimizer")}
    assert full[("deepspeed-zero3", 1)]["fits"] is False and full[("deepspeed-zero3", 8)]["fits"] is True
    assert full[("deepspeed-zero3", 8)]["host_bytes"] == 18 * spec.total_params
    assert full[("ddp", 2)]["error"] and "needs fsdp or deepspeed" in full[("ddp", 2)]["error"]
    plain = {(r["strategy"], r["gpus"]): r for r in per_gpu_table(spec, "full", {}, settings, gpu_bytes=budget)}
    assert not plain[("deepspeed-zero3", 8)]["fits"]


def test_per_gpu_view_for_the_ui():
    from workbench.ui.plan_tab import KNOB_NAMES, PER_GPU_HEADERS, per_gpu_view

    knobs = [None] * len(KNOB_NAMES)
    summary, rows = per_gpu_view(LLAMA70, "lora", "bfloat16", "auto", 1, 512, 1, True, "adamw", "cuda", "none", 80,
                                 *knobs)
    assert PER_GPU_HEADERS == ["strategy", "1 GPU", "2 GPUs", "4 GPUs", "8 GPUs"]
    assert [r[0] for r in rows] == ["single", "ddp", "fsdp", "fsdp-grad-op", "deepspeed-zero1", "deepspeed-zero2",
                                    "deepspeed-zero3"]
    assert all(len(r) == 5 for r in rows)
    z3 = rows[-1]
    assert "✓" not in z3[1] and z3[4].endswith("✓") and "GiB" in z3[4]
    assert rows[0][2] == "n/a" and "need a strategy" in summary and "deepspeed-zero3 from" in summary
    summary, rows = per_gpu_view(LLAMA70, "full", "bfloat16", "auto", 1, 512, 1, True, "adamw", "cuda", "both", 80,
                                 *knobs)
    assert "GiB host" in rows[-1][4]
    bad, empty = per_gpu_view("tiny", "full", "bfloat16", "4bit", 1, 512, 1, False, "adamw", "cuda", "none", 80,
                              *knobs)
    assert bad.startswith("**Cannot plan across GPUs:**") and empty == []


def test_per_gpu_is_its_own_api_endpoint():
    from workbench.ui.app import build_app

    names = [getattr(fn, "api_name", None) for fn in build_app().fns.values()]
    assert "per_gpu" in names and "plan" in names


# --- the end of backward: embedding-backward temporaries per GPU ---------------------------------

QWEN_V, QWEN_H = 151936, 896  # Qwen2.5-0.5B: tied input/output embeddings


@pytest.mark.parametrize("dtype, e", [("bfloat16", 2), ("float32", 4)])
def test_end_of_backward_single_gpu_tied(dtype, e):
    """Tied, trained embeddings: the head's gradient G and the embedding's, summed out of place
    (2 G beyond the stored gradients; the sum is the .grad). The Trainer holds no logits
    through backward (its compute_loss returns the loss only)."""
    p = _plan(QWEN05, batch_size=2, seq_len=512, optimizer="sgd", dtype=dtype)
    g = QWEN_V * QWEN_H * e
    assert _peak(p, "embedding_backward") == 2 * g
    assert _peak(p, "end_of_backward") == p.component("gradients") + 2 * g
    assert p.peak_bytes >= _peak(p, "persistent") + _peak(p, "end_of_backward")
    # accumulating over micro-batches: the fresh gradient is added in place, beside the accumulated one
    acc = _plan(QWEN05, batch_size=2, seq_len=512, optimizer="sgd", dtype=dtype, grad_accum=4)
    assert _peak(acc, "embedding_backward") == 3 * g
    # LoRA: the embedding is frozen, nothing is added
    assert _peak(_plan(QWEN05, "lora", batch_size=2, seq_len=512), "embedding_backward") == 0


def test_end_of_backward_untied_is_the_embedding_output_gradient():
    p = _plan(LLAMA7, batch_size=2, seq_len=512, optimizer="sgd")
    assert _peak(p, "embedding_backward") == 2 * H * 2 * 512  # e x h x b·s, bf16


@pytest.mark.parametrize("settings, adds_g", [
    (dict(gpus=4, strategy="ddp"), False),  # every gradient on every GPU: G is among them
    (dict(gpus=4, strategy="deepspeed-zero1"), False),
    (dict(strategy="fsdp"), False),  # one process: NO_SHARD
    (dict(gpus=4, strategy="fsdp"), True),
    (dict(gpus=4, strategy="fsdp-grad-op"), True),
    (dict(gpus=4, strategy="deepspeed-zero2"), True),
    (dict(gpus=4, strategy="deepspeed-zero3"), True),
    (dict(gpus=4, strategy="deepspeed-zero3", offload="optimizer"), True),
    (dict(strategy="fsdp", offload="params"), True),  # gradients on the host
])
def test_end_of_backward_per_gpu(settings, adds_g):
    """The embedding's temporaries are not divided by N (each rank runs its own micro-batch
    through the whole embedding); where this GPU keeps a share of the gradients (or none), the
    embedding's whole gradient is added; communication in flight during backward is added."""
    base = dict(batch_size=2, seq_len=512, optimizer="sgd")
    single, p = _plan(QWEN05, **base), _plan(QWEN05, **base, **settings)
    g = QWEN_V * QWEN_H * 2
    assert _peak(p, "embedding_backward") == _peak(single, "embedding_backward") + (g if adds_g else 0)
    assert (p.component("gradients") < single.component("gradients")) == adds_g
    comm_backward = p.component("communication") - (_peak(p, "persistent") - p.component("weights")
                                                    - p.component("trainable_weights") - p.component("optimizer")
                                                    - p.component("overhead"))
    assert _peak(p, "end_of_backward") == p.component("gradients") + _peak(p, "embedding_backward") + comm_backward
    assert p.peak_bytes == _peak(p, "persistent") + max(_peak(p, "backward"), _peak(p, "end_of_backward"),
                                                        _peak(p, "step"))


def test_checkpointing_keeps_the_tied_head_gradient_whole():
    """Under checkpointing the tied head's gradient waits in autograd's input buffer for the
    embedding's while every block is redone: on one GPU it counts like an untied head's stored
    gradient; sharded, the untied head's gradient is reduce-scattered away, the tied one is not."""
    from workbench.specs import ModelSpec

    tied = load_model_spec(QWEN05)
    untied = ModelSpec(tied.name, tied.source, dict(tied.config, tie_word_embeddings=False), tied.label)
    assert tied.inventory.tied_embeddings and not untied.inventory.tied_embeddings

    def recompute(spec, **settings):
        s = TrainingSettings(gradient_checkpointing=True, batch_size=1, seq_len=512, **settings)
        return _peak(plan(spec, METHODS["full"], {}, s), "recompute")

    assert recompute(tied) == recompute(untied)
    g = QWEN_V * QWEN_H * 2
    sharded = dict(gpus=8, strategy="fsdp")
    assert recompute(tied, **sharded) - recompute(untied, **sharded) == g - math.ceil(g / 8)
