"""One renderer for every error before a stream starts: Claude's JSON shape."""

from __future__ import annotations

import logging
from collections.abc import Iterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Route

from tokenrelay.errors import GatewayError, error_body, error_type_for

log = logging.getLogger("tokenrelay.http")


def error_response(
    status: int,
    error_type: str,
    message: str,
    retry_after: float | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    if retry_after:
        headers = {**(headers or {}), "retry-after": str(max(1, round(retry_after)))}
    return Response(error_body(error_type, message), status, headers, "application/json")


async def gateway_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    headers: dict[str, str] | None = getattr(exc, "headers", None)  # e.g. a 429's quotas
    return error_response(exc.status, exc.error_type, exc.message, exc.retry_after, headers)


async def validation_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    err = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(p) for p in err.get("loc", ())) or "request"
    return error_response(400, "invalid_request_error", f"Invalid {where}: {err.get('msg')}")


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = {404: "Not found", 405: "Method not allowed"}.get(exc.status_code, str(exc.detail))
    error_type = error_type_for(exc.status_code)
    headers = {k.lower(): v for k, v in (exc.headers or {}).items()}
    if exc.status_code == 405:
        headers["allow"] = allowed_methods(request)
    return error_response(exc.status_code, error_type, message, headers=headers)


def allowed_methods(request: Request) -> str:
    """Every method the path answers to. (Starlette's own `Allow` names only the first
    route that matched the path, e.g. GET but not DELETE on /api/streams/{id}.)"""
    methods: set[str] = set()
    for route in _flat(request.app.routes):
        if route.matches(request.scope)[0] != Match.NONE:
            methods |= route.methods or set()
    return ", ".join(sorted(methods))


def _flat(routes: list[BaseRoute]) -> Iterator[Route]:
    for route in routes:
        if isinstance(route, Route):
            yield route
        # FastAPI keeps an included router's routes behind a wrapper.
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from _flat(inner.routes)


async def client_gone(_: Request, exc: Exception) -> Response:
    # The client left mid-request: nobody will read an answer, and it is not our fault.
    return Response(status_code=400)


async def unexpected_error(_: Request, exc: Exception) -> Response:
    log.exception("unhandled error", exc_info=exc)
    return error_response(500, "api_error", "Internal gateway error")


def install(app: FastAPI) -> None:
    app.add_exception_handler(GatewayError, gateway_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(ClientDisconnect, client_gone)
    app.add_exception_handler(Exception, unexpected_error)
