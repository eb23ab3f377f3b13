"""Hostile-input and fault tests (issue 7). Run alone with ``pytest tests/security``, or
with the related tests elsewhere with ``pytest -m security``."""

import pytest


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tests/security/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.security)
