"""StreamManager: creates streams, runs their producers, attaches readers, cancels,
drains, and (with a shared store) hands streams over between processes.

Knows nothing of HTTP. Drain state and every producer task live here, so the server
can stop them in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import secrets
import time
from collections.abc import AsyncIterator

import orjson

from tokenrelay.errors import IdempotencyConflict, Overloaded, StreamNotFound
from tokenrelay.pricing import ModelTable
from tokenrelay.providers.base import GenerationRequest, Provider
from tokenrelay.streams import keys
from tokenrelay.streams.log import Entry, SharedStreamLog, StreamLog, StreamMeta, encode
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

log = logging.getLogger("tokenrelay.streams")

# How often a reader tells a shared store it is still there (for abandonment).
READER_TOUCH_S = 5.0


def new_stream_id() -> str:
    """192 random bits: unguessable, and safe in a URL and an SSE `id:` line."""
    return secrets.token_urlsafe(24)


def fingerprint(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


@dataclasses.dataclass(frozen=True, slots=True)
class StreamTimings:
    heartbeat_interval: float = 15.0
    abandon_after: float = 60.0
    lease_ms: int = keys.LEASE_MS
    takeover_scan: float = keys.TAKEOVER_SCAN_S


class StreamManager:
    def __init__(
        self,
        *,
        log: StreamLog,
        provider: Provider,
        models: ModelTable,
        retry: RetryPolicy,
        timings: StreamTimings,
    ) -> None:
        self.log = log
        self.shared: SharedStreamLog | None = log if isinstance(log, SharedStreamLog) else None
        self.provider = provider
        self.models = models
        self._retry = retry
        self._timings = timings
        self.instance_id = secrets.token_hex(8)
        self._producers: dict[str, tuple[Producer, asyncio.Task[None]]] = {}
        self._readers: dict[str, int] = {}
        self._abandon_timers: dict[str, asyncio.TimerHandle] = {}
        self._maintenance: asyncio.Task[None] | None = None
        self.draining = False

    async def open(self) -> None:
        """Start the background work a shared store needs: lease renewal and takeover."""
        if self.shared is not None:
            self.shared.on_cancel(self._cancel_requested)
            self._maintenance = asyncio.create_task(self._maintain(), name="stream-maintenance")

    # -- starting and following ---------------------------------------------------

    async def start(
        self,
        request: GenerationRequest,
        *,
        owner: str,
        request_id: str,
        body_fingerprint: str,
        idempotency_key: str | None = None,
    ) -> str:
        """Start a stream (or, for a known Idempotency-Key, find it); returns its id.
        The `start` event is in the log before this returns."""
        if self.draining:
            raise Overloaded("Server is shutting down; retry on another instance", retry_after=1)
        stream_id = new_stream_id()
        if idempotency_key is not None:
            bound_id, bound_fp = await self.log.claim_idempotency_key(
                owner, idempotency_key, stream_id, body_fingerprint
            )
            if bound_id != stream_id:
                if bound_fp != body_fingerprint:
                    raise IdempotencyConflict(
                        "Idempotency-Key was already used with a different request body"
                    )
                return bound_id
        meta = StreamMeta(
            stream_id=stream_id,
            owner=owner,
            request_id=request_id,
            model=request.model,
            fingerprint=body_fingerprint,
            created_at=time.time(),
            idempotency_key=idempotency_key,
            request=encode(dataclasses.asdict(request)) if self.shared else b"",
        )
        await self.log.create(meta)
        if self.shared is not None:
            await self.shared.acquire_lease(stream_id, self.instance_id, self._timings.lease_ms)
        start = {"stream_id": stream_id, "request_id": request_id, "model": request.model}
        await self.log.append(stream_id, "start", start)
        self._spawn(stream_id, request, None)
        return stream_id

    def _spawn(self, stream_id: str, request: GenerationRequest, answer: Answer | None) -> None:
        producer = Producer(
            stream_id=stream_id,
            request=request,
            provider=self.provider,
            log=self.log,
            models=self.models,
            retry=self._retry,
            answer=answer,
        )
        task = asyncio.create_task(producer.run(), name=f"producer:{stream_id}")
        self._producers[stream_id] = (producer, task)
        task.add_done_callback(lambda _t: self._producer_done(stream_id))
        # A stream nobody ever reads is abandoned like one whose reader left.
        self._arm_abandon(stream_id)

    async def lookup(self, stream_id: str, owner: str) -> StreamMeta:
        """The stream's metadata, if it exists and belongs to `owner`; else StreamNotFound."""
        meta = await self.log.meta(stream_id)
        if meta is None or meta.owner != owner:
            raise StreamNotFound(f"No stream {stream_id!r}: unknown, expired, or not yours")
        return meta

    async def follow(self, stream_id: str, after: int) -> AsyncIterator[list[Entry]]:
        """Batches of entries with `seq > after`, as they arrive, until the terminal one.
        An empty batch means nothing arrived for `heartbeat_interval` (time for a ping).
        While anyone follows a stream it is not abandoned."""
        self._attach(stream_id)
        try:
            # The first read does not wait, so a response starts with what is there.
            wait = 0.0
            read = self.log.read
            shared = self.shared
            touched = 0.0
            while True:
                entries = await read(stream_id, after, wait)
                wait = self._timings.heartbeat_interval
                if entries is None:  # expired while we were reading
                    return
                yield entries
                if entries:
                    last = entries[-1]
                    if last.terminal:
                        return
                    after = last.seq
                if shared is not None and time.monotonic() - touched > READER_TOUCH_S:
                    # The producer may run in another process: tell it somebody reads.
                    touched = time.monotonic()
                    await shared.touch_reader(stream_id)
        finally:
            self._detach(stream_id)

    async def cancel(self, stream_id: str, owner: str) -> bool:
        """Stop the stream's generation now, wherever it runs; its log ends with a
        `cancelled` error. False when the stream had already ended."""
        await self.lookup(stream_id, owner)
        if self._stop(stream_id, CANCELLED):
            return True
        if self.shared is not None:
            return await self.shared.publish_cancel(stream_id)
        return False

    def _cancel_requested(self, stream_id: str) -> None:
        """Another process asked to cancel a stream; stop it if it runs here."""
        self._stop(stream_id, CANCELLED)

    def _stop(self, stream_id: str, reason: StopReason) -> bool:
        running = self._producers.get(stream_id)
        if running is None:
            return False
        producer, task = running
        producer.stop_reason = reason
        return task.cancel()

    # -- abandonment ---------------------------------------------------------------

    def _attach(self, stream_id: str) -> None:
        self._readers[stream_id] = self._readers.get(stream_id, 0) + 1
        timer = self._abandon_timers.pop(stream_id, None)
        if timer is not None:
            timer.cancel()

    def _detach(self, stream_id: str) -> None:
        left = self._readers.get(stream_id, 1) - 1
        if left > 0:
            self._readers[stream_id] = left
            return
        self._readers.pop(stream_id, None)
        self._arm_abandon(stream_id)

    def _arm_abandon(self, stream_id: str, after: float | None = None) -> None:
        if stream_id not in self._producers or self._readers.get(stream_id):
            return
        loop = asyncio.get_running_loop()
        self._abandon_timers[stream_id] = loop.call_later(
            self._timings.abandon_after if after is None else after, self._abandon, stream_id
        )

    def _abandon(self, stream_id: str) -> None:
        self._abandon_timers.pop(stream_id, None)
        if self.shared is None:
            self._give_up(stream_id)
        else:
            task = asyncio.create_task(self._abandon_unless_read_elsewhere(stream_id))
            task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _abandon_unless_read_elsewhere(self, stream_id: str) -> None:
        assert self.shared is not None
        seen = await self.shared.last_reader_seen(stream_id)
        idle = time.time() - seen if seen is not None else float("inf")
        if idle < self._timings.abandon_after:
            self._arm_abandon(stream_id, after=self._timings.abandon_after - idle)
        else:
            self._give_up(stream_id)

    def _give_up(self, stream_id: str) -> None:
        log.info("stream abandoned: stream=%s", stream_id)
        self._stop(stream_id, ABANDONED)

    def _producer_done(self, stream_id: str) -> None:
        self._producers.pop(stream_id, None)
        if self.shared is not None:
            # Whether it finished, was handed over or lost the store, this process no
            # longer writes the stream: its readers here must follow it in the store,
            # where whoever takes it over will write.
            self.shared.release(stream_id)
        timer = self._abandon_timers.pop(stream_id, None)
        if timer is not None:
            timer.cancel()

    @property
    def active_streams(self) -> int:
        return len(self._producers)

    # -- shared store: leases and takeover -------------------------------------------

    async def _maintain(self) -> None:
        assert self.shared is not None
        renew_every = self._timings.lease_ms / 3000
        next_scan = 0.0
        while True:
            try:
                await self.shared.renew_leases(
                    list(self._producers), self.instance_id, self._timings.lease_ms
                )
                if not self.draining and time.monotonic() >= next_scan:
                    next_scan = time.monotonic() + self._timings.takeover_scan
                    for stream_id in await self.shared.orphaned_streams():
                        await self._take_over(stream_id)
            except Overloaded as exc:  # the store is unreachable: try again shortly
                log.warning("stream maintenance failed: %s", exc.message)
            await asyncio.sleep(renew_every)

    async def _take_over(self, stream_id: str) -> None:
        assert self.shared is not None
        if stream_id in self._producers:
            return
        if not await self.shared.acquire_lease(stream_id, self.instance_id, self._timings.lease_ms):
            return  # another process was quicker
        meta = await self.log.meta(stream_id)
        if meta is None or not meta.request:
            await self.shared.forget(stream_id)
            await self.shared.release_lease(stream_id)
            return
        entries = await self.shared.adopt(stream_id)
        if entries and entries[-1].terminal:
            await self.shared.forget(stream_id)
            self.shared.release(stream_id)
            return
        request = GenerationRequest(**orjson.loads(meta.request))
        answer = Answer.from_entries(entries)
        log.warning(
            "taking over stream: stream=%s events=%d chars=%d",
            stream_id, len(entries), len(answer.text),
        )  # fmt: skip
        self._spawn(stream_id, request, answer)

    # -- shutdown ------------------------------------------------------------------

    async def drain(self, grace: float) -> None:
        """Refuse new streams; let running ones finish for up to `grace` seconds (with
        a shared store, hand them to another process at once); end the rest with the
        retryable `shutdown` error."""
        self.draining = True
        if self.shared is not None:
            await self._hand_over()
        tasks = [task for _, task in self._producers.values()]
        if tasks:
            await asyncio.wait(tasks, timeout=grace)
        await self.aclose()

    async def _hand_over(self) -> None:
        assert self.shared is not None
        handed = list(self._producers)
        tasks = [task for _, task in self._producers.values()]
        for stream_id in handed:
            self._stop(stream_id, HANDED_OVER)
        await asyncio.gather(*tasks, return_exceptions=True)
        for stream_id in handed:
            self.shared.release(stream_id)
            with contextlib.suppress(Overloaded):
                await self.shared.release_lease(stream_id)
        if handed:
            log.info("handed %d streams over to other instances", len(handed))

    async def aclose(self) -> None:
        """Stop every producer; their streams end with the retryable `shutdown` error."""
        self.draining = True
        if self._maintenance is not None:
            self._maintenance.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._maintenance
        tasks = [task for _, task in self._producers.values()]
        for stream_id in list(self._producers):
            self._stop(stream_id, SHUTDOWN)
        await asyncio.gather(*tasks, return_exceptions=True)
