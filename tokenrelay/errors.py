"""The gateway's errors, one small tree.

    GatewayError                 status  error.type             retryable
    ├── InvalidRequest             400   invalid_request_error   no
    │   └── IdempotencyConflict    422   invalid_request_error   no
    ├── RequestTooLarge            413   request_too_large       no
    ├── AuthenticationFailed       401   authentication_error    no
    ├── PermissionDenied           403   permission_error        no
    ├── StreamNotFound             404   not_found_error         no
    ├── RateLimited                429   rate_limit_error        yes
    ├── Overloaded                 503   overloaded_error        yes
    │   ├── StoreUnavailable       the shared stream store cannot be reached
    │   └── LedgerUnavailable      the usage database cannot be reached
    └── UpstreamError              (mapped from Claude's status and error.type)
        └── UpstreamIncomplete     the upstream stream ended before message_stop

Every leaf renders as Claude's error JSON before a stream starts (routes), and as a
`{"error", "code", "retryable"}` event once a stream has started (producer).

`ERROR_TYPES` is the one table from a bare HTTP status to Claude's `error.type`
(ANTHROPIC-PROTOCOL.md §3), and `retryable_status` the one rule for which upstream
statuses are worth another attempt; the leaves above pick their own type where the
design says so (the gateway's 503 is `overloaded_error`, DESIGN §3.2).
"""

from __future__ import annotations

from typing import ClassVar

import orjson

ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "request_too_large",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "api_error",
    # Claude documents no type for 503; the simulator has always answered api_error.
    503: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def error_type_for(status: int) -> str:
    """Claude's `error.type` for an HTTP status; `api_error` for one it does not name."""
    return ERROR_TYPES.get(status, "api_error")


def retryable_status(status: int) -> bool:
    """Whether an upstream HTTP error is worth another attempt: what the official SDK
    retries (ANTHROPIC-PROTOCOL.md §4), so a gateway retry means what an SDK retry would."""
    return status in (408, 409, 429) or status >= 500


class GatewayError(Exception):
    status: ClassVar[int] = 500
    error_type: ClassVar[str] = "api_error"
    retryable: ClassVar[bool] = False

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after

    @property
    def code(self) -> str:
        """The short code a `tokens` error event carries."""
        return self.error_type.removesuffix("_error")

    def body(self) -> bytes:
        """Claude's error JSON, the one shape of every error response."""
        return error_body(self.error_type, self.message)


class InvalidRequest(GatewayError):
    status = 400
    error_type = "invalid_request_error"


class IdempotencyConflict(InvalidRequest):
    status = 422


class RequestTooLarge(GatewayError):
    status = 413
    error_type = "request_too_large"


class AuthenticationFailed(GatewayError):
    status = 401
    error_type = "authentication_error"


class PermissionDenied(GatewayError):
    """Authenticated, but not allowed: e.g. another user's usage without the admin role."""

    status = 403
    error_type = "permission_error"


class StreamNotFound(GatewayError):
    status = 404
    error_type = "not_found_error"


class RateLimited(GatewayError):
    status = 429
    error_type = "rate_limit_error"
    retryable = True


class Overloaded(GatewayError):
    status = 503
    error_type = "overloaded_error"
    retryable = True


class StoreUnavailable(Overloaded):
    """The shared stream store cannot be reached: new streams get 503, readiness fails."""


class LedgerUnavailable(Overloaded):
    """The usage database cannot be reached: usage queries get 503 (rows still buffer)."""


class UpstreamError(GatewayError):
    """A failure reported by (or on the way to) the model provider.

    Unlike the other leaves, status, type and retryability come from the upstream
    answer, so they are instance attributes.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int = 502,
        error_type: str = "api_error",
        retryable: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, retry_after=retry_after)
        self.status = status  # type: ignore[misc]
        self.error_type = error_type  # type: ignore[misc]
        self.retryable = retryable  # type: ignore[misc]


class UpstreamIncomplete(UpstreamError):
    """The upstream stream ended (cleanly, cut, or by an `error` event) before `message_stop`."""

    def __init__(
        self, message: str, *, error_type: str = "api_error", cut_block: str | None = None
    ) -> None:
        super().__init__(message, status=502, error_type=error_type, retryable=True)
        # The kind of content block the stream was cut inside, when that was not text
        # (tool_use, thinking): such a block cannot be continued by a prefill.
        self.cut_block = cut_block


def error_body(error_type: str, message: str) -> bytes:
    return orjson.dumps({"type": "error", "error": {"type": error_type, "message": message}})
