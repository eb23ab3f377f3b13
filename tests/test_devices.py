"""GPU discovery and scheduling through NVML (a fake one here): the operator's
``CUDA_VISIBLE_DEVICES`` is honoured with CUDA's rules, UUIDs and MIG instances map to the
right device, workers get ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` and the UUIDs of the GPUs they
were granted, and the memory sampler reads the GPU a worker's ``cuda:0`` really is."""

import threading
import time

import pytest
from fake_nvml import GIB, FakeDevice, install

from workbench import devices
from workbench.errors import SettingsError

MACHINE = [FakeDevice("GPU-aaaa1111", used=1 * GIB), FakeDevice("GPU-bbbb2222", used=2 * GIB),
           FakeDevice("GPU-cccc3333", used=3 * GIB),
           FakeDevice("GPU-dddd4444", name="NVIDIA A100-SXM4-80GB", total=81920 * 2**20,
                      migs=[FakeDevice("MIG-eeee5555", name="", total=10 * GIB, used=5 * 2**20),
                            FakeDevice("MIG-ffff6666", name="", total=20 * GIB)])]


@pytest.fixture
def machine(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("WORKBENCH_GPUS", raising=False)
    return install(monkeypatch, MACHINE)


def test_without_a_mask_every_whole_gpu_in_nvml_order(machine):
    gpus = devices.visible_gpus()
    assert [g.uuid for g in gpus] == ["GPU-aaaa1111", "GPU-bbbb2222", "GPU-cccc3333", "GPU-dddd4444"]
    assert [g.index for g in gpus] == [0, 1, 2, 3]
    assert gpus[1].free_bytes == 81559 * 2**20 - 2 * GIB and gpus[3].name == "NVIDIA A100-SXM4-80GB"
    assert devices.default_device() == "cuda" and devices.gpu_count() == 4


@pytest.mark.parametrize("mask, expected", [
    ("2,0", ["GPU-cccc3333", "GPU-aaaa1111"]),  # the operator's order, not NVML's
    ("GPU-bbbb", ["GPU-bbbb2222"]),  # a unique UUID prefix
    ("GPU-cccc3333, 1", ["GPU-cccc3333", "GPU-bbbb2222"]),  # UUIDs and indices mixed, spaces ignored
    ("MIG-ffff6666", ["MIG-ffff6666"]),  # a MIG instance: its own memory, not its parent's
    ("1,7,2", ["GPU-bbbb2222"]),  # CUDA: the first entry naming no device ends the list
    ("0,0,1", ["GPU-aaaa1111"]),  # ... and so does a repeated one
    ("GPU-", []),  # a prefix matching several GPUs names none
    ("", []),  # empty: no GPU at all
])
def test_the_operators_mask_is_read_as_cuda_reads_it(machine, monkeypatch, mask, expected):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", mask)
    assert [g.uuid for g in devices.visible_gpus()] == expected


def test_a_mig_instance_reports_its_own_memory(machine, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "MIG-eeee5555")
    (mig,) = devices.visible_gpus()
    assert mig.total_bytes == 10 * GIB and mig.free_bytes == 10 * GIB - 5 * 2**20 and mig.index == 3
    assert mig.lock_name == "MIG-eeee5555" and mig.cuda_id == "MIG-eeee5555"


def test_workbench_gpus_caps_the_visible_ones(machine, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,1,0")
    monkeypatch.setenv("WORKBENCH_GPUS", "2")
    assert [g.uuid for g in devices.usable_gpus()] == ["GPU-dddd4444", "GPU-bbbb2222"]
    assert devices.gpu_count() == 2


def test_no_nvml_or_a_driver_error_means_no_gpu(monkeypatch):
    import sys

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setitem(sys.modules, "pynvml", None)  # the package missing
    assert devices.visible_gpus() == [] and devices.default_device() == "cpu" and devices.nvml_handle(0) is None
    broken = install(monkeypatch, MACHINE)
    broken.nvmlDeviceGetCount = lambda: (_ for _ in ()).throw(RuntimeError("NVML_ERROR_DRIVER_NOT_LOADED"))
    assert devices.visible_gpus() == [] and devices.nvml_handle(0) is None


def test_the_sampler_reads_the_gpu_the_worker_was_given(machine, monkeypatch):
    """A worker granted GPU 2 runs with ``CUDA_VISIBLE_DEVICES=GPU-cccc3333``: its ``cuda:0``
    is NVML's device 2, and the NVML sample says that device's 3 GiB, not device 0's 1 GiB."""
    from workbench.training.telemetry import _nvml_used

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2")
    (granted,) = [g.cuda_id for g in devices.visible_gpus()]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", devices.worker_gpu_env([granted])["CUDA_VISIBLE_DEVICES"])
    assert _nvml_used(0)() == 3 * GIB
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-dddd4444,GPU-bbbb2222")  # a 2-rank run: rank 1 is GPU 1
    assert _nvml_used(1)() == 2 * GIB and _nvml_used(0)() == 0
    assert _nvml_used(2)() is None  # no such local device: no sample, no crash


def test_worker_environment_pins_the_order_and_the_uuids():
    env = devices.worker_gpu_env(["GPU-cccc3333", "GPU-aaaa1111"])
    assert env == {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": "GPU-cccc3333,GPU-aaaa1111"}


def _session(root, name):
    folder = root / name
    folder.mkdir(parents=True)
    return folder


def test_turns_lock_the_operators_gpus_by_uuid(machine, monkeypatch, tmp_path):
    """With ``CUDA_VISIBLE_DEVICES=2,0`` the queue hands out GPU 2 then GPU 0 (never 1 or 3),
    each lock is named by the GPU's UUID (shared with any other server on the machine), a
    2-GPU run waits for both, and more GPUs than visible is refused."""
    from workbench.training.turns import wait_for_turn

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,0")
    a = wait_for_turn(_session(tmp_path, "20260101-000000-aaaaaaaa"), "cuda", 1, poll=0.05)
    b = wait_for_turn(_session(tmp_path, "20260101-000001-bbbbbbbb"), "cuda", 1, poll=0.05)
    assert (a.gpus, b.gpus) == (["GPU-cccc3333"], ["GPU-aaaa1111"])
    assert sorted(p.name for p in tmp_path.glob(".gpu-*.lock")) == [".gpu-GPU-aaaa1111.lock", ".gpu-GPU-cccc3333.lock"]
    got = {}

    def wait_two():
        got["turn"] = wait_for_turn(_session(tmp_path, "20260101-000002-cccccccc"), "cuda", 2, poll=0.05)

    waiter = threading.Thread(target=wait_two, daemon=True)
    waiter.start()
    time.sleep(0.4)
    a.close()
    time.sleep(0.4)
    assert "turn" not in got  # one GPU free is not enough
    b.close()
    waiter.join(timeout=10)
    assert got["turn"].gpus == ["GPU-cccc3333", "GPU-aaaa1111"]
    got["turn"].close()
    with pytest.raises(SettingsError, match="needs 3 GPUs; this machine has 2"):
        wait_for_turn(_session(tmp_path, "20260101-000003-dddddddd"), "cuda", 3)
