"""Tracing: the hooks the core calls to trace each stream, and their setup.

With `TOKENRELAY_TRACING=otlp` (or a tracer provider handed to `setup`) each stream
leaves OpenTelemetry spans (names and attributes: docs/operations.md, "Tracing"):

    tokenrelay.admission        the request's checks: limits, budget, the stream's start
    ├── tokenrelay.stream       this instance's production of the stream
    │   ├── tokenrelay.queue_wait   the wait for a slot at the gate
    │   └── tokenrelay.upstream     each upstream attempt: first, retry, continuation
    └── tokenrelay.delivery     the starting request's reader
    tokenrelay.delivery         a resume: a reader on another connection (a link to
                                the stream's span when it is produced here)

The admission span is a child of the client's W3C `traceparent` (`tracestate` kept),
and each upstream request carries its attempt span's `traceparent`.

Off, which is the default, `OFF` stands in: every hook returns one shared object
that does nothing, no tracer provider exists, and OpenTelemetry's SDK is never
imported (the implementation, observability/otel.py, is imported by `setup` only).

Two context variables hand the trace across calls that know nothing of it, the way
OpenTelemetry's own context does: the admission span to the producer spawned while it
is open (the producer outlives the request), and an attempt's headers to the provider
making the call (`upstream_headers`). Spans carry lengths and counts, never prompt or
answer text nor keys, and nothing is recorded per token: counts are set at a span's end.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar
from types import TracebackType
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import TracerProvider

    from tokenrelay.providers.base import Usage

AttemptKind = Literal["first", "retry", "continuation"]

# The span a stream started now is a child of (set while an admission span is open).
STREAM_PARENT: ContextVar[Context | None] = ContextVar("tokenrelay_stream_parent", default=None)
# The trace headers of the upstream attempt being made in this task.
UPSTREAM_HEADERS: ContextVar[dict[str, str] | None] = ContextVar(
    "tokenrelay_upstream_headers", default=None
)


def upstream_headers() -> dict[str, str] | None:
    """`traceparent` (and `tracestate`) for the upstream call being made, or None
    when it is not traced. Read it, do not change it."""
    return UPSTREAM_HEADERS.get()


class StreamSummary(Protocol):
    """What a stream's span reports at its end (the producer has all of it)."""

    attempts: int
    retries_total: int
    continuations: int
    usage: Usage
    served_model: str
    estimated: bool

    @property
    def ttft_ms(self) -> float | None: ...

    @property
    def cost_usd(self) -> float: ...


class Span:
    """A span as a context manager (here: nothing). An exception leaving the block is
    recorded by its type (`error.type`), never its message."""

    __slots__ = ()

    def __enter__(self) -> Span:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None


class Admission(Span):
    __slots__ = ()

    # The admission span's context, for the spans of its request that follow it.
    context: Context | None = None

    def __enter__(self) -> Admission:
        return self

    def started(self, stream_id: str) -> None:
        """The request got its stream (new, joined, replayed from the cache)."""


class Attempt(Span):
    __slots__ = ()

    def __enter__(self) -> Attempt:
        return self

    def counted(self, deltas: int, usage: Usage, ended: bool) -> None:
        """The attempt's deltas and usage; `ended`: it reached message_stop."""


class StreamTrace:
    """One producer's span, and the spans of its queue wait and attempts."""

    __slots__ = ()

    def queue_wait(self, position: int) -> Span:
        """`position`: where the stream waits at first (0: admitted at once)."""
        return NO_SPAN

    def attempt(self, number: int, kind: AttemptKind, prefill_chars: int) -> Attempt:
        """Attempt `number` (from 1); a continuation prefills `prefill_chars` of the
        answer so far, or none (it restarts the answer)."""
        return NO_ATTEMPT

    def end(self, summary: StreamSummary, status: str) -> None:
        """`status`: "done", the final error's code, or why this instance stopped
        without an end ("handover", "taken_over", "store_lost")."""


class Delivery:
    """One reader's span: from its first read to its last write."""

    __slots__ = ()

    def start(self) -> None: ...

    def end(self, events: int, writes: int, outcome: str) -> None:
        """`outcome`: "completed" (the final event was written), "disconnected" (the
        client left), "ended" (without the final event: the instance stops, the store
        is unreachable) or "error" (an error frame was written)."""


NO_SPAN = Span()
NO_ADMISSION = Admission()
NO_ATTEMPT = Attempt()
NO_STREAM = StreamTrace()
NO_DELIVERY = Delivery()


class Tracing:
    """The tracer the core calls; this one, `OFF`, traces nothing."""

    def extract(self, headers: Mapping[str, str]) -> Context | None:
        """The client's trace context (`traceparent`, `tracestate`), if it sent one."""
        return None

    def admission(self, headers: Mapping[str, str], request_id: str) -> Admission:
        """The span of a request's checks; a stream started inside it is its child."""
        return NO_ADMISSION

    def stream(self, stream_id: str, model: str, *, takeover: bool) -> StreamTrace:
        """A new producer's span: beneath the open admission span, else a new root
        (a stream taken over from another instance)."""
        return NO_STREAM

    def delivery(
        self, parent: Context | None, stream_id: str, after: int, stream: StreamTrace | None
    ) -> Delivery:
        """A reader's span, under `parent`, linked to `stream`'s span when given."""
        return NO_DELIVERY

    def shutdown(self) -> None:
        """Export what is pending and stop (only a provider `setup` made itself)."""


OFF = Tracing()


def setup(mode: Literal["off", "otlp"], provider: TracerProvider | None = None) -> Tracing:
    """The gateway's tracing: `provider`'s when one is given (it stays the caller's to
    shut down); with "otlp" a provider of its own exporting over OTLP/HTTP, configured
    by the standard `OTEL_*` variables (read by the OpenTelemetry SDK); else `OFF`."""
    if provider is None and mode == "off":
        return OFF
    from tokenrelay.observability import otel

    if provider is None:
        own = otel.otlp_provider()
        return otel.OtelTracing(own, shutdown=own.shutdown)
    return otel.OtelTracing(provider)
