"""The worker's allocator defaults (workbench/training/allocator.py): what they set, that an
operator's own value always wins, and that the launcher hands them to the worker."""

from workbench.training.allocator import WORKER_ALLOCATOR_DEFAULTS, worker_env_defaults


def test_defaults_set_a_fixed_mmap_threshold():
    assert worker_env_defaults({}) == {"MALLOC_MMAP_THRESHOLD_": "65536"}
    assert worker_env_defaults({}) == WORKER_ALLOCATOR_DEFAULTS


def test_operator_values_are_never_overridden():
    assert worker_env_defaults({"MALLOC_MMAP_THRESHOLD_": "1048576"}) == {}
    # merged the way the launcher merges it, the operator's value wins
    operator = {"MALLOC_MMAP_THRESHOLD_": "1048576", "HOME": "/x"}
    assert {**worker_env_defaults(operator), **operator}["MALLOC_MMAP_THRESHOLD_"] == "1048576"


def test_defaults_read_os_environ(monkeypatch):
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "4096")
    assert "MALLOC_MMAP_THRESHOLD_" not in worker_env_defaults()
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")
    assert worker_env_defaults()["MALLOC_MMAP_THRESHOLD_"] == "65536"


def test_returns_a_copy():
    worker_env_defaults({})["MALLOC_MMAP_THRESHOLD_"] = "1"
    assert WORKER_ALLOCATOR_DEFAULTS["MALLOC_MMAP_THRESHOLD_"] == "65536"


def test_spawn_passes_the_defaults_to_the_worker(monkeypatch, tmp_path):
    import subprocess

    from workbench.training import launcher

    seen = {}

    class FakePopen:
        pid = 12345

        def __init__(self, args, env=None, **kwargs):
            seen.update(env)

    monkeypatch.setattr(subprocess, "Popen", FakePopen)
    monkeypatch.setattr(launcher, "session_path", lambda sid: tmp_path)
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    launcher.spawn("20260101-000000-00000000")
    assert seen["MALLOC_MMAP_THRESHOLD_"] == "65536"
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "262144")
    launcher.spawn("20260101-000000-00000000")
    assert seen["MALLOC_MMAP_THRESHOLD_"] == "262144"
