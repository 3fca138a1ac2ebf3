"""The readers of this instance's streams: following a stream's log as its readers do
(the write window), and abandoning a stream this instance produces once nobody has
read it for `abandon_after`, here or on another instance.

`StreamManager` owns one; it knows nothing of producers but what the manager tells it
through two callables: whether a stream is produced here, and how to stop one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from tokenrelay.errors import Overloaded
from tokenrelay.events import Queued, Start
from tokenrelay.observability.log import log_event
from tokenrelay.streams.cluster import Cluster
from tokenrelay.streams.log import Entry, StreamLog
from tokenrelay.streams.loop_lag import LoopLag

log = logging.getLogger("tokenrelay.streams")

# How often a reader tells the cluster it is still there (for abandonment).
READER_TOUCH_S = 5.0
# While the event loop is behind, how long a reader lets its tokens gather after a
# write before the next one (docs/benchmarks.md, "the write window"). At 50 tokens a
# second that is some 2.5 tokens a write; the first and the last are never held.
WRITE_WINDOW_S = 0.05
OPENING = frozenset({Start, Queued})  # what a stream says before its answer


class Readers:
    def __init__(
        self,
        log: StreamLog,
        cluster: Cluster,
        *,
        heartbeat_interval: float,
        abandon_after: float,
        producing: Callable[[str], bool],
        abandon: Callable[[str], bool],
        run: Callable[[Coroutine[Any, Any, None]], None],
    ) -> None:
        self._log = log
        self._cluster = cluster
        self._heartbeat_interval = heartbeat_interval
        self._abandon_after = abandon_after
        self._producing = producing  # whether the stream's producer runs here
        self._stop = abandon  # stop it as abandoned; False if it had ended
        self._run = run  # a task the manager owns
        self.connected = 0  # every reader of every stream (a metric reads it)
        self._counts: dict[str, int] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self.closed = False
        self.loop_lag = LoopLag()

    def of(self, stream_id: str) -> int:
        """How many connections read the stream from this instance."""
        return self._counts.get(stream_id, 0)

    async def follow(self, stream_id: str, after: int) -> AsyncIterator[list[Entry]]:
        """Batches of entries with `seq > after`, as they arrive, until the terminal one.
        An empty batch means nothing arrived for `heartbeat_interval` (time for a ping).
        While anyone follows a stream it is not abandoned. Ends early, without the
        terminal entry, when this instance shuts down: the reader resumes elsewhere."""
        self._attach(stream_id)
        lag = self.loop_lag
        lag.watch()
        try:
            # The first read does not wait, so a response starts with what is there.
            wait = hold = 0.0
            read = self._log.read
            touched = 0.0
            while True:
                entries = await read(stream_id, after, wait, hold)
                wait = self._heartbeat_interval
                if entries is None:  # expired while we were reading
                    return
                if entries:
                    yield entries
                    last = entries[-1]
                    if last.terminal:
                        return
                    after = last.seq
                    # Not before the first token: only an answer's flow is held.
                    hold = WRITE_WINDOW_S if lag.behind and type(last.event) not in OPENING else 0.0
                elif not self.closed:
                    hold = 0.0
                    yield entries
                if self.closed:
                    return
                if time.monotonic() - touched > READER_TOUCH_S:
                    # The producer may run on another instance: tell it somebody reads.
                    touched = time.monotonic()
                    await self._cluster.reader_alive(stream_id)
        finally:
            lag.unwatch()
            self._detach(stream_id)

    def close(self) -> None:
        """Every reader still attached ends now: it follows a stream produced
        elsewhere (or handed over), and its client resumes on another instance."""
        self.closed = True
        self._log.wake_readers()

    # -- abandonment ---------------------------------------------------------------

    def arm_abandon(self, stream_id: str, after: float | None = None) -> None:
        """Abandon the stream (produced here) unless somebody reads it by then."""
        if not self._producing(stream_id) or self._counts.get(stream_id):
            return
        loop = asyncio.get_running_loop()
        self._timers[stream_id] = loop.call_later(
            self._abandon_after if after is None else after, self._abandon, stream_id
        )

    def disarm(self, stream_id: str) -> None:
        timer = self._timers.pop(stream_id, None)
        if timer is not None:
            timer.cancel()

    def disarm_all(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()

    def _attach(self, stream_id: str) -> None:
        self.connected += 1
        self._counts[stream_id] = self._counts.get(stream_id, 0) + 1
        self.disarm(stream_id)

    def _detach(self, stream_id: str) -> None:
        self.connected -= 1
        left = self._counts.get(stream_id, 1) - 1
        if left > 0:
            self._counts[stream_id] = left
            return
        self._counts.pop(stream_id, None)
        self.arm_abandon(stream_id)

    def _abandon(self, stream_id: str) -> None:
        self._timers.pop(stream_id, None)
        self._run(self._abandon_unless_read_elsewhere(stream_id))

    async def _abandon_unless_read_elsewhere(self, stream_id: str) -> None:
        abandon_after = self._abandon_after
        try:
            seen = await self._cluster.last_read_elsewhere(stream_id)
        except Overloaded:  # the store is unreachable: look again later
            self.arm_abandon(stream_id)
            return
        idle = time.time() - seen if seen is not None else float("inf")
        if idle < abandon_after:
            self.arm_abandon(stream_id, after=abandon_after - idle)
        elif self._stop(stream_id):
            log_event(log, "stream_abandoned", stream_id=stream_id)
