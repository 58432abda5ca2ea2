"""Every test here runs against each store backend (see ``store_backend`` in tests/conftest.py)."""

import pytest


@pytest.fixture(autouse=True)
def _store_under_test(store_backend: str) -> str:
    return store_backend
