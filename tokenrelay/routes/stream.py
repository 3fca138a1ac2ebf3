"""The `/api/*` streaming routes: parse, validate, call the manager, render `tokens`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request
from starlette.datastructures import Headers
from starlette.responses import JSONResponse

from tokenrelay.auth.base import Principal
from tokenrelay.dialects.tokens import TokensDialect
from tokenrelay.gateway import Gateway
from tokenrelay.middleware.request_id import request_id
from tokenrelay.routes.deps import Caller, GatewayDep, authenticate
from tokenrelay.routes.direct import DirectRoute
from tokenrelay.routes.openapi import SSE_OK, errors
from tokenrelay.routes.sse import SSEResponse
from tokenrelay.routes.streaming import (
    cache_allowed,
    fallback_allowed,
    open_stream,
    parse_after,
    respond,
    respond_started,
    resume_delivery,
)

router = APIRouter(route_class=DirectRoute)

RequestId = Annotated[str, Depends(request_id)]
ROUTE = "api"  # the `route` label of these streams' metrics


def _dialect(gw: Gateway, stream_id: str) -> TokensDialect:
    return TokensDialect(stream_id, gw.settings.client_retry_ms)


async def _resume(
    gw: Gateway, caller: Principal, stream_id: str, after: int, headers: Headers
) -> SSEResponse:
    trace = await resume_delivery(gw, caller, stream_id, after, headers)
    return respond(gw, stream_id, after, _dialect(gw, stream_id), trace=trace)


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
    started = await open_stream(
        gw, request, caller, request_id, parsed.request,
        route=ROUTE, body=raw, idempotency_key=idempotency_key,
        use_cache=parsed.use_cache and cache_allowed(request),
        fallback=parsed.fallback and fallback_allowed(request),
    )  # fmt: skip
    return respond_started(gw, started, _dialect(gw, started.stream_id))


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
    # Redeemed (or authenticated) inside the admission span: that is part of admitting.
    identify = tickets.redeem(ticket) if ticket else authenticate(gw, request)
    started = await open_stream(
        gw, request, identify, request_id, generation,
        route=ROUTE, body=str(request.url.query).encode(),
        # Not `cache_allowed`: a browser's EventSource sends `no-cache` on every request.
    )  # fmt: skip
    if ticket:
        await tickets.bind(ticket, started.caller, started.stream_id, gw.settings.stream_ttl)
    return respond_started(gw, started, _dialect(gw, started.stream_id))


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
