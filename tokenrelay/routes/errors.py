"""One renderer for every error before a stream starts: Claude's JSON shape."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from tokenrelay.errors import GatewayError, error_body

log = logging.getLogger("tokenrelay.http")

_HTTP_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
}


def error_response(
    status: int, error_type: str, message: str, retry_after: float | None = None
) -> Response:
    headers = {"retry-after": str(max(1, round(retry_after)))} if retry_after else None
    return Response(error_body(error_type, message), status, headers, "application/json")


async def gateway_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    return error_response(exc.status, exc.error_type, exc.message, exc.retry_after)


async def validation_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    err = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(p) for p in err.get("loc", ())) or "request"
    return error_response(400, "invalid_request_error", f"Invalid {where}: {err.get('msg')}")


async def http_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = {404: "Not found", 405: "Method not allowed"}.get(exc.status_code, str(exc.detail))
    return error_response(exc.status_code, _HTTP_TYPES.get(exc.status_code, "api_error"), message)


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
