"""Memory promised on a device, so that a training run and an inference worker sharing it
never together plan more than it has.

A process that is about to use a device *claims* what its plan says it will need at its
peak: a training worker its run's predicted peak (when it takes its turn, before loading),
an inference worker its weights + adapters + the KV cache of its longest request (before
loading, and again when an adapter or a longer request needs more). A claim is a file
``sessions/.reserved/<device>.<pid>.json``; a claim whose process has died (even by
SIGKILL) is ignored and removed, so nothing has to clean up after a crash.

Room on a device, for a claim by process ``pid`` (its own earlier claim does not count):

- a GPU: what its total memory (NVML) holds as allocated tensors once every claimant's
  CUDA context is taken, over the caching allocator's reserve ratio
  (:func:`workbench.gpus.allocatable`), less every other live claim on it; never more than
  NVML's free memory now holds the same way (programs outside the workbench count too; a
  claimed process's use is already inside its claim, so this never counts it twice while it
  stays under its claim);
- the CPU: the RAM available now (psutil) less the preflight margin, less what the other
  live claims have still to grow (their claim less their resident set now).

Claims are checked and written under one ``flock`` (``sessions/.reserved/.lock``), so two
processes cannot both take the last free gigabyte.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .errors import WorkbenchError

FOLDER = ".reserved"
GIB = 1024**3


class NoRoom(WorkbenchError):
    """A claim does not fit beside the others on its device."""


@dataclass(frozen=True)
class Claim:
    device: str  # "cpu" or "gpu-<lock name>"
    pid: int
    bytes: int
    what: str  # e.g. "run 20261202-0712-ab12" or "chat model SmolLM2-135M-Instruct"
    kind: str  # "training" | "inference"


def device_key(device: str, gpu=None) -> str:
    """The claims' name of a device: ``cpu``, or ``gpu-<lock name>`` of a :class:`GpuInfo`."""
    return "cpu" if device != "cuda" or gpu is None else f"gpu-{gpu.lock_name}"


def _folder() -> Path:
    from .sessions import sessions_dir

    folder = sessions_dir() / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def pid_alive(pid: int) -> bool:
    """Is process ``pid`` running (someone else's counts; a zombie does not)?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    try:  # a zombie (exited, not yet reaped) holds nothing
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


@contextmanager
def _locked():
    with open(_folder() / ".lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def claims(device: str | None = None) -> list[Claim]:
    """Live claims (on ``device`` only, when given); dead processes' files are removed."""
    out = []
    for path in sorted(_folder().glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            claim = Claim(str(data["device"]), int(data["pid"]), int(data["bytes"]), str(data["what"]),
                          str(data["kind"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue  # being written (the rename makes this rare) or foreign: not a claim
        if not pid_alive(claim.pid):
            path.unlink(missing_ok=True)
            continue
        if device is None or claim.device == device:
            out.append(claim)
    return out


def _path(device: str, pid: int) -> Path:
    if not re.fullmatch(r"[A-Za-z0-9_-]+", device):
        raise WorkbenchError(f"device key {device!r}: letters, digits, '-' and '_' only")
    return _folder() / f"{device}.{pid}.json"


def _resident(pid: int) -> int:
    try:
        import psutil

        return int(psutil.Process(pid).memory_info().rss)
    except Exception:  # gone, or not ours to read: assume it has grown to nothing yet
        return 0


def room(device: str, pid: int | None = None, gpu=None) -> tuple[int, str]:
    """(bytes, explanation): what a claim of ``pid`` may take on ``device`` (see the module
    docstring). ``gpu``: the :class:`workbench.devices.GpuInfo` of a GPU key."""
    others = [c for c in claims(device) if c.pid != pid]
    named = "; ".join(f"{c.what} {c.bytes / GIB:.2f} GiB" for c in others) or "none"
    if device == "cpu":
        from .preflight import device_budget

        budget = device_budget("cpu")  # the preflight's RAM and margin, the same figures
        growing = sum(max(0, c.bytes - _resident(c.pid)) for c in others)
        left = max(0, budget.limit_bytes - growing)
        return left, (f"{budget.explanation}, less {growing / GIB:.2f} GiB the other claims may still grow into "
                      f"(claims: {named})")
    if gpu is None:
        raise WorkbenchError(f"room on {device}: the GPU is not known")
    from .gpus import allocatable

    # every process on the GPU has its own CUDA context: this one's and each claimant's
    promised = sum(c.bytes for c in others)
    left = max(0, min(allocatable(gpu.total_bytes, contexts=1 + len(others)) - promised,
                      allocatable(gpu.free_bytes)))
    return left, (f"GPU {gpu.index} ({gpu.name}) {gpu.total_bytes / GIB:.2f} GiB less {1 + len(others)} CUDA "
                  f"context(s), over the caching allocator's reserve, less {promised / GIB:.2f} GiB claimed by "
                  f"others ({named}); NVML free now {gpu.free_bytes / GIB:.2f} GiB")


def claim(device: str, nbytes: int, what: str, kind: str, pid: int | None = None, gpu=None) -> Path:
    """Claim ``nbytes`` on ``device`` for ``pid`` (default: this process), replacing its
    earlier claim there; :class:`NoRoom` (naming the other claims) when it does not fit."""
    pid = os.getpid() if pid is None else pid
    with _locked():
        left, why = room(device, pid, gpu)
        if nbytes > left:
            raise NoRoom(f"{what} does not fit on {device}: {left / GIB:.2f} GiB is left there ({why})")
        path = _path(device, pid)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps({"device": device, "pid": pid, "bytes": int(nbytes), "what": what, "kind": kind}))
        tmp.replace(path)
        return path


def release(device: str, pid: int | None = None) -> None:
    """Drop the claim of ``pid`` (default: this process) on ``device``."""
    _path(device, os.getpid() if pid is None else pid).unlink(missing_ok=True)
