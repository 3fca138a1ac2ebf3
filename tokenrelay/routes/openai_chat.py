"""`POST /v1/chat/completions`: OpenAI's chat format over the same streams.

The request is translated (`chat_request.py`) and started like any other (auth,
limits, budgets, the gate, coalescing, the cache, the ledger; metrics label
`chat_completions`); the answer is the stream rendered as chunks (`dialects/openai.py`)
or, without `stream`, gathered into one `chat.completion` object. Every error, before
or during the stream, is in OpenAI's shape (`dialects/openai_errors.py`).

A streamed response starts with the answer's first chunk, not before: a stream that
fails before it (its upstream refused the request, retries ran out) is answered
with the error's own HTTP status, as OpenAI would, so the SDK raises its usual class
(and retries what is worth retrying); a queue wait is spent before the response
starts too. Once the answer has started, a failure is its last chunk.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from typing import Annotated, cast

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response
from structlog.contextvars import bind_contextvars

from tokenrelay.chat_request import ChatRequest, translate
from tokenrelay.dialects.openai import ChatChunks
from tokenrelay.dialects.openai_completion import completion
from tokenrelay.dialects.openai_errors import (
    RESTARTED,
    InvalidParam,
    OpenAIError,
    from_gateway_error,
)
from tokenrelay.errors import GatewayError
from tokenrelay.gateway import Gateway
from tokenrelay.middleware.request_id import request_id
from tokenrelay.routes.deps import GatewayDep, authenticate
from tokenrelay.routes.direct import DirectRoute
from tokenrelay.routes.openai_schema import REQUEST_BODY, responses
from tokenrelay.routes.sse import Last, SSEResponse, stream_frames
from tokenrelay.routes.streaming import (
    Started,
    cache_allowed,
    collect,
    fallback_allowed,
    open_stream,
    stream_headers,
)

router = APIRouter(route_class=DirectRoute)

ROUTE = "chat_completions"  # the `route` label of these streams' metrics
RequestId = Annotated[str, Depends(request_id)]


@router.post(
    "/v1/chat/completions", responses=responses(), openapi_extra={"requestBody": REQUEST_BODY}
)
async def chat_completions(request: Request, gw: GatewayDep, request_id: RequestId) -> Response:
    """OpenAI-compatible chat completions, streamed (`"stream": true`) or whole."""
    try:
        caller = await authenticate(gw, request)
        key = request.headers.get("idempotency-key")
        if key is not None and not 0 < len(key) <= 255:
            raise InvalidParam("Idempotency-Key must be 1 to 255 characters", None)
        raw = await request.body()
        chat = translate(raw, gw.validator)
        started = await open_stream(
            gw,
            request,
            caller,
            request_id,
            chat.generation,
            route=ROUTE,
            body=raw,
            idempotency_key=key,
            use_cache=cache_allowed(request),
            # Chunks cannot take back text already sent: a streamed answer that would
            # have to start again ends instead (and costs no more). A whole one
            # restarts unseen.
            restartable=not chat.stream,
            fallback=fallback_allowed(request),
        )
    except GatewayError as exc:
        return error_response(from_gateway_error(exc), getattr(exc, "headers", None))
    bind_contextvars(stream_id=started.stream_id)  # the rest of the request's lines are its
    headers = stream_headers(gw, started.stream_id, started.admission)
    if chat.stream:
        return await _streamed(gw, started, chat, headers)
    entries = await collect(gw, started.stream_id)
    body = completion(entries, started.stream_id, chat.generation.model, int(time.time()))
    if isinstance(body, OpenAIError):
        return error_response(body, headers)
    return Response(body, 200, headers, "application/json")


async def _streamed(
    gw: Gateway, started: Started, chat: ChatRequest, headers: dict[str, str]
) -> Response:
    stream_id = started.stream_id
    created = int(time.time())
    dialect = ChatChunks(stream_id, chat.generation.model, created, chat.include_usage)
    frames = stream_frames(gw.manager, stream_id, -1, dialect, started.first_text, started.delivery)
    held: list[bytes] = []
    async for chunk in frames:
        if chunk is not dialect.heartbeat:  # nothing to keep alive before the response
            held.append(chunk)
        if dialect.shown or dialect.failure is not None:
            break
    else:
        dialect.interrupted()  # the stream ended here before its answer began
    if not dialect.shown and dialect.failure is not None:
        await _close(frames)
        return error_response(dialect.failure, headers)
    first = b"".join(held)
    if held and type(held[-1]) is Last:  # the whole answer came: it ends the response
        first = Last(first)
    return SSEResponse(_chunks(first, frames, dialect), headers)


async def _chunks(
    first: bytes, frames: AsyncIterator[bytes], dialect: ChatChunks
) -> AsyncIterator[bytes]:
    """The response: what was held, then the rest of the stream's frames. A stream
    that ends here without its end (the instance shuts down) ends with an error: an
    OpenAI client cannot resume it."""
    try:
        yield first
        if dialect.complete or dialect.failure is not None:
            return
        async for chunk in frames:
            yield chunk
            if dialect.failure is RESTARTED:
                return  # the answer restarts: nothing more of it can be shown
        if not dialect.complete:
            yield dialect.interrupted()
    finally:
        await _close(frames)


async def _close(frames: AsyncIterator[bytes]) -> None:
    await cast(AsyncGenerator[bytes, None], frames).aclose()  # `stream_frames` is one


def error_response(error: OpenAIError, headers: Mapping[str, str] | None = None) -> Response:
    out = dict(headers or {})
    if error.retry_after:
        out["retry-after"] = str(max(1, round(error.retry_after)))
    # The openai SDK retries 408, 409, 429 and 5xx unless told otherwise.
    out["x-should-retry"] = "true" if error.retryable else "false"
    return Response(error.body(), error.status, out, "application/json")
