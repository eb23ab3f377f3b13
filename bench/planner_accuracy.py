"""How close is the memory planner to what users' training steps measure? A matrix of real runs.

Every configuration is measured INSIDE the worker's own Trainer step: ``workbench.measure``
builds the run's ``transformers.Trainer`` with :func:`workbench.training.recipe.build_trainer`
(batches padded to their longest example by the worker's collator, attention mask, ``-100``
labels on the prompt and the padding, gradient accumulation, clipping at 1.0, the probe's
longest-first order) over a synthetic dataset of variable-length examples whose widest batch
is exactly the planned sequence length, and the worker's ``StepPeakCallback`` (``every=1``)
measures each optimizer step: on CPU live tensor bytes at the start of the step plus the
op-by-op peak of the storages created during it (every micro-batch, clipping and the
optimizer step); on CUDA ``torch.cuda.max_memory_allocated`` over the step. The largest step
peak is compared with ``plan_run(run).peak_bytes``; the components (weights, trainable
weights, gradients, optimizer state: bytes of the real tensors; activations and logits: the
tensors autograd saves in the forward pass of the widest padded micro-batch) beside it.

Held-out configurations (``HELD_OUT``) were chosen before any planner term was changed for
this loop and are reported separately; no term was fitted to them.

Models are real architectures with random weights, built offline from the bundled configs:
the built-in ``tiny`` Llama and SmolLM2-135M / Qwen2.5-0.5B cut to 4 / 2 decoder blocks (real
widths, real vocabularies). Results go to ``bench/results/planner_accuracy.*`` (one entry per
device kind); ``--label before`` writes ``planner_accuracy.before.json`` instead (the matrix
measured with the planner as it was), whose errors the main results then show beside the new.

    python bench/planner_accuracy.py [--device cpu|cuda] [--steps 3] [--only SUBSTRING] [--label before]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

RESULTS = Path(__file__).resolve().parent / "results"
MB = 1e6
GB = 1e9
COMPONENTS = ("weights", "trainable_weights", "gradients", "optimizer", "activations", "logits")
TARGETS = {"within_5pct_fraction": 0.90, "worst_under_pct": -5.0, "median_abs_pct": 2.0}


def metadata(device: str) -> dict:
    """Commit, date, device and library versions (``bench/_meta.py`` when present)."""
    try:
        from _meta import run_metadata

        return run_metadata(device)
    except ImportError:
        import platform
        import subprocess
        from datetime import datetime, timezone
        from importlib import metadata as md

        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
        versions = {"python": platform.python_version()}
        for name in ("torch", "transformers", "peft", "accelerate", "bitsandbytes"):
            try:
                versions[name] = md.version(name)
            except md.PackageNotFoundError:
                versions[name] = "not installed"
        return {"commit": commit, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "device": device, "machine": platform.platform(), "cpus": os.cpu_count(),
                "device_name": platform.processor(), "versions": versions, **versions}


# -- models ----------------------------------------------------------------------------------

# key -> (bundled config, overrides, description)
CPU_MODELS = {
    "tiny": (None, {}, "built-in tiny Llama (GQA 8/4 heads, 4 blocks, vocab 4096)"),
    "smollm2-135m-4L": ("HuggingFaceTB/SmolLM2-135M", {"num_hidden_layers": 4},
                        "SmolLM2-135M config, 4 of 30 blocks, tied 49152-token embeddings"),
    "qwen2.5-0.5b-2L": ("Qwen/Qwen2.5-0.5B", {"num_hidden_layers": 2},
                        "Qwen2.5-0.5B config, 2 of 24 blocks, q/k/v biases, tied 151936-token embeddings"),
    # the families issue 17 added to the op-by-op walk: real block widths, 2 blocks, an 8,192-token
    # vocabulary (a key set to None is dropped from the bundled config)
    "qwen3-0.6b-2blk": ("Qwen/Qwen3-0.6B", {"num_hidden_layers": 2, "max_window_layers": 2, "vocab_size": 8192},
                        "Qwen3-0.6B config, 2 of 28 blocks (q/k norms), vocab cut to 8192"),
    "gemma-2-2b-2blk": ("google/gemma-2-2b", {"num_hidden_layers": 2, "vocab_size": 8192,
                                              "sliding_window_pattern": None},
                        "gemma-2-2b config, 2 of 26 blocks (four fp32 norms, GeGLU, soft-capping, eager), vocab 8192"),
    "gemma-3-1b-2blk": ("google/gemma-3-1b-pt", {"num_hidden_layers": 2, "vocab_size": 8192, "sliding_window": 64,
                                                 "layer_types": ["sliding_attention", "full_attention"],
                                                 "sliding_window_pattern": None},
                        "gemma-3-1b config, a sliding (window 64) and a full block, one kv head, vocab 8192"),
    "phi-3-mini-2blk": ("microsoft/Phi-3-mini-4k-instruct", {"num_hidden_layers": 2, "vocab_size": 8192,
                                                             "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2},
                        "Phi-3-mini config, 2 of 32 blocks (fused qkv_proj, gate_up_proj), vocab 8192"),
}
CUDA_MODELS = {
    **CPU_MODELS,
    "smollm2-135m": ("HuggingFaceTB/SmolLM2-135M", {}, "SmolLM2-135M config, full size"),
    "qwen2.5-0.5b": ("Qwen/Qwen2.5-0.5B", {}, "Qwen2.5-0.5B config, full size"),
    "llama-3.2-1b": ("meta-llama/Llama-3.2-1B", {}, "Llama-3.2-1B config, full size"),
    "llama-3.1-8b": ("meta-llama/Llama-3.1-8B", {}, "Llama-3.1-8B config, full size (GQA 32/8, 128,256 vocab)"),
}


def build_model(key: str, models: dict, root: Path):
    """A ModelSpec for ``key``: the tiny model, or a folder with the bundled config (plus
    overrides) and random bf16 weights in safetensors, built once under ``root``."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from workbench.specs import load_model_spec

    bundled, overrides, _ = models[key]
    if bundled is None:
        return load_model_spec("tiny")
    folder = root / key
    if not (folder / "model.safetensors").is_file() and not (folder / "model.safetensors.index.json").is_file():
        config = {k: v for k, v in load_model_spec(bundled).config.items()
                  if not k.startswith("_") and k not in ("architectures", "auto_map")}
        config.update(overrides)
        config = {k: v for k, v in config.items() if v is not None}
        hf_config = AutoConfig.for_model(**config)
        torch.manual_seed(0)
        # initialised on the GPU when there is one: an 8B model's random init takes minutes on a CPU
        with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
            model = AutoModelForCausalLM.from_config(hf_config, dtype=torch.bfloat16)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=root))
        model.save_pretrained(tmp, safe_serialization=True)
        del model
        os.replace(tmp, folder)
    return load_model_spec(str(folder))


# -- the matrix ------------------------------------------------------------------------------

def _cfg(model, method, knobs=None, **settings):
    defaults = {"dtype": "float32", "batch_size": 2, "seq_len": 64}
    return {"model": model, "method": method, "knobs": knobs or {}, "settings": {**defaults, **settings}}


def cpu_matrix() -> list[dict]:
    a2 = {"grad_accum": 2}
    bf = {"dtype": "bfloat16"}
    m = [_cfg("tiny", "full", **a2), _cfg("tiny", "freeze", **a2), _cfg("tiny", "bitfit"), _cfg("tiny", "lora", **a2),
         _cfg("tiny", "rslora"), _cfg("tiny", "dora", **a2), _cfg("tiny", "ia3"), _cfg("tiny", "adalora"),
         _cfg("tiny", "prefix", **a2), _cfg("tiny", "prompt"), _cfg("tiny", "loha"), _cfg("tiny", "lokr", **a2),
         _cfg("tiny", "oft"), _cfg("tiny", "vera"),
         _cfg("tiny", "qlora", **bf, seq_len=48, **a2), _cfg("tiny", "lora-8bit", **bf)]
    # gradient checkpointing, bf16, other shapes
    g = {"dtype": "bfloat16", "batch_size": 1, "seq_len": 96, "gradient_checkpointing": True}
    m += [_cfg("tiny", "full", **g), _cfg("tiny", "lora", **g, **a2), _cfg("tiny", "dora", **g),
          _cfg("tiny", "loha", **g), _cfg("tiny", "lora", **bf, gradient_checkpointing=True, batch_size=4, seq_len=64)]
    m += [_cfg("tiny", "lora", batch_size=4, seq_len=128, **a2), _cfg("tiny", "lora", batch_size=1, seq_len=32),
          _cfg("tiny", "lora", **bf, batch_size=8, seq_len=128), _cfg("tiny", "full", **bf, batch_size=4, seq_len=128)]
    # optimizers, attention
    m += [_cfg("tiny", "full", optimizer="adamw_8bit"), _cfg("tiny", "full", optimizer="sgd", **a2),
          _cfg("tiny", "lora", optimizer="sgd"), _cfg("tiny", "full", optimizer="adafactor"),
          _cfg("tiny", "lora", optimizer="adafactor", **a2), _cfg("tiny", "ia3", optimizer="sgd_momentum"),
          _cfg("tiny", "full", attention="eager"), _cfg("tiny", "lora", attention="eager", **a2)]
    # small real architectures (float32 where the method allows: bf16 matmuls are slow on CPUs without AMX)
    s = {"dtype": "float32", "batch_size": 2, "seq_len": 128}
    m += [_cfg("smollm2-135m-4L", "full", **s), _cfg("smollm2-135m-4L", "full", **s, optimizer="sgd", **a2),
          _cfg("smollm2-135m-4L", "freeze", **s), _cfg("smollm2-135m-4L", "lora", **s, **a2),
          _cfg("smollm2-135m-4L", "lora", **{**s, "seq_len": 256}, gradient_checkpointing=True),
          _cfg("smollm2-135m-4L", "lora", **s, optimizer="adamw_8bit"), _cfg("smollm2-135m-4L", "dora", **s),
          _cfg("smollm2-135m-4L", "lora", **{**s, "dtype": "bfloat16"}),
          _cfg("smollm2-135m-4L", "qlora", **{**s, "dtype": "bfloat16"}, gradient_checkpointing=True, **a2)]
    m += [_cfg("qwen2.5-0.5b-2L", "lora", **s, **a2), _cfg("qwen2.5-0.5b-2L", "full", **s, optimizer="sgd"),
          _cfg("qwen2.5-0.5b-2L", "ia3", **s), _cfg("qwen2.5-0.5b-2L", "prefix", **s),
          _cfg("qwen2.5-0.5b-2L", "lora-8bit", **{**s, "dtype": "bfloat16"})]
    return m + precision_matrix() + families_matrix()


def families_matrix() -> list[dict]:
    """Qwen3, Gemma 2 / 3 and Phi-3 (issue 17's op-by-op walks), pure and mixed precision."""
    mix = {"dtype": "float32", "autocast": "bfloat16"}
    return [_cfg("qwen3-0.6b-2blk", "full", **mix, seq_len=128), _cfg("qwen3-0.6b-2blk", "ia3", seq_len=128),
            _cfg("qwen3-0.6b-2blk", "lora", **mix, batch_size=4, gradient_checkpointing=True),
            _cfg("gemma-2-2b-2blk", "lora", **mix, seq_len=128), _cfg("gemma-2-2b-2blk", "full", batch_size=1, seq_len=128),
            _cfg("gemma-3-1b-2blk", "lora", **mix, seq_len=128, gradient_checkpointing=True),
            _cfg("gemma-3-1b-2blk", "full", **mix, batch_size=1, seq_len=128), _cfg("gemma-3-1b-2blk", "prefix", **mix),
            _cfg("phi-3-mini-2blk", "lora", **mix, seq_len=128),
            _cfg("phi-3-mini-2blk", "full", dtype="bfloat16", batch_size=1, seq_len=128),
            # fp32 adapter outputs through q/k norms and one kv head; a materialised delta's backward
            _cfg("qwen3-0.6b-2blk", "lokr", **mix), _cfg("gemma-2-2b-2blk", "vera", **mix, batch_size=1, seq_len=128),
            _cfg("phi-3-mini-2blk", "lokr", {"target_modules": "gate_up_proj,o_proj"}),
            _cfg("phi-3-mini-2blk", "lokr", {"target_modules": "gate_up_proj,down_proj"}, dtype="bfloat16",
                 batch_size=1, seq_len=128)]


def precision_matrix() -> list[dict]:
    """The mixed-precision modes (fp32 master weights, bf16 autocast: the Trainer's ``bf16=True``
    on an fp32 model). fp16 autocast needs CUDA (accelerate runs fp16 on the CPU without it)."""
    mix = {"dtype": "float32", "autocast": "bfloat16"}
    s = {**mix, "batch_size": 2, "seq_len": 128}
    return [_cfg("tiny", "full", **mix), _cfg("tiny", "lora", **mix), _cfg("tiny", "rslora", **mix, grad_accum=2),
            _cfg("tiny", "full", **mix, batch_size=4, seq_len=256, gradient_checkpointing=True),
            _cfg("tiny", "lora", **mix, batch_size=4, seq_len=128, gradient_checkpointing=True),
            _cfg("tiny", "bitfit", **mix, grad_accum=2), _cfg("tiny", "freeze", **mix, gradient_checkpointing=True),
            _cfg("tiny", "ia3", **mix), _cfg("tiny", "dora", **mix), _cfg("tiny", "adalora", **mix),
            _cfg("tiny", "vera", **mix), _cfg("tiny", "oft", {"target_modules": "q_proj,k_proj,v_proj,o_proj,down_proj"}, **mix),
            _cfg("tiny", "oft", **mix), _cfg("tiny", "loha", **mix), _cfg("tiny", "lokr", **mix),
            _cfg("smollm2-135m-4L", "full", **s), _cfg("smollm2-135m-4L", "lora", **{**s, "seq_len": 256},
                                                       gradient_checkpointing=True),
            # Qwen2's 151,936-token vocabulary makes its bf16 steps slow on a CPU without bf16 kernels (a
            # b2x128 one took 30 min): one short configuration
            _cfg("qwen2.5-0.5b-2L", "lora", **{**s, "batch_size": 1, "seq_len": 64}, grad_accum=2),
            # DoRA, AdaLoRA and VeRA walked under autocast (2026-12-03): held out on SmolLM2's widths
            _cfg("smollm2-135m-4L", "dora", **s), _cfg("smollm2-135m-4L", "adalora", **s, grad_accum=2),
            _cfg("smollm2-135m-4L", "vera", **s),
            # LoHa, LoKr, OFT (and VeRA) return fp32 under autocast, kept by the MLP: held out likewise
            _cfg("smollm2-135m-4L", "loha", **s), _cfg("smollm2-135m-4L", "oft", **s)]


def cuda_matrix() -> list[dict]:
    """Run only where CUDA is present (bench/gpu_check.py): real architectures at full depth with
    random weights, bf16 and bf16-mixed, sequences 512-4096, checkpointing on and off, AdamW and
    8-bit AdamW, every method family."""
    bf, mix = {"dtype": "bfloat16"}, {"dtype": "float32", "autocast": "bfloat16"}
    gc, a8 = {"gradient_checkpointing": True}, {"optimizer": "adamw_8bit"}
    s = {"batch_size": 4, "seq_len": 512}
    m = [_cfg("tiny", "lora", **mix), _cfg("tiny", "full")]
    m += [_cfg("smollm2-135m", "full", **bf, **s), _cfg("smollm2-135m", "lora", **bf, **s, grad_accum=2),
          _cfg("smollm2-135m", "qlora", **bf, **s), _cfg("smollm2-135m", "dora", **bf, **s),
          _cfg("smollm2-135m", "ia3", **bf, **s), _cfg("smollm2-135m", "prefix", **bf, **s),
          _cfg("smollm2-135m", "lora", **bf, **s, **gc), _cfg("smollm2-135m", "lora", **bf, batch_size=1, seq_len=4096),
          _cfg("smollm2-135m", "full", **mix, **s), _cfg("smollm2-135m", "lora", **mix, batch_size=4, seq_len=1024),
          _cfg("smollm2-135m", "full", **bf, **s, **a8), _cfg("smollm2-135m", "lora", batch_size=1, seq_len=2048)]
    m += [_cfg("qwen2.5-0.5b", "full", **bf, batch_size=2, seq_len=512, **gc),
          _cfg("qwen2.5-0.5b", "lora", **bf, batch_size=4, seq_len=1024),
          _cfg("qwen2.5-0.5b", "qlora", **bf, batch_size=4, seq_len=2048, **gc),
          _cfg("qwen2.5-0.5b", "dora", **bf, batch_size=2, seq_len=512),
          _cfg("qwen2.5-0.5b", "ia3", **mix, **s), _cfg("qwen2.5-0.5b", "lora", **bf, batch_size=2, seq_len=512, **a8),
          _cfg("qwen2.5-0.5b", "prompt", **bf, **s)]
    m += [_cfg("llama-3.2-1b", "full", **bf, batch_size=2, seq_len=512, **a8, **gc),
          _cfg("llama-3.2-1b", "lora", **bf, batch_size=4, seq_len=1024),
          _cfg("llama-3.2-1b", "qlora", **bf, batch_size=4, seq_len=4096, **gc),
          _cfg("llama-3.2-1b", "lora", **mix, batch_size=2, seq_len=2048, **gc),
          _cfg("llama-3.2-1b", "dora", **bf, batch_size=2, seq_len=1024, **gc), _cfg("llama-3.2-1b", "ia3", **bf, **s)]
    m += [_cfg("llama-3.1-8b", "lora", **bf, batch_size=1, seq_len=1024, **gc),
          _cfg("llama-3.1-8b", "qlora", **bf, batch_size=2, seq_len=2048, **gc),
          _cfg("llama-3.1-8b", "qlora", **bf, batch_size=1, seq_len=4096, **gc, **a8),
          _cfg("llama-3.1-8b", "ia3", **bf, batch_size=1, seq_len=1024, **gc)]
    return m


def quick_matrix() -> list[dict]:
    """``--quick``: two small configurations on ``tiny`` (the dry run of bench/gpu_check.py)."""
    return [_cfg("tiny", "lora", batch_size=2, seq_len=32), _cfg("tiny", "full", dtype="bfloat16", seq_len=32)]


def config_id(c: dict) -> str:
    s = c["settings"]
    extra = [s.get("optimizer", "adamw")]
    if s.get("grad_accum", 1) > 1:
        extra.append(f"ga{s['grad_accum']}")
    if s.get("gradient_checkpointing"):
        extra.append("gc")
    if s.get("attention", "sdpa") != "sdpa":
        extra.append(s["attention"])
    precision = s["dtype"] if s.get("autocast", "none") == "none" else f"{s['dtype']}+autocast-{s['autocast']}"
    if c.get("knobs", {}).get("target_modules"):  # named only where a row sets them
        extra.append(f"targets={c['knobs']['target_modules']}")
    return f"{c['model']} {c['method']} b{s['batch_size']}x{s['seq_len']} {precision} {' '.join(extra)}"


# chosen before any planner term was changed for the worker's loop (2026-11-26); never fitted to
HELD_OUT = (
    "tiny rslora b2x64 float32 adamw",
    "tiny lokr b2x64 float32 adamw ga2",
    "tiny vera b2x64 float32 adamw",
    "tiny loha b1x96 bfloat16 adamw gc",
    "tiny lora b1x32 float32 adamw",
    "tiny lora b2x64 float32 adafactor ga2",
    "tiny full b2x64 float32 sgd ga2",
    "tiny lora b2x64 float32 adamw ga2 eager",
    "smollm2-135m-4L freeze b2x128 float32 adamw",
    "smollm2-135m-4L lora b2x128 float32 adamw_8bit",
    "smollm2-135m-4L qlora b2x128 bfloat16 adamw ga2 gc",
    "qwen2.5-0.5b-2L ia3 b2x128 float32 adamw",
    "qwen2.5-0.5b-2L lora-8bit b2x128 bfloat16 adamw",
    # the mixed-precision block, chosen before these configurations were first measured (2026-12-02)
    "tiny bitfit b2x64 float32+autocast-bfloat16 adamw ga2",
    "tiny freeze b2x64 float32+autocast-bfloat16 adamw gc",
    "smollm2-135m-4L full b2x128 float32+autocast-bfloat16 adamw",
    "smollm2-135m-4L lora b2x256 float32+autocast-bfloat16 adamw gc",
    "qwen2.5-0.5b-2L lora b1x64 float32+autocast-bfloat16 adamw ga2",
    # DoRA / AdaLoRA / VeRA under autocast, chosen 2026-12-03 before these configurations were first measured
    "smollm2-135m-4L dora b2x128 float32+autocast-bfloat16 adamw",
    "smollm2-135m-4L adalora b2x128 float32+autocast-bfloat16 adamw ga2",
    "smollm2-135m-4L vera b2x128 float32+autocast-bfloat16 adamw",
    "smollm2-135m-4L loha b2x128 float32+autocast-bfloat16 adamw",
    "smollm2-135m-4L oft b2x128 float32+autocast-bfloat16 adamw",
    "qwen3-0.6b-2blk lokr b2x64 float32+autocast-bfloat16 adamw",
    "gemma-2-2b-2blk vera b1x128 float32+autocast-bfloat16 adamw",
    "phi-3-mini-2blk lokr b1x128 bfloat16 adamw targets=gate_up_proj,down_proj",
    # the families block, chosen 2026-12-03 before these configurations were first measured
    "qwen3-0.6b-2blk full b2x128 float32+autocast-bfloat16 adamw",
    "gemma-2-2b-2blk lora b2x128 float32+autocast-bfloat16 adamw",
    "gemma-3-1b-2blk lora b2x128 float32+autocast-bfloat16 adamw gc",
    "phi-3-mini-2blk lora b2x128 float32+autocast-bfloat16 adamw",
    # the CUDA matrix's held-out block, chosen 2026-12-02 before any configuration ran on a GPU
    "smollm2-135m dora b4x512 bfloat16 adamw",
    "smollm2-135m lora b1x4096 bfloat16 adamw",
    "smollm2-135m lora b4x1024 float32+autocast-bfloat16 adamw",
    "smollm2-135m lora b1x2048 float32 adamw",
    "qwen2.5-0.5b qlora b4x2048 bfloat16 adamw gc",
    "qwen2.5-0.5b ia3 b4x512 float32+autocast-bfloat16 adamw",
    "qwen2.5-0.5b prompt b4x512 bfloat16 adamw",
    "llama-3.2-1b full b2x512 bfloat16 adamw_8bit gc",
    "llama-3.2-1b lora b2x2048 float32+autocast-bfloat16 adamw gc",
    "llama-3.1-8b qlora b2x2048 bfloat16 adamw gc",
    "llama-3.1-8b ia3 b1x1024 bfloat16 adamw gc",
)


def _err(pred: int, meas: int) -> float | None:
    if meas == 0:
        return 0.0 if pred == 0 else None
    return (pred - meas) / meas * 100


def run_one(c: dict, spec, device: str, steps: int) -> dict:
    from workbench.measure import measure
    from workbench.memory import TrainingSettings
    from workbench.runspec import RunSpec, plan_run

    settings = TrainingSettings(device=device, **c["settings"])
    run = RunSpec(model=spec.name, method=c["method"], knobs=c["knobs"], settings=settings)
    from workbench.methods import get_method

    row = {"id": config_id(c), "held_out": config_id(c) in HELD_OUT, **c}
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # the Trainer prints its logs
        measured = measure(spec, get_method(c["method"]), c["knobs"], settings, steps=steps)
    row["seconds"] = round(time.perf_counter() - start, 2)
    # the step that peaked, planned at its widest micro-batch (the first step's is the run's seq_len;
    # later steps, the first with optimizer state, are at most min(8, seq_len // 8) tokens narrower)
    width = measured.device_peak["peak_width"]
    planned = plan_run(run, seq_len=width)
    row["peak_width"], row["widest_batch"] = width, measured.device_peak["widest_batch"]
    row["losses_finite"] = all(math.isfinite(x) for x in measured.losses)
    at_seq_len = plan_run(run)  # the components were measured on the widest (seq_len) micro-batch
    row["components"] = {
        name: {"predicted": at_seq_len.component(name), "measured": measured.components[name],
               "error_pct": _err(at_seq_len.component(name), measured.components[name])}
        for name in COMPONENTS
    }
    peak = measured.device_peak
    meas_peak = peak.get("peak_tensor_bytes") if device == "cpu" else peak.get("max_memory_allocated")
    row["peak_at_op"] = peak.get("peak_at_op")
    row["peak_step"] = peak.get("peak_step")
    row["peak_measure"] = ("StepPeakCallback: live tensor bytes at step begin + tracked peak of the step"
                           if device == "cpu" else "StepPeakCallback: torch.cuda.max_memory_allocated over the step")
    row["peak"] = {"predicted": planned.peak_bytes, "measured": meas_peak,
                   "error_pct": _err(planned.peak_bytes, meas_peak) if meas_peak else None}
    if device == "cuda":  # every CUDA quantity beside the one the planner predicts (allocated)
        row["cuda_memory"] = {k: peak.get(k) for k in ("allocated_after_setup", "max_memory_allocated",
                                                       "max_memory_reserved", "memory_reserved", "nvml_used_bytes")}
    row["dominant_term"] = max((t for t in planned.peak_terms if t.name in ("backward", "end_of_backward", "step")),
                               key=lambda t: t.bytes).name
    row["status"] = "measured"
    return row


def _stats(done: list[dict]) -> dict:
    errs = [r["peak"]["error_pct"] for r in done]
    if not errs:
        return {"measured": 0}
    worst = max(done, key=lambda r: abs(r["peak"]["error_pct"]))
    under = min(done, key=lambda r: r["peak"]["error_pct"])
    within = sum(abs(e) <= 5 for e in errs)
    return {"measured": len(done), "median_abs_error_pct": statistics.median(abs(e) for e in errs),
            "within_5pct": within, "within_10pct": sum(abs(e) <= 10 for e in errs),
            "worst_error_pct": worst["peak"]["error_pct"], "worst_id": worst["id"],
            "worst_under_pct": under["peak"]["error_pct"], "worst_under_id": under["id"],
            "under_by_more_than_5pct": [r["id"] for r in done if r["peak"]["error_pct"] < -5],
            "targets": {"within_5pct_90pct": within / len(errs) >= TARGETS["within_5pct_fraction"],
                        "never_under_by_more_than_5pct": under["peak"]["error_pct"] >= TARGETS["worst_under_pct"],
                        "median_within_2pct": statistics.median(abs(e) for e in errs) <= TARGETS["median_abs_pct"]}}


def summarise(rows: list[dict]) -> dict:
    done = [r for r in rows if r["status"] == "measured" and r["peak"]["error_pct"] is not None]
    s = {"configurations": len(rows), **_stats(done),
         "not_run": [{"id": r["id"], "status": r["status"]} for r in rows if r["status"] != "measured"],
         "held_out": _stats([r for r in done if r["held_out"]]),
         "fitted": _stats([r for r in done if not r["held_out"]])}
    if done:
        s["components_exact"] = {name: sum(1 for r in done if r["components"][name]["error_pct"] == 0.0)
                                 for name in ("weights", "trainable_weights", "gradients", "optimizer")}
        act = [abs(r["components"]["activations"]["error_pct"]) for r in done
               if r["components"]["activations"]["error_pct"] is not None]
        s["activations_median_abs_error_pct"] = statistics.median(act)
        s["activations_worst_abs_error_pct"] = max(act)
    return s


# -- published figures -----------------------------------------------------------------------

BLOOM_7B1 = {"model_type": "bloom", "vocab_size": 250880, "hidden_size": 4096, "n_layer": 30, "n_head": 32}


def published(root: Path) -> list[dict]:
    """The planner's numbers beside published memory figures, with the settings assumed."""
    from workbench.memory import TrainingSettings, plan
    from workbench.methods import get_method
    from workbench.specs import load_model_spec

    def p(model, method, knobs=None, **settings):
        spec = model if not isinstance(model, str) else load_model_spec(model)
        return plan(spec, get_method(method), knobs or {}, TrainingSettings(**settings))

    rows = []
    llama2 = p("meta-llama/Llama-2-7b-hf", "lora", dtype="float16")
    rows.append({
        "claim": "Llama-2-7B fp16 weights", "published": "13.5 GB (the fp16 safetensors checkpoint: 9.98 + 3.50 GB)",
        "source": "huggingface.co/meta-llama/Llama-2-7b-hf, file list",
        "planner": f"{llama2.component('weights') / GB:.2f} GB (weights component, float16)",
        "settings": "weights only", "comparable": "yes",
    })
    qwen15 = p("Qwen/Qwen2.5-1.5B", "full", dtype="float32", batch_size=1, seq_len=512)
    states = sum(qwen15.component(n) for n in ("weights", "gradients", "optimizer"))
    rows.append({
        "claim": "model states of Adam training: 16 bytes per parameter (1.5B GPT-2: at least 24 GB)",
        "published": "16 B/param; 24 GB for 1.5B parameters",
        "source": "Rajbhandari et al. 2020, ZeRO (arXiv:1910.02054), section 3.1",
        "planner": f"{states / qwen15.total_params:.2f} B/param; {states / GB:.1f} GB for Qwen2.5-1.5B "
                   f"({qwen15.total_params / 1e9:.2f}B params)",
        "settings": "full fine-tuning, float32 weights + float32 gradients + AdamW fp32 states (weights + gradients + "
                    "optimizer components). ZeRO counts mixed precision: fp16 weights and gradients (2 + 2 B) plus "
                    "fp32 master weights, momentum and variance (12 B); the same 16 B in another split. A different "
                    "1.5B model: compare bytes per parameter.",
        "comparable": "yes, per parameter",
    })
    k65 = {"rank": 64, "alpha": 16.0, "dropout": 0.05, "target_modules": "all-linear"}
    q65 = p("huggyllama/llama-65b", "qlora", k65, dtype="bfloat16", batch_size=1, seq_len=512,
            gradient_checkpointing=True)
    rows.append({
        "claim": "QLoRA fine-tuning of a 65B model fits a single 48 GB GPU",
        "published": "< 48 GB", "source": "Dettmers et al. 2023, QLoRA (arXiv:2305.14314), abstract and introduction",
        "planner": f"{q65.peak_bytes / GB:.1f} GB peak: " + ", ".join(
            f"{n} {q65.component(n) / GB:.1f}" for n in ("weights", "trainable_weights", "gradients", "optimizer",
                                                          "activations", "logits")) + " GB",
        "settings": "LLaMA-65B, NF4 + double quantization, LoRA r=64 on all linear layers (fp32 adapters, as peft "
                    "keeps them), bf16 compute, gradient checkpointing, micro-batch 1 x 512 tokens, AdamW. The paper "
                    "used paged optimizers, whose states move to CPU memory under pressure: without the optimizer "
                    f"states the plan is {(q65.peak_bytes - q65.component('optimizer')) / GB:.1f} GB. The paper's "
                    "micro-batch, lengths and adapter precision are not restated here.",
        "comparable": "roughly (settings assumed)",
    })
    f65 = p("huggyllama/llama-65b", "full", dtype="bfloat16", batch_size=1, seq_len=512, gradient_checkpointing=True)
    f65_32 = p("huggyllama/llama-65b", "full", dtype="float32", batch_size=1, seq_len=512, gradient_checkpointing=True)
    rows.append({
        "claim": "regular 16-bit fine-tuning of a 65B model needs more than 780 GB",
        "published": "> 780 GB", "source": "Dettmers et al. 2023, QLoRA (arXiv:2305.14314), introduction",
        "planner": f"{f65.peak_bytes / GB:.0f} GB in pure bf16 (bf16 AdamW states); {f65_32.peak_bytes / GB:.0f} GB "
                   "in float32",
        "settings": "full fine-tuning, AdamW, gradient checkpointing, micro-batch 1 x 512. The planner has no mixed "
                    "mode (16-bit weights with fp32 optimizer states, about 12 B/param, which is what > 780 GB "
                    "corresponds to): its pure-bf16 figure is below the published one by construction and its fp32 "
                    "figure above it.",
        "comparable": "brackets it",
    })
    bloom = _bloom_spec(root)
    if bloom is None:
        rows.append({"claim": "PEFT README: bloomz-7b1", "published": "32 GB (LoRA), OOM on 80 GB (full)",
                     "source": "github.com/huggingface/peft README",
                     "planner": "not planned (Bloom config unbuildable)",
                     "settings": "", "comparable": "no"})
    else:
        kb = {"rank": 8, "alpha": 32.0, "dropout": 0.1, "target_modules": "query_key_value"}
        lb = p(bloom, "lora", kb, dtype="float32", batch_size=8, seq_len=64)
        fb = p(bloom, "full", dtype="float32", batch_size=8, seq_len=64)
        rows.append({
            "claim": "PEFT README (single A100 80 GB): bigscience/bloomz-7b1 PEFT-LoRA PyTorch",
            "published": "32 GB GPU", "source": "github.com/huggingface/peft README, 'Use cases' memory table",
            "planner": f"{lb.peak_bytes / GB:.1f} GB peak (weights {lb.component('weights') / GB:.1f} GB)",
            "settings": "Bloom-7B1 config (vocab 250880, hidden 4096, 30 layers, 32 heads), float32 weights, LoRA r=8 "
                        "alpha 32 dropout 0.1 on query_key_value, batch 8 x 64 tokens, AdamW. The README does not "
                        "state batch, length or dtype next to the table (assumed: the twitter_complaints example, "
                        "fp32); Bloom is not Llama-like, so activations use the Korthikanti et al. approximation.",
            "comparable": "loosely (settings assumed)",
        })
        rows.append({
            "claim": "PEFT README: bigscience/bloomz-7b1 full fine-tuning", "published": "OOM on an 80 GB GPU",
            "source": "github.com/huggingface/peft README, 'Use cases' memory table",
            "planner": f"{fb.peak_bytes / GB:.0f} GB peak "
                       f"(> 80 GB: {'agrees' if fb.peak_bytes > 80 * GB else 'DISAGREES'})",
            "settings": "as above, full fine-tuning with AdamW in float32", "comparable": "yes (qualitative)",
        })
    rows.append({
        "claim": "PEFT README: bigscience/T0_3B (47.14 GB full, 14.4 GB LoRA) and mt0-xxl (56 GB LoRA)",
        "published": "47.14 / 14.4 / 56 GB", "source": "github.com/huggingface/peft README",
        "planner": "not planned: T5-family encoder-decoder models; the planner covers causal LMs only",
        "settings": "", "comparable": "no",
    })
    return rows


def _bloom_spec(root: Path):
    try:
        from transformers import BloomConfig

        from workbench.specs import load_model_spec

        folder = root / "bloom-7b1-config"
        folder.mkdir(parents=True, exist_ok=True)
        cfg = BloomConfig(**{k: v for k, v in BLOOM_7B1.items() if k != "model_type"}).to_dict()
        cfg.update(num_hidden_layers=BLOOM_7B1["n_layer"], num_attention_heads=BLOOM_7B1["n_head"])
        (folder / "config.json").write_text(json.dumps(cfg))
        return load_model_spec(str(folder))
    except Exception as exc:  # reported in the table, never hidden
        print(f"Bloom config: {type(exc).__name__}: {exc}", file=sys.stderr)
        return None


# -- output ----------------------------------------------------------------------------------

def _mb(x) -> str:
    return "–" if x is None else f"{x / MB:.2f}"


def _pct(x) -> str:
    return "n/a" if x is None else f"{x:+.1f}%"


def _pair(c: dict) -> str:
    if c["predicted"] == c["measured"]:
        return f"{_mb(c['measured'])} (=)"
    return f"{_mb(c['predicted'])} / {_mb(c['measured'])} ({_pct(c['error_pct'])})"


def _line(label: str, s: dict) -> str:
    if not s.get("measured"):
        return f"{label}: nothing measured"
    return (f"{label}: {s['within_5pct']}/{s['measured']} within ±5%, median |error| {s['median_abs_error_pct']:.2f}%, "
            f"worst {s['worst_error_pct']:+.2f}% ({s['worst_id']}), worst under-prediction "
            f"{s['worst_under_pct']:+.2f}% ({s['worst_under_id']})")


def device_markdown(device: str, entry: dict) -> str:
    meta, s, rows = entry["meta"], entry["summary"], entry["configs"]
    v = meta.get("versions", meta)
    lines = [f"## {device.upper()}: {meta['date']}", "",
             f"- commit: `{meta.get('commit', '?')[:12]}`" + (" (with uncommitted changes)" if meta.get("dirty") else ""),
             f"- device: {meta.get('device_name', '')}, {meta.get('cpus')} CPUs; {meta.get('machine', '')}",
             "- versions: " + ", ".join(f"{k} {v.get(k)}" for k in ("python", "torch", "transformers", "peft",
                                                                    "accelerate", "bitsandbytes")),
             f"- {meta['steps']} optimizer steps per configuration inside the worker's Trainer; peak: "
             f"{meta['peak_measure']}", "",
             "Models: " + "; ".join(f"`{k}` = {d}" for k, d in meta["models"].items()) + ".", ""]
    if s.get("measured"):
        lines += [f"**All: {_line('peak', s)[6:]}.**", "",
                  f"**Held out (chosen before any planner change, never fitted to): {_line('', s['held_out'])[2:]}.**",
                  "", f"Fitted on: {_line('', s['fitted'])[2:]}.", "",
                  "Targets (all configurations): " + ", ".join(f"{k} {'met' if x else 'NOT met'}"
                                                             for k, x in s["targets"].items()) + ".", "",
                  "Components exact (bytes equal): " + ", ".join(f"{k} {n}/{s['measured']}"
                                                                for k, n in s["components_exact"].items())
                  + f". Activations: median |error| {s['activations_median_abs_error_pct']:.2f}%, worst "
                  f"{s['activations_worst_abs_error_pct']:.2f}%.", ""]
        if entry.get("before"):
            b = entry["before"]
            lines += [f"Before the planner followed the worker's loop (same matrix, {b['date']}): "
                      f"{_line('', b['summary'])[2:]}; held out: {_line('', b['summary']['held_out'])[2:]}.", ""]
    if s.get("not_run"):
        lines += ["Not run: " + "; ".join(f"{r['id']}: {r['status']}" for r in s["not_run"]), ""]
    before = {r["id"]: r["peak"]["error_pct"] for r in (entry.get("before") or {}).get("configs", [])
              if r.get("status") == "measured"}
    lines += ["MB = 10^6 bytes; `p / m (err)` = planned / measured (error of the plan); `(=)` = equal to the byte. "
              "**H** = held out.", "",
              "| configuration | weights | trainable | gradients | optimizer | activations | logits | peak planned "
              "| peak measured | peak error | before | op at the peak (step) |",
              "|---|---|---|---|---|---|---|---:|---:|---:|---:|---|"]
    for r in rows:
        name = r["id"] + (" **H**" if r.get("held_out") else "")
        if r["status"] != "measured":
            lines.append(f"| {name} | {r['status']} |  |  |  |  |  |  |  |  |  |  |")
            continue
        c = r["components"]
        lines.append(
            f"| {name} | {_pair(c['weights'])} | {_pair(c['trainable_weights'])} | {_pair(c['gradients'])} | "
            f"{_pair(c['optimizer'])} | {_pair(c['activations'])} | {_pair(c['logits'])} | "
            f"{_mb(r['peak']['predicted'])} | {_mb(r['peak']['measured'])} | **{_pct(r['peak']['error_pct'])}** | "
            f"{_pct(before.get(r['id']))} | `{r.get('peak_at_op')}` ({r.get('peak_step')}) |")
    return "\n".join(lines) + "\n"


def published_markdown(rows: list[dict]) -> str:
    lines = ["## The planner beside published figures", "",
             "| claim | published | source | planner | settings assumed | comparable |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['claim']} | {r['published']} | {r['source']} | {r['planner']} | {r['settings']} | "
              f"{r['comparable']} |" for r in rows]
    return "\n".join(lines) + "\n"


def write_results(device: str, entry: dict, pub: list[dict], label: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    if label:
        (RESULTS / f"planner_accuracy.{label}.json").write_text(json.dumps(entry, indent=1))
        return
    before = RESULTS / "planner_accuracy.before.json"
    if before.is_file() and device == "cpu":
        b = json.loads(before.read_text())
        entry["before"] = {"date": b["meta"]["date"], "commit": b["meta"].get("commit"), "summary": b["summary"],
                           "configs": [{"id": r["id"], "status": r["status"], "peak": r.get("peak")}
                                       for r in b["configs"]]}
    path = RESULTS / "planner_accuracy.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    data.setdefault("results", {})[device] = entry
    data["published"] = pub
    data["about"] = ("Planned vs measured step peak per configuration, measured inside the worker's Trainer step, "
                     "one entry per device kind; written by bench/planner_accuracy.py. A device kind without an "
                     "entry was not measured.")
    path.write_text(json.dumps(data, indent=1))
    parts = ["# Planner accuracy (the worker's Trainer step)", "",
             "Written by `python bench/planner_accuracy.py`; see docs/benchmarks.md.", ""]
    for kind in ("cpu", "cuda"):
        if kind in data["results"]:
            parts.append(device_markdown(kind, data["results"][kind]))
        else:
            parts.append(f"## {kind.upper()}\n\nNot measured: no {'GPU' if kind == 'cuda' else 'CPU'} run has been "
                         "committed (the session that produced these results had no such device).\n")
    parts.append(published_markdown(pub))
    (RESULTS / "planner_accuracy.md").write_text("\n".join(parts))


def merged(device: str, rows: list[dict], meta: dict) -> dict:
    """The committed results for ``device`` with ``rows`` put in (by id, in the matrix's order);
    every row says the commit and date it was measured at, and the summary is recomputed."""
    path = RESULTS / "planner_accuracy.json"
    old = json.loads(path.read_text())["results"][device] if path.is_file() else {"meta": {}, "configs": []}
    base = {"commit": old["meta"].get("commit"), "date": old["meta"].get("date")}
    by_id = {r["id"]: {**base, **r} for r in old["configs"]}
    by_id.update({r["id"]: {**r, "commit": meta.get("commit"), "date": meta.get("date")} for r in rows})
    order = [config_id(c) for c in (cuda_matrix() if device == "cuda" else cpu_matrix())]
    configs = [by_id[i] for i in order if i in by_id] + [r for i, r in by_id.items() if i not in order]
    new_meta = {**old["meta"], "merged": {"commit": meta.get("commit"), "date": meta.get("date"),
                                          "ids": [r["id"] for r in rows]},
                "held_out": list(HELD_OUT)}
    return {"meta": new_meta, "summary": summarise(configs), "configs": configs}


def print_table(rows: list[dict]) -> None:
    print(f"{'configuration':<54} {'H':>1} {'act err':>8} {'plan MB':>9} {'meas MB':>9} {'err':>7} "
          f"{'op at the peak':<40} {'s':>5}")
    for r in rows:
        if r["status"] != "measured":
            print(f"{r['id']:<54} {r['status']}")
            continue
        print(f"{r['id']:<54} {'H' if r['held_out'] else ' '} {_pct(r['components']['activations']['error_pct']):>8} "
              f"{r['peak']['predicted'] / MB:>9.2f} {r['peak']['measured'] / MB:>9.2f} "
              f"{_pct(r['peak']['error_pct']):>7} {str(r['peak_at_op'])[:40]:<40} {r['seconds']:>5.1f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps per configuration (>= 2)")
    parser.add_argument("--only", default="", help="run only configurations whose id contains this")
    parser.add_argument("--label", default="", help="write planner_accuracy.<label>.json only (e.g. before)")
    parser.add_argument("--no-write", action="store_true", help="print only; keep the committed results")
    parser.add_argument("--quick", action="store_true", help="two tiny configurations (a dry run)")
    parser.add_argument("--out", default="", help="write the rows and summary to OUT/planner_accuracy.json only "
                                                  "(the committed results are left alone)")
    parser.add_argument("--merge", action="store_true",
                        help="with --only: replace (or add) just these configurations in the committed results, "
                             "each row keeping the commit and date it was measured at, and recompute the summary")
    args = parser.parse_args()
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: CUDA is not available here; nothing measured", file=sys.stderr)
        return 2
    from workbench.paths import cache_dir

    models = CUDA_MODELS if args.device == "cuda" else CPU_MODELS
    matrix = quick_matrix() if args.quick else cuda_matrix() if args.device == "cuda" else cpu_matrix()
    matrix = [c for c in matrix if args.only in config_id(c)]
    root = cache_dir() / "bench-models"
    root.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    specs, rows = {}, []
    for c in matrix:
        try:
            if c["model"] not in specs:
                specs[c["model"]] = build_model(c["model"], models, root)
            rows.append(run_one(c, specs[c["model"]], args.device, max(2, args.steps)))
        except Exception as exc:  # a configuration that cannot run is reported as such
            rows.append({"id": config_id(c), "held_out": config_id(c) in HELD_OUT, **c,
                         "status": f"not run: {type(exc).__name__}: {str(exc)[:160]}"})
        r = rows[-1]
        print(f"[{len(rows)}/{len(matrix)}] {r['id']}: {r['status']}"
              + (f" {_pct(r['peak']['error_pct'])}" if r["status"] == "measured" else ""), file=sys.stderr, flush=True)
    print_table(rows)
    summary = summarise(rows)
    meta = metadata(args.device)
    meta.update(steps=max(2, args.steps), seconds=round(time.perf_counter() - started, 1),
                models_label="tiny/small configs, worker's Trainer step" if args.device == "cpu" else "tiny to 1B",
                models={k: models[k][2] for k in dict.fromkeys(c["model"] for c in matrix)},
                held_out=list(HELD_OUT), held_out_note="chosen before any planner change; never used to fit a term",
                peak_measure=rows[0].get("peak_measure", "") if rows else "")
    pub = published(root)
    if summary.get("measured"):
        print("\n" + _line("all", summary) + "\n" + _line("held out", summary["held_out"]) + "\n"
              + _line("fitted", summary["fitted"]) + f"\n{meta['seconds']} s")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "planner_accuracy.json").write_text(json.dumps({"meta": meta, "summary": summary, "configs": rows},
                                                               indent=1, default=str))
        return 0
    if args.merge and not args.no_write:
        entry = merged(args.device, rows, meta)
        summary = entry["summary"]
        print("\nmerged into the committed results:\n" + _line("all", summary) + "\n"
              + _line("held out", summary["held_out"]))
        write_results(args.device, entry, pub, args.label)
    elif not args.no_write and not args.only:
        write_results(args.device, {"meta": meta, "summary": summary, "configs": rows}, pub, args.label)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
