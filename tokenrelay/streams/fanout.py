"""In-process fan-out of one stream's entries to every reader waiting in this process.

Both stores keep the entries a process has seen in a `Tail`: the memory store as its
only copy, the Redis store as a cache in front of Redis, so that readers in this
process never ask Redis for what the process already has.

Per entry this costs a list append and, only when somebody waits, one future set per
waiting reader: no Event objects, no tasks, no timeout context per token, and no timer
per read. A reader's wait is bounded (the heartbeat interval) by one timer per tail,
armed for the earliest deadline of its waiters and left armed across pushes: a reader
that reads again after every push finds it armed still, and it fires about once a wait
to re-arm itself for the next deadline (a timer each read cost 2.6 µs, each token).
"""

from __future__ import annotations

import asyncio

from tokenrelay.streams.log import Entry

# A timer a little early for a deadline does not re-arm itself for the rest.
TIMER_SLACK_S = 0.001


class Tail:
    __slots__ = (
        "_timer", "_timer_at", "_waiters", "entries", "expires_at", "finished", "last_read",
    )  # fmt: skip

    def __init__(self, entries: list[Entry] | None = None) -> None:
        self.entries: list[Entry] = entries or []
        self.finished = bool(self.entries) and self.entries[-1].terminal
        self.last_read = 0.0
        # When a cached copy of a finished stream must be forgotten (its log expired).
        self.expires_at = float("inf")
        # Each waiting reader's future, and the loop time its wait ends.
        self._waiters: list[tuple[asyncio.Future[bool], float]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")

    def push(self, entry: Entry) -> None:
        if entry.seq != len(self.entries):
            return  # already seen (a replay overlapping a live push)
        self.entries.append(entry)
        if entry.terminal:
            self.finished = True
        if self._waiters:
            self._wake(True)

    def wake(self) -> None:
        """End every waiting read now, with whatever there is."""
        if self._waiters:
            self._wake(False)

    def _wake(self, pushed: bool) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter, _ in waiters:
            if not waiter.done():
                waiter.set_result(pushed)

    async def read(self, after: int, wait: float) -> list[Entry]:
        """Entries with `seq > after`; waits up to `wait` for one while the stream is open."""
        if len(self.entries) > after + 1 or self.finished:
            return self.entries[after + 1 :]
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        deadline = loop.time() + wait
        self._waiters.append((waiter, deadline))
        if deadline < self._timer_at:
            self._arm(loop, deadline)
        await waiter
        # A push or a wake may come after the timeout, before this reader runs again:
        # whatever there is by now is the answer.
        return self.entries[after + 1 :]

    def _arm(self, loop: asyncio.AbstractEventLoop, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = loop.call_at(at, self._expire, loop)

    def _expire(self, loop: asyncio.AbstractEventLoop) -> None:
        """End the waits that are due; arm the timer for the next deadline, if any."""
        self._timer, self._timer_at = None, float("inf")
        due = loop.time() + TIMER_SLACK_S
        waiting = []
        for waiter, deadline in self._waiters:
            if waiter.done():
                continue  # its reader was cancelled
            if deadline <= due:
                waiter.set_result(False)
            else:
                waiting.append((waiter, deadline))
        self._waiters = waiting
        if waiting:
            self._arm(loop, min(deadline for _, deadline in waiting))
