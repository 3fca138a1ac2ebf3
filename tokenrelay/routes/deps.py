"""The dependencies every route shares: the gateway, and who is calling."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from tokenrelay.auth.base import Principal, credential_from
from tokenrelay.gateway import Gateway


async def gateway(request: Request) -> Gateway:
    # async: FastAPI runs a plain `def` dependency in a thread pool.
    gw: Gateway = request.app.state.gateway
    return gw


GatewayDep = Annotated[Gateway, Depends(gateway)]


async def authenticate(gw: Gateway, request: Request) -> Principal:
    """Who is asking, from `x-api-key` or `Authorization: Bearer` (else 401)."""
    return await gw.authenticator.authenticate(credential_from(request.headers))


async def principal(request: Request, gw: GatewayDep) -> Principal:
    return await authenticate(gw, request)


Caller = Annotated[Principal, Depends(principal)]
