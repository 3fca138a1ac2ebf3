"""The OpenTelemetry implementation of tracing.py's hooks; imported only when tracing
is on (`tracing.setup`), and the SDK only for a provider of our own (`otlp_provider`).

Spans are started with an explicit parent context, never the ambient one: a stream's
producer and readers outlive the request that started them, and which trace a span
belongs to is decided here, not by whichever task happens to run it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING

from opentelemetry.context import Context
from opentelemetry.trace import (
    Link,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    Tracer,
    TracerProvider,
    get_current_span,
    set_span_in_context,
)
from opentelemetry.trace import Span as OtelSpan
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from tokenrelay import __version__
from tokenrelay.errors import GatewayError, UpstreamError, UpstreamIncomplete
from tokenrelay.observability import tracing
from tokenrelay.observability.tracing import (
    STREAM_PARENT,
    UPSTREAM_HEADERS,
    AttemptKind,
    StreamSummary,
)

if TYPE_CHECKING:
    from contextvars import Token

    from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider

    from tokenrelay.providers.base import Usage

# Only W3C trace context crosses the gateway (not baggage, whatever OTEL_PROPAGATORS says).
PROPAGATOR = TraceContextTextMapPropagator()

# Endings of a stream that are not failures: its span's status stays unset.
CLEAN_ENDINGS = frozenset(
    {"done", "cancelled", "abandoned", "budget_exceeded", "handover", "taken_over"}
)


def otlp_provider() -> SdkTracerProvider:
    """A provider exporting in batches over OTLP/HTTP. The SDK reads the standard
    variables: OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT, _HEADERS, _TIMEOUT, OTEL_SERVICE_NAME,
    OTEL_RESOURCE_ATTRIBUTES, OTEL_TRACES_SAMPLER, OTEL_BSP_*."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider as SdkProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({"service.version": __version__})
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: "tokenrelay"}))
    # Shut down by the gateway when it closes (`Tracing.shutdown`), not at exit.
    provider = SdkProvider(resource=resource, shutdown_on_exit=False)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider


def _context(span: OtelSpan) -> Context:
    return set_span_in_context(span, Context())


def _record_error(span: OtelSpan, exc: BaseException, *, http_status: bool) -> None:
    """The error's type (and, where it is an HTTP answer's, its status), never its
    message: that may quote a request."""
    if not isinstance(exc, GatewayError):
        span.set_attribute("error.type", type(exc).__qualname__)
        return
    span.set_attribute("error.type", exc.error_type)
    if http_status:
        span.set_attribute("http.response.status_code", exc.status)


class OtelTracing(tracing.Tracing):
    def __init__(
        self, provider: TracerProvider, *, shutdown: Callable[[], object] | None = None
    ) -> None:
        self._tracer = provider.get_tracer("tokenrelay", __version__)
        self._shutdown = shutdown  # a provider of our own's: the caller keeps theirs

    def extract(self, headers: Mapping[str, str]) -> Context | None:
        context = PROPAGATOR.extract(headers)
        return context if get_current_span(context).get_span_context().is_valid else None

    def admission(self, headers: Mapping[str, str], request_id: str) -> tracing.Admission:
        return _Admission(self._tracer, self.extract(headers), request_id)

    def stream(self, stream_id: str, model: str, *, takeover: bool) -> tracing.StreamTrace:
        return _Stream(self._tracer, STREAM_PARENT.get(), stream_id, model, takeover)

    def delivery(
        self,
        parent: Context | None,
        stream_id: str,
        after: int,
        stream: tracing.StreamTrace | None,
    ) -> tracing.Delivery:
        link = stream.span.get_span_context() if isinstance(stream, _Stream) else None
        return _Delivery(self._tracer, parent, stream_id, after, link)

    def shutdown(self) -> None:
        if self._shutdown is not None:
            self._shutdown()


class _Admission(tracing.Admission):
    __slots__ = ("_parent", "_request_id", "_span", "_token", "_tracer", "context")

    def __init__(self, tracer: Tracer, parent: Context | None, request_id: str) -> None:
        self._tracer = tracer
        self._parent = parent
        self._request_id = request_id

    def __enter__(self) -> tracing.Admission:
        self._span = self._tracer.start_span(
            "tokenrelay.admission",
            context=Context() if self._parent is None else self._parent,
            kind=SpanKind.SERVER,
            attributes={"tokenrelay.request_id": self._request_id},
        )
        self.context = _context(self._span)
        self._token: Token[Context | None] = STREAM_PARENT.set(self.context)
        return self

    def started(self, stream_id: str) -> None:
        self._span.set_attribute("tokenrelay.stream_id", stream_id)

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        STREAM_PARENT.reset(self._token)
        span = self._span
        if exc is not None:
            _record_error(span, exc, http_status=True)
            # A refusal (4xx) is the gateway working; only a 5xx is a failed span.
            if not isinstance(exc, GatewayError) or exc.status >= 500:
                span.set_status(Status(StatusCode.ERROR, type(exc).__qualname__))
        span.end()


class _Stream(tracing.StreamTrace):
    __slots__ = ("_tracer", "context", "span")

    def __init__(
        self, tracer: Tracer, parent: Context | None, stream_id: str, model: str, takeover: bool
    ) -> None:
        self._tracer = tracer
        attributes: dict[str, str | bool] = {
            "tokenrelay.stream_id": stream_id,
            "gen_ai.request.model": model,
        }
        if takeover:
            attributes["tokenrelay.takeover"] = True
        self.span = tracer.start_span(
            "tokenrelay.stream",
            context=Context() if parent is None else parent,
            attributes=attributes,
        )
        self.context = _context(self.span)

    def queue_wait(self, position: int) -> tracing.Span:
        return _QueueWait(self._tracer, self.context, position)

    def attempt(self, number: int, kind: AttemptKind, prefill_chars: int) -> tracing.Attempt:
        return _Attempt(self._tracer, self.context, number, kind, prefill_chars)

    def end(self, summary: StreamSummary, status: str) -> None:
        span = self.span
        usage = summary.usage
        span.set_attributes(
            {
                "tokenrelay.stream.status": status,
                "tokenrelay.stream.attempts": summary.attempts,
                "tokenrelay.stream.retries": summary.retries_total,
                "tokenrelay.stream.continuations": summary.continuations,
                "tokenrelay.stream.estimated": summary.estimated,
                "tokenrelay.stream.cost_usd": summary.cost_usd,
                "gen_ai.response.model": summary.served_model,
                "gen_ai.usage.input_tokens": usage.input_tokens,
                "gen_ai.usage.output_tokens": usage.output_tokens,
            }
        )
        ttft = summary.ttft_ms
        if ttft is not None:
            span.set_attribute("tokenrelay.stream.ttft_ms", ttft)
        if status not in CLEAN_ENDINGS:
            span.set_status(Status(StatusCode.ERROR, status))
        span.end()


class _QueueWait(tracing.Span):
    __slots__ = ("_span",)

    def __init__(self, tracer: Tracer, parent: Context, position: int) -> None:
        self._span = tracer.start_span(
            "tokenrelay.queue_wait",
            context=parent,
            attributes={"tokenrelay.queue.position": position},
        )

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        span = self._span
        if exc is None:
            span.set_attribute("tokenrelay.queue.outcome", "admitted")
        elif isinstance(exc, asyncio.CancelledError):
            span.set_attribute("tokenrelay.queue.outcome", "cancelled")
        else:
            span.set_attribute("tokenrelay.queue.outcome", "timeout")
            _record_error(span, exc, http_status=False)
            span.set_status(Status(StatusCode.ERROR, type(exc).__qualname__))
        span.end()


class _Attempt(tracing.Attempt):
    __slots__ = ("_ended", "_span", "_token")

    def __init__(
        self, tracer: Tracer, parent: Context, number: int, kind: AttemptKind, prefill_chars: int
    ) -> None:
        attributes: dict[str, str | int] = {
            "tokenrelay.attempt": number,
            "tokenrelay.attempt.kind": kind,
        }
        if kind == "continuation":
            attributes["tokenrelay.continuation.mode"] = "prefill" if prefill_chars else "restart"
            attributes["tokenrelay.continuation.prefill_chars"] = prefill_chars
        self._span = tracer.start_span(
            "tokenrelay.upstream", context=parent, kind=SpanKind.CLIENT, attributes=attributes
        )
        self._ended = False

    def __enter__(self) -> tracing.Attempt:
        headers: dict[str, str] = {}
        PROPAGATOR.inject(headers, context=_context(self._span))
        self._token: Token[dict[str, str] | None] = UPSTREAM_HEADERS.set(headers)
        return self

    def counted(self, deltas: int, usage: Usage, ended: bool) -> None:
        self._ended = ended
        self._span.set_attributes(
            {
                "tokenrelay.attempt.deltas": deltas,
                "gen_ai.usage.input_tokens": usage.input_tokens,
                "gen_ai.usage.output_tokens": usage.output_tokens,
            }
        )

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        UPSTREAM_HEADERS.reset(self._token)
        span = self._span
        if exc is None:
            # Without message_stop and without an error: the stream stopped it (budget).
            span.set_attribute("tokenrelay.attempt.outcome", "done" if self._ended else "stopped")
        elif isinstance(exc, asyncio.CancelledError):
            span.set_attribute("tokenrelay.attempt.outcome", "cancelled")
        else:
            cut = isinstance(exc, UpstreamIncomplete)
            answered = isinstance(exc, UpstreamError) and not cut  # with an HTTP error
            span.set_attribute(
                "tokenrelay.attempt.outcome", "cut" if cut else "failed" if answered else "error"
            )
            _record_error(span, exc, http_status=answered)
            span.set_status(Status(StatusCode.ERROR, type(exc).__qualname__))
        span.end()


class _Delivery(tracing.Delivery):
    __slots__ = ("_after", "_link", "_parent", "_span", "_stream_id", "_tracer")

    def __init__(
        self,
        tracer: Tracer,
        parent: Context | None,
        stream_id: str,
        after: int,
        link: SpanContext | None,
    ) -> None:
        self._tracer = tracer
        self._parent = parent
        self._stream_id = stream_id
        self._after = after
        self._link = link

    def start(self) -> None:
        link = self._link
        self._span = self._tracer.start_span(
            "tokenrelay.delivery",
            context=Context() if self._parent is None else self._parent,
            attributes={
                "tokenrelay.stream_id": self._stream_id,
                "tokenrelay.delivery.after": self._after,
            },
            links=None if link is None else [Link(link)],
        )

    def end(self, events: int, writes: int, outcome: str) -> None:
        span = self._span
        span.set_attributes(
            {
                "tokenrelay.delivery.events": events,
                "tokenrelay.delivery.writes": writes,
                "tokenrelay.delivery.outcome": outcome,
            }
        )
        if outcome == "error":
            span.set_status(Status(StatusCode.ERROR, "error"))
        span.end()
