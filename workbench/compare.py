"""Teaching helpers: every method side by side, and which settings fit a given GPU.

``compare_methods`` plans each registered method for one model and one set of settings.
``what_fits`` searches method x quantization x batch x checkpointing for plans under a
memory budget and orders them by expected speed. The speed model is a FLOP count, not a
measurement: per token a forward pass costs 2N FLOPs for N parameters, back-propagating to
the inputs another 2N, weight gradients 2N_trained, and checkpointing repeats the forward
(Kaplan et al. 2020, arXiv:2001.08361, C = 6N for full training). bitsandbytes kernels
dequantize on the fly; their slowdown factors below are rough and labelled as such.

``per_gpu_table`` plans one model and method under every strategy for 1, 2, 4 and 8 GPUs:
per-GPU peak and host memory, and whether it fits a given GPU.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from .errors import WorkbenchError
from .memory import TrainingSettings, plan
from .memory.settings import DTYPE_BYTES, STRATEGIES
from .methods import METHODS
from .specs import ModelSpec

DEQUANT_SLOWDOWN = {"none": 1.0, "8bit": 1.6, "4bit": 1.3}  # rough, bitsandbytes on GPU (uncalibrated)
BATCHES = (1, 2, 4, 8, 16, 32)


def adapter_file_bytes(p: dict[str, Any]) -> int:
    """Size of what a run saves: fp32 adapter tensors for peft methods, the trained weights
    in the model dtype for full/freeze/BitFit (safetensors, headers ignored)."""
    method = METHODS[p["method"]]
    element = 4 if method.uses_peft else DTYPE_BYTES[p["settings"]["dtype"]]
    return p["trainable_params"] * element


def compare_methods(spec: ModelSpec, settings: TrainingSettings) -> list[dict[str, Any]]:
    rows = []
    for name, method in METHODS.items():
        s = replace(settings, quant=None)
        try:
            p = plan(spec, method, {}, s).as_dict()
        except WorkbenchError as exc:
            rows.append({"method": name, "title": method.title, "error": str(exc)})
            continue
        rows.append({
            "method": name, "title": method.title, "trainable_params": p["trainable_params"],
            "trainable_percent": p["trainable_percent"], "peak_bytes": p["peak_bytes"],
            "inference_bytes": p["inference_bytes"], "peak_over_inference": p["peak_over_inference"],
            "adapter_file_bytes": adapter_file_bytes(p), "quant": p["quant"],
            "components": {c["name"]: c["bytes"] for c in p["components"]},
            "peak_parts": p["peak_parts"], "peak_phase": p["peak_phase"],
            "model_state_bytes": p["model_state_bytes"], "activations_note": p["activations_note"],
            "activations_exact_architecture": p["activations_exact_architecture"],
        })
    return rows


def relative_speed(total_params: int, trainable_params: int, trains_base: bool, gradient_checkpointing: bool,
                   quant: str, batch_size: int) -> float:
    """Tokens per unit of compute, relative: 1 / (FLOPs per token) x dequant factor x a mild
    penalty for tiny batches (GPU kernels are inefficient below a few thousand tokens)."""
    n = total_params
    flops = 2 * n + 2 * n + (2 * trainable_params if trains_base else 0) + (2 * n if gradient_checkpointing else 0)
    utilisation = min(1.0, 0.5 + 0.5 * batch_size / 8)
    return utilisation / (flops / (6 * n)) / DEQUANT_SLOWDOWN[quant]


def what_fits(spec: ModelSpec, budget_bytes: int, settings: TrainingSettings, limit: int = 12) -> list[dict[str, Any]]:
    """The fastest fitting configuration of each method, fastest first, each with a reason.
    ``budget_bytes``: the largest allocated peak the GPU takes
    (:attr:`workbench.gpus.GpuCard.peak_limit_bytes`: its memory less the CUDA context, over
    the caching allocator's reserve); a plan fits when its peak bytes are at most that, and
    the reason gives both in GiB."""
    from .gpus import GIB, gib_down

    best: dict[str, dict[str, Any]] = {}
    for name, method in METHODS.items():
        quants = [method.quantization] if method.quantization else ["none"]
        for quant in quants:
            for gc in (False, True):
                if gc and not method.supports_gradient_checkpointing:
                    continue
                for batch in BATCHES:
                    s = replace(settings, batch_size=batch, gradient_checkpointing=gc, quant=None)
                    try:
                        p = plan(spec, method, {}, s)
                    except WorkbenchError:
                        continue
                    if p.peak_bytes > budget_bytes:
                        continue
                    speed = relative_speed(p.total_params, p.trainable_params, bool(method.trains_base(spec, p.knobs)),
                                           gc, p.quant, batch)
                    row = {"method": name, "quant": p.quant, "batch_size": batch, "gradient_checkpointing": gc,
                           "peak_bytes": p.peak_bytes, "relative_speed": round(speed, 3),
                           "reason": f"peak {p.peak_bytes / GIB:.2f} GiB of at most {gib_down(budget_bytes, 2)} allocated; "
                                     f"batch {batch}{', checkpointing' if gc else ''}"
                                     f"{', ' + p.quant + ' base' if p.quant != 'none' else ''}; "
                                     f"{p.trainable_percent:.2f}% of weights trained"}
                    if name not in best or speed > best[name]["relative_speed"]:
                        best[name] = row
    return sorted(best.values(), key=lambda r: (-r["relative_speed"], r["peak_bytes"]))[:limit]


GPU_COUNTS = (1, 2, 4, 8)


def per_gpu_table(spec: ModelSpec, method, knobs: dict[str, Any] | None, settings: TrainingSettings,
                  gpu_counts: tuple[int, ...] = GPU_COUNTS, strategies: tuple[str, ...] = STRATEGIES,
                  gpu_bytes: int | None = None, offload: str | None = None) -> list[dict[str, Any]]:
    """One row per (strategy, GPU count) on one node: ``peak_bytes`` and ``host_bytes`` per
    GPU / per node, and ``fits`` (peak within ``gpu_bytes``; None without a size). ``offload``
    (default: the settings') applies to every strategy; a combination that cannot run
    (single with 8 GPUs, offload under DDP, ...) keeps its row with ``error`` saying why and
    no figures. ``method`` is a name or a :class:`~workbench.methods.base.Method`."""
    from .methods import get_method

    chosen = get_method(method) if isinstance(method, str) else method
    offload = settings.offload if offload is None else offload
    rows = []
    for strategy in strategies:
        for gpus in gpu_counts:
            row: dict[str, Any] = {"strategy": strategy, "gpus": gpus, "offload": offload, "peak_bytes": None,
                                   "host_bytes": None, "fits": None, "error": None}
            try:
                s = replace(settings, gpus=gpus, nodes=1, strategy=strategy, offload=offload)
                p = plan(spec, chosen, knobs, s)
            except WorkbenchError as exc:
                row["error"] = str(exc)
                rows.append(row)
                continue
            row.update(peak_bytes=p.peak_bytes, host_bytes=p.host_bytes,
                       components={t.name: t.bytes for t in p.components},
                       fits=None if gpu_bytes is None else p.peak_bytes <= gpu_bytes)
            rows.append(row)
    return rows
