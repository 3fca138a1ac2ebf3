"""The `/api/*` streaming routes: parse, validate, call the manager, render `tokens`."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from structlog.contextvars import bind_contextvars

from tokenrelay.admission.budgets import Meter
from tokenrelay.admission.gate import QueueFull
from tokenrelay.admission.rate_limits import UNLIMITED, Admission, estimate_tokens
from tokenrelay.auth.base import Principal
from tokenrelay.dialects.tokens import TokensDialect, parse_last_event_id
from tokenrelay.errors import InvalidRequest
from tokenrelay.gateway import Gateway
from tokenrelay.middleware.request_id import arrived_at, request_id
from tokenrelay.observability import telemetry
from tokenrelay.observability.tracing import NO_DELIVERY, Delivery
from tokenrelay.providers.base import GenerationRequest
from tokenrelay.routes.deps import Caller, GatewayDep, authenticate
from tokenrelay.routes.openapi import SSE_OK, errors
from tokenrelay.routes.sse import SSEResponse, stream_frames
from tokenrelay.streams.manager import Settle, fingerprint

router = APIRouter()

RequestId = Annotated[str, Depends(request_id)]
ROUTE = "api"  # the `route` label of these streams' metrics


def parse_after(last_event_id: str | None, stream_id: str | None) -> tuple[str, int] | None:
    """The stream and seq a `Last-Event-ID` names, checked against the route's stream."""
    if last_event_id is None:
        return None
    parsed = parse_last_event_id(last_event_id)
    if parsed is None:
        raise InvalidRequest("Last-Event-ID must look like <stream_id>:<seq>")
    if stream_id is not None and parsed[0] != stream_id:
        raise InvalidRequest("Last-Event-ID names a different stream")
    return parsed


def _respond(
    gw: Gateway,
    stream_id: str,
    after: int,
    admission: Admission = UNLIMITED,
    first_text: Callable[[], None] | None = None,
    trace: Delivery = NO_DELIVERY,
) -> SSEResponse:
    manager = gw.manager
    bind_contextvars(stream_id=stream_id)  # the rest of the request's lines are the stream's
    headers = {
        "x-stream-id": stream_id,
        "x-tokenrelay-instance": manager.instance_id,
        **admission.headers(),
    }
    dialect = TokensDialect(stream_id, gw.settings.client_retry_ms)
    frames = stream_frames(manager, stream_id, after, dialect, first_text, trace)
    return SSEResponse(frames, headers)


async def _resume(
    gw: Gateway, caller: Principal, stream_id: str, after: int, headers: Headers
) -> SSEResponse:
    await gw.manager.lookup(stream_id, caller.id)
    telemetry.resumed(stream_id, after)
    # A reader of its own trace (the client's), linked to the stream's when it runs here.
    tracing = gw.tracing
    parent, stream = tracing.extract(headers), gw.manager.trace_of(stream_id)
    return _respond(gw, stream_id, after, trace=tracing.delivery(parent, stream_id, after, stream))


async def _start(gw: Gateway, generation: GenerationRequest, **kw: Any) -> str:
    """Start (or join) a stream; `manager.start`'s arguments, counted as metrics."""
    try:
        return await gw.manager.start(generation, route=ROUTE, **kw)
    except QueueFull:
        telemetry.queue_rejected("full")
        raise


def _first_text(request: Request, generation: GenerationRequest) -> Callable[[], None]:
    return telemetry.client_first_text(ROUTE, generation.model, arrived_at(request))


@router.post(
    "/api/stream-response", responses={**SSE_OK, **errors(400, 401, 404, 413, 422, 429, 503)}
)
async def start_stream(
    request: Request,
    gw: GatewayDep,
    caller: Caller,
    request_id: RequestId,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
    last_event_id: Annotated[str | None, Header()] = None,
) -> SSEResponse:
    """Start a stream and follow it (or resume the one `Last-Event-ID` names)."""
    resume = parse_after(last_event_id, None)
    if resume is not None:
        return await _resume(gw, caller, *resume, request.headers)
    raw = await request.body()
    parsed = gw.validator.from_json(raw)
    generation = parsed.request
    with gw.tracing.admission(request.headers, request_id) as admitted:
        who, admission, meter = await _admit(gw, request, caller, generation)
        stream_id = await _start(
            gw,
            generation,
            owner=caller.id,
            request_id=request_id,
            body_fingerprint=fingerprint(raw),
            idempotency_key=idempotency_key,
            on_end=_settlement(gw, admission),
            principal=who,
            meter=meter,
            use_cache=parsed.use_cache and _cache_allowed(request),
        )
        admitted.started(stream_id)
    delivery = gw.tracing.delivery(admitted.context, stream_id, -1, None)
    first_text = _first_text(request, generation)
    return _respond(gw, stream_id, -1, admission, first_text, delivery)


def _cache_allowed(request: Request) -> bool:
    """`Cache-Control: no-cache` asks for a fresh answer. (`no-store`, which SSE
    libraries send on every request, is about storing the response: it is not asked.)"""
    return "no-cache" not in request.headers.get("cache-control", "").lower()


@router.get("/api/stream-response", responses={**SSE_OK, **errors(400, 401, 404, 429, 503)})
async def start_stream_eventsource(
    request: Request,
    gw: GatewayDep,
    request_id: RequestId,
    prompt: Annotated[str | None, Query()] = None,
    model: Annotated[str | None, Query()] = None,
    max_tokens: Annotated[str | None, Query()] = None,
    system: Annotated[str | None, Query()] = None,
    ticket: Annotated[str | None, Query(max_length=100)] = None,
    last_event_id: Annotated[str | None, Header()] = None,
) -> SSEResponse:
    """The same for `EventSource`; its automatic reconnect resumes via `Last-Event-ID`.
    `EventSource` cannot send headers: authenticate with `?ticket=` (POST /api/tickets)."""
    resume = parse_after(last_event_id, None)
    tickets = gw.tickets
    if resume is not None:
        caller = await (tickets.resume(ticket, resume[0]) if ticket else authenticate(gw, request))
        return await _resume(gw, caller, *resume, request.headers)
    params = {k: v for k, v in request.query_params.items() if k != "ticket"}
    generation = gw.validator.from_query(params)
    with gw.tracing.admission(request.headers, request_id) as admitted:
        caller = await tickets.redeem(ticket) if ticket else await authenticate(gw, request)
        who, admission, meter = await _admit(gw, request, caller, generation)
        query = str(request.url.query).encode()
        stream_id = await _start(
            gw,
            generation,
            owner=caller.id,
            request_id=request_id,
            body_fingerprint=fingerprint(query),
            on_end=_settlement(gw, admission),
            principal=who,
            meter=meter,
            # Not `_cache_allowed`: a browser's EventSource sends `no-cache` on every request.
        )
        admitted.started(stream_id)
    if ticket:
        await tickets.bind(ticket, caller, stream_id, gw.settings.stream_ttl)
    delivery = gw.tracing.delivery(admitted.context, stream_id, -1, None)
    first_text = _first_text(request, generation)
    return _respond(gw, stream_id, -1, admission, first_text, delivery)


def _who(gw: Gateway, request: Request, caller: Principal) -> str:
    """Whom limits and caps count against: the principal; without authentication,
    where every caller is the same principal, the client's address."""
    if gw.authenticator.mode == "none" and request.client is not None:
        return request.client.host
    return caller.id


async def _admit(
    gw: Gateway, request: Request, caller: Principal, generation: GenerationRequest
) -> tuple[str, Admission, Meter | None]:
    """Count the request against its principal's rate limits and budgets (429 when
    one is full or spent); the meter that keeps the stream within the budget."""
    who = _who(gw, request, caller)
    meter = await gw.budgets.check(who)
    return who, await gw.rate_limits.admit(who, estimate_tokens(generation)), meter


def _settlement(gw: Gateway, admission: Admission) -> Settle | None:
    if admission is UNLIMITED or not admission.reserved:
        return None
    return functools.partial(gw.rate_limits.settle, admission)


@router.post("/api/tickets", responses=errors(401, 503))
async def issue_ticket(gw: GatewayDep, caller: Caller) -> JSONResponse:
    """A short-lived ticket that lets an `EventSource` start one stream as the caller."""
    ttl = gw.settings.ticket_ttl
    ticket = await gw.tickets.issue(caller, ttl)
    return JSONResponse({"ticket": ticket, "expires_in": ttl})


@router.get("/api/streams/{stream_id}", responses={**SSE_OK, **errors(400, 401, 404, 503)})
async def resume_stream(
    request: Request,
    gw: GatewayDep,
    caller: Caller,
    stream_id: str,
    after: Annotated[int | None, Query(ge=-1)] = None,
    last_event_id: Annotated[str | None, Header()] = None,
) -> SSEResponse:
    """Attach to a stream: replay every event after `Last-Event-ID` (or `?after=SEQ`),
    then follow it live."""
    resume = parse_after(last_event_id, stream_id)
    if resume is not None:
        after = resume[1]
    return await _resume(gw, caller, stream_id, -1 if after is None else after, request.headers)


@router.delete("/api/streams/{stream_id}", responses=errors(401, 404, 503))
async def cancel_stream(gw: GatewayDep, caller: Caller, stream_id: str) -> JSONResponse:
    """Cancel: stop the upstream generation now. The stream ends with a `cancelled` error."""
    cancelled = await gw.manager.cancel(stream_id, caller.id)
    return JSONResponse({"stream_id": stream_id, "cancelled": cancelled})
