"""The worker gives freed heap memory back every few steps (workbench/training/allocator.py)."""

from types import SimpleNamespace

from workbench.training.allocator import TRIM_EVERY, TrimCallback


def test_trim_runs_every_tenth_step_and_only_then():
    calls = []
    callback = TrimCallback()
    callback._trim = calls.append  # glibc's malloc_trim, recorded
    for step in range(1, 31):
        callback.on_step_end(None, SimpleNamespace(global_step=step), None)
    assert TRIM_EVERY == 10 and calls == [0, 0, 0] and callback.trims == 3


def test_trim_is_a_no_op_without_glibc():
    callback = TrimCallback(every=1)
    callback._trim = None
    callback.on_step_end(None, SimpleNamespace(global_step=1), None)
    assert callback.trims == 0


def test_glibc_trim_is_found_here():
    assert TrimCallback()._trim is not None  # this machine (Debian) has glibc
