"""`/api/batches…`: batches sent through Claude's Message Batches API, owned by the
principal who sent them (anyone else gets the 404 of one that does not exist).

The body of `POST /api/batches` is the JSONL itself (`content-type:
application/x-ndjson`), one request per line, so that an error's line number is the
line of the caller's file; `?model=` is the model of the lines that name none.
The core is `tokenrelay.batches`; this layer parses, checks who asks and renders.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from starlette.responses import JSONResponse, Response

from tokenrelay.batches.errors import BatchesUnavailable
from tokenrelay.batches.input import parse_jsonl
from tokenrelay.batches.service import Batches
from tokenrelay.batches.store import Batch
from tokenrelay.errors import InvalidRequest
from tokenrelay.gateway import Gateway
from tokenrelay.routes.deps import Caller, GatewayDep

router = APIRouter()

OFF = "Batches need a database (TOKENRELAY_DATABASE_URL)"
JSONL = "application/x-ndjson"


def batches_of(gw: Gateway) -> Batches:
    if gw.batches is None:
        raise BatchesUnavailable(OFF)
    return gw.batches


def stamp(at: datetime | None) -> str | None:
    return None if at is None else at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def as_json(b: Batch) -> dict[str, Any]:
    return {
        "id": b.id, "upstream_id": b.upstream_id, "deployment": b.deployment,
        "processing_status": b.processing_status, "requests": b.requests,
        "request_counts": b.counts.as_dict(), "created_at": stamp(b.created_at),
        "ended_at": stamp(b.ended_at),
        "cost_usd": float(b.cost_usd) if b.cost_usd is not None else None,
    }  # fmt: skip


@router.post("/api/batches", include_in_schema=False)
async def submit(
    request: Request,
    gw: GatewayDep,
    caller: Caller,
    model: Annotated[str | None, Query(max_length=128)] = None,
) -> JSONResponse:
    """A new batch from a JSONL body (201); 400 naming every bad line, nothing sent."""
    service = batches_of(gw)
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != JSONL:
        raise InvalidRequest(f"Send the batch as JSONL, one request per line ({JSONL})")
    items = parse_jsonl(await request.body(), gw.validator, model)
    return JSONResponse(as_json(await service.submit(caller.id, items)), status_code=201)


@router.get("/api/batches", include_in_schema=False)
async def list_batches(
    gw: GatewayDep, caller: Caller, limit: Annotated[int, Query(ge=1, le=100)] = 20
) -> JSONResponse:
    """The caller's batches, newest first, as last refreshed."""
    found = await batches_of(gw).page(caller.id, limit)
    return JSONResponse({"data": [as_json(b) for b in found]})


@router.get("/api/batches/{batch_id}", include_in_schema=False)
async def status(gw: GatewayDep, caller: Caller, batch_id: str) -> JSONResponse:
    """The batch, refreshed from its upstream while it has not ended."""
    return JSONResponse(as_json(await batches_of(gw).status(caller.id, batch_id)))


@router.get("/api/batches/{batch_id}/results", include_in_schema=False)
async def results(gw: GatewayDep, caller: Caller, batch_id: str) -> Response:
    """JSONL, a line per request in the input's order; 409 until the batch has ended."""
    lines = await batches_of(gw).results(caller.id, batch_id)
    body = "".join(line + "\n" for line in lines).encode()
    return Response(body, media_type=JSONL)


@router.post("/api/batches/{batch_id}/cancel", include_in_schema=False)
async def cancel(gw: GatewayDep, caller: Caller, batch_id: str) -> JSONResponse:
    """Cancel what the upstream has not answered yet; the batch as it is then."""
    return JSONResponse(as_json(await batches_of(gw).cancel(caller.id, batch_id)))
