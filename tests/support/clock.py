"""Waiting for a calendar window with room in it, for tests of per-minute limits and
per-day budgets: a test that straddled the boundary would see its counters reset."""

from __future__ import annotations

import time


def fresh_minute(seconds_needed: float = 20.0) -> None:
    """Return when at least `seconds_needed` of the current UTC minute are left.
    Call it once the gateway is up, so that its start-up does not use the window."""
    if time.time() % 60 > 60 - seconds_needed:
        time.sleep(60 - time.time() % 60 + 0.05)


def not_at_midnight(seconds_needed: float = 30.0) -> None:
    """Return when at least `seconds_needed` of the current UTC day are left."""
    left = 86400 - time.time() % 86400
    if left < seconds_needed:
        time.sleep(left + 0.1)
