"""A stand-in for ``pynvml`` (nvidia-ml-py): a machine of GPUs, some split into MIG
instances, answering the calls :mod:`workbench.devices` makes. No driver, no CUDA."""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass, field

GIB = 2**30


@dataclass
class FakeDevice:
    uuid: str
    name: str = "NVIDIA H100 80GB HBM3"
    total: int = 81559 * 2**20
    used: int = 0
    migs: list["FakeDevice"] = field(default_factory=list)


def install(monkeypatch, devices: list[FakeDevice]) -> types.ModuleType:
    """Put a fake ``pynvml`` serving ``devices`` (NVML index order) into ``sys.modules``."""
    nvml = types.ModuleType("pynvml")
    memory = types.SimpleNamespace

    nvml.nvmlInit = lambda: None
    nvml.nvmlDeviceGetCount = lambda: len(devices)
    nvml.nvmlDeviceGetHandleByIndex = lambda i: devices[i]
    nvml.nvmlDeviceGetUUID = lambda d: d.uuid.encode()  # older nvidia-ml-py returns bytes
    nvml.nvmlDeviceGetName = lambda d: d.name
    nvml.nvmlDeviceGetMemoryInfo = lambda d: memory(total=d.total, free=d.total - d.used, used=d.used)
    nvml.nvmlDeviceGetMigMode = lambda d: (1, 1) if d.migs else (0, 0)
    nvml.nvmlDeviceGetMaxMigDeviceCount = lambda d: 7

    def mig_by_index(d, k):
        if k >= len(d.migs):
            raise RuntimeError("NVML_ERROR_NOT_FOUND")
        return d.migs[k]

    nvml.nvmlDeviceGetMigDeviceHandleByIndex = mig_by_index
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    return nvml
