"""Stopping background tasks for good.

A cancelled task ends at its next `await`, unless the code it runs loses the
cancellation: redis-py's connection and pub/sub paths do, now and then, when the
cancel lands while they set a connection up (redis/redis-py#2028, #2551). The task
then goes on, blocked on a read with no timeout, and a shutdown that waits for it
waits forever. Cancelling again ends it: the next cancel lands on its next `await`.
"""

from __future__ import annotations

import asyncio
from typing import Any


async def cancel_and_wait(*tasks: asyncio.Task[Any] | None, every: float = 0.5) -> None:
    """Cancel `tasks` and wait until every one has ended, cancelling again each
    `every` seconds those still running. Their exceptions are retrieved (and dropped):
    a task being stopped has nothing more to report."""
    owned = [task for task in tasks if task is not None]
    pending = {task for task in owned if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=every)
    for task in owned:
        if not task.cancelled():
            task.exception()
