"""Fixtures the unit tests of serving share."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from loop_support import LoopThread


@pytest.fixture(scope="module")
def loop() -> Iterator[LoopThread]:
    """An event loop in a thread, one per test module: instances and pools live on it."""
    lt = LoopThread()
    try:
        yield lt
    finally:
        lt.close()
