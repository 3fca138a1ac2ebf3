"""In-process fan-out of one stream's entries to every reader waiting in this process.

Both stores keep the entries a process has seen in a `Tail`: the memory store as its
only copy, the Redis store as a cache in front of Redis, so that readers in this
process never ask Redis for what the process already has.

Per entry this costs a list append and, only when somebody waits, one future set per
waiting reader: no Event objects, no tasks, no timeout context per token.

A reader may ask to be held (`read(..., hold=s)`): it is not woken by the entries that
arrive meanwhile, only when the hold is over, or at once by the stream's end (the
last token is never late) or `wake()`. That is the write window of a loaded process:
several tokens for one wake-up and one write.
"""

from __future__ import annotations

import asyncio

from tokenrelay.streams.log import Entry


def _expire(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)


class Tail:
    __slots__ = ("_held", "_waiters", "entries", "expires_at", "finished", "last_read")

    def __init__(self, entries: list[Entry] | None = None) -> None:
        self.entries: list[Entry] = entries or []
        self.finished = bool(self.entries) and self.entries[-1].terminal
        self.last_read = 0.0
        # When a cached copy of a finished stream must be forgotten (its log expired).
        self.expires_at = float("inf")
        self._waiters: list[asyncio.Future[bool]] = []
        self._held: list[asyncio.Future[bool]] = []  # woken by the end only

    def push(self, entry: Entry) -> None:
        if self._add(entry) and self._waiters:
            self._wake(True)

    def extend(self, entries: list[Entry]) -> None:
        """`push` each, with one wake-up of the readers for all of them."""
        added = False
        for entry in entries:
            added = self._add(entry) or added
        if added and self._waiters:
            self._wake(True)

    def _add(self, entry: Entry) -> bool:
        if entry.seq != len(self.entries):
            return False  # already seen (a replay overlapping a live push)
        self.entries.append(entry)
        if entry.terminal:
            self.finished = True
            if self._held:
                self._release()
        return True

    def wake(self) -> None:
        """End every waiting read now, with whatever there is."""
        if self._held:
            self._release()
        if self._waiters:
            self._wake(False)

    def _wake(self, pushed: bool) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(pushed)

    def _release(self) -> None:
        held, self._held = self._held, []
        for waiter in held:
            if not waiter.done():
                waiter.set_result(True)

    async def read(self, after: int, wait: float, hold: float = 0.0) -> list[Entry]:
        """Entries with `seq > after`; waits up to `wait` for one while the stream is
        open. `hold` > 0: first lets entries gather that long (unless the stream ends)."""
        loop = asyncio.get_running_loop()
        if hold > 0 and not self.finished:
            held: asyncio.Future[bool] = loop.create_future()
            self._held.append(held)
            timer = loop.call_later(hold, _expire, held)
            try:
                ended = await held  # True: the stream ended, or `wake()`
            finally:
                timer.cancel()
                if held in self._held:  # the hold ran out, or the read was cancelled
                    self._held.remove(held)
            if ended:
                return self.entries[after + 1 :]
        if len(self.entries) > after + 1 or self.finished:
            return self.entries[after + 1 :]
        waiter: asyncio.Future[bool] = loop.create_future()
        self._waiters.append(waiter)
        timer = loop.call_later(wait, _expire, waiter)
        try:
            pushed = await waiter
        finally:
            timer.cancel()
        if not pushed and waiter in self._waiters:
            # Timed out with nothing pushed. (A push or a wake right after the timer
            # fired has already swapped the waiter list out.)
            self._waiters.remove(waiter)
        return self.entries[after + 1 :]
