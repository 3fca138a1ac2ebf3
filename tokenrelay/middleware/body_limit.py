"""Pure ASGI middleware that refuses request bodies over the size limit with 413, and
reads to its end any body the app answered without reading.

A declared Content-Length over the limit is refused before a byte is read; a
chunked body is counted as it arrives and refused once it passes the limit.

Why read what is refused: the HTTP server closes a connection whose request body was
left unread, and a close with unread bytes in the socket makes the kernel reset it.
The client then loses the answer it was about to read (a 413, a 401), or reuses the
connection for its next request and finds it gone. Up to `DISCARD_MAX` bytes are read
and dropped; a body longer than that is answered with `connection: close`. A client
that stops sending is given `DISCARD_WAIT_S`, and then the connection is closed.
"""

from __future__ import annotations

import asyncio
import contextlib

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tokenrelay.errors import RequestTooLarge

DISCARD_MAX = 64 << 20
DISCARD_WAIT_S = 10.0


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes
        has_body = False
        for name, value in scope["headers"]:
            if name == b"content-length":
                if not value.isdigit() or int(value) > limit:
                    declared = int(value) if value.isdigit() else DISCARD_MAX + 1
                    await self._refuse(send, close=declared > DISCARD_MAX)
                    if declared <= DISCARD_MAX:
                        await _discard(receive, DISCARD_MAX)
                    return
                has_body = value != b"0"
            elif name == b"transfer-encoding":
                has_body = True
        if not has_body:
            await self.app(scope, receive, send)
            return
        received = 0
        ended = False

        async def limited_receive() -> Message:
            nonlocal received, ended
            message = await receive()
            if message["type"] != "http.request":
                ended = True
            else:
                received += len(message.get("body", b""))
                ended = not message.get("more_body", False)
                if received > limit:
                    raise RequestTooLarge(self._message())
            return message

        await self.app(scope, limited_receive, send)
        if not ended:
            await _discard(receive, DISCARD_MAX - received)

    def _message(self) -> str:
        return f"Request body is too large: the limit is {self.max_bytes} bytes"

    async def _refuse(self, send: Send, *, close: bool) -> None:
        err = RequestTooLarge(self._message())
        headers = [(b"content-type", b"application/json")]
        if close:
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": err.body()})


async def _discard(receive: Receive, budget: int) -> None:
    """Read the request body to its end, or until `budget` bytes have gone by, or until
    the client has sent nothing for `DISCARD_WAIT_S`."""
    with contextlib.suppress(TimeoutError):
        while budget >= 0:
            async with asyncio.timeout(DISCARD_WAIT_S):
                message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                return
            budget -= len(message.get("body", b""))
