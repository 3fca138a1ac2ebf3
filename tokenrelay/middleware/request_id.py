"""Pure ASGI middleware that gives every request an id, echoes it on every response
as `x-request-id`, and binds it to the request's log lines.

The id is the client's `X-Request-ID` when it is a short printable ASCII string,
else a new `req_…`. It is bound with structlog's contextvars after clearing them, so
every line logged while the request runs (and in the tasks it starts, such as its
stream's producer, which copy the context) carries `request_id`. The routes read it,
and the request's arrival time (for time to first token), from `scope["state"]`.

An error nothing handled, before the response started, is answered here: the 500 in
Claude's shape, logged with its traceback, with the id on it like every other answer
(Starlette's server-error middleware, which would answer it otherwise, sits above
every middleware of the app, so its 500 went out without the id a user would quote).
"""

from __future__ import annotations

import secrets
import time

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from structlog.contextvars import bind_contextvars, clear_contextvars

from tokenrelay.routes.errors import unexpected_error

HEADER = b"x-request-id"


def request_id_of(value: str | None) -> str:
    if value and len(value) <= 128 and value.isascii() and value.isprintable():
        return value
    return "req_" + secrets.token_hex(12)


class RequestId:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        arrived = time.monotonic()
        given = next((v for k, v in scope["headers"] if k == HEADER), None)
        request_id = request_id_of(given.decode("latin-1") if given is not None else None)
        state = scope.setdefault("state", {})
        state["request_id"], state["arrived_at"] = request_id, arrived
        clear_contextvars()
        bind_contextvars(request_id=request_id)
        echo = (HEADER, request_id.encode("latin-1"))
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = [h for h in message.get("headers", ()) if h[0] != HEADER]
                message["headers"] = [*headers, echo]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            if started:
                raise  # mid-answer: nothing to say to the client but the cut
            response = await unexpected_error(Request(scope), exc)
            await response(scope, receive, send_with_id)


async def request_id(request: Request) -> str:
    """The request's id, as a route dependency (async: a plain `def` would run in a
    thread pool)."""
    rid: str = request.state.request_id
    return rid


def arrived_at(request: Request) -> float:
    """When the request reached the gateway (`time.monotonic()`)."""
    at: float = request.state.arrived_at
    return at
