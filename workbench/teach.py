"""The teacher's view: why training needs more memory than inference, method by method.

For one model and settings, every method's predicted training peak over inference, set
against the bands people quote (low-memory PEFT 1.1–1.5x, PEFT 1.5–3x, full fine-tuning
4–20x), with one sentence per method saying what dominates its peak and why, and what
gradient checkpointing and an 8-bit optimizer change. Every number comes from the planner
(:func:`workbench.memory.plan`); each sentence carries the formula it rests on.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from .errors import WorkbenchError
from .gpus import GIB
from .memory import TrainingSettings, plan
from .methods import METHODS
from .specs import ModelSpec

#: the bands people quote for training memory over inference memory (low, high)
BANDS = {"low-memory PEFT": (1.1, 1.5), "PEFT": (1.5, 3.0), "full fine-tuning": (4.0, 20.0)}
#: where each method is usually put
METHOD_BAND = {"full": "full fine-tuning", "freeze": "full fine-tuning", "bitfit": "low-memory PEFT",
               "ia3": "low-memory PEFT", "prompt": "low-memory PEFT", "prefix": "low-memory PEFT",
               "vera": "low-memory PEFT"}


def band_of(method: str) -> str:
    return METHOD_BAND.get(method, "PEFT")


def _gib(n: int) -> str:
    return f"{n / GIB:.2f} GiB"


def _why(p: dict[str, Any], top: dict[str, Any]) -> str:
    """One sentence: what the largest part at the peak is and why it is that big."""
    n, trained = p["total_params"], p["trainable_params"]
    s = p["settings"]
    share = top["bytes"] / p["peak_bytes"]
    lead = f"**{top['name'].replace('_', ' ')}** ({_gib(top['bytes'])}, {share:.0%} of the peak)"
    name = top["name"]
    if name == "optimizer":
        return (f"{lead}: {s['optimizer']} keeps its state for every one of the {trained:,} trained parameters; "
                f"with weights and gradients that is {p['model_state_bytes_per_param']:.1f} B per parameter of model "
                f"state ({s['precision']}).")
    if name == "gradients":
        return f"{lead}: one gradient per trained parameter ({trained:,}), in the weights' dtype ({s['dtype']})."
    if name == "weights":
        return (f"{lead}: the frozen base is most of it; only {trained:,} of {n:,} parameters "
                f"({p['trainable_percent']:.2f}%) get gradients and optimizer state, so training costs little more "
                "than holding the model.")
    if name == "activations":
        why = (f"{lead}: what the forward pass saves for backward grows with batch x sequence "
               f"({s['batch_size']} x {s['seq_len']} tokens)")
        knobs, autocast = p["knobs"], s.get("autocast", "none")
        copy = "fp32 copy of its input (peft casts it to the adapters' dtype)" if autocast == "none" else \
            f"{autocast} copy of its input"
        if knobs.get("dropout", 0) > 0:
            why += (f"; each adapted layer also keeps its own {copy} and a dropout mask, which is how a PEFT method "
                    "can save more than full fine-tuning")
        elif knobs.get("target_modules"):
            why += "; each adapted layer also keeps what its adapter needs for backward"
        if autocast != "none":
            why += f"; under autocast every linear keeps a {autocast} copy of its input and of its weight"
        return why + "."
    if name == "logits":
        return (f"{lead}: the vocabulary is large next to the model: the loss keeps an fp32 log-softmax of "
                f"V = {p['vocab_size']:,} values per token.")
    if name == "temporaries":
        return f"{lead}: short-lived tensors at {p['peak_phase_label']}: {top['formula']}."
    return f"{lead}: {top['formula']}."


def _x(v: float) -> str:
    return f"{v:g}"


def _band_verdict(ratio: float, band: str) -> str:
    low, high = BANDS[band]
    where = "below" if ratio < low else "above" if ratio > high else "in"
    return f"{where} the {band} band ({_x(low)}–{_x(high)}x)"


def _what_if(spec: ModelSpec, method: str, settings: TrainingSettings, base: dict[str, Any]) -> list[str]:
    """What gradient checkpointing and an 8-bit optimizer change for ``method``."""
    out = []
    m = METHODS[method]
    changes = []
    if not settings.gradient_checkpointing and m.supports_gradient_checkpointing:
        changes.append(("gradient checkpointing", replace(settings, gradient_checkpointing=True),
                        "keeps only each block's input and recomputes the block in backward"))
    if settings.optimizer == "adamw":
        changes.append(("8-bit AdamW", replace(settings, optimizer="adamw_8bit"),
                        "stores the two optimizer states in 1 byte each instead of 4"))
    for label, changed, how in changes:
        try:
            p = plan(spec, m, {}, changed).as_dict()
        except WorkbenchError:
            continue
        before, after = base["peak_bytes"], p["peak_bytes"]
        if abs(after - before) < 0.005 * before:
            out.append(f"{label} ({how}) changes little: the peak is at {base['peak_phase_label']}")
            continue
        out.append(f"{label} ({how}): peak {_gib(before)} → {_gib(after)} ({(after - before) / before:+.0%}), "
                   f"{after / p['inference_bytes']:.2f}x inference")
    return out


def teach(spec: ModelSpec, settings: TrainingSettings) -> dict[str, Any]:
    """Every method's peak / inference against its band, with what dominates and why."""
    rows, refused = [], []
    for name, method in METHODS.items():
        try:
            p = plan(spec, method, {}, replace(settings, quant=None)).as_dict()
        except WorkbenchError as exc:
            refused.append({"method": name, "reason": str(exc)})
            continue
        p["vocab_size"] = spec.vocab_size
        top = max(p["peak_parts"], key=lambda t: t["bytes"])
        ratio = p["peak_over_inference"]
        band = band_of(name)
        rows.append({"method": name, "title": method.title, "ratio": ratio, "band": band,
                     "verdict": _band_verdict(ratio, band), "peak_bytes": p["peak_bytes"],
                     "inference_bytes": p["inference_bytes"], "dominant": top["name"], "why": _why(p, top),
                     "formula": f"peak {p['peak_bytes']:,} B at {p['peak_phase_label']} = "
                                + " + ".join(f"{t['name']} {t['bytes']:,}" for t in p["peak_parts"])
                                + f"; inference {p['inference_bytes']:,} B = {p['inference_formula']}; "
                                f"{top['name']}: {top['formula']}",
                     "model_state_bytes_per_param": p["model_state_bytes_per_param"],
                     "activations_note": p["activations_note"],
                     "what_if": _what_if(spec, name, settings, p) if name in ("full", "lora") else []})
    return {"model": spec.label or spec.name, "settings": settings.as_dict(), "precision": settings.precision,
            "bands": BANDS, "rows": rows, "refused": refused}


def teach_markdown(t: dict[str, Any]) -> tuple[str, str]:
    """The page's text: (the headline facts, one line per method)."""
    rows = {r["method"]: r for r in t["rows"]}
    lines = [f"### Why training needs more memory than inference: {t['model']}, {t['precision']}"]
    full, lora = rows.get("full"), rows.get("lora")
    if full:
        lines.append(f"**Full fine-tuning: {full['ratio']:.1f}x inference** ({full['verdict']}), a peak of "
                     f"{_gib(full['peak_bytes'])} ({full['peak_bytes'] / 1e9:.1f} GB). Model state alone is "
                     f"**{full['model_state_bytes_per_param']:.1f} B per parameter** (weights + gradients + optimizer "
                     "states), before any activation.")
    if lora:
        lines.append(f"**LoRA: {lora['ratio']:.1f}x inference** ({lora['verdict']}): gradients and optimizer "
                     "states only for the adapters.")
    for r in (full, lora):
        if r and r["what_if"]:
            lines.append(f"What changes {r['method']}: " + "; ".join(r["what_if"]) + ".")
    lines.append("Bands people quote (training peak / inference): " + ", ".join(
        f"{k} {_x(lo)}–{_x(hi)}x" for k, (lo, hi) in t["bands"].items()) + ". A bar outside its band is not an "
        "error: the bands assume a large model in 16-bit at a moderate batch x sequence; the sentence says what "
        "drives this one. Inference is the weights in the compute dtype plus the KV cache for the same tokens.")
    details = ["#### What dominates each method's peak, and why"]
    for r in t["rows"]:
        note = f" ⚠ {r['activations_note']}." if r["activations_note"] else ""
        details.append(f"- **{r['method']}** {r['ratio']:.2f}x, {r['verdict']}. {r['why']}{note}")
    for r in t["refused"]:
        details.append(f"- **{r['method']}** not planned: {r['reason']}")
    return "\n\n".join(lines), "\n".join(details)
