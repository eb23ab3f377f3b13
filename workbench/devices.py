"""Which devices this machine has and how much memory they have free -- without ever
initialising CUDA (the web server must not: a CUDA context costs memory on every GPU and
makes forked workers unsafe). GPUs are found through NVML (``nvidia-ml-py``), the CPU's
memory through psutil.

``CUDA_VISIBLE_DEVICES`` set by the operator is honoured: an empty value means no GPU, a
list of indices or UUIDs names the GPUs that may be used.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class GpuInfo:
    index: int  # NVML (physical, PCI order) index
    name: str
    total_bytes: int
    free_bytes: int


def _nvml():
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml
    except Exception:  # no package, no driver, no GPU
        return None


def visible_gpus() -> list[GpuInfo]:
    """The GPUs training may use: every NVML device, filtered by the operator's
    ``CUDA_VISIBLE_DEVICES`` (indices or ``GPU-`` UUIDs). Empty without NVML."""
    mask = os.environ.get("CUDA_VISIBLE_DEVICES")
    if mask is not None and not mask.strip():
        return []
    nvml = _nvml()
    if nvml is None:
        return []
    found = []
    try:
        for i in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(i)
            uuid = nvml.nvmlDeviceGetUUID(handle)
            uuid = uuid.decode() if isinstance(uuid, bytes) else uuid
            if mask is not None:
                wanted = [m.strip() for m in mask.split(",") if m.strip()]
                if str(i) not in wanted and not any(uuid.startswith(w) for w in wanted if w.startswith("GPU-")):
                    continue
            name = nvml.nvmlDeviceGetName(handle)
            info = nvml.nvmlDeviceGetMemoryInfo(handle)
            found.append(GpuInfo(i, name.decode() if isinstance(name, bytes) else name, int(info.total), int(info.free)))
    except Exception:  # a driver error reads as no GPU, never as a crash of the server
        return []
    return found


def gpu_count() -> int:
    """How many GPUs runs may use here: the visible ones (NVML and ``CUDA_VISIBLE_DEVICES``,
    never CUDA), at most ``$WORKBENCH_GPUS`` when an operator sets that cap."""
    count = len(visible_gpus())
    configured = os.environ.get("WORKBENCH_GPUS", "").strip()
    return min(count, int(configured)) if configured.isdigit() else count


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
