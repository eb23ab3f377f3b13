"""What to change after running out of memory: concrete settings with predicted peaks."""

from __future__ import annotations

from dataclasses import replace

from ..errors import WorkbenchError
from ..memory import TrainingSettings, plan
from ..methods import get_method
from ..specs import ModelSpec

GB = 1e9


def oom_suggestions(spec: ModelSpec, method_name: str, knobs: dict, settings: TrainingSettings) -> list[str]:
    method = get_method(method_name)
    current = plan(spec, method, knobs, settings).peak_bytes
    ideas: list[tuple[str, str, dict, TrainingSettings]] = []
    if not settings.gradient_checkpointing and method.supports_gradient_checkpointing:
        ideas.append(("enable gradient checkpointing", method_name, knobs, replace(settings, gradient_checkpointing=True)))
    if settings.batch_size > 1:
        small = max(1, settings.batch_size // 4)
        accum = settings.grad_accum * settings.batch_size // small
        ideas.append((f"batch {settings.batch_size} → {small} with gradient accumulation {accum}", method_name, knobs,
                      replace(settings, batch_size=small, grad_accum=accum)))
    if settings.optimizer == "adamw":
        ideas.append(("use the 8-bit AdamW optimizer", method_name, knobs, replace(settings, optimizer="adamw_8bit")))
    if method_name in ("lora", "rslora", "dora", "lora-8bit") and settings.device == "cuda":
        ideas.append(("use qlora (4-bit base)", "qlora", {k: v for k, v in knobs.items() if k != "use_dora"},
                      replace(settings, quant=None)))
    out = []
    for text, name, k, s in ideas:
        try:
            after = plan(spec, get_method(name), {x: v for x, v in k.items()
                                                   if x in {kn.name for kn in get_method(name).knobs}}, s).peak_bytes
        except WorkbenchError:
            continue
        if after < current:
            out.append(f"{text}: predicted peak {current / GB:.1f} GB → {after / GB:.1f} GB")
    return out
