"""OpenAI's error shape, for `/v1/chat/completions`:

    {"error": {"message": "...", "type": "...", "param": null | "...", "code": null | "..."}}

The same JSON is an HTTP error's body and, once a stream has started, its last
`data:` line (the openai SDK raises on a chunk that holds `error`). The status and
`type` follow what OpenAI answers, so its SDK raises the class it would there
(BadRequestError, AuthenticationError, NotFoundError, RateLimitError,
InternalServerError); `code` is the gateway's own short code where OpenAI has none.

    gateway error (errors.py)     status  type                    code
    InvalidRequest                  400   invalid_request_error   the caller's param's, or null
    unknown model                   404   invalid_request_error   model_not_found
    AuthenticationFailed            401   invalid_request_error   invalid_api_key
    PermissionDenied                403   invalid_request_error   permission_denied
    StreamNotFound                  404   invalid_request_error   not_found
    RequestTooLarge                 413   invalid_request_error   request_too_large
    IdempotencyConflict             422   invalid_request_error   idempotency_conflict
    RateLimited                     429   requests                rate_limit_exceeded
    BudgetExceeded                  429   insufficient_quota      insufficient_quota
    Overloaded (full, draining)     503   server_error            overloaded
    a failed stream (its code)      from the code, below
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from tokenrelay.errors import GatewayError, InvalidRequest
from tokenrelay.events import Failed


@dataclass(frozen=True, slots=True)
class OpenAIError:
    status: int
    message: str
    type: str
    code: str | None = None
    param: str | None = None
    retryable: bool = False
    retry_after: float | None = None

    def body(self) -> bytes:
        error = {"message": self.message, "type": self.type, "param": self.param, "code": self.code}
        return orjson.dumps({"error": error})


class InvalidParam(InvalidRequest):
    """A 400 that names the request parameter at fault (OpenAI's `param`)."""

    def __init__(self, message: str, param: str | None, code: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        self.openai_code = code


class ModelNotFound(InvalidRequest):
    """A model the gateway does not serve: OpenAI answers 404 `model_not_found`."""

    status = 404


# A gateway error's (type, code) in OpenAI's words, by its Claude error type.
_BY_TYPE: dict[str, tuple[str, str | None]] = {
    "invalid_request_error": ("invalid_request_error", None),
    "authentication_error": ("invalid_request_error", "invalid_api_key"),
    "permission_error": ("invalid_request_error", "permission_denied"),
    "not_found_error": ("invalid_request_error", "not_found"),
    "request_too_large": ("invalid_request_error", "request_too_large"),
    "rate_limit_error": ("requests", "rate_limit_exceeded"),
    "overloaded_error": ("server_error", "overloaded"),
}


def from_gateway_error(exc: GatewayError) -> OpenAIError:
    """The OpenAI error for a gateway error raised before a response started."""
    kind: str
    code: str | None
    if isinstance(exc, ModelNotFound):
        kind, code = "invalid_request_error", "model_not_found"
    elif exc.code == "budget_exceeded":
        kind, code = "insufficient_quota", "insufficient_quota"
    elif exc.status == 422:
        kind, code = "invalid_request_error", "idempotency_conflict"
    else:
        kind, code = _BY_TYPE.get(exc.error_type, ("server_error", exc.code))
    param: str | None = None
    if isinstance(exc, InvalidParam):
        param, code = exc.param, exc.openai_code
    return OpenAIError(exc.status, exc.message, kind, code, param, exc.retryable, exc.retry_after)


# A failed stream's HTTP status and OpenAI type, by its error code (the producer's
# own codes, and the upstream's error types without `_error`). Anything else is the
# upstream's or the gateway's fault: 502.
_FAILED: dict[str, tuple[int, str]] = {
    "invalid_request": (400, "invalid_request_error"),
    "not_found": (404, "invalid_request_error"),
    "request_too_large": (413, "invalid_request_error"),
    "rate_limit": (429, "requests"),
    "budget_exceeded": (429, "insufficient_quota"),
    "overloaded": (503, "server_error"),
    "shutdown": (503, "server_error"),
    "timeout": (504, "server_error"),
    "internal": (500, "server_error"),
}


def from_failed(event: Failed) -> OpenAIError:
    """The OpenAI error of a stream that ended in `event`."""
    status, kind = _FAILED.get(event.code, (502, "server_error"))
    code = "model_not_found" if event.code == "not_found" else event.code
    return OpenAIError(status, event.message, kind, code, retryable=event.retryable)


RESTARTED = OpenAIError(
    502,
    "The upstream answer failed mid-way and had to start again, which a chat completion "
    "stream cannot show; retry the request",
    "server_error",
    "answer_restarted",
    retryable=True,
)
INTERRUPTED = OpenAIError(
    503,
    "The stream was interrupted before its end (the gateway is shutting down or lost "
    "its stream store); retry the request",
    "server_error",
    "interrupted",
    retryable=True,
)
