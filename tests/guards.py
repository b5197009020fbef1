"""A guard that turns a hang into a test failure (SIGALRM; main thread only)."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def fail_after(seconds: int, message: str) -> Iterator[None]:
    """Raise ``TimeoutError(message)`` in the main thread if the block runs longer than
    ``seconds``."""

    def expire(signum: int, frame: object) -> None:
        raise TimeoutError(message)

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
