"""How close is the memory planner to measured memory? A matrix of real training runs.

Each configuration (model x method x batch x sequence x dtype x gradient checkpointing x
optimizer) runs a few real training steps through ``workbench.measure`` -- the same measurer
the tests use -- and its components are compared with ``workbench.memory.plan``:

- ``weights``, ``trainable_weights``, ``gradients``, ``optimizer``: bytes of the real tensors;
- ``activations`` / ``logits``: tensors autograd saved in the forward pass (saved-tensor hooks);
- peak: on CPU the tensor peak of a whole training step, tracked op by op (TorchDispatchMode),
  plus the persistent tensors; on CUDA ``torch.cuda.max_memory_allocated`` (also
  ``memory_reserved`` and, with pynvml, the driver's used-memory peak above the start);
- beside it, the process's peak resident-set growth during the configuration (Linux
  ``VmHWM``, reset per configuration; Python, libraries, allocator caches and file reads
  included, so it is context, not the planner's target).

Models are real architectures with random weights, built offline from the bundled configs and
sized to the hardware: on CPU the built-in ``tiny`` Llama and SmolLM2-135M / Qwen2.5-0.5B cut
to 4 / 2 decoder blocks (real widths, real vocabularies); on CUDA the full-size SmolLM2-135M,
Qwen2.5-0.5B and Llama-3.2-1B as well, at longer sequences. It also prints the planner's
figures next to published memory figures. Results go to ``bench/results/planner_accuracy.*``,
one entry per device kind (a CUDA run keeps the CPU entry and vice versa).

    python bench/planner_accuracy.py [--device cpu|cuda] [--steps 3] [--only SUBSTRING]
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

RESULTS = Path(__file__).resolve().parent / "results"
MB = 1e6
GB = 1e9
COMPONENTS = ("weights", "trainable_weights", "gradients", "optimizer", "activations", "logits")
# The targets, stated for max_memory_allocated on a GPU; on CPU they are applied to
# the tracked tensor peak for reference.
TARGETS = {"within_5pct_fraction": 0.90, "worst_abs_pct": 10.0, "worst_under_pct": -5.0, "median_abs_pct": 3.0}


# -- environment -----------------------------------------------------------------------------

def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment(device: str = "cpu") -> dict:
    """Date, machine and library versions, for every results file of the benchmarks."""
    import peft
    import torch
    import transformers

    meta = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "device": device,
            "machine": platform.platform(), "cpu": cpu_model(), "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__}
    try:
        import bitsandbytes

        meta["bitsandbytes"] = bitsandbytes.__version__
    except Exception as exc:  # a missing wheel is reported, not hidden
        meta["bitsandbytes"] = f"unavailable ({type(exc).__name__})"
    if device == "cuda" and torch.cuda.is_available():
        meta["gpu"] = torch.cuda.get_device_name(0)
        meta["cuda"] = torch.version.cuda
    return meta


# -- process memory (Linux) ------------------------------------------------------------------

def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _settle() -> None:
    """Collect garbage and hand freed heap back to the OS, so RSS growth starts from a floor."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (``echo 5 > /proc/self/clear_refs``, Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class NvmlPeak:
    """Peak of NVML's used device memory, sampled every 20 ms (None without pynvml)."""

    def __init__(self) -> None:
        self.peak = self.start = None
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            self._read = lambda: int(pynvml.nvmlDeviceGetMemoryInfo(handle).used)
        except Exception:
            self._read = None
        self._stop = threading.Event()
        self._thread = None

    def __enter__(self):
        if self._read is not None:
            self.start = self.peak = self._read()
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self._read())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self.peak = max(self.peak, self._read())


# -- models ----------------------------------------------------------------------------------

# key -> (bundled config, overrides, description)
CPU_MODELS = {
    "tiny": (None, {}, "built-in tiny Llama (GQA 8/4 heads, 4 blocks, vocab 4096)"),
    "smollm2-135m-4L": ("HuggingFaceTB/SmolLM2-135M", {"num_hidden_layers": 4},
                        "SmolLM2-135M config, 4 of 30 blocks, tied 49152-token embeddings"),
    "qwen2.5-0.5b-2L": ("Qwen/Qwen2.5-0.5B", {"num_hidden_layers": 2},
                        "Qwen2.5-0.5B config, 2 of 24 blocks, q/k/v biases, tied 151936-token embeddings"),
}
CUDA_MODELS = {
    **CPU_MODELS,
    "smollm2-135m": ("HuggingFaceTB/SmolLM2-135M", {}, "SmolLM2-135M config, full size"),
    "qwen2.5-0.5b": ("Qwen/Qwen2.5-0.5B", {}, "Qwen2.5-0.5B config, full size"),
    "llama-3.2-1b": ("meta-llama/Llama-3.2-1B", {}, "Llama-3.2-1B config, full size"),
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
        hf_config = AutoConfig.for_model(**config)
        torch.manual_seed(0)
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
    every_method = ["full", "freeze", "bitfit", "lora", "rslora", "dora", "ia3", "adalora", "prefix", "prompt",
                    "loha", "lokr", "oft", "vera"]
    m = [_cfg("tiny", name) for name in every_method]
    # gradient checkpointing on, bf16, another shape
    m += [_cfg("tiny", name, dtype="bfloat16", batch_size=1, seq_len=96, gradient_checkpointing=True)
          for name in ("full", "lora", "dora", "loha", "ia3")]
    # quantized bases (bitsandbytes on CPU)
    m += [_cfg("tiny", "qlora", dtype="bfloat16", seq_len=48),
          _cfg("tiny", "qlora", dtype="bfloat16", seq_len=48, gradient_checkpointing=True),
          _cfg("tiny", "lora-8bit", dtype="bfloat16"),
          _cfg("tiny", "lora-8bit", dtype="bfloat16", gradient_checkpointing=True)]
    # batch x sequence
    m += [_cfg("tiny", "lora", batch_size=1, seq_len=32), _cfg("tiny", "lora", batch_size=4, seq_len=128),
          _cfg("tiny", "lora", batch_size=8, seq_len=256), _cfg("tiny", "full", batch_size=4, seq_len=128),
          _cfg("tiny", "full", dtype="bfloat16", batch_size=8, seq_len=256)]
    # optimizers
    m += [_cfg("tiny", "full", optimizer="adamw_8bit"), _cfg("tiny", "full", optimizer="sgd"),
          _cfg("tiny", "lora", optimizer="adamw_8bit"), _cfg("tiny", "lora", optimizer="sgd"),
          _cfg("tiny", "ia3", optimizer="sgd_momentum"), _cfg("tiny", "full", optimizer="adafactor"),
          _cfg("tiny", "full", attention="eager")]
    # small real architectures (float32 where the method allows: bf16 matmuls are slow on CPUs without AMX)
    s = {"dtype": "float32", "batch_size": 2, "seq_len": 128}
    m += [_cfg("smollm2-135m-4L", "full", **s), _cfg("smollm2-135m-4L", "full", **s, optimizer="sgd"),
          _cfg("smollm2-135m-4L", "freeze", **s), _cfg("smollm2-135m-4L", "lora", **s),
          _cfg("smollm2-135m-4L", "lora", **{**s, "seq_len": 256}, gradient_checkpointing=True),
          _cfg("smollm2-135m-4L", "lora", **s, optimizer="adamw_8bit"), _cfg("smollm2-135m-4L", "dora", **s),
          _cfg("smollm2-135m-4L", "lora", **{**s, "dtype": "bfloat16"}),
          _cfg("smollm2-135m-4L", "qlora", **{**s, "dtype": "bfloat16"}, gradient_checkpointing=True)]
    m += [_cfg("qwen2.5-0.5b-2L", "lora", **s), _cfg("qwen2.5-0.5b-2L", "full", **s, optimizer="sgd"),
          _cfg("qwen2.5-0.5b-2L", "ia3", **s), _cfg("qwen2.5-0.5b-2L", "prefix", **s),
          _cfg("qwen2.5-0.5b-2L", "lora-8bit", **{**s, "dtype": "bfloat16"})]
    return m


def cuda_matrix() -> list[dict]:
    """Run only where CUDA is present. Longer sequences, full-size models."""
    m = []
    for model in ("tiny", "smollm2-135m", "qwen2.5-0.5b", "llama-3.2-1b"):
        s = {"dtype": "bfloat16", "batch_size": 4, "seq_len": 512}
        m += [_cfg(model, "full", **s), _cfg(model, "lora", **s), _cfg(model, "qlora", **s),
              _cfg(model, "lora-8bit", **s), _cfg(model, "dora", **s), _cfg(model, "ia3", **s),
              _cfg(model, "prefix", **s), _cfg(model, "lora", **s, gradient_checkpointing=True),
              _cfg(model, "full", **s, gradient_checkpointing=True, optimizer="adamw_8bit"),
              _cfg(model, "lora", **{**s, "batch_size": 1, "seq_len": 2048})]
    m += [_cfg("qwen2.5-0.5b", "full", dtype="bfloat16", batch_size=2, seq_len=512, optimizer="sgd"),
          _cfg("smollm2-135m", "freeze", dtype="bfloat16", batch_size=8, seq_len=256)]
    return m


def config_id(c: dict) -> str:
    s = c["settings"]
    extra = [s.get("optimizer", "adamw")]
    if s.get("gradient_checkpointing"):
        extra.append("gc")
    if s.get("attention", "sdpa") != "sdpa":
        extra.append(s["attention"])
    return f"{c['model']} {c['method']} b{s['batch_size']}x{s['seq_len']} {s['dtype']} {' '.join(extra)}"


def _err(pred: int, meas: int) -> float | None:
    if meas == 0:
        return 0.0 if pred == 0 else None
    return (pred - meas) / meas * 100


def run_one(c: dict, spec, device: str, steps: int) -> dict:
    import torch

    from workbench.measure import measure
    from workbench.memory import TrainingSettings, plan
    from workbench.methods import get_method

    method = get_method(c["method"])
    settings = TrainingSettings(device=device, **c["settings"])
    row = {"id": config_id(c), **c}
    _settle()
    if device == "cuda":
        torch.cuda.empty_cache()
    reset_ok = reset_peak_rss()
    rss0 = (_status_kib("VmRSS") or 0) * 1024
    start = time.perf_counter()
    planned = plan(spec, method, c["knobs"], settings)
    with NvmlPeak() if device == "cuda" else _Null() as nvml:
        if device == "cuda":
            row["cuda_allocated_at_start"] = torch.cuda.memory_allocated()
        measured = measure(spec, method, c["knobs"], settings, steps=steps)
    row["seconds"] = round(time.perf_counter() - start, 2)
    hwm = (_status_kib("VmHWM") or 0) * 1024
    row["rss_growth_bytes"] = hwm - rss0 if reset_ok and hwm else None
    row["losses_finite"] = all(math.isfinite(x) for x in measured.losses)
    row["components"] = {
        name: {"predicted": planned.component(name), "measured": measured.components[name],
               "error_pct": _err(planned.component(name), measured.components[name])}
        for name in COMPONENTS
    }
    peak = measured.device_peak
    if device == "cuda":
        meas_peak = peak.get("max_memory_allocated")
        row["cuda"] = {"max_memory_allocated": meas_peak, "memory_reserved": peak.get("memory_reserved"),
                       "nvml_peak_above_start": (nvml.peak - nvml.start) if nvml.start is not None else None}
        row["peak_measure"] = "torch.cuda.max_memory_allocated"
    else:
        meas_peak = peak.get("peak_tensor_bytes")
        row["peak_at_op"] = peak.get("peak_at_op")
        row["peak_measure"] = "tracked tensor peak of a training step + persistent tensors"
    row["peak"] = {"predicted": planned.peak_bytes, "measured": meas_peak,
                   "error_pct": _err(planned.peak_bytes, meas_peak) if meas_peak else None}
    row["status"] = "measured"
    del measured
    return row


class _Null:
    start = peak = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


def summarise(rows: list[dict]) -> dict:
    done = [r for r in rows if r["status"] == "measured" and r["peak"]["error_pct"] is not None]
    errs = [r["peak"]["error_pct"] for r in done]
    if not errs:
        return {"measured": 0, "configurations": len(rows)}
    worst = max(done, key=lambda r: abs(r["peak"]["error_pct"]))
    under = min(done, key=lambda r: r["peak"]["error_pct"])
    exact = {name: sum(1 for r in done if r["components"][name]["error_pct"] == 0.0)
             for name in ("weights", "trainable_weights", "gradients", "optimizer")}
    act = [abs(r["components"]["activations"]["error_pct"]) for r in done
           if r["components"]["activations"]["error_pct"] is not None]
    within = sum(abs(e) <= 5 for e in errs)
    s = {
        "configurations": len(rows), "measured": len(done),
        "not_run": [{"id": r["id"], "status": r["status"]} for r in rows if r["status"] != "measured"],
        "median_abs_error_pct": statistics.median(abs(e) for e in errs),
        "mean_abs_error_pct": statistics.fmean(abs(e) for e in errs),
        "within_5pct": within, "within_10pct": sum(abs(e) <= 10 for e in errs),
        "worst_error_pct": worst["peak"]["error_pct"], "worst_id": worst["id"],
        "worst_under_pct": under["peak"]["error_pct"], "worst_under_id": under["id"],
        "under_by_more_than_5pct": [r["id"] for r in done if r["peak"]["error_pct"] < -5],
        "components_exact": exact,
        "activations_median_abs_error_pct": statistics.median(act) if act else None,
        "activations_worst_abs_error_pct": max(act) if act else None,
        "activations_within_5pct": sum(a <= 5 for a in act),
    }
    s["targets"] = {
        "within_5pct": within / len(errs) >= TARGETS["within_5pct_fraction"],
        "worst_within_10pct": abs(s["worst_error_pct"]) <= TARGETS["worst_abs_pct"],
        "never_under_by_more_than_5pct": s["worst_under_pct"] >= TARGETS["worst_under_pct"],
        "median_within_3pct": s["median_abs_error_pct"] <= TARGETS["median_abs_pct"],
    }
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


def device_markdown(device: str, entry: dict) -> str:
    meta, s, rows = entry["meta"], entry["summary"], entry["configs"]
    lines = [f"## {device.upper()}: {meta['date']}", "",
             f"{meta['machine']}; {meta['cpu']}, {meta['cpus']} CPUs" + (f"; {meta['gpu']}" if meta.get("gpu") else "")
             + f". torch {meta['torch']}, transformers {meta['transformers']}, peft {meta['peft']}, "
             f"bitsandbytes {meta['bitsandbytes']}. {meta['steps']} training steps per configuration.", "",
             "Models: " + "; ".join(f"`{k}` = {v}" for k, v in meta["models"].items()) + ".", ""]
    if s.get("measured"):
        t = s["targets"]
        lines += [
            f"**Peak: median |error| {s['median_abs_error_pct']:.2f}%, {s['within_5pct']}/{s['measured']} within ±5%, "
            f"{s['within_10pct']}/{s['measured']} within ±10%, worst {s['worst_error_pct']:+.2f}% ({s['worst_id']}), "
            f"worst under-prediction {s['worst_under_pct']:+.2f}% ({s['worst_under_id']}).**", "",
            f"Components exact (bytes equal) in {s['measured']} configurations: "
            + ", ".join(f"{k} {v}" for k, v in s["components_exact"].items())
            + f". Activations (saved-for-backward bytes): median |error| {s['activations_median_abs_error_pct']:.2f}%, "
            f"worst {s['activations_worst_abs_error_pct']:.2f}%, {s['activations_within_5pct']}/{s['measured']} "
            "within ±5%.", "",
            "Targets of the issue (stated for GPU max allocated" + ("" if device == "cuda" else
                                                                    "; here applied to the CPU tensor peak") + "): "
            + ", ".join(f"{k} {'met' if v else 'NOT met'}" for k, v in t.items()) + ".", ""]
    if s.get("not_run"):
        lines += ["Not run: " + "; ".join(f"{r['id']}: {r['status']}" for r in s["not_run"]), ""]
    gpu_col = "GPU max allocated" if device == "cuda" else "GPU"
    lines += ["MB = 10^6 bytes; `p / m (err)` = planned / measured (error of the plan); `(=)` = equal to the byte.", "",
              f"| configuration | weights | trainable | gradients | optimizer | activations | logits | peak planned "
              f"| peak measured | peak error | RSS growth | {gpu_col} |",
              "|---|---|---|---|---|---|---|---:|---:|---:|---:|---|"]
    for r in rows:
        if r["status"] != "measured":
            lines.append(f"| {r['id']} | {r['status']} |  |  |  |  |  |  |  |  |  |  |")
            continue
        c = r["components"]
        gpu = (f"{_mb(r['cuda']['max_memory_allocated'])} (reserved {_mb(r['cuda']['memory_reserved'])})"
               if device == "cuda" else "not measured (no GPU in this session)")
        lines.append(
            f"| {r['id']} | {_pair(c['weights'])} | {_pair(c['trainable_weights'])} | {_pair(c['gradients'])} | "
            f"{_pair(c['optimizer'])} | {_pair(c['activations'])} | {_pair(c['logits'])} | "
            f"{_mb(r['peak']['predicted'])} | {_mb(r['peak']['measured'])} | **{_pct(r['peak']['error_pct'])}** | "
            f"{_mb(r['rss_growth_bytes'])} | {gpu} |")
    return "\n".join(lines) + "\n"


def published_markdown(rows: list[dict]) -> str:
    lines = ["## The planner beside published figures", "",
             "| claim | published | source | planner | settings assumed | comparable |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['claim']} | {r['published']} | {r['source']} | {r['planner']} | {r['settings']} | "
              f"{r['comparable']} |" for r in rows]
    return "\n".join(lines) + "\n"


def write_results(device: str, entry: dict, pub: list[dict]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "planner_accuracy.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    data.setdefault("results", {})[device] = entry
    data["published"] = pub
    data["about"] = ("Planned vs measured memory per configuration, one entry per device kind; written by "
                     "bench/planner_accuracy.py. A device kind without an entry was not measured.")
    path.write_text(json.dumps(data, indent=1))
    parts = ["# Planner accuracy", "", "Written by `python bench/planner_accuracy.py`; see docs/benchmarks.md.", ""]
    for kind in ("cpu", "cuda"):
        if kind in data["results"]:
            parts.append(device_markdown(kind, data["results"][kind]))
        else:
            parts.append(f"## {kind.upper()}\n\nNot measured: no {'GPU' if kind == 'cuda' else 'CPU'} run has been "
                         "committed (the session that produced these results had no such device).\n")
    parts.append(published_markdown(pub))
    (RESULTS / "planner_accuracy.md").write_text("\n".join(parts))


def print_table(rows: list[dict]) -> None:
    print(f"{'configuration':<52} {'act err':>8} {'peak plan MB':>12} {'peak meas MB':>12} {'err':>7} "
          f"{'RSS+ MB':>8} {'s':>5}")
    for r in rows:
        if r["status"] != "measured":
            print(f"{r['id']:<52} {r['status']}")
            continue
        print(f"{r['id']:<52} {_pct(r['components']['activations']['error_pct']):>8} "
              f"{r['peak']['predicted'] / MB:>12.2f} {r['peak']['measured'] / MB:>12.2f} "
              f"{_pct(r['peak']['error_pct']):>7} {_mb(r['rss_growth_bytes']):>8} {r['seconds']:>5.1f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--steps", type=int, default=3, help="real training steps per configuration (>= 2)")
    parser.add_argument("--only", default="", help="run only configurations whose id contains this")
    parser.add_argument("--no-write", action="store_true", help="print only; keep the committed results")
    args = parser.parse_args()
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: CUDA is not available here; nothing measured", file=sys.stderr)
        return 2
    from workbench.paths import cache_dir

    models = CUDA_MODELS if args.device == "cuda" else CPU_MODELS
    matrix = cuda_matrix() if args.device == "cuda" else cpu_matrix()
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
            rows.append({"id": config_id(c), **c, "status": f"not run: {type(exc).__name__}: {str(exc)[:160]}"})
        print(f"[{len(rows)}/{len(matrix)}] {rows[-1]['id']}: {rows[-1]['status']}", file=sys.stderr, flush=True)
    print_table(rows)
    summary = summarise(rows)
    meta = environment(args.device)
    meta.update(steps=max(2, args.steps), seconds=round(time.perf_counter() - started, 1),
                models_label="tiny/small configs" if args.device == "cpu" else "tiny to 1B configs",
                models={k: models[k][2] for k in dict.fromkeys(c["model"] for c in matrix)},
                peak_measure=("tracked tensor peak (TorchDispatchMode) + persistent tensors" if args.device == "cpu"
                              else "torch.cuda.max_memory_allocated"))
    pub = published(root)
    if summary.get("measured"):
        print(f"\npeak: median |error| {summary['median_abs_error_pct']:.2f}%, {summary['within_5pct']}/"
              f"{summary['measured']} within ±5%, worst {summary['worst_error_pct']:+.2f}% ({summary['worst_id']}), "
              f"worst under {summary['worst_under_pct']:+.2f}%; {meta['seconds']} s")
    for r in pub:
        print(f"published: {r['claim']}: {r['published']} | planner: {r['planner']}")
    if not args.no_write and not args.only:
        write_results(args.device, {"meta": meta, "summary": summary, "configs": rows}, pub)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
