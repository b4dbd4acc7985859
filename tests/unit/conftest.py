"""The unit tier's bound on each test: a busy loop in the code under test (one that never
reaches a trio checkpoint, which :func:`.settle.settle` cannot catch) fails its test instead of
hanging ``make check``."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from types import FrameType

import pytest

SECONDS_PER_TEST = 60  # most take well under one; the property tests ~10 s, 20 on a busy machine


@pytest.fixture(autouse=True)
def _bounded_in_time() -> Iterator[None]:
    def expired(signum: int, frame: FrameType | None) -> None:
        raise TimeoutError(f"a unit test ran over {SECONDS_PER_TEST} s: a busy loop?")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(SECONDS_PER_TEST)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
