"""What the stream core reports at a stream's milestones: the metrics it moves and the
events it logs, in one place, so that each milestone is one call from the core.

Every function here runs once per request, stream, attempt or batch, never per
token: a producer counts its tokens in the integers it keeps anyway, and they are
added to the counters when the stream ends. Label values are bounded: a model is a
name from the configured table, an error type one of Claude's (else `api_error`).
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import GaugeMetricFamily, Metric
from structlog.contextvars import bind_contextvars

from tokenrelay.errors import ERROR_TYPES
from tokenrelay.observability import metrics
from tokenrelay.observability.log import log_event

if TYPE_CHECKING:
    from tokenrelay.providers.base import GenerationRequest
    from tokenrelay.streams.manager import StreamManager
    from tokenrelay.streams.producer import Producer
    from tokenrelay.upstreams.pool import Pool

log = logging.getLogger("tokenrelay.streams")

ERROR_TYPE_LABELS = frozenset(ERROR_TYPES.values())
# How a stream may end: done, the gateway's own stop codes, or an error type's code.
STATUS_LABELS = frozenset(
    {"done", "cancelled", "abandoned", "shutdown", "internal", "incomplete_block"}
    | {"budget_exceeded", "overloaded"}
    | {t.removesuffix("_error") for t in ERROR_TYPE_LABELS}
)


_children: dict[tuple[Any, tuple[str, ...]], Any] = {}


def labelled(metric: Any, *values: str) -> Any:
    """`metric.labels(*values)`, looked up once: prometheus_client validates the values
    and takes a lock on each call (3 µs; a stream makes about ten). The label values
    are bounded, and so is this."""
    key = (metric, values)
    child = _children.get(key)
    if child is None:
        child = _children[key] = metric.labels(*values)
    return child


def error_type_label(error_type: str) -> str:
    return error_type if error_type in ERROR_TYPE_LABELS else "api_error"


def status_label(status: str) -> str:
    return status if status in STATUS_LABELS else "api"


# -- a stream's life ------------------------------------------------------------------


def stream_context(stream_id: str, request_id: str) -> contextvars.Context:
    """A copy of the current context with the stream's ids bound, for its producer's
    task: every line it logs carries them (a takeover's too, started by no request)."""
    context = contextvars.copy_context()
    context.run(bind_contextvars, stream_id=stream_id, request_id=request_id)
    return context


def stream_started(route: str, stream_id: str, owner: str, request: GenerationRequest) -> None:
    labelled(metrics.STREAMS_STARTED, route, request.model).inc()
    log_event(
        log, "stream_start", stream_id=stream_id, model=request.model, principal=owner,
        messages=len(request.messages), max_tokens=request.max_tokens,
    )  # fmt: skip


def stream_ended(producer: Producer) -> None:
    """A stream this instance produced has ended (not handed over, not lost)."""
    model = producer.request.model
    status = status_label(producer.status)
    elapsed_ms = producer.duration_ms
    labelled(metrics.STREAMS_COMPLETED, producer.route, model, status).inc()
    labelled(metrics.DURATION, producer.route, model).observe(elapsed_ms / 1000)
    usage = producer.usage
    for kind, tokens in (
        ("input", usage.input_tokens),
        ("output", usage.output_tokens),
        ("cache_creation", usage.cache_creation_input_tokens),
        ("cache_read", usage.cache_read_input_tokens),
    ):
        if tokens:
            labelled(metrics.TOKENS, model, kind).inc(tokens)
    cost = producer.cost_usd
    if cost:
        labelled(metrics.COST, model).inc(cost)
    first = producer.first_text_at
    rate = None
    if status == "done" and first is not None and usage.output_tokens:
        rate = usage.output_tokens / max(time.monotonic() - first, 1e-6)
        labelled(metrics.TOKENS_PER_SECOND, model).observe(rate)
    ttft = producer.ttft_ms
    fields: dict[str, Any] = {
        "stream_id": producer.stream_id,
        "model": model,
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "elapsed_ms": round(elapsed_ms, 1),
        "ttft_ms": None if ttft is None else round(ttft, 1),
        "tokens_per_s": None if rate is None else round(rate, 1),
        "cost_usd": cost,
        "retries": producer.retries_total,
        "continuations": producer.continuations,
    }
    if status == "done":
        log_event(log, "stream_complete", stop_reason=producer.stop_reason_text, **fields)
    elif status == "cancelled":
        log_event(log, "stream_cancelled", **fields)
    elif status != "abandoned":  # an abandoned stream's event is logged when it is abandoned
        log_event(log, "stream_error", level=logging.WARNING, code=producer.status, **fields)


def first_token(stream_id: str, ttft_ms: float) -> None:
    log_event(log, "first_token", stream_id=stream_id, ttft_ms=round(ttft_ms, 1))


def upstream_first_delta(model: str, seconds: float) -> None:
    labelled(metrics.UPSTREAM_TTFT, model).observe(seconds)


def client_first_text(route: str, model: str, arrived_at: float) -> Callable[[], None]:
    """What to call when the first text of a response is written to its client:
    time to first token as the client sees it, from the request's arrival."""
    child = labelled(metrics.TTFT, route, model)

    def observe() -> None:
        child.observe(time.monotonic() - arrived_at)

    return observe


# -- upstream failures ----------------------------------------------------------------


def upstream_error(error_type: str) -> None:
    labelled(metrics.UPSTREAM_ERRORS, error_type_label(error_type)).inc()


def retried(error_type: str) -> None:
    labelled(metrics.RETRIES, error_type_label(error_type)).inc()


def continued(error_type: str) -> None:
    labelled(metrics.CONTINUATIONS, error_type_label(error_type)).inc()


def restarted() -> None:
    metrics.RESETS.inc()


# -- the upstream pool ----------------------------------------------------------------


def upstream_attempt(deployment: str, outcome: str) -> None:
    labelled(metrics.UPSTREAM_ATTEMPTS, deployment, outcome).inc()


def upstream_cooldown(deployment: str, reason: str) -> None:
    labelled(metrics.UPSTREAM_COOLDOWNS, deployment, reason).inc()


def upstream_probe(deployment: str, result: str) -> None:
    labelled(metrics.UPSTREAM_PROBES, deployment, result).inc()


def model_fallback(stream_id: str, requested: str, served: str, deployment: str) -> None:
    labelled(metrics.MODEL_FALLBACKS, requested, served).inc()
    log_event(
        log, "model_fallback", level=logging.WARNING, stream_id=stream_id, requested=requested,
        served=served, deployment=deployment,
    )  # fmt: skip


class PoolCollector:
    """The pool's gauges, per deployment, read from it at scrape time."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        in_flight = GaugeMetricFamily(
            metrics.UPSTREAM_IN_FLIGHT, "Calls to the deployment under way from this instance.",
            labels=["deployment"],
        )  # fmt: skip
        cooling = GaugeMetricFamily(
            metrics.UPSTREAM_COOLING,
            "1 while the deployment is not taking calls: cooling down, probing, or full.",
            labels=["deployment"],
        )
        remaining = GaugeMetricFamily(
            metrics.UPSTREAM_RATELIMIT_REMAINING,
            "The deployment's rate limit left, from its last anthropic-ratelimit-* headers.",
            labels=["deployment", "kind"],
        )
        for state in self._pool.snapshot():
            in_flight.add_metric([state.name], state.in_flight)
            cooling.add_metric([state.name], 0 if state.state == "healthy" else 1)
            for kind, value in (("requests", state.requests_remaining),
                                ("tokens", state.tokens_remaining)):  # fmt: skip
                if value is not None:
                    remaining.add_metric([state.name, kind], value)
        yield from (in_flight, cooling, remaining)


_pool_collector: PoolCollector | None = None


def watch_pool(pool: Pool) -> None:
    global _pool_collector
    unwatch_pool()
    _pool_collector = PoolCollector(pool)
    metrics.REGISTRY.register(_pool_collector)


def unwatch_pool() -> None:
    global _pool_collector
    if _pool_collector is not None:
        metrics.REGISTRY.unregister(_pool_collector)
        _pool_collector = None


# -- admission ------------------------------------------------------------------------


def queued(stream_id: str, position: int) -> None:
    log_event(log, "queued", stream_id=stream_id, position=position)


def queue_waited(seconds: float) -> None:
    metrics.QUEUE_WAIT.observe(seconds)


def queue_rejected(reason: str, stream_id: str | None = None) -> None:
    """`full`: refused before any stream exists (503); `timeout`: waited too long."""
    labelled(metrics.QUEUE_REJECTED, reason).inc()
    log_event(log, "queue_rejected", level=logging.WARNING, reason=reason, stream_id=stream_id)


def rate_limited(scope: str, principal: str, limit: int) -> None:
    """`scope`: requests or tokens (per minute)."""
    labelled(metrics.RATE_LIMITED, scope).inc()
    log_event(log, "rate_limited", scope=scope, principal=principal, limit=limit)


def budget_exceeded(scope: str, when: str, principal: str | None = None) -> None:
    """`scope`: daily or monthly; `when`: admission (a 429) or mid_stream (a cut)."""
    labelled(metrics.BUDGET_REFUSALS, scope, when).inc()
    log_event(log, "budget_exceeded", scope=scope, when=when, principal=principal)


def cache_lookup(hit: bool) -> None:
    labelled(metrics.CACHE, "hit" if hit else "miss").inc()


def coalesced() -> None:
    metrics.COALESCED.inc()


# -- readers and instances ----------------------------------------------------------


def resumed(stream_id: str, after: int) -> None:
    metrics.RESUMES.inc()
    log_event(log, "stream_resumed", stream_id=stream_id, after=after)


def client_disconnected() -> None:
    metrics.CLIENT_DISCONNECTS.inc()


def taken_over() -> None:
    metrics.TAKEOVERS.inc()


def handed_over(count: int) -> None:
    metrics.HANDOVERS.inc(count)


def watch(manager: StreamManager, ledger: object | None) -> None:
    """The gauges, read from the running gateway when /metrics is scraped (and only
    then): nothing on the request path keeps them. A ledger that buffers rows says
    how many wait in its `backlog`."""
    gate = manager.gate
    metrics.ACTIVE_STREAMS.set_function(lambda: manager.active_streams)
    metrics.CONNECTED_READERS.set_function(lambda: manager.connected_readers)
    metrics.QUEUE_DEPTH.set_function(lambda: gate.queued)
    metrics.QUEUE_CAPACITY.set_function(lambda: gate.caps.queue_size)
    metrics.DRAINING.set_function(lambda: 1 if manager.draining else 0)
    metrics.LEDGER_BACKLOG.set_function(lambda: getattr(ledger, "backlog", 0))
    watch_pool(manager.upstreams)


def unwatch() -> None:
    for gauge in (
        metrics.ACTIVE_STREAMS, metrics.CONNECTED_READERS, metrics.QUEUE_DEPTH,
        metrics.QUEUE_CAPACITY, metrics.DRAINING, metrics.LEDGER_BACKLOG,
    ):  # fmt: skip
        gauge.set_function(lambda: 0)
    unwatch_pool()
