"""The operations page at `/ops`, and its live feed.

The page is static; what it shows comes from `GET /api/ops/events`, an SSE response
with one `snapshot` event a second (observability/ops.py). With authentication on,
only an admin may follow it (403 otherwise); without, it is as open as the rest.

An `EventSource` cannot send headers, so the page first asks `POST /api/ops/tickets`
(with its key) for a single-use ticket, then opens `/api/ops/events?ticket=…`. These
tickets are this instance's own, apart from the stream tickets: the feed describes the
instance that serves it, and a stream ticket, which any user may get, never opens it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query, Request
from starlette.responses import FileResponse, JSONResponse, Response

from tokenrelay.auth.base import Principal
from tokenrelay.errors import PermissionDenied
from tokenrelay.gateway import Gateway
from tokenrelay.routes.deps import Caller, GatewayDep, authenticate
from tokenrelay.routes.errors import error_response
from tokenrelay.routes.sse import SSEResponse
from tokenrelay.routes.web import WEB_DIR

router = APIRouter()

SNAPSHOT = b"event: snapshot\ndata: "


def require_admin(gw: Gateway, caller: Principal) -> None:
    if gw.authenticator.mode != "none" and not caller.admin:
        raise PermissionDenied("The operations page needs the admin role")


@router.get("/ops", include_in_schema=False)
async def ops_page() -> FileResponse:
    return FileResponse(WEB_DIR / "ops.html", headers={"cache-control": "no-cache"})


@router.post("/api/ops/tickets", include_in_schema=False)
async def ops_ticket(gw: GatewayDep, caller: Caller) -> JSONResponse:
    """A single-use ticket for the operations feed, for an admin."""
    require_admin(gw, caller)
    ttl = gw.settings.ticket_ttl
    return JSONResponse({"ticket": await gw.ops_tickets.issue(caller, ttl), "expires_in": ttl})


@router.get("/api/ops/events", include_in_schema=False)
async def ops_events(
    request: Request,
    gw: GatewayDep,
    ticket: Annotated[str | None, Query(max_length=100)] = None,
) -> Response:
    """A `snapshot` event a second, until the instance has drained. Authenticated by
    `?ticket=` (from POST /api/ops/tickets, issued to admins only) or, for a client
    that can send headers, by its key."""
    if ticket:
        await gw.ops_tickets.redeem(ticket)  # 401 unless issued, unexpired and unused
    else:
        require_admin(gw, await authenticate(gw, request))
    if gw.ops is None:
        return error_response(404, "not_found_error", "This gateway has no operations feed")
    return SSEResponse(frames(gw.ops.watch()), {})


async def frames(snapshots: AsyncGenerator[dict[str, Any], None]) -> AsyncIterator[bytes]:
    # Closed with the response, so that the monitor counts one watcher fewer at once.
    async with contextlib.aclosing(snapshots):
        async for snapshot in snapshots:
            yield SNAPSHOT + orjson.dumps(snapshot) + b"\n\n"
