"""`GET /api/usage`: the usage ledger, read. Callers see their own streams; an admin
sees everyone's and may pick one user."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from starlette.responses import JSONResponse, Response

from tokenrelay.auth.base import Principal
from tokenrelay.errors import InvalidRequest, PermissionDenied
from tokenrelay.routes.deps import Caller, GatewayDep
from tokenrelay.routes.errors import error_response
from tokenrelay.routes.openapi import ERROR_SCHEMA, errors
from tokenrelay.usage.report import UsageFilter

router = APIRouter()

MAX_ROWS = 1000

_INT, _NUM = {"type": "integer"}, {"type": "number"}
_OPT_STR = {"type": ["string", "null"]}
USAGE_ROW: dict[str, Any] = {
    "type": "object",
    "properties": {
        **{k: {"type": "string"} for k in ("stream_id", "request_id", "principal", "model")},
        "served_model": {"type": "string"},
        # "stream" (a streaming route's answer) or "batch" (a request of a batch).
        "route": {"type": "string", "enum": ["stream", "batch"]},
        "status": {"type": "string"},
        "stop_reason": _OPT_STR,
        **{k: _INT for k in ("input_tokens", "output_tokens", "cache_creation_input_tokens",
                             "cache_read_input_tokens", "coalesced", "retries", "continuations")},
        "cost_usd": _NUM,
        "estimated": {"type": "boolean"},
        "cached": {"type": "boolean"},
        "ttft_ms": {"type": ["number", "null"]},
        "duration_ms": _NUM,
        "started_at": {"type": "string", "format": "date-time"},
        "finished_at": {"type": "string", "format": "date-time"},
    },
}  # fmt: skip
USAGE_OK: dict[int | str, dict[str, Any]] = {
    "200": {
        "description": "Matching streams, newest first (at most `limit`), and the totals "
        "of every matching stream.",
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["rows", "totals"],
                    "properties": {
                        "rows": {"type": "array", "items": USAGE_ROW},
                        "totals": {
                            "type": "object",
                            "required": ["streams", "input_tokens", "output_tokens", "cost_usd"],
                            "properties": {
                                "streams": _INT,
                                "input_tokens": _INT,
                                "output_tokens": _INT,
                                "cost_usd": _NUM,
                            },
                        },
                    },
                }
            }
        },
    },
    "404": {
        "description": "The gateway keeps no usage ledger (TOKENRELAY_DATABASE_URL=off).",
        "content": {"application/json": {"schema": ERROR_SCHEMA}},
    },
}


def parse_time(name: str, value: str | None) -> datetime | None:
    """An ISO 8601 time or date; one without a zone is UTC."""
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidRequest(
            f"'{name}' must be an ISO 8601 time, e.g. 2026-12-01T00:00:00Z"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def visible_user(caller: Principal, user: str | None) -> str | None:
    """Whose usage the caller gets: their own; an admin's choice (None: everyone's)."""
    if caller.admin:
        return user
    if user is not None and user != caller.id:
        raise PermissionDenied("Only an admin may see another user's usage")
    return caller.id


@router.get("/api/usage", responses={**USAGE_OK, **errors(400, 401, 403, 503)})
async def usage(
    gw: GatewayDep,
    caller: Caller,
    since: Annotated[str | None, Query(alias="from", max_length=64)] = None,
    until: Annotated[str | None, Query(alias="to", max_length=64)] = None,
    model: Annotated[str | None, Query(max_length=128)] = None,
    user: Annotated[str | None, Query(max_length=255)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_ROWS)] = 100,
) -> Response:
    """Usage per stream and its totals, over `[from, to)` (ISO 8601), by model and user."""
    query = UsageFilter(
        since=parse_time("from", since),
        until=parse_time("to", until),
        model=model,
        user=visible_user(caller, user),
        limit=limit,
    )
    if query.since and query.until and query.since > query.until:
        raise InvalidRequest("'from' must not be after 'to'")
    if gw.ledger is None:
        return error_response(
            404, "not_found_error", "This gateway keeps no usage ledger (database_url is off)"
        )
    report = await gw.ledger.report(query)
    return JSONResponse({"rows": report.rows, "totals": report.totals.as_json()})
