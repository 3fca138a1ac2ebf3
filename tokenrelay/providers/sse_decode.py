"""Incremental decoding of an upstream SSE byte stream into (event, data) pairs.

The SDK's own decoder builds a `ServerSentEvent` and then a pydantic model for every
event; at hundreds of streams that dominated the gateway's CPU, so the hot path reads
the bytes itself. Events may be split across chunks anywhere; CRLF is accepted.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

Events = list[tuple[bytes, bytes]]


class SseDecoder:
    """Bytes in, complete events out; what is left of an event waits for the rest."""

    __slots__ = ("_buffer", "_cr")

    def __init__(self) -> None:
        self._buffer = b""
        # The last chunk ended in CR, taken as a line's end: an LF opening this one is
        # the rest of that CRLF, not a line of its own.
        self._cr = False

    def feed(self, chunk: bytes) -> Events:
        """(event name, data) of every event `chunk` completes; comments are skipped."""
        if not chunk:
            return []
        if self._cr:
            self._cr = False
            if chunk.startswith(b"\n"):
                chunk = chunk[1:]
        if b"\r" in chunk:
            self._cr = chunk.endswith(b"\r")
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        buffer = self._buffer + chunk if self._buffer else chunk
        if b"\n\n" not in buffer:
            self._buffer = buffer
            return []
        *blocks, self._buffer = buffer.split(b"\n\n")
        events: Events = []
        for block in blocks:
            event = b""
            data: list[bytes] = []
            for line in block.split(b"\n"):
                if line.startswith(b"data:"):
                    data.append(line[6:] if line[5:6] == b" " else line[5:])
                elif line.startswith(b"event:"):
                    event = line[6:].strip()
            if data:
                events.append((event, b"\n".join(data)))
        return events


async def sse_events(chunks: AsyncIterator[bytes]) -> AsyncIterator[tuple[bytes, bytes]]:
    """Yield (event name, data) for every complete event; comments are skipped."""
    decoder = SseDecoder()
    async for chunk in chunks:
        for event in decoder.feed(chunk):
            yield event
