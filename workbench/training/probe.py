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
- :class:`Setup` -- what set-up made, and the finished run's prediction error.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .events import EventWriter


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
                       "error_percent": round((measured - self.predicted) / self.predicted * 100, 2),
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
        """The run's prediction error: its largest measured step peak against the plan of
        the batches it ran (the same quantity)."""
        measured = self.step_peaks.peak_bytes
        if not measured:
            return {}
        error = (measured - self.predicted_peak) / self.predicted_peak * 100
        return {"measured_peak_bytes": measured, "predicted_peak_bytes": self.predicted_peak,
                "prediction_error_percent": round(error, 2), "measured_quantity": self.step_peaks.records[-1]["quantity"]}


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
    the device's free memory now (the CUDA context already taken), less the preflight's
    margin for the caching allocator (:data:`workbench.preflight.CUDA_MARGIN_FRACTION`)."""
    import torch

    from ..preflight import CUDA_MARGIN_FRACTION

    free, _ = torch.cuda.mem_get_info()
    return int(free - CUDA_MARGIN_FRACTION * free)
