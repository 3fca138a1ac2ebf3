"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import JSONResponse

from tokenrelay.routes.deps import GatewayDep

router = APIRouter()


@router.get("/healthz")
async def healthz() -> JSONResponse:
    """The process is up."""
    return JSONResponse({"status": "ok"})


@router.get(
    "/readyz",
    responses={"503": {"description": "Draining for shutdown, or the store is unreachable."}},
)
async def readyz(gw: GatewayDep) -> JSONResponse:
    """Ready for new streams: 503 while draining or when the store is unreachable."""
    manager = gw.manager
    if manager.draining:
        return JSONResponse({"status": "draining"}, status_code=503)
    if not await manager.log.ping():
        return JSONResponse({"status": "store unreachable"}, status_code=503)
    return JSONResponse(
        {
            "status": "ready",
            "instance": manager.instance_id,
            "active_streams": manager.active_streams,
        }
    )
