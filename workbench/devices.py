"""Which devices this machine has and how much memory they have free -- without ever
initialising CUDA (the web server must not: a CUDA context costs memory on every GPU and
makes forked workers unsafe). GPUs are found through NVML (``nvidia-ml-py``), the CPU's
memory through psutil.

The operator's ``CUDA_VISIBLE_DEVICES`` is honoured with CUDA's own rules: an empty value
means no GPU; otherwise a comma list of indices, ``GPU-`` UUIDs (a unique prefix is enough)
or ``MIG-`` UUIDs, in the order given, and the list ends at the first entry that names no
device (or names one twice), as CUDA ends it. Indices are read in PCI bus order, which is
NVML's order; the workbench starts every worker with ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` and
``CUDA_VISIBLE_DEVICES`` set to the UUIDs of the GPUs it was given, so a worker's
``cuda:0`` is the GPU that was planned, locked and is sampled, whatever order CUDA would
otherwise pick.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

#: what every worker is started with: CUDA's indices in NVML's (PCI bus) order
CUDA_DEVICE_ORDER = "PCI_BUS_ID"


@dataclass(frozen=True)
class GpuInfo:
    index: int  # NVML (physical, PCI order) index; a MIG instance: its parent GPU's
    name: str
    total_bytes: int
    free_bytes: int
    uuid: str = ""  # GPU-... or MIG-...: how a worker's CUDA_VISIBLE_DEVICES names it

    @property
    def cuda_id(self) -> str:
        """The ``CUDA_VISIBLE_DEVICES`` entry that names this device and no other."""
        return self.uuid or str(self.index)

    @property
    def lock_name(self) -> str:
        """A file-name-safe key of this device (the queue's per-GPU lock), the same for
        every server on the machine whatever its ``CUDA_VISIBLE_DEVICES``."""
        return re.sub(r"[^A-Za-z0-9-]", "_", self.cuda_id)


def _nvml():
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml
    except Exception:  # no package, no driver, no GPU
        return None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _devices(nvml) -> list[tuple[GpuInfo, Any]]:
    """(info, handle) of every NVML GPU in index order, then every MIG instance of them."""
    gpus, migs = [], []
    for i in range(nvml.nvmlDeviceGetCount()):
        handle = nvml.nvmlDeviceGetHandleByIndex(i)
        name = _text(nvml.nvmlDeviceGetName(handle))
        memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        gpus.append((GpuInfo(i, name, int(memory.total), int(memory.free), _text(nvml.nvmlDeviceGetUUID(handle))),
                     handle))
        try:
            mig_on = nvml.nvmlDeviceGetMigMode(handle)[0] == 1
        except Exception:  # no MIG on this card or driver
            mig_on = False
        if not mig_on:
            continue
        for k in range(nvml.nvmlDeviceGetMaxMigDeviceCount(handle)):
            try:
                mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, k)
            except Exception:  # an empty slot
                continue
            memory = nvml.nvmlDeviceGetMemoryInfo(mig)
            migs.append((GpuInfo(i, f"{name} MIG {k}", int(memory.total), int(memory.free),
                                 _text(nvml.nvmlDeviceGetUUID(mig))), mig))
    return gpus + migs


def _select(devices: list[tuple[GpuInfo, Any]], mask: str | None) -> list[tuple[GpuInfo, Any]]:
    """The devices ``mask`` (a ``CUDA_VISIBLE_DEVICES`` value) makes visible, in its order."""
    whole = [d for d in devices if not d[0].uuid.startswith("MIG-")]
    if mask is None:
        return whole
    chosen: list[tuple[GpuInfo, Any]] = []
    for entry in (e.strip() for e in mask.split(",")):
        if entry.isdigit():
            found = [d for d in whole if d[0].index == int(entry)]
        elif entry.startswith(("GPU-", "MIG-")):
            found = [d for d in devices if d[0].uuid.startswith(entry)]
        else:
            found = []
        if len(found) != 1 or any(found[0][0].uuid == c[0].uuid for c in chosen):
            break  # CUDA: an entry naming no device (or an ambiguous or repeated one) ends the list
        chosen.append(found[0])
    return chosen


def visible_gpus() -> list[GpuInfo]:
    """The GPUs training may use: NVML's devices as the operator's ``CUDA_VISIBLE_DEVICES``
    selects and orders them (see the module's docstring). Empty without NVML."""
    mask = os.environ.get("CUDA_VISIBLE_DEVICES")
    if mask is not None and not mask.strip():
        return []
    nvml = _nvml()
    if nvml is None:
        return []
    try:
        return [info for info, _ in _select(_devices(nvml), mask)]
    except Exception:  # a driver error reads as no GPU, never as a crash of the server
        return []


def nvml_handle(local: int = 0):
    """The NVML handle of this process's ``cuda:<local>`` (its ``CUDA_VISIBLE_DEVICES``
    read as above), or ``None`` without NVML or such a device."""
    nvml = _nvml()
    if nvml is None:
        return None
    try:
        chosen = _select(_devices(nvml), os.environ.get("CUDA_VISIBLE_DEVICES"))
        return chosen[local][1] if 0 <= local < len(chosen) else None
    except Exception:  # a driver error: no samples, never a crash
        return None


def usable_gpus() -> list[GpuInfo]:
    """The visible GPUs runs may take turns on: the first ``$WORKBENCH_GPUS`` of them when
    an operator sets that cap."""
    gpus = visible_gpus()
    configured = os.environ.get("WORKBENCH_GPUS", "").strip()
    return gpus[: int(configured)] if configured.isdigit() else gpus


def gpu_count() -> int:
    """How many GPUs runs may use here (:func:`usable_gpus`; NVML, never CUDA)."""
    return len(usable_gpus())


def worker_gpu_env(gpus: list[str]) -> dict[str, str]:
    """What a worker given the GPUs ``gpus`` (their :attr:`GpuInfo.cuda_id`) is started with."""
    return {"CUDA_DEVICE_ORDER": CUDA_DEVICE_ORDER, "CUDA_VISIBLE_DEVICES": ",".join(gpus)}


def cpu_cores() -> int:
    """CPU cores this process may run on (its affinity mask, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_device() -> str:
    """``cuda`` when a GPU is visible, else ``cpu``: the one default of the UI, the API and the CLI."""
    return "cuda" if visible_gpus() else "cpu"


def cpu_available_bytes() -> int:
    import psutil

    return int(psutil.virtual_memory().available)
