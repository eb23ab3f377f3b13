"""What a run checks against its plan while it trains.

- :func:`record_plans` -- at set-up, the run is planned again with the page's function
  (:func:`workbench.runspec.plan_run`) and recorded as a ``plan`` event: its fingerprint,
  whether it is the plan that was shown, and -- when every example is shorter than the
  sequence length -- the plan of the batches this data can form, with the reason.
- :class:`ProbeCheck` -- the probe step's measured peak (``step_memory``, the planner's
  quantity) against that prediction and the run's limit, as a ``probe`` event (or
  ``step_check`` when the run does not probe: the same step, on whatever batch it got);
  over the limit it stops the run (:class:`ProbeExceeded`, a ``MemoryError``: the run
  fails as ``oom`` with suggestions).
- :class:`Setup` -- what set-up made, and the finished run's plan error.
- The CPU worker's memory cap (``RLIMIT_AS``), in force from the worker's first line:
  :func:`cap_before_imports` allows what the libraries will map plus what the run may use
  (:func:`memory_allowed`: the RAM available less the preflight's margin, or
  ``WORKBENCH_WORKER_MAX_MEMORY`` when lower); :func:`cap_memory` narrows it to what they
  did map plus that, before the data, tokenizer and model are loaded.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..accuracy import plan_error_percent
from .events import EventWriter


#: address space torch, transformers, datasets and peft may map when imported: 5.0 GB measured
#: with CPU torch 2 and transformers 5 (0.9 GB of it resident), more with a CUDA build's
#: libraries. The cap set on the worker's first line, before those imports, allows this much
#: for them; the cap before set-up replaces it with what they did map.
LIBRARY_ADDRESS_SPACE = 16 * 2**30
MEMORY_VARIABLE = "WORKBENCH_WORKER_MAX_MEMORY"


class ProbeExceeded(MemoryError):
    """The probe step (the longest batch) needed more memory than the run may use."""


class ProbeCheck:
    """Called with every ``step_memory`` record; acts on the one of step ``at_step``."""

    def __init__(self, events: EventWriter | None, predicted: int, limit: int | None, at_step: int,
                 probing: bool) -> None:
        self.events, self.predicted, self.limit = events, predicted, limit
        self.at_step, self.probing = at_step, probing
        self.result: dict[str, Any] | None = None

    def __call__(self, record: dict[str, Any]) -> None:
        if record["step"] != self.at_step or self.events is None:
            return
        measured = record["peak_bytes"]
        fits = self.limit is None or measured <= self.limit
        self.result = {"step": record["step"], "measured_bytes": measured, "predicted_bytes": self.predicted,
                       "plan_error_percent": round(plan_error_percent(self.predicted, measured), 2) if measured else None,
                       "limit_bytes": self.limit, "fits": fits, "quantity": record["quantity"]}
        self.events.emit("probe" if self.probing else "step_check", **self.result)
        if not fits:
            raise ProbeExceeded(f"the probe step (step {record['step']}, the longest batch) peaked at "
                                f"{measured / 2**30:.2f} GiB of {record['quantity']}, over the limit of "
                                f"{self.limit / 2**30:.2f} GiB")


class Setup:
    """What set-up made: the Trainer, its cancel flag, the plans and the measured step peaks."""

    def __init__(self, trainer, cancel, step_peaks, predicted_peak: int, limit: int | None) -> None:
        self.trainer, self.cancel, self.step_peaks = trainer, cancel, step_peaks
        self.predicted_peak, self.limit = predicted_peak, limit

    def accuracy(self) -> dict:
        """The run's plan error (:func:`..accuracy.plan_error_percent`): its largest measured
        step peak against the plan of the batches it ran (the same quantity)."""
        measured = self.step_peaks.peak_bytes
        if not measured:
            return {}
        error = plan_error_percent(self.predicted_peak, measured)  # the benchmark's sign: + = plan over
        return {"measured_peak_bytes": measured, "predicted_peak_bytes": self.predicted_peak,
                "plan_error_percent": round(error, 2), "measured_quantity": self.step_peaks.records[-1]["quantity"]}


def record_plans(job, train, val, session: Path, events: EventWriter | None) -> int:
    """Plan the run again with the same function as the page did and record it; returns the
    peak predicted for the batches this data can form. That is the shown plan's, unless every
    example is shorter than the sequence length: batches are padded to their longest example,
    so no batch is wider than the longest, and ``plan_effective.json`` holds that plan, with
    the reason in a ``plan`` event."""
    from ..runspec import fingerprint, plan_run

    run = job.run
    shown = plan_run(run)
    mark = fingerprint(shown)
    longest = max(max((len(x) for x in train["input_ids"]), default=0),
                  max((len(x) for x in val["input_ids"]), default=0) if val is not None else 0)
    effective, reason = shown, None
    if 0 < longest < run.settings.seq_len and run.schedule.batching != "padding_free":
        effective = plan_run(run, seq_len=longest)
        reason = (f"the longest example has {longest} tokens, fewer than the sequence length {run.settings.seq_len}: "
                  f"batches are padded to their longest example, so no batch is wider than {longest} tokens")
    if events is not None:
        detail = {"fingerprint": mark, "shown_fingerprint": job.plan_fingerprint,
                  "matches_shown": job.plan_fingerprint in (None, mark), "seq_len": run.settings.seq_len,
                  "peak_bytes": shown.peak_bytes}
        if job.plan_fingerprint not in (None, mark):
            detail["mismatch"] = "the planner gives another plan than the one shown when the run was prepared " \
                                 "(the workbench was updated in between)"
        if reason:
            detail.update(effective_seq_len=longest, effective_peak_bytes=effective.peak_bytes, reason=reason,
                          effective_fingerprint=fingerprint(effective))
            (session / "plan_effective.json").write_text(json.dumps({**effective.as_dict(), "reason": reason,
                                                                      "fingerprint": fingerprint(effective)}, indent=2))
        events.emit("plan", **detail)
    return effective.peak_bytes


def gpu_limit() -> int:
    """What the run may allocate on its GPU, read in the worker before the model is loaded:
    the device's free memory now (the CUDA context already taken) over the caching
    allocator's reserve ratio (:func:`workbench.gpus.allocatable`, as the preflight reads it)."""
    import torch

    from ..gpus import allocatable

    free, _ = torch.cuda.mem_get_info()
    return allocatable(free, contexts=0)


def memory_setting() -> int | None:
    """``WORKBENCH_WORKER_MAX_MEMORY`` in bytes (``4000000000``, ``4e9``, ``4.5e9``), or None
    when unset; anything else is refused by name."""
    raw = os.environ.get(MEMORY_VARIABLE, "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        from ..errors import SettingsError

        raise SettingsError(f"{MEMORY_VARIABLE}={raw!r}: give the bytes a worker may use, e.g. 4e9")
    return int(value)


def memory_allowed() -> int:
    """Bytes a CPU worker may use beyond its libraries: the CPU budget when it starts
    (available RAM less the margin, :func:`workbench.preflight.worker_memory_cap`), or
    ``WORKBENCH_WORKER_MAX_MEMORY`` when an operator sets less; shared by the processes of
    a multi-process run on this machine."""
    from ..preflight import worker_memory_cap

    allowed, _ = worker_memory_cap()
    configured = memory_setting()
    if configured is not None:
        allowed = min(allowed, configured)
    return allowed // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))


def set_address_space(wanted: int) -> None:
    """Lower the soft ``RLIMIT_AS`` to ``wanted`` (never raise a lower limit already set)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    for limit in (soft, hard):
        if limit != resource.RLIM_INFINITY:
            wanted = min(wanted, limit)
    resource.setrlimit(resource.RLIMIT_AS, (wanted, hard))


def cap_before_imports(job_path: Path) -> Exception | None:
    """The cap from the worker's first line, before torch or the data are imported: what
    is mapped now, plus :data:`LIBRARY_ADDRESS_SPACE` for the libraries, plus what the run
    may use (:func:`memory_allowed`). :func:`cap_memory` narrows it before set-up. Returns
    the error to report (a bad setting) instead of raising before the events exist."""
    try:
        job = json.loads(job_path.read_text(encoding="utf-8"))
        device = ((job.get("run") or job).get("settings") or {}).get("device")
    except (OSError, ValueError, AttributeError):
        return None  # the job is read again below, and that reports what is wrong with it
    if device != "cpu":
        return None
    try:
        import psutil

        set_address_space(psutil.Process().memory_info().vms + LIBRARY_ADDRESS_SPACE + memory_allowed())
    except Exception as exc:
        return exc
    return None


def cap_memory(device: str, quantized: bool = False) -> int | None:
    """A CPU worker's cap before set-up (the data, the tokenizer and the model are loaded
    under it): the address space its libraries map once imported, plus what the run may use
    (:func:`memory_allowed`), narrowing the first line's cap. A run that outgrows it fails
    as ``oom`` with suggestions, instead of summoning the kernel's OOM killer (which may take
    other processes, the web server included). Returns the bytes allowed beyond the
    libraries (the limit the probe step is held to). GPU workers are not capped this way
    (CUDA reserves large virtual address ranges)."""
    if device != "cpu":
        return None
    import psutil

    # every library set-up needs is mapped before the cap: mapped libraries are address
    # space, not memory in use (a library loaded after it could fail to map, seen with pyarrow)
    import datasets  # noqa: F401
    import peft  # noqa: F401
    import torch  # noqa: F401
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer  # noqa: F401

    if quantized:
        import bitsandbytes  # noqa: F401

    extra = memory_allowed()
    set_address_space(psutil.Process().memory_info().vms + extra)
    return extra


def address_space_limit() -> tuple[int, int]:
    import resource

    return resource.getrlimit(resource.RLIMIT_AS)


def restore_address_space(limit: tuple[int, int]) -> None:
    """Put back the address-space limit found at the start: a worker run in-process (tests,
    ``python -m workbench train``) must not leave its cap on the caller, whose later children
    (a browser, another worker) would inherit it."""
    import resource

    resource.setrlimit(resource.RLIMIT_AS, limit)


def uncap_memory() -> None:
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (hard, hard))
