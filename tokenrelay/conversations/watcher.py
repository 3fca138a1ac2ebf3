"""Reading the streams that answer conversations to their end, to store the answers.

A watcher reads the stream's log directly (`StreamLog.read`), not through the manager:
it is no reader in the manager's sense, so a stream whose client has gone is still
abandoned as any other. Each watch is one task, kept in a set and cancelled on close;
a turn whose watcher died with its instance is resolved from the log when the
conversation is next read (`Conversations.resolve`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from tokenrelay.conversations.answer import AnswerBuilder, Outcome
from tokenrelay.events import Done, Failed
from tokenrelay.observability.log import log_event
from tokenrelay.streams.log import StreamLog

log = logging.getLogger("tokenrelay.conversations")

Finish = Callable[[str, str, Outcome], Awaitable[object]]
# How long one read waits for more of the stream before it asks again.
READ_WAIT_S = 15.0


async def read_to_end(log_: StreamLog, stream_id: str, *, wait: float) -> Outcome | None:
    """How the stream ended, reading it from its start. `wait` 0: what the log holds
    now, None when the stream has not ended yet; else until its end. A stream the log
    no longer knows (or that ended without its terminal entry) is lost."""
    builder = AnswerBuilder()
    after = -1
    while True:
        entries = await log_.read(stream_id, after, wait)
        if entries is None:
            return builder.lost()
        for entry in entries:
            event = entry.event
            if isinstance(event, Done | Failed):
                return builder.outcome(event)
            builder.add(event)
        if entries:
            after = entries[-1].seq
        elif not wait:
            return None


class Watcher:
    def __init__(self, log_: StreamLog, finish: Finish, *, wait: float = READ_WAIT_S) -> None:
        self._log = log_
        self._finish = finish
        self._wait = wait
        self._tasks: dict[str, asyncio.Task[None]] = {}  # by stream id
        self._closed = False

    def watching(self, stream_id: str) -> bool:
        return stream_id in self._tasks

    def watch(self, cid: str, stream_id: str) -> None:
        """Store the answer on `stream_id` when it ends (once, however often asked)."""
        if self._closed or stream_id in self._tasks:
            return
        task = asyncio.create_task(self._run(cid, stream_id), name=f"conversation:{stream_id}")
        self._tasks[stream_id] = task
        task.add_done_callback(lambda _t: self._tasks.pop(stream_id, None))

    async def _run(self, cid: str, stream_id: str) -> None:
        try:
            outcome = await read_to_end(self._log, stream_id, wait=self._wait)
            if outcome is not None:
                await self._finish(cid, stream_id, outcome)
        except asyncio.CancelledError:
            raise
        # Anything else: the turn stays pending, and the next read of the conversation
        # resolves it from the log; say why it was not stored now.
        except Exception as exc:
            log_event(
                log, "conversation_turn_unstored", level=logging.WARNING,
                conversation_id=cid, stream_id=stream_id, error=type(exc).__name__,
            )  # fmt: skip

    async def aclose(self, grace: float = 1.0) -> None:
        """Let the watches of streams that are ending store them, for up to `grace`
        seconds; cancel the rest (their streams go on elsewhere, or not at all)."""
        self._closed = True
        tasks = list(self._tasks.values())
        if tasks:
            await asyncio.wait(tasks, timeout=grace)
        for task in tasks:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*tasks, return_exceptions=True)
