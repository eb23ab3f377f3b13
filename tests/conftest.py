"""Test set-up: offline, a private cache for the tiny model (built once per session)."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    if "WORKBENCH_TEST_CACHE" in os.environ:
        os.environ["WORKBENCH_CACHE"] = os.environ["WORKBENCH_TEST_CACHE"]
    else:
        os.environ["WORKBENCH_CACHE"] = str(tmp_path_factory.mktemp("workbench-cache"))
    yield
