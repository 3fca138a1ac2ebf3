"""StreamManager: creates streams, runs their producers, cancels, and drains; its
`Readers` (streams/readers.py) follow the streams and abandon the unread ones.

Knows nothing of HTTP, nor of other instances: what is shared with them (leases,
takeover, hand-over, remote cancel) goes through `self.cluster`. Drain state and
every task the manager starts live here, so the server can stop them in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

from tokenrelay.admission.budgets import Budgets, Meter
from tokenrelay.admission.gate import Caps, Gate, MemoryGate, Ticket
from tokenrelay.cancellation import cancel_and_wait
from tokenrelay.errors import IdempotencyConflict, InvalidRequest, Overloaded, StreamNotFound
from tokenrelay.events import Done, Start
from tokenrelay.observability import telemetry
from tokenrelay.observability.log import log_event
from tokenrelay.observability.tracing import OFF, StreamTrace, Tracing
from tokenrelay.pricing import ModelTable
from tokenrelay.providers.base import GenerationRequest
from tokenrelay.streams.cache import CachedAnswer, CachePolicy, ResponseCache
from tokenrelay.streams.cluster import Cluster
from tokenrelay.streams.coalesce import Coalescer
from tokenrelay.streams.log import Entry, StreamLog, StreamMeta
from tokenrelay.streams.producer import (
    ABANDONED,
    CANCELLED,
    HANDED_OVER,
    SHUTDOWN,
    Answer,
    Producer,
    RetryPolicy,
    StopReason,
)
from tokenrelay.streams.readers import Readers
from tokenrelay.upstreams.pool import Pool
from tokenrelay.usage.record import NoUsage, StreamRecord, UsageSink

log = logging.getLogger("tokenrelay.streams")

# Called with the tokens a stream used, once they are known.
Settle = Callable[[int], Coroutine[Any, Any, None]]


def new_stream_id() -> str:
    """192 random bits: unguessable, and safe in a URL and an SSE `id:` line."""
    return secrets.token_urlsafe(24)


def fingerprint(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def usage_record(meta: StreamMeta, producer: Producer, coalesced: int) -> StreamRecord:
    usage = producer.usage
    return StreamRecord(
        stream_id=meta.stream_id,
        request_id=meta.request_id,
        principal=meta.owner,
        model=producer.request.model,
        served_model=producer.served_model,
        status=producer.status,
        stop_reason=producer.stop_reason_text,
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cache_creation_input_tokens=usage.cache_creation_input_tokens,
        cache_read_input_tokens=usage.cache_read_input_tokens,
        cost_usd=producer.cost_usd,
        estimated=producer.estimated,
        cached=False,
        coalesced=coalesced,
        retries=producer.retries_total,
        continuations=producer.continuations,
        ttft_ms=producer.ttft_ms,
        duration_ms=producer.duration_ms,
        started_at=producer.started_at,
        finished_at=time.time(),
    )


@dataclasses.dataclass(frozen=True, slots=True)
class StreamTimings:
    heartbeat_interval: float = 15.0
    abandon_after: float = 60.0


@dataclasses.dataclass(frozen=True, slots=True)
class InFlight:
    """A stream this instance is producing, at one moment."""

    stream_id: str
    model: str
    started_at: float  # time.time()
    queue_position: int | None  # its place at the gate while it waits; None once running
    text_deltas: int  # of the answer so far (a reset starts it again)
    readers: int  # connections reading it from this instance
    retries: int  # in a row, before the current attempt's first token
    continuations: int


class StreamManager:
    def __init__(
        self,
        *,
        log: StreamLog,
        cluster: Cluster,
        upstreams: Pool,
        models: ModelTable,
        retry: RetryPolicy,
        timings: StreamTimings,
        usage: UsageSink | None = None,
        coalescer: Coalescer | None = None,
        gate: Gate | None = None,
        cache: ResponseCache | None = None,
        cache_policy: CachePolicy | None = None,
        budgets: Budgets | None = None,
        tracing: Tracing = OFF,
        upstream_wait: float = 5.0,
    ) -> None:
        self.log = log
        self.usage: UsageSink = usage or NoUsage()
        self.cluster = cluster
        self.upstreams = upstreams
        # How long a new stream may wait for a cooling upstream, rather than get a 503.
        self._upstream_wait = upstream_wait
        self.models = models
        self._retry = retry
        self.instance_id = secrets.token_hex(8)
        self._producers: dict[str, tuple[Producer, asyncio.Task[None]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.readers = Readers(
            log, cluster,
            heartbeat_interval=timings.heartbeat_interval, abandon_after=timings.abandon_after,
            producing=self._producers.__contains__,
            abandon=lambda stream_id: self._stop(stream_id, ABANDONED),
            run=self._run,
        )  # fmt: skip
        self.loop_lag = self.readers.loop_lag
        # What to tell when a stream's usage is known (e.g. the rate limiter's reservation).
        self._on_end: dict[str, Settle] = {}
        self._coalescer = coalescer or Coalescer("off", 0)
        self.gate = gate or MemoryGate(Caps())
        # For the streams this instance takes over: their budgets still hold.
        self._budgets = budgets
        self._cache = cache
        self._cache_policy = cache_policy or CachePolicy()
        self._cache_keys: dict[str, bytes] = {}  # streams whose answer may be kept
        self.draining = False
        self.tracing = tracing

    async def open(self) -> None:
        self.loop_lag.start()
        await self.cluster.open(self)

    # -- starting and following ---------------------------------------------------

    async def start(
        self,
        request: GenerationRequest,
        *,
        owner: str,
        request_id: str,
        body_fingerprint: str,
        idempotency_key: str | None = None,
        on_end: Settle | None = None,
        principal: str | None = None,
        meter: Meter | None = None,
        use_cache: bool = True,
        route: str = "api",
        restartable: bool = True,
        fallback: bool = True,
    ) -> str:
        """Start a stream (or, for a known Idempotency-Key or an identical request still
        generating, find it); returns its id. The `Start` event is in the log before
        this returns. `on_end(tokens)` is called once, with the tokens the stream used
        (0 for a request that joined another's stream), when they are known.
        `principal` is whom the gate counts the call against (default: `owner`); at
        capacity with a full queue it raises QueueFull (503) before any stream exists.
        `route` names the API the request came by, for the stream's metrics;
        `restartable` False: its reader cannot be told to reset (see `Producer`);
        `fallback` False: no other model may answer. When no upstream deployment can
        take the model for longer than `upstream_wait` (every one cooling down),
        Overloaded (503, retry-after) before any stream exists, rather than a call to
        one that is refusing them; a shorter wait the stream waits out."""
        if self.draining:
            raise Overloaded("Server is shutting down; retry on another instance", retry_after=1)
        stream_id = new_stream_id()
        coalesce_key = cache_key = None
        if idempotency_key is None and use_cache and self._cache is not None:
            cache_key = self._cache_policy.key(request, owner)
            cached = await self._cache.get(cache_key) if cache_key is not None else None
            if cache_key is not None:
                telemetry.cache_lookup(hit=cached is not None)
            if cached is not None:
                self._settle(on_end, 0)
                return await self._replay(cached, request, owner, request_id, body_fingerprint)
        if not self.upstreams.serves(request.model, fallback):
            self._settle(on_end, 0)
            raise InvalidRequest(
                f"model: {request.model} is not served by any of this gateway's upstreams"
            )
        wait = self.upstreams.retry_in(request.model, fallback)
        if wait is not None and wait > self._upstream_wait:
            self._settle(on_end, 0)  # it never runs
            raise Overloaded(
                f"Every upstream deployment for {request.model} is cooling down; retry shortly",
                retry_after=wait,
            )
        if idempotency_key is None:  # an explicit key says which stream it means
            coalesce_key = self._coalescer.key(request, owner, restartable, fallback)
            if coalesce_key is not None:
                joined = await self._coalescer.join(coalesce_key, owner)
                if joined is not None:
                    log_event(log, "coalesced", stream_id=joined, request_id=request_id)
                    telemetry.coalesced()
                    self._settle(on_end, 0)
                    return joined
        else:
            bound_id, bound_fp = await self.log.claim_idempotency_key(
                owner, idempotency_key, stream_id, body_fingerprint
            )
            if bound_id != stream_id:
                if bound_fp != body_fingerprint:
                    raise IdempotencyConflict(
                        "Idempotency-Key was already used with a different request body"
                    )
                self._settle(on_end, 0)
                return bound_id
        if on_end is not None:
            self._on_end[stream_id] = on_end
        ready = None
        if coalesce_key is not None:  # before any await: a twin arriving now joins this
            ready = self._coalescer.starting(coalesce_key, stream_id, owner)
        ticket: Ticket | None = None
        try:
            ticket = await self.gate.enter(principal or owner)
            await self._create(stream_id, request, owner, request_id, body_fingerprint,
                               idempotency_key, ticket, meter, route,
                               principal or owner, restartable=restartable,
                               fallback=fallback)  # fmt: skip
        except BaseException as exc:
            self._settle(self._on_end.pop(stream_id, None), 0)  # it never ran
            if ticket is not None:
                ticket.release()
            if ready is not None:
                self._coalescer.ended(stream_id)
                if isinstance(exc, asyncio.CancelledError):
                    ready.cancel()
                else:
                    ready.set_exception(exc)
                    ready.exception()  # retrieved: nobody else may be waiting for it
            raise
        if ready is not None:
            ready.set_result(None)
        if cache_key is not None:
            self._cache_keys[stream_id] = cache_key
        return stream_id

    async def _replay(
        self,
        answer: CachedAnswer,
        request: GenerationRequest,
        owner: str,
        request_id: str,
        body_fingerprint: str,
    ) -> str:
        """A stream of its own, written at once from a cached answer."""
        stream_id = new_stream_id()
        started = time.time()
        meta = StreamMeta(stream_id, owner, request_id, request.model, body_fingerprint,
                          started, request=request)  # fmt: skip
        await self.log.create(meta)
        append = self.log.append
        await append(stream_id, Start(stream_id, request_id, request.model))
        for event in answer.events:
            await append(stream_id, event)
        nothing = {"input_tokens": 0, "output_tokens": 0}
        await append(stream_id, Done(answer.stop_reason, nothing, 0.0, cached=True))
        log_event(log, "cache_hit", stream_id=stream_id, request_id=request_id)
        self.usage.record(
            StreamRecord(
                stream_id=stream_id, request_id=request_id, principal=owner,
                model=request.model, served_model=request.model, status="done",
                stop_reason=answer.stop_reason, input_tokens=0, output_tokens=0,
                cache_creation_input_tokens=0, cache_read_input_tokens=0, cost_usd=0.0,
                estimated=False, cached=True, coalesced=0, retries=0, continuations=0,
                ttft_ms=None, duration_ms=(time.time() - started) * 1000,
                started_at=started, finished_at=time.time(),
            )
        )  # fmt: skip
        return stream_id

    async def _keep_answer(self, stream_id: str, key: bytes) -> None:
        assert self._cache is not None
        with contextlib.suppress(Overloaded):  # a cache that cannot be written is no cache
            entries = await self.log.read(stream_id, -1, 0)
            answer = CachedAnswer.from_entries(entries or [])
            if answer is not None:
                await self._cache.put(key, answer, self._cache_policy.ttl)

    async def _create(
        self,
        stream_id: str,
        request: GenerationRequest,
        owner: str,
        request_id: str,
        body_fingerprint: str,
        idempotency_key: str | None,
        ticket: Ticket | None,
        meter: Meter | None,
        route: str,
        principal: str,
        *,
        restartable: bool = True,
        fallback: bool = True,
    ) -> None:
        meta = StreamMeta(
            stream_id=stream_id,
            owner=owner,
            request_id=request_id,
            model=request.model,
            fingerprint=body_fingerprint,
            created_at=time.time(),
            idempotency_key=idempotency_key,
            request=request,
            principal=principal if principal != owner else "",
            route=route,
            restartable=restartable,
            fallback=fallback,
        )
        # The lease first: a stream that is running without one is an orphan that any
        # instance's takeover scan would adopt.
        await self.cluster.claim(stream_id)
        await self.log.create(meta)
        await self.log.append(stream_id, Start(stream_id, request_id, request.model))
        telemetry.stream_started(route, stream_id, owner, request)
        self._spawn(meta, request, None, ticket, meter, route)
        # The producer's turn first: its upstream request goes out now, and what this
        # request still does before its first token (the response's start, the reader)
        # is done while the upstream answers instead of before it asks.
        await asyncio.sleep(0)

    def _spawn(
        self,
        meta: StreamMeta,
        request: GenerationRequest,
        answer: Answer | None,
        ticket: Ticket | None = None,
        meter: Meter | None = None,
        route: str = "api",
        budget_check: Callable[[], Awaitable[Meter | None]] | None = None,
    ) -> None:
        stream_id = meta.stream_id
        # A taken-over answer goes on with the model that began it (a fallback's too).
        opening = meta.opening
        model = opening.model if answer is not None and opening is not None else None
        if model is not None and model not in self.models:
            model = None  # the upstream's own name for it (dated): the one asked for
        producer = Producer(
            stream_id=stream_id,
            request=request,
            upstream=self.upstreams.route(fallback=meta.fallback, restartable=meta.restartable),
            model=model,
            log=self.log,
            models=self.models,
            retry=self._retry,
            answer=answer,
            ticket=ticket,
            meter=meter,
            budget_check=budget_check,
            route=route,
            trace=self.tracing.stream(stream_id, request.model, takeover=answer is not None),
            restartable=meta.restartable,
        )
        # Every line the producer logs carries the stream's and its request's ids.
        context = telemetry.stream_context(stream_id, meta.request_id)
        task = asyncio.create_task(producer.run(), name=f"producer:{stream_id}", context=context)
        self._producers[stream_id] = (producer, task)
        task.add_done_callback(lambda _t: self._producer_done(meta, producer))
        # A stream nobody ever reads is abandoned like one whose reader left.
        self.readers.arm_abandon(stream_id)

    async def lookup(self, stream_id: str, owner: str) -> StreamMeta:
        """The stream's metadata, if it exists and belongs to `owner`; else StreamNotFound."""
        meta = await self.log.meta(stream_id)
        if meta is None or (meta.owner != owner and not self._coalescer.may_read(stream_id, owner)):
            raise StreamNotFound(f"No stream {stream_id!r}: unknown, expired, or not yours")
        return meta

    def follow(self, stream_id: str, after: int) -> AsyncIterator[list[Entry]]:
        """Batches of the stream's entries after `after` as they arrive (`Readers.follow`)."""
        return self.readers.follow(stream_id, after)

    @property
    def connected_readers(self) -> int:
        return self.readers.connected

    async def cancel(self, stream_id: str, owner: str) -> bool:
        """Stop the stream's generation now, wherever it runs; its log ends with a
        `cancelled` error. False when the stream had already ended."""
        await self.lookup(stream_id, owner)
        if stream_id in self._producers:
            return self._stop(stream_id, CANCELLED)
        return await self.cluster.cancel_elsewhere(stream_id)

    def _stop(self, stream_id: str, reason: StopReason) -> bool:
        running = self._producers.get(stream_id)
        if running is None:
            return False
        producer, task = running
        if producer.finished:
            # Its end is written or being written (a reader may have it already).
            return False
        producer.stop_reason = reason
        return task.cancel()

    # -- what the cluster asks of this instance ---------------------------------------

    def local_streams(self) -> list[str]:
        return list(self._producers)

    def cancel_local(self, stream_id: str) -> None:
        self._stop(stream_id, CANCELLED)

    def continue_stream(self, meta: StreamMeta, entries: list[Entry]) -> None:
        assert meta.request is not None
        answer = Answer.from_entries(entries)
        log_event(
            log, "takeover", level=logging.WARNING, stream_id=meta.stream_id,
            events=len(entries), chars=len(answer.text),
        )  # fmt: skip
        telemetry.taken_over()
        budgets = self._budgets
        check = None
        if budgets is not None:  # its remainder is metered again, against the same budget
            check = functools.partial(budgets.check, meta.principal or meta.owner)
        self._spawn(meta, meta.request, answer, route=meta.route, budget_check=check)

    async def stop_for_handover(self) -> list[str]:
        handed = list(self._producers)
        tasks = [task for _, task in self._producers.values()]
        for stream_id in handed:
            self._stop(stream_id, HANDED_OVER)
        await asyncio.gather(*tasks, return_exceptions=True)
        return handed

    def _settle(self, on_end: Settle | None, tokens: int) -> None:
        if on_end is not None:
            self._run(on_end(tokens))

    def _run(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` as a task the manager owns (cancelled by `aclose`)."""
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _producer_done(self, meta: StreamMeta, producer: Producer) -> None:
        stream_id = meta.stream_id
        self._producers.pop(stream_id, None)
        joined = self._coalescer.ended(stream_id)
        cache_key = self._cache_keys.pop(stream_id, None)
        # A fallback's answer is not the one asked for: it is not kept for the next asker.
        if cache_key is not None and producer.status == "done" and not producer.fell_back:
            self._run(self._keep_answer(stream_id, cache_key))
        if producer.finished:  # not handed over nor lost: its record is complete
            telemetry.stream_ended(producer)
            self.usage.record(usage_record(meta, producer, joined))
            usage = producer.usage
            used = usage.input_tokens + usage.cache_creation_input_tokens + usage.output_tokens
            self._settle(self._on_end.pop(stream_id, None), used)
            if producer.meter is not None:
                self._run(producer.meter.settle(producer.cost_usd))
        # Whether it finished, was handed over or lost the store, this instance no
        # longer writes the stream.
        self.cluster.producer_ended(stream_id)
        self.readers.disarm(stream_id)

    @property
    def active_streams(self) -> int:
        return len(self._producers)

    def trace_of(self, stream_id: str) -> StreamTrace | None:
        """The trace of the stream's producer when it runs here (a reader's span links it)."""
        running = self._producers.get(stream_id)
        return None if running is None else running[0].trace

    def in_flight(self) -> list[InFlight]:
        """The streams this instance produces now, as the operations page shows them;
        read only, nothing of theirs is touched."""
        readers = self.readers
        rows = []
        for stream_id, (producer, _task) in self._producers.items():
            ticket = producer._ticket
            rows.append(
                InFlight(
                    stream_id=stream_id,
                    model=producer.request.model,
                    started_at=producer.started_at,
                    queue_position=None if ticket is None or ticket.admitted else ticket.position,
                    text_deltas=len(producer._answer.parts),
                    readers=readers.of(stream_id),
                    retries=producer.retries,
                    continuations=producer.continuations,
                )
            )
        return rows

    # -- shutdown ------------------------------------------------------------------

    async def drain(self, grace: float) -> None:
        """Refuse new streams; hand running ones to another instance at once if the
        cluster can, else let them finish for up to `grace` seconds; end the rest
        with the retryable `shutdown` error, then end every reader still attached."""
        self.draining = True
        handed = await self.cluster.hand_over()
        if handed:
            log_event(log, "handover", count=handed)
            telemetry.handed_over(handed)
        tasks = [task for _, task in self._producers.values()]
        if tasks:
            await asyncio.wait(tasks, timeout=grace)
        await self.aclose()

    async def aclose(self) -> None:
        """Stop every producer (their streams end with the retryable `shutdown` error)
        and every task of the manager's, and end the readers still attached."""
        self.draining = True
        self.loop_lag.stop()
        tasks = [task for _, task in self._producers.values()]
        for stream_id in list(self._producers):
            self._stop(stream_id, SHUTDOWN)
        await asyncio.gather(*tasks, return_exceptions=True)
        self.readers.disarm_all()
        await cancel_and_wait(*self._tasks)
        self.readers.close()
