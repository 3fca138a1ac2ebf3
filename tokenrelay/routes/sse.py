"""A lean SSE response for pre-encoded frames, and the frames of a stream in a dialect.

Why not sse-starlette's EventSourceResponse: our frames are already encoded bytes
(one JSON encoding per event, shared by every reader), a batch a slow reader missed
must go out in one write, and heartbeats are only needed while the stream is idle,
which the manager knows (it yields an empty batch on an idle interval). That leaves
one job for this class: send the frames, and notice a client that went away.

A server may silently drop writes to a closed connection (uvicorn and granian both
do), so the response waits for `http.disconnect` while it sends, and interrupts the
sender the way `asyncio.timeout` does: it cancels the sending task and the sender
tells that cancellation apart from any other by `uncancel()`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from typing import Any, NamedTuple, cast

from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from tokenrelay.dialects.base import Dialect
from tokenrelay.errors import GatewayError, Overloaded
from tokenrelay.events import Text
from tokenrelay.observability import telemetry
from tokenrelay.observability.tracing import NO_DELIVERY, Delivery
from tokenrelay.streams.log import Entry
from tokenrelay.streams.manager import StreamManager

# Where the server's own `send` waits in the scope (`DirectLane` puts it there). The
# response's start goes through the middleware chain, whose layers add headers to it;
# every body chunk goes straight to the server: no layer touches one (see
# `middleware/__init__.py`), and past them a write is one call, not five.
SERVER_SEND = "tokenrelay.server_send"
# And its own `receive`: the body-size layer's wrapper is a coroutine, the server's is
# (under granian) a future, which the disconnect watch needs no task to wait on.
SERVER_RECEIVE = "tokenrelay.server_receive"

SSE_HEADERS: list[tuple[bytes, bytes]] = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


class Last(bytes):
    """A stream's last chunk: the response ends with it, in the same write (a message
    to the server less, a hand-over to its thread less)."""


class SSEResponse(Response):
    def __init__(self, frames: AsyncIterator[bytes], headers: Mapping[str, str]) -> None:
        # Not Response.__init__: there is no body to render, only frames to stream.
        self.background = None
        self.status_code = 200
        self._frames = frames
        self._raw_headers = SSE_HEADERS + [
            (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        sender = asyncio.current_task()
        assert sender is not None
        watch = DisconnectWatch(sender, scope.get(SERVER_RECEIVE, receive))
        write = scope.get(SERVER_SEND, send)
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self._raw_headers})
            async for chunk in self._frames:
                if type(chunk) is Last:
                    await write({"type": "http.response.body", "body": chunk, "more_body": False})
                    return
                await write({"type": "http.response.body", "body": chunk, "more_body": True})
            await write({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not watch.gone or sender.uncancel() > 0:
                raise
            telemetry.client_disconnected()
        finally:
            watch.close()
            await _close_frames(self._frames)


class DisconnectWatch:
    """Cancels `sender` once `receive()` says the client went away.

    A callback on the pending `receive()`, not a task that awaits it: under granian
    `receive()` returns a future, so an open stream holds no task, no coroutine and
    no frame for its watch, and a request spends no loop turn starting one and none
    ending it. A server whose `receive` is a coroutine gets it wrapped in a task, as
    before. A `receive()` that fails means the connection is gone too."""

    __slots__ = ("_pending", "_receive", "_sender", "gone")

    def __init__(self, sender: asyncio.Task[Any], receive: Receive) -> None:
        self._sender = sender
        self._receive = receive
        self.gone = False
        self._pending: asyncio.Future[Message] | None = None
        self._wait()

    def _wait(self) -> None:
        pending = asyncio.ensure_future(self._receive())
        pending.add_done_callback(self._received)
        self._pending = pending

    def _received(self, pending: asyncio.Future[Message]) -> None:
        if self._pending is not pending or pending.cancelled():
            return  # closed meanwhile
        if pending.exception() is None and pending.result()["type"] != "http.disconnect":
            self._wait()  # a body chunk nobody asked for; go on waiting
            return
        self._pending = None
        self.gone = True
        self._sender.cancel()

    def close(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None and not pending.done():
            pending.remove_done_callback(self._received)
            pending.cancel()


async def _close_frames(frames: AsyncIterator[bytes]) -> None:
    aclose = getattr(frames, "aclose", None)
    if aclose is not None:
        await aclose()


class Followed(NamedTuple):
    """A stream already followed: the entries read so far (one batch), and the rest."""

    head: list[Entry]
    rest: AsyncGenerator[list[Entry], None]


async def stream_frames(
    manager: StreamManager,
    stream_id: str,
    after: int,
    dialect: Dialect,
    first_text: Callable[[], None] | None = None,
    trace: Delivery = NO_DELIVERY,
    followed: Followed | None = None,
) -> AsyncIterator[bytes]:
    """Every entry after `after` in `dialect`, a batch per write, heartbeats when idle.
    `first_text()` is called as the first batch with text goes out (the batches
    before it are looked through; none after it).

    A response that ends without the terminal event (the instance shuts down, the
    store is unreachable) just ends: the client resumes from the last id it got, on
    whichever instance answers. Any other gateway error is the dialect's error frame.
    `trace` is the reader's span: what it was sent, and how it ended. A stream the
    route `followed` already goes on from there (its reader is not made again).
    """
    trace.start()
    events = writes = 0
    outcome = "disconnected"  # unless the loop ends: the client left (the task cancelled)
    if followed is None:
        source = cast(AsyncGenerator[list[Entry], None], manager.follow(stream_id, after))
        head: list[Entry] | None = None
    else:
        source, head = followed.rest, followed.head
    try:
        while True:
            if head is not None:
                entries, head = head, None
            else:
                try:
                    entries = await anext(source)
                except StopAsyncIteration:
                    break
            if not entries:
                yield dialect.heartbeat
                continue
            if first_text is not None and any(type(e.event) is Text for e in entries):
                first_text()
                first_text = None
            chunk = dialect.render(entries)
            if entries[-1].terminal and dialect.final:
                chunk += dialect.final
            events += len(entries)
            writes += 1
            if entries[-1].terminal:
                outcome = "completed"
                yield Last(chunk)
                continue  # the source ends here
            yield chunk
        if outcome != "completed":
            outcome = "ended"
    except Overloaded:
        outcome = "ended"
    except GatewayError as exc:
        outcome = "error"
        yield dialect.error(exc)
    finally:
        trace.end(events, writes, outcome)
        await source.aclose()  # its reader leaves now, not when it is collected
