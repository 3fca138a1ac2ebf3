"""Hand-written upstreams on real sockets, for what the simulator cannot be made to do:
a canned Claude answer, and servers whose every connection a test scripts (close it
while kept, say nothing, speak TLS, answer garbage)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Awaitable, Callable

CLAUDE_STREAM = b"".join(
    b"event: %s\ndata: %s\n\n" % (name.encode(), data.encode())
    for name, data in [
        ("message_start", '{"type":"message_start","message":{"id":"msg_1","type":"message",'
         '"role":"assistant","model":"claude-haiku-4-5","content":[],"stop_reason":null,'
         '"stop_sequence":null,"usage":{"input_tokens":5,"output_tokens":1}}}'),
        ("content_block_start", '{"type":"content_block_start","index":0,'
         '"content_block":{"type":"text","text":""}}'),
        ("content_block_delta", '{"type":"content_block_delta","index":0,'
         '"delta":{"type":"text_delta","text":"Hello there"}}'),
        ("content_block_stop", '{"type":"content_block_stop","index":0}'),
        ("message_delta", '{"type":"message_delta","delta":{"stop_reason":"end_turn",'
         '"stop_sequence":null},"usage":{"output_tokens":2}}'),
        ("message_stop", '{"type":"message_stop"}'),
    ]
)  # fmt: skip

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> bytes | None:
    """One request's head and body, or None when the client closed the connection."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    return head + await reader.readexactly(length)


def answer(body: bytes = CLAUDE_STREAM, *extra: bytes) -> bytes:
    """A 200 answer with `body`, its length given; `extra` header lines added."""
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
    head += b"".join(line + b"\r\n" for line in extra)
    return head + b"content-length: %d\r\n\r\n%s" % (len(body), body)


class ScriptedUpstream:
    """A server on a free port running `handler` on every connection it accepts."""

    def __init__(self, handler: Handler, *, tls: ssl.SSLContext | None = None) -> None:
        self.connections = 0
        self._handler = handler
        self._tls = tls
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def __aenter__(self) -> ScriptedUpstream:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self._tls)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:  # the kept connections' reads end
            writer.transport.abort()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await self._handler(reader, writer)
