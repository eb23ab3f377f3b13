"""Fault injection for tests and drills: ``WORKBENCH_FAULT`` makes the worker fail on purpose.

Values (comma separated): ``oom_at_step=K`` (raise ``torch.OutOfMemoryError`` before step
K), ``sleep_on_save=S`` (pause S seconds after a checkpoint is written, before it is marked
complete: time to kill the worker mid-save), ``enospc_on_save`` (the final save fails with
"No space left on device"), ``error_at_setup`` (an exception after the model is loaded,
before training starts), ``error_on_save`` (an exception while a checkpoint is being
written, before it is marked complete). Unset in normal use; nothing here runs then.
"""

from __future__ import annotations

import errno
import os
import time

from transformers import TrainerCallback


def faults() -> dict[str, str]:
    spec = os.environ.get("WORKBENCH_FAULT", "")
    return dict((part.split("=", 1) + [""])[:2] for part in spec.split(",") if part)


class FaultCallback(TrainerCallback):
    def __init__(self) -> None:
        self.faults = faults()

    def on_step_begin(self, args, state, control, **kwargs):
        k = self.faults.get("oom_at_step")
        if k and state.global_step + 1 >= int(k):
            import torch

            raise torch.OutOfMemoryError(f"CUDA out of memory (injected by WORKBENCH_FAULT at step {k})")

    def on_save(self, args, state, control, **kwargs):
        if "sleep_on_save" in self.faults:
            time.sleep(float(self.faults["sleep_on_save"]))
        if "error_on_save" in self.faults:
            raise RuntimeError("checkpoint writer failed (injected by WORKBENCH_FAULT)")


def at_setup() -> None:
    if "error_at_setup" in faults():
        raise RuntimeError("set-up failed (injected by WORKBENCH_FAULT)")


def before_final_save() -> None:
    if "enospc_on_save" in faults():
        raise OSError(errno.ENOSPC, "No space left on device (injected by WORKBENCH_FAULT)")
