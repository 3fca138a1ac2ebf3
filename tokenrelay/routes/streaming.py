"""What every streaming route shares, whatever its wire format: admit a request
against its principal's limits, start (or join) its stream through the manager,
answer with the stream's frames in a dialect, resume one, or gather a whole stream
for a route's non-streaming answer.

A route parses its own request format into a `GenerationRequest`, then:

    started = await open_stream(gw, request, caller, request_id, generation,
                                route="messages", body=raw)
    return respond_started(gw, started, SomeDialect(started.stream_id, ...))

or, without streaming, `entries = await collect(gw, started.stream_id)`.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from starlette.datastructures import Headers
from starlette.requests import Request
from structlog.contextvars import bind_contextvars

from tokenrelay.admission.budgets import Meter
from tokenrelay.admission.gate import QueueFull
from tokenrelay.admission.rate_limits import UNLIMITED, Admission, estimate_tokens
from tokenrelay.auth.base import Principal
from tokenrelay.dialects.base import Dialect
from tokenrelay.dialects.tokens import parse_last_event_id
from tokenrelay.errors import InvalidRequest
from tokenrelay.gateway import Gateway
from tokenrelay.middleware.request_id import arrived_at
from tokenrelay.observability import telemetry
from tokenrelay.observability.tracing import NO_DELIVERY, Delivery
from tokenrelay.providers.base import GenerationRequest
from tokenrelay.routes.sse import SSEResponse, stream_frames
from tokenrelay.streams.log import Entry
from tokenrelay.streams.manager import Settle, fingerprint


@dataclass(frozen=True, slots=True)
class Started:
    """A stream a request started or joined, and what its response needs."""

    stream_id: str
    caller: Principal
    admission: Admission
    delivery: Delivery  # the reader's span, a child of the admission's
    first_text: Callable[[], None] | None  # observes the client's time to first text


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


def cache_allowed(request: Request) -> bool:
    """`Cache-Control: no-cache` asks for a fresh answer. (`no-store`, which SSE
    libraries send on every request, is about storing the response: it is not asked.)"""
    return "no-cache" not in request.headers.get("cache-control", "").lower()


FALLBACK_HEADER = "x-tokenrelay-fallback"


def fallback_allowed(request: Request) -> bool:
    """`X-Tokenrelay-Fallback: off` (or false, 0): only the model asked for may answer.
    A header, so that Claude's and OpenAI's SDKs can send it unchanged (default_headers)."""
    return request.headers.get(FALLBACK_HEADER, "").strip().lower() not in ("off", "false", "0")


def who(gw: Gateway, request: Request, caller: Principal) -> str:
    """Whom limits and caps count against: the principal; without authentication,
    where every caller is the same principal, the client's address."""
    if gw.authenticator.mode == "none" and request.client is not None:
        return request.client.host
    return caller.id


async def admit(
    gw: Gateway, request: Request, caller: Principal, generation: GenerationRequest
) -> tuple[str, Admission, Meter | None]:
    """Count the request against its principal's rate limits and budgets (429 when
    one is full or spent); the meter that keeps the stream within the budget."""
    principal = who(gw, request, caller)
    meter = await gw.budgets.check(principal)
    return principal, await gw.rate_limits.admit(principal, estimate_tokens(generation)), meter


def settlement(gw: Gateway, admission: Admission) -> Settle | None:
    if admission is UNLIMITED or not admission.reserved:
        return None
    return functools.partial(gw.rate_limits.settle, admission)


async def start(
    gw: Gateway,
    generation: GenerationRequest,
    *,
    route: str,
    owner: str,
    request_id: str,
    body_fingerprint: str,
    admission: Admission,
    principal: str,
    meter: Meter | None,
    idempotency_key: str | None = None,
    use_cache: bool = True,
    restartable: bool = True,
    fallback: bool = True,
) -> str:
    """Start (or join) a stream through `manager.start` (coalescing, cache, gate);
    a full queue is counted as a rejection and raised (503). `restartable` False:
    the route's format cannot tell its reader to reset (see `Producer`)."""
    try:
        return await gw.manager.start(
            generation,
            route=route,
            owner=owner,
            request_id=request_id,
            body_fingerprint=body_fingerprint,
            idempotency_key=idempotency_key,
            on_end=settlement(gw, admission),
            principal=principal,
            meter=meter,
            use_cache=use_cache,
            restartable=restartable,
            fallback=fallback,
        )
    except QueueFull:
        telemetry.queue_rejected("full")
        raise


async def open_stream(
    gw: Gateway,
    request: Request,
    caller: Principal | Awaitable[Principal],
    request_id: str,
    generation: GenerationRequest,
    *,
    route: str,
    body: bytes,
    idempotency_key: str | None = None,
    use_cache: bool = True,
    restartable: bool = True,
    fallback: bool = True,
) -> Started:
    """Admit the request and start its stream, inside the admission span: the whole
    of what happens before a response starts. `body` is what identifies the request
    for an `Idempotency-Key` (its raw bytes); `route` labels the stream's metrics.
    `caller` may still be to find out (e.g. a ticket to redeem): that is admission too."""
    with gw.tracing.admission(request.headers, request_id) as admitted:
        if not isinstance(caller, Principal):
            caller = await caller
        principal, admission, meter = await admit(gw, request, caller, generation)
        stream_id = await start(
            gw,
            generation,
            route=route,
            owner=caller.id,
            request_id=request_id,
            body_fingerprint=fingerprint(body),
            admission=admission,
            principal=principal,
            meter=meter,
            idempotency_key=idempotency_key,
            use_cache=use_cache,
            restartable=restartable,
            fallback=fallback,
        )
        admitted.started(stream_id)
    delivery = gw.tracing.delivery(admitted.context, stream_id, -1, None)
    first_text = telemetry.client_first_text(route, generation.model, arrived_at(request))
    return Started(stream_id, caller, admission, delivery, first_text)


def stream_headers(gw: Gateway, stream_id: str, admission: Admission = UNLIMITED) -> dict[str, str]:
    """The headers of every response about a stream (a JSON one too)."""
    return {
        "x-stream-id": stream_id,
        "x-tokenrelay-instance": gw.manager.instance_id,
        **admission.headers(),
    }


def respond(
    gw: Gateway,
    stream_id: str,
    after: int,
    dialect: Dialect,
    admission: Admission = UNLIMITED,
    first_text: Callable[[], None] | None = None,
    trace: Delivery = NO_DELIVERY,
) -> SSEResponse:
    """The stream's entries after `after` as an SSE response in `dialect`."""
    bind_contextvars(stream_id=stream_id)  # the rest of the request's lines are the stream's
    frames = stream_frames(gw.manager, stream_id, after, dialect, first_text, trace)
    return SSEResponse(frames, stream_headers(gw, stream_id, admission))


def respond_started(gw: Gateway, started: Started, dialect: Dialect) -> SSEResponse:
    """A new stream's response, from its first entry."""
    return respond(
        gw, started.stream_id, -1, dialect, started.admission, started.first_text, started.delivery
    )


async def resume_delivery(
    gw: Gateway, caller: Principal, stream_id: str, after: int, headers: Headers
) -> Delivery:
    """Check a resumed stream is the caller's (else 404) and count the resume; the
    reader's span: of its own trace (the client's), linked to the stream's when it
    runs here."""
    await gw.manager.lookup(stream_id, caller.id)
    telemetry.resumed(stream_id, after)
    tracing = gw.tracing
    parent, stream = tracing.extract(headers), gw.manager.trace_of(stream_id)
    return tracing.delivery(parent, stream_id, after, stream)


async def collect(gw: Gateway, stream_id: str) -> list[Entry]:
    """Every entry of the stream, once it has ended (for a non-streaming answer).
    Reading it keeps it from being abandoned. Ends without the terminal entry when
    this instance shuts down first."""
    entries: list[Entry] = []
    async for batch in gw.manager.follow(stream_id, -1):
        entries += batch
    return entries
