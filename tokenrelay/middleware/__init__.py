"""Every middleware a request passes, in order, in one list (`stack`).

All of them are pure ASGI: none wraps a streaming response in a buffering layer,
and each touches only `http.response.start` (headers), never a body chunk. That is a
rule, not a habit: an SSE response writes its body chunks to the server's own `send`,
past every layer here (`routes/sse.py`, `SERVER_SEND`).
"""

from __future__ import annotations

from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware

from tokenrelay.config import Settings
from tokenrelay.middleware.body_limit import BodySizeLimit
from tokenrelay.middleware.request_id import RequestId
from tokenrelay.middleware.security_headers import SecurityHeaders

CORS_REQUEST_HEADERS = [
    "authorization", "x-api-key", "content-type", "last-event-id", "idempotency-key",
    "x-request-id", "anthropic-version", "anthropic-beta", "traceparent", "tracestate",
]  # fmt: skip


def stack(settings: Settings) -> list[Middleware]:
    """Outermost first: the security headers go on every answer, the 500 of an error
    nothing handled too, which the request id's layer answers (with the id on it);
    the id is bound before anything logs; a CORS preflight is answered before the
    body limit looks at anything, and the body limit runs last, right before the
    routes."""
    middleware = [Middleware(SecurityHeaders, hsts=settings.tls), Middleware(RequestId)]
    if settings.cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=settings.cors_origins,
                allow_credentials=settings.cors_allow_credentials,
                allow_methods=["GET", "POST", "DELETE"],
                allow_headers=CORS_REQUEST_HEADERS,
                expose_headers=["x-request-id", "x-stream-id"],
                max_age=600,
            )
        )
    middleware.append(Middleware(BodySizeLimit, max_bytes=settings.max_body_bytes))
    return middleware
