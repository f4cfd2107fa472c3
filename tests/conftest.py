"""Test-wide settings: a private plan cache, no progress bars, and a stated arithmetic rate (so
that reports' time estimates are the same on every machine; tests/test_throughput.py measures)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator

import pytest

# Set at import time so that even collection-time code never touches ~/.cache.
_CACHE = tempfile.mkdtemp(prefix="tngraph-test-cache-")
os.environ["TNGRAPH_CACHE_DIR"] = _CACHE
os.environ["TNGRAPH_NO_PROGRESS"] = "1"
RATE = "1e10"
os.environ["TNGRAPH_FLOPS_PER_SECOND"] = RATE


@pytest.fixture(autouse=True, scope="session")
def _private_plan_cache() -> Iterator[str]:
    """Every test plans into a fresh temporary cache directory, removed at the end."""
    os.environ["TNGRAPH_CACHE_DIR"] = _CACHE
    os.environ["TNGRAPH_NO_PROGRESS"] = "1"
    os.environ["TNGRAPH_FLOPS_PER_SECOND"] = RATE
    yield _CACHE
    shutil.rmtree(_CACHE, ignore_errors=True)
