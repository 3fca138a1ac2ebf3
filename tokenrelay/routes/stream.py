"""The `/api/*` streaming routes: parse, validate, call the manager, render `tokens`."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request
from starlette.responses import JSONResponse

from tokenrelay.auth.base import Authenticator, Principal, credential_from
from tokenrelay.dialects.tokens import (
    event_id_prefix,
    parse_last_event_id,
    render_entries,
    retry_field,
)
from tokenrelay.errors import InvalidRequest
from tokenrelay.routes.openapi import SSE_OK, errors
from tokenrelay.routes.sse import SSEResponse
from tokenrelay.streams.manager import StreamManager, fingerprint
from tokenrelay.validation import RequestValidator

router = APIRouter()


async def principal(request: Request) -> Principal:
    """Who is asking, from `x-api-key` or `Authorization: Bearer` (else 401)."""
    authenticator: Authenticator = request.app.state.authenticator
    return await authenticator.authenticate(credential_from(request.headers))


Caller = Annotated[Principal, Depends(principal)]


def request_id_of(value: str | None) -> str:
    if value and len(value) <= 128 and value.isascii() and value.isprintable():
        return value
    return "req_" + secrets.token_hex(12)


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


async def tokens_frames(
    manager: StreamManager, stream_id: str, after: int, retry_ms: int
) -> AsyncIterator[bytes]:
    """SSE bytes for every entry after `after`; b"" on an idle interval (a ping)."""
    prefix = event_id_prefix(stream_id)
    retry: bytes | None = retry_field(retry_ms)
    async for entries in manager.follow(stream_id, after):
        if not entries:
            yield b""
            continue
        chunk = render_entries(prefix, entries)
        if retry is not None:
            # The first event carries the reconnection delay for EventSource.
            chunk, retry = retry + chunk, None
        yield chunk


async def _respond(request: Request, stream_id: str, after: int, request_id: str) -> SSEResponse:
    manager: StreamManager = request.app.state.manager
    headers = {
        "x-request-id": request_id,
        "x-stream-id": stream_id,
        "x-tokenrelay-instance": manager.instance_id,
    }
    frames = tokens_frames(manager, stream_id, after, request.app.state.settings.client_retry_ms)
    return SSEResponse(frames, headers)


async def _resume(
    request: Request, caller: Principal, stream_id: str, after: int, request_id: str
) -> SSEResponse:
    await request.app.state.manager.lookup(stream_id, caller.id)
    return await _respond(request, stream_id, after, request_id)


@router.post(
    "/api/stream-response", responses={**SSE_OK, **errors(400, 401, 404, 413, 422, 429, 503)}
)
async def start_stream(
    request: Request,
    caller: Caller,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
    last_event_id: Annotated[str | None, Header()] = None,
    x_request_id: Annotated[str | None, Header()] = None,
) -> SSEResponse:
    """Start a stream and follow it (or resume the one `Last-Event-ID` names)."""
    request_id = request_id_of(x_request_id)
    resume = parse_after(last_event_id, None)
    if resume is not None:
        return await _resume(request, caller, *resume, request_id)
    raw = await request.body()
    validator: RequestValidator = request.app.state.validator
    generation = validator.from_json(raw)
    stream_id = await request.app.state.manager.start(
        generation,
        owner=caller.id,
        request_id=request_id,
        body_fingerprint=fingerprint(raw),
        idempotency_key=idempotency_key,
    )
    return await _respond(request, stream_id, -1, request_id)


@router.get("/api/stream-response", responses={**SSE_OK, **errors(400, 401, 404, 429, 503)})
async def start_stream_eventsource(
    request: Request,
    prompt: Annotated[str | None, Query()] = None,
    model: Annotated[str | None, Query()] = None,
    max_tokens: Annotated[str | None, Query()] = None,
    system: Annotated[str | None, Query()] = None,
    ticket: Annotated[str | None, Query(max_length=100)] = None,
    last_event_id: Annotated[str | None, Header()] = None,
    x_request_id: Annotated[str | None, Header()] = None,
) -> SSEResponse:
    """The same for `EventSource`; its automatic reconnect resumes via `Last-Event-ID`.
    `EventSource` cannot send headers: authenticate with `?ticket=` (POST /api/tickets)."""
    request_id = request_id_of(x_request_id)
    resume = parse_after(last_event_id, None)
    tickets = request.app.state.tickets
    if resume is not None:
        caller = await tickets.resume(ticket, resume[0]) if ticket else await principal(request)
        return await _resume(request, caller, *resume, request_id)
    params = {k: v for k, v in request.query_params.items() if k != "ticket"}
    generation = request.app.state.validator.from_query(params)
    caller = await tickets.redeem(ticket) if ticket else await principal(request)
    query = str(request.url.query).encode()
    stream_id = await request.app.state.manager.start(
        generation, owner=caller.id, request_id=request_id, body_fingerprint=fingerprint(query)
    )
    if ticket:
        settings = request.app.state.settings
        await tickets.bind(ticket, caller, stream_id, settings.stream_ttl)
    return await _respond(request, stream_id, -1, request_id)


@router.post("/api/tickets", responses=errors(401, 503))
async def issue_ticket(request: Request, caller: Caller) -> JSONResponse:
    """A short-lived ticket that lets an `EventSource` start one stream as the caller."""
    ttl = request.app.state.settings.ticket_ttl
    ticket = await request.app.state.tickets.issue(caller, ttl)
    return JSONResponse({"ticket": ticket, "expires_in": ttl})


@router.get("/api/streams/{stream_id}", responses={**SSE_OK, **errors(400, 401, 404, 503)})
async def resume_stream(
    request: Request,
    caller: Caller,
    stream_id: str,
    after: Annotated[int | None, Query(ge=-1)] = None,
    last_event_id: Annotated[str | None, Header()] = None,
    x_request_id: Annotated[str | None, Header()] = None,
) -> SSEResponse:
    """Attach to a stream: replay every event after `Last-Event-ID` (or `?after=SEQ`),
    then follow it live."""
    resume = parse_after(last_event_id, stream_id)
    if resume is not None:
        after = resume[1]
    return await _resume(
        request, caller, stream_id, -1 if after is None else after, request_id_of(x_request_id)
    )


@router.delete("/api/streams/{stream_id}", responses=errors(401, 404, 503))
async def cancel_stream(request: Request, caller: Caller, stream_id: str) -> JSONResponse:
    """Cancel: stop the upstream generation now. The stream ends with a `cancelled` error."""
    cancelled = await request.app.state.manager.cancel(stream_id, caller.id)
    return JSONResponse({"stream_id": stream_id, "cancelled": cancelled})
