"""Waiting for a condition, the one way the tests do it: poll until it holds or a
deadline passes, then fail naming what was awaited (never a bare sleep that hopes)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

INTERVAL = 0.05


def _deadline(what: str, within: float) -> Callable[[], None]:
    """A check that raises once `within` seconds have passed since this call."""
    end = time.monotonic() + within

    def check() -> None:
        if time.monotonic() >= end:
            raise TimeoutError(f"timed out after {within:g} s waiting for {what}")

    return check


def eventually(condition: Callable[[], T], *, what: str, within: float = 10.0) -> T:
    """The first truthy value of `condition()`, polled until `within` seconds pass."""
    check = _deadline(what, within)
    while not (result := condition()):
        check()
        time.sleep(INTERVAL)
    return result


async def eventually_async(condition: Callable[[], T], *, what: str, within: float = 10.0) -> T:
    """`eventually` inside an event loop: it sleeps without blocking the loop, so a
    condition that other tasks (a browser's events, a proxy) make true can come true."""
    check = _deadline(what, within)
    while not (result := condition()):
        check()
        await asyncio.sleep(INTERVAL)
    return result
