"""Connections, counted: does a server keep them alive, does the gateway reuse its own.

`keepalive_connections` sends N streaming requests one after another, each on the
connection the last one used while the server leaves it open, and counts the
connections it had to open. `CountingProxy` is a TCP relay that counts the
connections made through it: put between the gateway and its upstream, it tells how
many upstream connections N sequential streams cost.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any
from urllib.parse import urlsplit

# The last chunk of a chunked body: a streamed response ends here, the connection open.
_LAST_CHUNK = b"\r\n0\r\n\r\n"


def _address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 80


async def keepalive_connections(
    url: str, path: str, bodies: list[bytes], headers: str, within: float = 30.0
) -> int:
    """Connections opened to send `bodies` one after another, reusing each while the
    server keeps it; raises if a response does not end as a whole chunked body."""
    host, port = _address(url)
    opened = 0
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(within):
            for body in bodies:
                if writer is None or reader is None or reader.at_eof():
                    if writer is not None:
                        writer.close()
                    reader, writer = await asyncio.open_connection(host, port)
                    opened += 1
                writer.write(
                    f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                    f"{headers}\r\n".encode()
                    + body
                )
                response = b""
                while not response.endswith(_LAST_CHUNK):
                    chunk = await reader.read(65536)
                    if not chunk:
                        raise ConnectionError("the response ended before its last chunk")
                    response += chunk
                head = response.partition(b"\r\n\r\n")[0].lower()
                if b" 200 " not in head.split(b"\r\n", 1)[0] + b" ":
                    raise ConnectionError(head.split(b"\r\n", 1)[0].decode("latin-1"))
                if b"connection: close" in head:
                    writer.close()
                    writer = None
    finally:
        if writer is not None:
            writer.close()
    return opened


class CountingProxy:
    """A TCP relay to `upstream` on a free local port, counting what it accepts."""

    def __init__(self, upstream: str) -> None:
        self._target = _address(upstream)
        self.accepted = 0
        self._server: asyncio.Server | None = None
        self._relays: set[asyncio.Future[Any]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    async def __aenter__(self) -> CountingProxy:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        # Closing both ends of every relay ends its pipes (cancelling the tasks that
        # start_server made would be reported as errors of its callback).
        for writer in self._writers:
            writer.close()
        await asyncio.gather(*self._relays, return_exceptions=True)
        await self._server.wait_closed()

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.accepted += 1
        done = asyncio.get_running_loop().create_future()
        self._relays.add(done)
        self._writers.add(client_w)
        try:
            up_r, up_w = await asyncio.open_connection(*self._target)
            self._writers.add(up_w)
            try:
                await asyncio.gather(_pipe(client_r, up_w), _pipe(up_r, client_w))
            finally:
                up_w.close()
                self._writers.discard(up_w)
        except OSError:
            pass
        finally:
            client_w.close()
            self._writers.discard(client_w)
            self._relays.discard(done)
            done.set_result(None)


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    # A side that is gone (reset, or closed by the other pipe) just ends the relay.
    with contextlib.suppress(OSError, RuntimeError):
        while chunk := await source.read(65536):
            sink.write(chunk)
            await sink.drain()
        sink.write_eof()
