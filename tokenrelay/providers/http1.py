"""A lean HTTP/1.1 client for the one thing a provider does: POST, then read a body.

A general client (aiohttp, httpx) pays per request for what a gateway never uses —
URL and cookie handling, header multidicts, per-read timeout handles, a stream reader
with its own buffering — and keeps some 13 KiB per open response. This one is an
asyncio protocol over httptools (the C parser uvicorn uses): the request's head is
bytes built once per header set, a response's body chunks go to the reader as they
arrive, and a connection's parser serves all its answers.

What it keeps of a production client:
  - keep-alive: a connection whose answer was read to its end goes back to an idle
    pool for the next request; one the upstream closes while idle is dropped;
  - a request sent on a pooled connection that turns out closed (the request fails to
    go out, or the connection ends before any byte of an answer) goes once more, at
    once, on a new connection: that says nothing of the upstream;
  - `connect_timeout` for a connection (and TLS handshake); `stall_timeout` for silence
    while an answer is awaited or read, raised as `TimeoutError`: one watch per client
    looks over the connections in use a few times per `stall_timeout`, so a request
    sets no timer of its own and a read moves none;
  - TLS for `https` upstreams, verified against the system's trust store, through the
    `HTTPS_PROXY` of the environment (a CONNECT tunnel) unless `NO_PROXY` names the host;
  - a slow reader pauses the socket rather than letting the body pile up.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import urllib.request
from collections.abc import AsyncIterator, Iterable
from typing import cast
from urllib.parse import unquote, urlsplit

import httptools

# A reader this far behind pauses the socket until it catches up.
HIGH_WATER = 256 * 1024
# An idle connection kept longer than this is closed: upstreams close theirs after some
# such time, and one closed under a request costs a resend.
KEEPALIVE_S = 15.0


class ConnectError(ConnectionError):
    """No connection could be made to the upstream (refused, unresolvable, TLS)."""


# An answer's headers, names lower-cased (HTTP names are case-insensitive).
Headers = dict[str, str]


class Head:
    """A request head, encoded once: the start line and the fixed headers."""

    __slots__ = ("_prefix",)

    def __init__(self, host: str, path: str, headers: Iterable[tuple[str, str]]) -> None:
        lines = [f"POST {path} HTTP/1.1", f"host: {host}", *(f"{k}: {v}" for k, v in headers)]
        self._prefix = ("\r\n".join(lines) + "\r\n").encode("latin-1")

    def encode(self, body: bytes, extra: Iterable[tuple[str, str]] = ()) -> bytes:
        more = "".join(f"{k}: {v}\r\n" for k, v in extra).encode("latin-1")
        return b"%b%bcontent-length: %d\r\n\r\n%b" % (self._prefix, more, len(body), body)


class Client:
    """Pooled keep-alive connections to one upstream origin."""

    def __init__(self, base_url: str, *, connect_timeout: float, stall_timeout: float) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self._tls = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self._tls else 80)
        # The Host header: the host and port as written (an IPv6 address in brackets).
        self.authority = parts.netloc.rpartition("@")[2]
        self.path_prefix = parts.path.rstrip("/")
        self._connect_timeout = connect_timeout
        self._stall_timeout = stall_timeout
        # A stall is seen between `stall_timeout` and a quarter more of silence.
        self._tick = min(1.0, stall_timeout / 4)
        self._busy: set[_Connection] = set()
        self._watch: asyncio.TimerHandle | None = None
        self._ssl: ssl.SSLContext | None = ssl.create_default_context() if self._tls else None
        self._proxy = _proxy_for(self.host) if self._tls else None
        # Oldest first: a request takes the newest, the sweep closes the oldest.
        self._idle: list[_Connection] = []
        self._sweep: asyncio.TimerHandle | None = None
        self._closed = False

    def head(self, path: str, headers: Iterable[tuple[str, str]]) -> Head:
        return Head(self.authority, self.path_prefix + path, headers)

    async def post(self, request: bytes) -> Response:
        """The answer to an encoded request, once its status and headers are read."""
        while self._idle:
            conn = self._idle.pop()
            if conn.closed:
                continue
            try:
                return await conn.send(request)
            except _Stale:
                break  # the others idled as long: start afresh
        conn = await self._connect()
        try:
            return await conn.send(request)
        except _Stale:
            raise _Lost("closed before answering") from None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout):
                if self._proxy is not None:
                    return await self._tunnel(*self._proxy)
                _, conn = await loop.create_connection(
                    lambda: _Connection(self),
                    self.host,
                    self.port,
                    ssl=self._ssl,
                    server_hostname=self.host if self._tls else None,
                )
        except TimeoutError:  # an OSError too, but a timeout is told as one
            raise
        except (OSError, ssl.SSLError) as exc:
            raise ConnectError(f"no connection ({type(exc).__name__}: {exc})") from None
        return conn

    async def _tunnel(self, host: str, port: int, authorization: str | None) -> _Connection:
        """A connection through an HTTP proxy's CONNECT tunnel, TLS inside it."""
        loop = asyncio.get_running_loop()
        raw, opening = await loop.create_connection(_TunnelOpening, host, port)
        try:
            target = f"{self.host}:{self.port}"
            head = f"CONNECT {target} HTTP/1.1\r\nhost: {target}\r\n"
            if authorization is not None:
                head += f"proxy-authorization: {authorization}\r\n"
            raw.write(head.encode("latin-1") + b"\r\n")
            answer = await opening.answer
            if answer.split(b" ", 2)[1:2] != [b"200"]:
                line = answer.split(b"\r\n", 1)[0].decode("latin-1")
                raise ConnectionRefusedError(f"the proxy refused the tunnel: {line}")
            conn = _Connection(self)
            transport = await loop.start_tls(
                raw, conn, cast(ssl.SSLContext, self._ssl), server_hostname=self.host
            )
        except BaseException:
            raw.abort()
            raise
        if transport is None:  # only for a transport that is not a socket's
            raise ConnectionError("TLS could not start in the tunnel")
        conn.connection_made(transport)
        return conn

    def _watching(self, conn: _Connection) -> None:
        self._busy.add(conn)
        if self._watch is None:
            self._watch = asyncio.get_running_loop().call_later(self._tick, self._look)

    def _look(self) -> None:
        """Fail each connection in use that has been silent for `stall_timeout`."""
        self._watch = None
        for conn in [conn for conn in self._busy if conn.quiet(self._tick) >= self._stall_timeout]:
            conn.stalled()
        if self._busy:
            self._watch = asyncio.get_running_loop().call_later(self._tick, self._look)

    def _release(self, conn: _Connection) -> None:
        if self._closed:
            conn.close()
            return
        loop = asyncio.get_running_loop()
        conn.idle_since = loop.time()
        self._idle.append(conn)
        if self._sweep is None:
            self._sweep = loop.call_later(KEEPALIVE_S, self._close_expired)

    def _close_expired(self) -> None:
        self._sweep = None
        loop = asyncio.get_running_loop()
        expired = loop.time() - KEEPALIVE_S
        idle = self._idle
        n = 0
        while n < len(idle) and idle[n].idle_since <= expired:
            idle[n].close()
            n += 1
        del idle[:n]
        if idle:
            self._sweep = loop.call_at(idle[0].idle_since + KEEPALIVE_S, self._close_expired)

    async def aclose(self) -> None:
        self._closed = True
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


def _proxy_for(host: str) -> tuple[str, int, str | None] | None:
    """(host, port, Proxy-Authorization) of the environment's HTTPS proxy for `host`."""
    url = urllib.request.getproxies_environment().get("https")
    if not url or urllib.request.proxy_bypass(host):  # NO_PROXY
        return None
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"HTTPS_PROXY must be an http:// URL: {url!r}")
    authorization = None
    if parts.username is not None:
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        authorization = "Basic " + base64.b64encode(credentials).decode()
    return parts.hostname, parts.port or 80, authorization


class _TunnelOpening(asyncio.Protocol):
    """A proxy's answer to CONNECT: its head, up to the blank line."""

    def __init__(self) -> None:
        self.answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._received = b""

    def data_received(self, data: bytes) -> None:
        self._received += data
        if b"\r\n\r\n" in self._received and not self.answer.done():
            self.answer.set_result(self._received)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.answer.done():
            self.answer.set_exception(ConnectionResetError("the proxy closed the connection"))


class _Stale(Exception):
    """A reused connection ended before any byte of the answer came."""


class Response:
    """An answer whose status and headers are in; its body is read from `chunks()`."""

    __slots__ = ("_conn", "_open", "headers", "status")

    def __init__(self, conn: _Connection, status: int, headers: Headers) -> None:
        self._conn = conn
        self._open = True
        self.status = status
        self.headers = headers

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives: whatever came since the last read, in one piece."""
        conn = self._conn
        while True:
            body = conn.body
            if body:
                conn.body = []
                conn.buffered = 0
                if conn.paused:
                    conn.resume()
                yield body[0] if len(body) == 1 else b"".join(body)
                continue
            if conn.complete:
                return
            if conn.error is not None:
                raise conn.error
            await conn.wait()

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.chunks()])

    async def finish(self, within: float) -> None:
        """Read what is left of an answer already told (its last bytes in flight) so the
        connection is kept; past `within`, or on any failure, it is closed instead."""
        conn = self._conn
        if conn.complete and not conn.body:  # the usual case: the end came with the rest
            self.close()
            return
        try:
            async with asyncio.timeout(within):
                async for _ in self.chunks():
                    pass
        except (TimeoutError, OSError):
            pass
        self.close()

    def close(self) -> None:
        """Done with the answer: a connection read to its end is kept, any other closed."""
        if self._open:
            self._open = False
            self._conn.done()


class _Connection(asyncio.Protocol):
    """One upstream socket; one request at a time."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._asked = False  # a request is out, its answer not yet all read
        self._waiter: asyncio.Future[None] | None = None
        self._reads = self._reads_seen = 0  # data_received calls; as of the last look
        self._silent = 0.0  # seconds of silence seen by the looks
        self._raw_headers: list[tuple[bytes, bytes]] = []
        self._headers_done = False
        self._keep_alive = False
        self._got_bytes = False
        self.body: list[bytes] = []
        self.buffered = 0
        self.paused = False
        self.complete = False
        self.closed = False
        self.error: BaseException | None = None
        self.reused = False  # an answer has come on it before
        self.idle_since = 0.0

    # -- the request side ----------------------------------------------------------

    async def send(self, request: bytes) -> Response:
        self._raw_headers = []
        self._headers_done = self._got_bytes = self._keep_alive = self.complete = False
        self.body = []
        self.buffered = 0
        self.error = None
        assert self._transport is not None
        if self.closed or self._transport.is_closing():
            raise _Stale
        self._transport.write(request)
        self._asked = True
        self._reads_seen, self._silent = self._reads, 0.0
        self._client._watching(self)
        try:
            while not self._headers_done:
                if self.error is not None:
                    if not self._got_bytes and isinstance(self.error, _Lost) and self.reused:
                        raise _Stale
                    raise self.error
                await self.wait()
        except BaseException:
            # Failed, or cancelled (the caller gone): a request left half-answered on
            # the connection would keep the upstream generating for no one.
            self.close()
            raise
        status = self._parser.get_status_code()
        headers: Headers = {
            name.decode("latin-1").lower(): value.decode("latin-1")
            for name, value in self._raw_headers
        }
        self.reused = True
        return Response(self, status, headers)

    async def wait(self) -> None:
        self._waiter = self._loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def done(self) -> None:
        self._client._busy.discard(self)
        keep = self.complete and self._keep_alive and not self.closed
        self._asked = False
        self.body = []
        if keep:
            if self.paused:
                self.resume()
            self._client._release(self)
        else:
            self.close()

    def resume(self) -> None:
        self.paused = False
        if self._transport is not None and not self.closed:
            self._transport.resume_reading()

    def close(self) -> None:
        self._client._busy.discard(self)
        if not self.closed:
            self.closed = True
            if self._transport is not None:
                self._transport.close()

    # -- the protocol side ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but act as one.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if not self._asked:  # bytes nobody asked for: the connection is not reusable
            self.close()
            return
        self._got_bytes = True
        self._reads += 1
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            if not self.complete:
                self.error = _Lost(f"not an HTTP answer ({exc})")
            self.close()  # what came after a whole answer is not to be read as the next
        if self.buffered > HIGH_WATER and not self.paused and not self.closed:
            self.paused = True
            assert self._transport is not None
            self._transport.pause_reading()
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._client._busy.discard(self)
        if self._asked and not self.complete and self.error is None:
            self.error = _Lost(f"lost ({type(exc).__name__})" if exc else "closed mid-answer")
        self._wake()

    def on_message_begin(self) -> None:
        if self.complete:  # a second answer to one request
            raise _Lost("bytes after the answer")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._headers_done = True

    def on_body(self, body: bytes) -> None:
        self.body.append(body)
        self.buffered += len(body)

    def on_message_complete(self) -> None:
        # Asked now: once the callback returns the parser has reset for a next message.
        self._keep_alive = self._parser.should_keep_alive()
        self.complete = True
        self._client._busy.discard(self)

    # -- internals -----------------------------------------------------------------

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def quiet(self, tick: float) -> float:
        """Seconds of silence as of this look (the looks come `tick` apart)."""
        if self._reads != self._reads_seen or self.paused:  # a reader behind is no stall
            self._reads_seen, self._silent = self._reads, 0.0
        else:
            self._silent += tick
        return self._silent

    def stalled(self) -> None:
        if self.error is None:
            self.error = TimeoutError("upstream stalled")
        self.close()
        self._wake()


class _Lost(ConnectionError):
    """The connection ended, or its bytes were not HTTP, before the answer was done."""
