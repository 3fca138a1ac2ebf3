"""The shared store: stream logs in Redis Streams, for any number of gateway processes.

Connections stay bounded whatever the number of clients:
  - writes from every producer in the process go out in one pipeline per batch (a
    batch is whatever was appended while the previous one was in flight; a stream's
    entries in it are one script call, `redis_writes`);
  - readers in this process are served from a `Tail` cache; streams produced by
    another process are followed by one XREAD BLOCK loop over all of them at once;
  - everything else shares one small blocking pool.
An entry's Redis id is `0-{seq+1}`, and a run of entries is added only right after
the entry before it: that is how a producer learns another instance has taken its
stream over, and why a producer need not wait for one batch before the next.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Iterator
from typing import Any, cast

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from tokenrelay.cancellation import cancel_and_wait
from tokenrelay.errors import StoreUnavailable
from tokenrelay.events import TERMINAL_TYPES, Event, Text, event_from
from tokenrelay.providers.base import GenerationRequest
from tokenrelay.streams import keys
from tokenrelay.streams.fanout import Tail
from tokenrelay.streams.log import Entry, Opening, StreamMeta, StreamTakenOver
from tokenrelay.streams.redis_writes import Run, WriteBatcher, refused

log = logging.getLogger("tokenrelay.redis")

Rows = list[tuple[bytes, dict[bytes, bytes]]]

# How long an XREAD waits before it re-reads which streams to follow.
FOLLOW_BLOCK_MS = 200
# A cached tail nobody has read for this long is dropped (Redis keeps the log).
TAIL_IDLE_S = 60.0
# A finished stream this process wrote stays cached this long for late readers here;
# after that they read it from Redis, where it is kept for the stream TTL.
FINISHED_TAIL_S = 60.0
# A writer this many entries ahead of Redis waits for its batch (back-pressure).
MAX_UNCONFIRMED = 256


@contextlib.contextmanager
def store_errors() -> Iterator[None]:
    try:
        yield
    except (RedisError, OSError) as exc:
        raise StoreUnavailable(
            f"Stream store unavailable: {type(exc).__name__}", retry_after=1
        ) from exc


def _meta_fields(meta: StreamMeta) -> dict[str, str | bytes]:
    request = meta.request
    return {
        "owner": meta.owner,
        "request_id": meta.request_id,
        "model": meta.model,
        "fingerprint": meta.fingerprint,
        "created_at": repr(meta.created_at),
        "idempotency_key": meta.idempotency_key or "",
        "principal": meta.principal,
        "route": meta.route,
        "restartable": "1" if meta.restartable else "0",
        "fallback": "1" if meta.fallback else "0",
        "request": orjson.dumps(dataclasses.asdict(request)) if request else b"",
    }


def _meta_from(stream_id: str, h: dict[bytes, bytes]) -> StreamMeta:
    request = h.get(b"request")
    return StreamMeta(
        stream_id=stream_id,
        owner=h[b"owner"].decode(),
        request_id=h[b"request_id"].decode(),
        model=h[b"model"].decode(),
        fingerprint=h[b"fingerprint"].decode(),
        created_at=float(h[b"created_at"]),
        idempotency_key=h[b"idempotency_key"].decode() or None,
        request=_request_from(request) if request else None,
        principal=h.get(b"principal", b"").decode(),
        route=h.get(b"route", b"api").decode(),
        restartable=h.get(b"restartable", b"1") == b"1",
        fallback=h.get(b"fallback", b"1") == b"1",
        opening=_opening_from(h[b"opening"]) if b"opening" in h else None,
    )


def _opening_from(raw: bytes) -> Opening:
    data = orjson.loads(raw)
    return Opening(data["model"], data["usage"])


_REQUEST_FIELDS = frozenset(f.name for f in dataclasses.fields(GenerationRequest))


def _request_from(raw: bytes) -> GenerationRequest:
    # Only the fields this version knows: a stream stored by an older or newer
    # instance during a rolling upgrade can still be taken over.
    data = orjson.loads(raw)
    return GenerationRequest(**{k: v for k, v in data.items() if k in _REQUEST_FIELDS})


def _entry(entry_id: bytes, fields: dict[bytes, bytes]) -> Entry:
    kind = fields[b"k"]
    if kind == b"text":
        event: Event = Text(fields[b"t"].decode())
    else:
        event = event_from(kind.decode(), orjson.loads(fields[b"d"]))
    return Entry(keys.seq_of(entry_id), event)


@dataclasses.dataclass(slots=True)
class _Writer:
    """A stream this process writes."""

    next_seq: int
    unconfirmed: int = 0  # appended, not yet confirmed by Redis
    # Why nothing more can be written: raised by the stream's next append.
    failure: StreamTakenOver | StoreUnavailable | None = None


class RedisLog:
    def __init__(self, url: str, stream_ttl: float, *, max_connections: int = 16) -> None:
        self._ttl = max(1, int(stream_ttl))
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=5, socket_connect_timeout=2
        )
        self._redis = aioredis.Redis(connection_pool=pool)
        # Four more: the XREAD BLOCK that follows remote streams, and the cancel, the
        # gate's and the upstream pool's subscriptions.
        follow_pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=4, timeout=5, socket_connect_timeout=2
        )
        self.blocking_client = aioredis.Redis(connection_pool=follow_pool)
        self._writes = WriteBatcher(self._redis, self._ttl, self._run_written)
        self._tails: dict[str, Tail] = {}
        self._writers: dict[str, _Writer] = {}  # the streams this process writes
        # The meta of the streams this process created, while it caches their tails:
        # nobody else changes it, so a reader here needs no round trip for it.
        self._metas: dict[str, StreamMeta] = {}
        self._follower: asyncio.Task[None] | None = None

    @property
    def client(self) -> aioredis.Redis:
        """The bounded pool, for other shared state (leases, tickets) of this process."""
        return self._redis

    async def submit(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Run commands in the next write pipeline, with every other writer's."""
        with store_errors():
            return await self._writes.submit(commands)

    def enqueue(self, commands: list[tuple[Any, ...]]) -> None:
        """Put commands in the next write pipeline without waiting for it."""
        self._writes.enqueue(commands)

    # -- writing ---------------------------------------------------------------

    async def create(self, meta: StreamMeta) -> None:
        # Not waited for: the stream's first append waits for both, in one round trip.
        sid = meta.stream_id
        self._writes.enqueue(
            [
                ("HSET", keys.meta_key(sid), *_flatten(_meta_fields(meta))),
                ("EXPIRE", keys.meta_key(sid), keys.RUNNING_TTL_S),
                ("SADD", keys.RUNNING, sid),
            ]
        )
        self._writers[sid] = _Writer(0)
        self._tails[sid] = Tail()
        self._metas[sid] = meta

    async def set_opening(self, stream_id: str, opening: Opening) -> None:
        # With the entries appended after it, in one script call: no wait of its own.
        writer = self._writable(stream_id)
        data = orjson.dumps({"model": opening.model, "usage": opening.usage})
        self._writes.open_run(stream_id, writer.next_seq, data)
        known = self._metas.get(stream_id)
        if known is not None:
            self._metas[stream_id] = dataclasses.replace(known, opening=opening)

    async def adopt(self, stream_id: str) -> list[Entry]:
        """Take over writing a stream another process started; returns its entries."""
        entries = await self._load(stream_id)
        self._writers[stream_id] = _Writer(len(entries))
        tail = self._tails.get(stream_id)
        if tail is None:
            self._tails[stream_id] = Tail(entries)
        else:  # readers here wait on this tail: bring it up to date, never replace it
            for entry in entries:
                tail.push(entry)
        return entries

    async def append(self, stream_id: str, event: Event) -> int:
        """Queue the entry for the next batch and go on: only the first entry (it
        confirms the stream's creation: a store that is down is the request's error),
        a terminal one, or a writer too far ahead of Redis waits for its batch. A
        refusal or a failure of an earlier batch is raised here, by the next append."""
        writer = self._writable(stream_id)
        seq = writer.next_seq
        writer.next_seq = seq + 1
        writer.unconfirmed += 1
        terminal = type(event) in TERMINAL_TYPES
        self._writes.append(stream_id, seq, event, terminal)
        if terminal or not seq or writer.unconfirmed >= MAX_UNCONFIRMED:
            with store_errors():
                # Shielded: a cancelled appender's entry is still written, in order.
                batch = self._writes.last_batch()
                assert batch is not None  # the one this entry is in
                await asyncio.shield(batch)
            if writer.failure is not None:
                raise writer.failure
        return seq

    def _writable(self, stream_id: str) -> _Writer:
        writer = self._writers.get(stream_id)
        if writer is None:
            raise StreamTakenOver(stream_id)
        if writer.failure is not None:
            raise writer.failure
        return writer

    def _run_written(self, run: Run, result: Any) -> None:
        """A stream's run is through (or not), whether or not its writer waits: the
        entries are in Redis, so readers here get them."""
        sid = run.stream_id
        writer = self._writers.get(sid)
        if isinstance(result, BaseException):
            if writer is not None and writer.failure is None:
                writer.failure = (
                    StreamTakenOver(sid)
                    if refused(result)
                    else StoreUnavailable(
                        f"Stream store write failed: {type(result).__name__}", retry_after=1
                    )
                )
            return
        if writer is not None:
            writer.unconfirmed -= len(run.events)
            if run.terminal:
                del self._writers[sid]
        tail = self._tails.get(sid)
        if tail is not None:
            tail.extend([Entry(run.first + i, event) for i, event in enumerate(run.events)])
            if run.terminal:
                tail.expires_at = time.monotonic() + self._ttl
                loop = asyncio.get_running_loop()
                loop.call_later(min(FINISHED_TAIL_S, self._ttl), self._forget_finished, sid)

    def _forget_finished(self, stream_id: str) -> None:
        tail = self._tails.get(stream_id)
        if tail is not None and tail.finished:
            del self._tails[stream_id]
            self._metas.pop(stream_id, None)

    def release(self, stream_id: str) -> None:
        """This process stops writing the stream (handed over, taken over, or it lost
        the store): readers here now follow it in Redis, where its next writer writes."""
        self._writers.pop(stream_id, None)
        self._writes.drop_runs(stream_id)  # what it appended and was not sent yet
        tail = self._tails.get(stream_id)
        if tail is None or not tail.finished:
            self._metas.pop(stream_id, None)  # its next writer may change it
            if tail is not None:
                self._ensure_follower()

    # -- reading ---------------------------------------------------------------

    async def meta(self, stream_id: str) -> StreamMeta | None:
        known = self._metas.get(stream_id)
        tail = self._tails.get(stream_id)
        if known is not None and tail is not None and time.monotonic() < tail.expires_at:
            return known
        with store_errors():
            fields = cast(dict[bytes, bytes], await self._redis.hgetall(keys.meta_key(stream_id)))
        return _meta_from(stream_id, fields) if fields else None

    async def _load(self, stream_id: str) -> list[Entry]:
        with store_errors():
            rows = cast(Rows, await self._redis.xrange(keys.log_key(stream_id)))
        return [_entry(entry_id, fields) for entry_id, fields in rows]

    async def read(
        self, stream_id: str, after: int, wait: float, hold: float = 0.0
    ) -> list[Entry] | None:
        tail = self._tails.get(stream_id)
        if tail is not None and time.monotonic() >= tail.expires_at:
            del self._tails[stream_id]
            self._metas.pop(stream_id, None)
            tail = None
        if tail is None:
            entries = await self._load(stream_id)
            if not entries and await self.meta(stream_id) is None:
                return None
            if entries and entries[-1].terminal:
                # Finished: Redis has it until it expires.
                return entries[after + 1 :] or None
            tail = self._tails.setdefault(stream_id, Tail(entries))
            if not tail.finished:
                self._ensure_follower()
        writer = self._writers.get(stream_id)
        if writer is not None and writer.unconfirmed:
            # What was appended before this read is in it: wait for Redis to have it.
            batch = self._writes.last_batch()
            if batch is not None:
                await asyncio.wait([batch])
        tail.last_read = time.monotonic()
        found = await tail.read(after, wait, hold)
        return found if found or not tail.finished else None

    def wake_readers(self) -> None:
        for tail in self._tails.values():
            tail.wake()

    def _ensure_follower(self) -> None:
        if self._follower is None or self._follower.done():
            self._follower = asyncio.create_task(self._follow(), name="redis-follower")

    async def _follow(self) -> None:
        """Follow every open stream this process reads but does not write, in one XREAD."""
        while True:
            now = time.monotonic()
            for sid, tail in list(self._tails.items()):
                if (
                    tail.finished or sid not in self._writers
                ) and now - tail.last_read > TAIL_IDLE_S:
                    del self._tails[sid]
                    self._metas.pop(sid, None)
            remote: dict[Any, Any] = {
                keys.log_key(sid): keys.entry_id(len(tail.entries) - 1)
                for sid, tail in self._tails.items()
                if not tail.finished and sid not in self._writers
            }
            if not remote:
                if not self._tails:
                    return
                await asyncio.sleep(FOLLOW_BLOCK_MS / 1000)
                continue
            try:
                found = await self.blocking_client.xread(remote, block=FOLLOW_BLOCK_MS)
                rows = cast(list[tuple[bytes, Rows]], found or [])
            except (RedisError, OSError) as exc:
                log.warning("following remote streams failed: %s", exc)
                await asyncio.sleep(0.5)
                continue
            for log_key, entries in rows:
                followed = self._tails.get(log_key.decode().split(":")[2])
                if followed is not None:
                    for entry_id, fields in entries:
                        followed.push(_entry(entry_id, fields))
                    if followed.finished:
                        followed.expires_at = time.monotonic() + self._ttl

    # -- idempotency, health ---------------------------------------------------

    async def claim_idempotency_key(
        self, scope: str, key: str, stream_id: str, fingerprint: str
    ) -> tuple[str, str]:
        name = keys.idempotency_key(scope, key)
        value = f"{stream_id} {fingerprint}"
        with store_errors():
            ok = await self._redis.set(name, value, nx=True, ex=keys.RUNNING_TTL_S)
            if ok:
                return stream_id, fingerprint
            bound = cast(bytes | None, await self._redis.get(name))
        if bound is None:  # expired between the two calls: try once more
            return await self.claim_idempotency_key(scope, key, stream_id, fingerprint)
        bound_id, _, bound_fp = bound.decode().partition(" ")
        return bound_id, bound_fp

    async def ping(self) -> bool:
        try:
            return bool(await self._redis.ping())
        except (RedisError, OSError):
            return False

    async def aclose(self) -> None:
        await cancel_and_wait(self._follower)
        await self._writes.aclose()
        await self._redis.aclose()
        await self.blocking_client.aclose()
        await self._redis.connection_pool.disconnect()
        await self.blocking_client.connection_pool.disconnect()


def _flatten(fields: dict[str, str | bytes]) -> list[str | bytes]:
    return [item for pair in fields.items() for item in pair]
