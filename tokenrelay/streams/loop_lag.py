"""Whether this process's event loop is behind, measured the cheap way: a timer that
notes how late it fires.

What it is for: a reader's write window (`Readers.follow`). At low load every
token goes to its client the moment it arrives. When the loop is behind, a token sent
at once still waits in the loop's queue, and each one costs its reader a wake-up and
a write; letting a reader's tokens gather for a short window then costs one wake-up
and one write for several, which is what lets the loop catch up.

It ticks only while somebody reads a stream (`watch`/`unwatch`): an idle gateway, or
one between streams, pays no wake-up for it. While it ticks, a tick every `interval`
is some 50 callbacks a second, whatever the load.
"""

from __future__ import annotations

import asyncio
import time

# A tick this late means the loop has a backlog: other callbacks ran before it. An
# idle loop fires a timer within a fraction of a millisecond.
BEHIND_AFTER_S = 0.003
TICK_S = 0.02
# Once behind, the loop counts as behind for this many ticks after its last late one:
# a loop at its limit fires some ticks on time between late ones.
HOLD_TICKS = 10


class LoopLag:
    __slots__ = (
        "_due", "_handle", "_loop", "_quiet", "_watchers", "behind", "interval", "late_after",
    )  # fmt: skip

    def __init__(self, interval: float = TICK_S, late_after: float = BEHIND_AFTER_S) -> None:
        self.interval = interval
        self.late_after = late_after
        self.behind = False
        self._quiet = 0  # ticks on time since the last late one
        self._watchers = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0

    @property
    def ticking(self) -> bool:
        return self._handle is not None

    def start(self) -> None:
        """Measure on the running loop (again after `stop`) while anyone watches."""
        self._loop = asyncio.get_running_loop()
        if self._watchers and self._handle is None:
            self._schedule()

    def stop(self) -> None:
        self._loop = None
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self.behind = False

    def watch(self) -> None:
        """Somebody relies on `behind` from now on: tick while anyone does."""
        self._watchers += 1
        if self._handle is None and self._loop is not None:
            self._schedule()

    def unwatch(self) -> None:
        # The last one gone, the next tick is the last.
        self._watchers -= 1

    def _schedule(self) -> None:
        assert self._loop is not None
        # Timed by the clock, not `loop.time()`: uvloop's is in whole milliseconds.
        self._due = time.monotonic() + self.interval
        self._handle = self._loop.call_later(self.interval, self._tick)

    def _tick(self) -> None:
        if not self._watchers:
            self._handle = None
            self.behind = False
            return
        if time.monotonic() - self._due > self.late_after:
            self.behind = True
            self._quiet = 0
        elif self.behind:
            self._quiet += 1
            if self._quiet >= HOLD_TICKS:
                self.behind = False
        self._schedule()
