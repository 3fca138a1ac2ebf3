"""Incremental decoding of an upstream SSE byte stream into (event, data) pairs.

The SDK's own decoder builds a `ServerSentEvent` and then a pydantic model for every
event; at hundreds of streams that dominated the gateway's CPU, so the hot path reads
the bytes itself. Events may be split across chunks anywhere; CRLF is accepted.
"""

from __future__ import annotations

from collections.abc import AsyncIterator


async def sse_events(chunks: AsyncIterator[bytes]) -> AsyncIterator[tuple[bytes, bytes]]:
    """Yield (event name, data) for every complete event; comments are skipped."""
    buffer = b""
    async for chunk in chunks:
        if b"\r" in chunk:
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        buffer += chunk
        if b"\n\n" not in buffer:
            continue
        *blocks, buffer = buffer.split(b"\n\n")
        for block in blocks:
            event = b""
            data: list[bytes] = []
            for line in block.split(b"\n"):
                if line.startswith(b"data:"):
                    data.append(line[6:] if line[5:6] == b" " else line[5:])
                elif line.startswith(b"event:"):
                    event = line[6:].strip()
            if data:
                yield event, b"\n".join(data)
