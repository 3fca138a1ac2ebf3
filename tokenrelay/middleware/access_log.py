"""The access log (`--access-log`): one `http_request` line a request, as it ends.

Outermost, so it sees the status the client got, and it logs in the request's own
context: the line carries the `request_id` (and a stream's `stream_id`) bound while
the request ran. The query string is left out: `GET /api/stream-response?prompt=…`
carries the prompt in it. Off by default: a line a request is noise at volume, and
the metrics count requests anyway.
"""

from __future__ import annotations

import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tokenrelay.observability.log import log_event

log = logging.getLogger("tokenrelay.access")


class AccessLog:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 0
        began = time.monotonic()

        async def send_and_see(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_see)
        finally:
            client = scope.get("client")
            log_event(
                log, "http_request", method=scope["method"], path=scope["path"],
                status=status or 500, http_version=scope["http_version"],
                client=f"{client[0]}:{client[1]}" if client else None,
                duration_ms=round((time.monotonic() - began) * 1000, 1),
            )  # fmt: skip
