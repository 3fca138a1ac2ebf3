"""Pure ASGI middleware that refuses request bodies over the size limit with 413.

A declared Content-Length over the limit is refused before a byte is read; a
chunked body is counted as it arrives and refused once it passes the limit.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tokenrelay.errors import RequestTooLarge


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes
        for name, value in scope["headers"]:
            if name == b"content-length":
                if not value.isdigit() or int(value) > limit:
                    await self._refuse(send)
                    return
                break
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise RequestTooLarge(self._message())
            return message

        await self.app(scope, limited_receive, send)

    def _message(self) -> str:
        return f"Request body is too large: the limit is {self.max_bytes} bytes"

    async def _refuse(self, send: Send) -> None:
        err = RequestTooLarge(self._message())
        # No `connection: close`: closing with the body unread makes the kernel reset the
        # connection, and the client would never see the 413. uvicorn discards the rest.
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": err.body()})
