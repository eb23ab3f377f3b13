"""Runs take turns on the machine's devices; the others wait as ``queued`` and start in order.

CPU: one run at a time, holding an exclusive ``flock`` on ``sessions/.device-cpu.lock``.
GPUs: one lock file per GPU (``sessions/.gpu-<i>.lock``). A run needing k GPUs waits until
it holds k of them at once -- a 2-GPU run waits for two free GPUs, while single-GPU runs on
a multi-GPU machine run side by side on different GPUs. The granted GPU indices become the
run's ``CUDA_VISIBLE_DEVICES``.

The kernel releases a lock when its process dies, even by SIGKILL. A run takes its turn only
when no older queued session is still waiting (session ids sort by creation time), so
runs start in the order they were queued.
"""

from __future__ import annotations

import fcntl
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from ..errors import SettingsError


@dataclass
class Turn:
    """The locks a run holds (keep the object alive) and the GPU indices it was given."""

    locks: list[IO] = field(default_factory=list)
    gpus: list[int] = field(default_factory=list)

    def close(self) -> None:
        for lock in self.locks:
            lock.close()
        self.locks = []


def gpu_count() -> int:
    """GPUs this machine offers to runs: ``$WORKBENCH_GPUS`` (an operator's cap), else NVML's
    count (the web server never initialises CUDA), else 0."""
    configured = os.environ.get("WORKBENCH_GPUS")
    if configured is not None:
        return int(configured)
    try:
        import pynvml

        pynvml.nvmlInit()
        return int(pynvml.nvmlDeviceGetCount())
    except Exception:  # no driver, no GPU, no pynvml
        return 0


def _older_waiting(folder: Path) -> bool:
    from ..sessions import last_status, worker_alive

    for other in folder.parent.iterdir():
        if other.name < folder.name and other.is_dir() and (other / "job.json").is_file():
            if last_status(other) == "queued" and worker_alive(other):
                return True
    return False


def _try(path: Path) -> IO | None:
    lock = open(path, "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return lock
    except BlockingIOError:
        lock.close()
        return None


def wait_for_turn(folder: Path, device: str, count: int = 1, poll: float = 0.5) -> Turn:
    """Block until this session may run: the CPU lock, or ``count`` free GPUs."""
    total = gpu_count() if device == "cuda" else 0
    if device == "cuda" and count > total > 0:
        raise SettingsError(f"the run needs {count} GPUs; this machine has {total}")
    while True:
        if not _older_waiting(folder):
            if device != "cuda" or total == 0:  # CPU, or CUDA without NVML: one run at a time
                lock = _try(folder.parent / f".device-{device}.lock")
                if lock is not None:
                    return Turn([lock], [])
            else:
                turn = Turn()
                for index in range(total):
                    lock = _try(folder.parent / f".gpu-{index}.lock")
                    if lock is not None:
                        turn.locks.append(lock)
                        turn.gpus.append(index)
                        if len(turn.gpus) == count:
                            return turn
                turn.close()  # not enough free at once: hold none while waiting
        time.sleep(poll)
