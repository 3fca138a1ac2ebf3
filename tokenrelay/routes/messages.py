"""Claude's own API on the gateway: `POST /v1/messages` (streamed and whole),
`GET /v1/streams/{id}` (a resume, in Claude's format), `GET /v1/models`,
`POST /v1/messages/count_tokens`. The official SDKs work against it unchanged with
their `base_url` set to the gateway, and authenticate with the gateway's own keys.

A request is started like any other (auth, limits, budgets, the gate, coalescing,
the cache, the ledger; metrics label `messages`). A streamed response starts with
the answer, not before: a stream that fails before it began (the upstream refused,
retries ran out) is answered with the HTTP error Claude would have sent, so the SDK
raises its usual class; a queue wait is spent before the response starts too. Once
the answer has started, a failure is an `error` event. A streamed answer cannot be
restarted in this format, so such a stream is started `restartable=False`: where the
producer would restart it, it ends it with an `overloaded_error` instead.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from typing import Annotated, cast

from fastapi import APIRouter, Depends, Header, Query, Request
from starlette.responses import Response
from structlog.contextvars import bind_contextvars

from tokenrelay.dialects.anthropic import AnthropicDialect
from tokenrelay.dialects.anthropic_message import (
    ANSWER_TYPES,
    StreamFailed,
    failure_before_answer,
    gateway_side,
    whole_message,
)
from tokenrelay.errors import Overloaded, StreamNotFound, UpstreamError
from tokenrelay.events import Done, Failed
from tokenrelay.gateway import Gateway
from tokenrelay.messages_request import ModelNotFound, parse_count_tokens, parse_messages
from tokenrelay.middleware.request_id import request_id
from tokenrelay.models_list import model_info, models_page
from tokenrelay.routes.deps import Caller, GatewayDep
from tokenrelay.routes.direct import DirectRoute
from tokenrelay.routes.openapi import CLAUDE_MESSAGE_OK, CLAUDE_SSE_OK, errors
from tokenrelay.routes.sse import Followed, SSEResponse, stream_frames
from tokenrelay.routes.streaming import (
    Started,
    cache_allowed,
    collect,
    fallback_allowed,
    open_stream,
    parse_after,
    resume_delivery,
    stream_headers,
)
from tokenrelay.streams.log import Entry

router = APIRouter(route_class=DirectRoute)

ROUTE = "messages"  # the `route` label of these streams' metrics
RequestId = Annotated[str, Depends(request_id)]
ENDED_EARLY = "Server shutting down; retry the request"
INTERRUPTED = (
    "Server shutting down mid-stream: resume it (GET /v1/streams/{id} after the last "
    "event id) or retry the request"
)


@router.post(
    "/v1/messages", responses={**CLAUDE_MESSAGE_OK, **errors(400, 401, 404, 413, 422, 429, 503)}
)
async def create_message(
    request: Request,
    gw: GatewayDep,
    caller: Caller,
    request_id: RequestId,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> Response:
    """Claude's Messages API: the answer as Claude's event stream (`"stream": true`)
    or as one message."""
    raw = await request.body()
    parsed = parse_messages(raw, gw.validator)
    started = await open_stream(
        gw, request, caller, request_id, parsed.generation,
        route=ROUTE, body=raw, idempotency_key=idempotency_key,
        use_cache=cache_allowed(request), restartable=not parsed.stream,
        fallback=fallback_allowed(request),
    )  # fmt: skip
    headers = {**stream_headers(gw, started.stream_id, started.admission), "request-id": request_id}
    if parsed.stream:
        return await _streamed(gw, started, headers)
    entries = await collect(gw, started.stream_id)
    _raise_unless_done(entries, headers)
    meta = await gw.manager.log.meta(started.stream_id)
    body = whole_message(started.stream_id, entries, meta.opening if meta else None)
    return Response(body, 200, headers, "application/json")


async def _streamed(gw: Gateway, started: Started, headers: dict[str, str]) -> SSEResponse:
    stream_id = started.stream_id
    dialect, followed = await _dialect_when_answering(gw, stream_id, -1, headers)
    bind_contextvars(stream_id=stream_id)  # the rest of the request's lines are the stream's
    frames = stream_frames(
        gw.manager, stream_id, -1, dialect, started.first_text, started.delivery, followed
    )
    return SSEResponse(_to_its_end(frames, dialect), headers)


async def _to_its_end(
    frames: AsyncIterator[bytes], dialect: AnthropicDialect
) -> AsyncIterator[bytes]:
    """The stream's frames, and an error if they stop short of its end (this instance
    shuts down; the stream goes on elsewhere): the SDKs do not resume, and a response
    that just stopped would look whole to them."""
    try:
        async for chunk in frames:
            yield chunk
        if not dialect.ended:
            yield dialect.error(Overloaded(INTERRUPTED))
    finally:
        await cast(AsyncGenerator[bytes, None], frames).aclose()


@router.get("/v1/streams/{stream_id}", responses={**CLAUDE_SSE_OK, **errors(400, 401, 404, 503)})
async def resume_message_stream(
    request: Request,
    gw: GatewayDep,
    caller: Caller,
    stream_id: str,
    after: Annotated[int | None, Query(ge=-1)] = None,
    last_event_id: Annotated[str | None, Header()] = None,
) -> SSEResponse:
    """Attach to a stream in Claude's format: every event after `Last-Event-ID` (or
    `?after=SEQ`), then the rest live. From the start, it is the whole message again."""
    resume = parse_after(last_event_id, stream_id)
    if resume is not None:
        after = resume[1]
    after = -1 if after is None else after
    trace = await resume_delivery(gw, caller, stream_id, after, request.headers)
    headers = stream_headers(gw, stream_id)
    dialect, followed = await _dialect_when_answering(gw, stream_id, after, headers)
    bind_contextvars(stream_id=stream_id)
    frames = stream_frames(gw.manager, stream_id, -1, dialect, trace=trace, followed=followed)
    return SSEResponse(_to_its_end(frames, dialect), headers)


async def _dialect_when_answering(
    gw: Gateway, stream_id: str, after: int, headers: dict[str, str]
) -> tuple[AnthropicDialect, Followed]:
    """Wait until the stream's answer has begun (or the stream has ended): the dialect
    to render it in, and the stream as followed so far; raises the HTTP error of a
    stream that failed first."""
    head: list[Entry] = []
    batches = cast(AsyncGenerator[list[Entry], None], gw.manager.follow(stream_id, -1))
    try:
        async for batch in batches:
            head += batch
            if (batch and batch[-1].terminal) or any(type(e.event) in ANSWER_TYPES for e in batch):
                break
        failed = failure_before_answer(head)
        if failed is not None:
            failed.headers.update(headers)
            raise failed
        if not head or not (head[-1].terminal or any(type(e.event) in ANSWER_TYPES for e in head)):
            raise Overloaded(ENDED_EARLY, retry_after=1)  # this instance shuts down
        meta = await gw.manager.log.meta(stream_id)
        if meta is None:
            raise StreamNotFound(f"No stream {stream_id!r}: unknown, expired, or not yours")
    except BaseException:
        await batches.aclose()
        raise
    return AnthropicDialect(stream_id, after=after, opening=meta.opening), Followed(head, batches)


def _raise_unless_done(entries: list[Entry], headers: dict[str, str]) -> None:
    """A whole answer that failed, even after some of it came, is an HTTP error: none
    of it was sent."""
    last = entries[-1].event if entries else None
    if type(last) is Done:
        return
    if not isinstance(last, Failed):
        raise Overloaded(ENDED_EARLY, retry_after=1)  # this instance shuts down
    failed = StreamFailed(last)
    failed.headers.update(headers)
    raise failed


@router.post("/v1/messages/count_tokens", responses=errors(400, 401, 404, 413))
async def count_tokens(
    request: Request, gw: GatewayDep, _: Caller, request_id: RequestId
) -> Response:
    """The input tokens a request would use, as the upstream counts them."""
    generation = parse_count_tokens(await request.body(), gw.validator)
    try:
        counted = await gw.manager.upstreams.count_tokens(generation)
    except UpstreamError as exc:
        raise gateway_side(exc) from None
    return Response(b'{"input_tokens":%d}' % counted, 200, {"request-id": request_id},
                    "application/json")  # fmt: skip


@router.get("/v1/models", responses=errors(400, 401))
async def list_models(
    gw: GatewayDep,
    _: Caller,
    limit: Annotated[int, Query(ge=1, le=1000)] = 20,
    after_id: Annotated[str | None, Query()] = None,
    before_id: Annotated[str | None, Query()] = None,
) -> Response:
    """The models the gateway serves, in Claude's format (newest first, paged)."""
    page = models_page(list(gw.models.models), limit, after_id, before_id)
    return Response(page, 200, media_type="application/json")


@router.get("/v1/models/{model_id}", responses=errors(401, 404))
async def get_model(gw: GatewayDep, _: Caller, model_id: str) -> Response:
    if model_id not in gw.models:
        raise ModelNotFound(f"model: {model_id[:100]}")
    return Response(model_info(model_id), 200, media_type="application/json")
