"""Wait for an asynchronous condition in tests instead of sleeping."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

_T = TypeVar("_T")


async def assert_eventually(
    fn: Callable[[], _T | Awaitable[_T]],
    timeout: float = 10.0,
    interval: float = 0.1,
) -> _T:
    """Call ``fn`` until it stops raising AssertionError; return its result.

    ``fn`` may be a plain function or a coroutine function and contains the
    assertions, so the failure after ``timeout`` seconds is the last
    AssertionError it raised, with its message. Other exceptions propagate at
    once. ``interval`` is the pause between calls in seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = fn()
            if inspect.isawaitable(result):
                result = await result
            return result  # type: ignore[return-value]
        except AssertionError:
            if time.monotonic() >= deadline:
                raise
        await asyncio.sleep(interval)
