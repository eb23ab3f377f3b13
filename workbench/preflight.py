"""Preflight: before a run starts, its predicted peak is set against what its device has
free, with the margin stated. A run that cannot fit is refused with suggestions, and every
suggestion is itself re-planned and under the limit (or it is not offered). A run whose
model has no weights on this machine (a bundled config, a hub id without cached weights)
cannot start either, and the verdict says so first (:func:`missing_weights`).

The budget of a device:

- CPU: the RAM available now (``psutil``'s ``available``: free + reclaimable cache), less a
  margin of 10% of it (at least 1 GiB) for what the planner does not count -- the worker's
  Python, torch and tokenizer (about 0.5 GiB resident), the dataset and allocator slack.
  The CPU worker caps itself at the same figure (:func:`worker_memory_cap`), so a run that
  outgrows its plan fails as ``oom`` instead of summoning the kernel's OOM killer.
- CUDA: the free memory of the emptiest visible GPU as NVML reports it, as
  :func:`workbench.gpus.allocatable` reads it: less the CUDA context, over the caching
  allocator's reserve ratio (``constants.json``: both uncalibrated until measured on a GPU).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from .errors import SettingsError, WorkbenchError
from .memory import TrainingSettings
from .methods import get_method
from .runspec import RunSpec, plan_run

GIB = 1024**3
CPU_MARGIN_FRACTION = 0.10
CPU_MARGIN_MIN = 1 * GIB
LORA_FAMILY = ("lora", "rslora", "dora", "lora-8bit")


def gib(n: float) -> str:
    return f"{n / GIB:.2f} GiB"


@dataclass(frozen=True)
class Budget:
    device: str
    available_bytes: int
    margin_bytes: int
    explanation: str

    @property
    def limit_bytes(self) -> int:
        return max(0, self.available_bytes - self.margin_bytes)


def check_device(settings: TrainingSettings) -> None:
    """Refuse, before anything starts, a run this machine cannot give its device: a GPU run
    needs at most the visible GPUs (counted without initialising CUDA); a multi-process CPU
    run (``gpus`` processes, gloo) at most one process per core."""
    from .devices import cpu_cores, gpu_count

    if settings.device == "cuda":
        visible = gpu_count()
        if not visible:
            raise SettingsError("Device: the run is planned for cuda, but this machine has no visible GPU; nothing was "
                                "started. Plan it for cpu ('Device' in the Model & method tab, --device cpu), or start "
                                "it on a machine with a GPU")
        if settings.gpus > visible:
            raise SettingsError(f"GPUs (--gpus): the run asks for {settings.gpus}; this machine has {visible} visible "
                                f"GPU{'s' if visible != 1 else ''}: choose 1 to {visible}")
    elif settings.gpus > 1:
        cores = cpu_cores()
        if settings.gpus > cores:
            raise SettingsError(f"GPUs (--gpus): on cpu this is the number of training processes; {settings.gpus} is "
                                f"more than this machine's {cores} CPU core{'s' if cores != 1 else ''}: choose 1 to "
                                f"{cores}")


def device_budget(device: str) -> Budget:
    """What a run on ``device`` may use here (see the module docstring)."""
    if device == "cpu":
        from .devices import cpu_available_bytes

        available = cpu_available_bytes()
        margin = max(CPU_MARGIN_MIN, int(available * CPU_MARGIN_FRACTION))
        return Budget("cpu", available, margin,
                      f"RAM available now {gib(available)} less a margin of {gib(margin)} (10%, at least 1 GiB) "
                      "for the worker's runtime, data and allocator")
    from .devices import visible_gpus
    from .gpus import _runtime, allocatable

    gpus = visible_gpus()
    if not gpus:
        raise SettingsError("Device: no visible GPU on this machine")
    best = max(gpus, key=lambda g: g.free_bytes)
    limit = allocatable(best.free_bytes)
    ratio, context = _runtime()
    return Budget("cuda", best.free_bytes, best.free_bytes - limit,
                  f"GPU {best.index} ({best.name}) free {gib(best.free_bytes)} (NVML); a peak fits when it x {ratio:g} "
                  f"for the caching allocator + the {gib(context)} CUDA context (both uncalibrated) is within it: "
                  f"at most {gib(limit)} allocated")


def worker_memory_cap() -> tuple[int, str]:
    """(bytes, explanation): the most a CPU worker may add to its address space, from its
    first line -- the CPU budget at the moment it starts."""
    b = device_budget("cpu")
    return b.limit_bytes, b.explanation


@dataclass(frozen=True)
class Suggestion:
    text: str
    run: RunSpec
    peak_bytes: int

    def as_dict(self) -> dict[str, Any]:
        return {"text": self.text, "peak_bytes": self.peak_bytes, "method": self.run.method,
                "settings": self.run.settings.as_dict(), "knobs": self.run.knobs}


@dataclass(frozen=True)
class Preflight:
    """Can the run start here? ``fits``: yes -- its weights are here and its predicted peak
    is within the limit. ``missing_weights``: why its model cannot be loaded here (None when
    it can; planning needs no weights, training does); ``memory_fits``: the peak alone."""

    fits: bool
    peak_bytes: int
    budget: Budget
    suggestions: tuple[Suggestion, ...]
    missing_weights: str | None = None

    @property
    def memory_fits(self) -> bool:
        return self.peak_bytes <= self.budget.limit_bytes

    def message(self) -> str:
        """The verdict: its first line is the one-line answer."""
        if self.missing_weights:
            return f"Cannot start: {self.missing_weights}\n" + self._memory_message()
        return self._memory_message()

    def _memory_message(self) -> str:
        head = (f"predicted peak {gib(self.peak_bytes)} vs a limit of {gib(self.budget.limit_bytes)} on "
                f"{self.budget.device}: {self.budget.explanation}")
        if self.memory_fits:
            return "Fits: " + head
        lines = ["Does not fit: " + head]
        if self.suggestions:
            lines.append("Each of these is re-planned and fits:")
            lines += [f"- {s.text}" for s in self.suggestions]
        else:
            lines.append("No combination of gradient checkpointing, a smaller batch with accumulation, an 8-bit "
                         "optimizer, a 4-bit base or a shorter sequence fits here: choose a smaller model")
        return "\n".join(lines)


def missing_weights(run: RunSpec) -> str | None:
    """Why the run's model cannot be loaded here, or None (a cheap check: nothing is loaded;
    :func:`workbench.loading.weights_problem`)."""
    from .loading import weights_problem
    from .specs import load_model_spec

    return weights_problem(load_model_spec(run.model))


def preflight(run: RunSpec, peak_bytes: int | None = None, budget: Budget | None = None) -> Preflight:
    """Can the run start here: are its weights here, and does it fit its device? (The device
    must exist: :func:`check_device`.)"""
    check_device(run.settings)
    budget = budget or device_budget(run.settings.device)
    peak = plan_run(run).peak_bytes if peak_bytes is None else peak_bytes
    weights = missing_weights(run)
    if peak <= budget.limit_bytes:
        return Preflight(weights is None, peak, budget, (), weights)
    return Preflight(False, peak, budget, tuple(suggestions_under(run, budget.limit_bytes)), weights)


def _peak(run: RunSpec) -> int | None:
    try:
        return plan_run(run).peak_bytes
    except WorkbenchError:
        return None


def _variants(run: RunSpec) -> list[tuple[int, list[str], RunSpec]]:
    """(cost, what changed, run) of every combination of the big levers, batch untouched."""
    s, method = run.settings, get_method(run.method)
    out = []
    ckpt = [False] + ([True] if not s.gradient_checkpointing and method.supports_gradient_checkpointing else [])
    optims = [s.optimizer] + (["adamw_8bit"] if s.optimizer == "adamw" else [])
    methods = [run.method] + (["qlora"] if run.method in LORA_FAMILY and s.device == "cuda" else [])
    seqs = [s.seq_len] + [s.seq_len // d for d in (2, 4) if s.seq_len // d >= 16]
    for c in ckpt:
        for o in optims:
            for m in methods:
                for q in seqs:
                    changes, cost = [], 0
                    settings = s
                    if c:
                        settings, cost = replace(settings, gradient_checkpointing=True), cost + 1
                        changes.append("gradient checkpointing on")
                    if o != s.optimizer:
                        settings, cost = replace(settings, optimizer=o), cost + 1
                        changes.append("8-bit AdamW")
                    knobs = run.knobs
                    if m != run.method:
                        own = {k.name for k in get_method(m).knobs}
                        knobs = {k: v for k, v in run.knobs.items() if k in own}
                        settings, cost = replace(settings, quant=None), cost + 2
                        changes.append("qlora (4-bit base)")
                    if q != s.seq_len:
                        settings, cost = replace(settings, seq_len=q), cost + 3 * round(math.log2(s.seq_len / q))
                        changes.append(f"sequence length {s.seq_len} → {q} (longer examples are truncated)")
                    try:
                        out.append((cost, changes, replace(run, method=m, knobs=knobs, settings=settings)))
                    except WorkbenchError:
                        continue
    return out


def _at_batch(run: RunSpec, batch: int) -> RunSpec:
    """The run with micro-batch ``batch``, keeping its examples per optimizer step by
    gradient accumulation."""
    s = run.settings
    return run.with_settings(batch_size=batch, grad_accum=max(s.grad_accum, math.ceil(s.batch_size * s.grad_accum / batch)))


def _largest_batch(run: RunSpec, limit: int) -> tuple[RunSpec, int] | None:
    """(run, peak) with the largest micro-batch <= the run's that fits ``limit`` (the peak
    grows with the batch), or None when even batch 1 does not."""
    lo, hi = 1, run.settings.batch_size
    peak1 = _peak(_at_batch(run, 1))
    if peak1 is None or peak1 > limit:
        return None
    best = (_at_batch(run, 1), peak1)
    if run.settings.batch_size > 1:
        full = _peak(run)
        if full is not None and full <= limit:
            return run, full
    while lo < hi:
        mid = (lo + hi + 1) // 2
        candidate = _at_batch(run, mid)
        p = _peak(candidate)
        if p is not None and p <= limit:
            lo, best = mid, (candidate, p)
        else:
            hi = mid - 1
    # a power of two: the batch people choose, and it leaves headroom below the limit
    rounded = 1 << (best[0].settings.batch_size.bit_length() - 1)
    if rounded != best[0].settings.batch_size:
        candidate = _at_batch(run, rounded)
        p = _peak(candidate)
        if p is not None:
            best = (candidate, p)
    return best


def suggestions_under(run: RunSpec, limit: int, count: int = 3) -> list[Suggestion]:
    """Up to ``count`` changes that each bring the planned peak under ``limit``, fewest and
    smallest changes first; a smaller batch keeps the examples per optimizer step with
    gradient accumulation."""
    s = run.settings
    found = []
    for cost, changes, variant in _variants(run):
        fit = _largest_batch(variant, limit)
        if fit is None:
            continue
        variant, peak = fit
        text_changes = list(changes)
        v = variant.settings
        if v.batch_size < s.batch_size:
            text_changes.append(f"batch {s.batch_size} → {v.batch_size} with gradient accumulation {s.grad_accum} → "
                                f"{v.grad_accum} (at least the same {s.batch_size * s.grad_accum} examples per step)")
            cost += max(1, round(math.log2(s.batch_size / v.batch_size)))
        if not text_changes:
            continue
        levers = frozenset(c.split(" →")[0] for c in changes)
        found.append((cost, len(text_changes), levers, v.batch_size, Suggestion(
            " + ".join(text_changes) + f": predicted peak {gib(peak)}", variant, peak)))
    found.sort(key=lambda f: (f[0], f[1], f[4].peak_bytes))
    out: list[tuple[frozenset, int, Suggestion]] = []
    for _, _, levers, batch, sug in found:
        # a suggestion that adds levers to one already offered without a larger batch is no better
        if any(kept <= levers and kept_batch >= batch for kept, kept_batch, _ in out):
            continue
        out.append((levers, batch, sug))
        if len(out) == count:
            break
    return [sug for _, _, sug in out]
