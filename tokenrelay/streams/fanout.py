"""In-process fan-out of one stream's entries to every reader waiting in this process.

Both stores keep the entries a process has seen in a `Tail`: the memory store as its
only copy, the Redis store as a cache in front of Redis, so that readers in this
process never ask Redis for what the process already has.
"""

from __future__ import annotations

import asyncio

from tokenrelay.streams.log import Entry


class Tail:
    __slots__ = ("changed", "entries", "finished", "last_read")

    def __init__(self, entries: list[Entry] | None = None) -> None:
        self.entries: list[Entry] = entries or []
        self.finished = bool(self.entries) and self.entries[-1].terminal
        self.last_read = 0.0
        # Readers wait on this event; a push sets it and puts a fresh one in place, so
        # one `set()` wakes every reader of the stream at once.
        self.changed = asyncio.Event()

    def push(self, entry: Entry) -> None:
        if entry.seq != len(self.entries):
            return  # already seen (a replay overlapping a live push)
        self.entries.append(entry)
        if entry.terminal:
            self.finished = True
        changed, self.changed = self.changed, asyncio.Event()
        changed.set()

    async def read(self, after: int, wait: float) -> list[Entry]:
        """Entries with `seq > after`; waits up to `wait` for one while the stream is open."""
        if len(self.entries) > after + 1 or self.finished:
            return self.entries[after + 1 :]
        try:
            async with asyncio.timeout(wait):
                await self.changed.wait()
        except TimeoutError:
            return []
        return self.entries[after + 1 :]
