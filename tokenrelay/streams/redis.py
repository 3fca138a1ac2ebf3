"""The shared store: stream logs in Redis Streams, for any number of gateway processes.

Connections stay bounded whatever the number of clients:
  - writes from every producer in the process go out in one pipeline per batch (a
    batch is whatever was appended while the previous one was in flight);
  - readers in this process are served from a `Tail` cache; streams produced by
    another process are followed by one XREAD BLOCK loop over all of them at once;
  - everything else shares one small blocking pool.
An entry's Redis id is `0-{seq+1}`, so XADD refuses a second writer of a seq: that
is how a producer learns another instance has taken its stream over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any, cast

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from tokenrelay.errors import StoreUnavailable
from tokenrelay.streams import keys
from tokenrelay.streams.fanout import Tail
from tokenrelay.streams.log import (
    TERMINAL_KINDS,
    Entry,
    StreamMeta,
    StreamTakenOver,
    encode,
)

log = logging.getLogger("tokenrelay.redis")

Rows = list[tuple[bytes, dict[bytes, bytes]]]

# How long an XREAD waits before it re-reads which streams to follow.
FOLLOW_BLOCK_MS = 200
# A cached tail nobody has read for this long is dropped (Redis keeps the log).
TAIL_IDLE_S = 60.0


@contextlib.contextmanager
def store_errors() -> Iterator[None]:
    try:
        yield
    except (RedisError, OSError) as exc:
        raise StoreUnavailable(
            f"Stream store unavailable: {type(exc).__name__}", retry_after=1
        ) from exc


def _meta_fields(meta: StreamMeta) -> dict[str, str | bytes]:
    return {
        "owner": meta.owner,
        "request_id": meta.request_id,
        "model": meta.model,
        "fingerprint": meta.fingerprint,
        "created_at": repr(meta.created_at),
        "idempotency_key": meta.idempotency_key or "",
        "request": meta.request,
    }


def _meta_from(stream_id: str, h: dict[bytes, bytes]) -> StreamMeta:
    return StreamMeta(
        stream_id=stream_id,
        owner=h[b"owner"].decode(),
        request_id=h[b"request_id"].decode(),
        model=h[b"model"].decode(),
        fingerprint=h[b"fingerprint"].decode(),
        created_at=float(h[b"created_at"]),
        idempotency_key=h[b"idempotency_key"].decode() or None,
        request=h.get(b"request", b""),
    )


def _entry(entry_id: bytes, fields: dict[bytes, bytes]) -> Entry:
    return Entry(keys.seq_of(entry_id), fields[b"k"].decode(), fields[b"d"])


class _WriteBatcher:
    """Commands from every appender in this process, one pipeline per batch."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client
        self._pending: list[tuple[Any, ...]] = []
        self._done: asyncio.Future[list[Any]] | None = None
        self._task: asyncio.Task[None] | None = None

    async def submit(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        if self._done is None:
            self._done = asyncio.get_running_loop().create_future()
        start, done = len(self._pending), self._done
        self._pending.extend(commands)
        if self._task is None:
            self._task = asyncio.create_task(self._flush())
        # Shielded: one appender's cancellation must not fail the batch for the others.
        results = await asyncio.shield(done)
        return results[start : start + len(commands)]

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch, done = self._pending, self._done
                self._pending, self._done = [], None
                assert done is not None
                try:
                    pipe = self._client.pipeline(transaction=False)
                    for command in batch:
                        pipe.execute_command(*command)
                    done.set_result(await pipe.execute(raise_on_error=False))
                except BaseException as exc:
                    done.set_exception(exc)
                    if isinstance(exc, asyncio.CancelledError):
                        raise
        finally:
            self._task = None


class RedisLog:
    def __init__(self, url: str, stream_ttl: float, *, max_connections: int = 16) -> None:
        self._ttl = max(1, int(stream_ttl))
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=5, socket_connect_timeout=2
        )
        self._redis = aioredis.Redis(connection_pool=pool)
        # Two more: the XREAD BLOCK that follows remote streams, the cancel subscription.
        follow_pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=2, timeout=5, socket_connect_timeout=2
        )
        self._follow_redis = aioredis.Redis(connection_pool=follow_pool)
        self._writes = _WriteBatcher(self._redis)
        self._tails: dict[str, Tail] = {}
        self._next_seq: dict[str, int] = {}  # the streams this process writes
        self._follower: asyncio.Task[None] | None = None
        self._cancel_listener: asyncio.Task[None] | None = None
        self._cancel_callback: Callable[[str], None] | None = None

    @property
    def client(self) -> aioredis.Redis:
        """The bounded pool, for other shared state (tickets) of this process."""
        return self._redis

    # -- writing ---------------------------------------------------------------

    async def create(self, meta: StreamMeta) -> None:
        sid = meta.stream_id
        with store_errors():
            await self._writes.submit(
                [
                    ("HSET", keys.meta_key(sid), *_flatten(_meta_fields(meta))),
                    ("EXPIRE", keys.meta_key(sid), keys.RUNNING_TTL_S),
                    ("SADD", keys.RUNNING, sid),
                ]
            )
        self._next_seq[sid] = 0
        self._tails[sid] = Tail()

    async def adopt(self, stream_id: str) -> list[Entry]:
        """Take over writing a stream another process started; returns its entries."""
        entries = await self._load(stream_id)
        self._next_seq[stream_id] = len(entries)
        tail = self._tails.get(stream_id)
        if tail is None:
            self._tails[stream_id] = Tail(entries)
        else:  # readers here wait on this tail: bring it up to date, never replace it
            for entry in entries:
                tail.push(entry)
        return entries

    async def append(self, stream_id: str, kind: str, data: dict[str, Any]) -> int:
        seq = self._next_seq[stream_id]
        payload = encode(data)
        log_key = keys.log_key(stream_id)
        commands: list[tuple[Any, ...]] = [
            ("XADD", log_key, keys.entry_id(seq), "k", kind, "d", payload)
        ]
        if kind in TERMINAL_KINDS:
            commands += [
                ("EXPIRE", log_key, self._ttl),
                ("EXPIRE", keys.meta_key(stream_id), self._ttl),
                ("SREM", keys.RUNNING, stream_id),
                ("DEL", keys.lease_key(stream_id)),
            ]
        elif seq == 0:
            commands.append(("EXPIRE", log_key, keys.RUNNING_TTL_S))
        with store_errors():
            result = (await self._writes.submit(commands))[0]
        if isinstance(result, ResponseError):
            self._next_seq.pop(stream_id, None)
            raise StreamTakenOver(stream_id)
        if isinstance(result, Exception):
            raise StoreUnavailable(f"Stream store write failed: {result}") from result
        self._next_seq[stream_id] = seq + 1
        if kind in TERMINAL_KINDS:
            self._next_seq.pop(stream_id, None)
        tail = self._tails.get(stream_id)
        if tail is not None:
            tail.push(Entry(seq, kind, payload))
            if tail.finished:
                tail.expires_at = time.monotonic() + self._ttl
        return seq

    def release(self, stream_id: str) -> None:
        """This process stops writing the stream (handed over, taken over, or it lost
        the store): readers here now follow it in Redis, where its next writer writes."""
        self._next_seq.pop(stream_id, None)
        tail = self._tails.get(stream_id)
        if tail is not None and not tail.finished:
            self._ensure_follower()

    # -- reading ---------------------------------------------------------------

    async def meta(self, stream_id: str) -> StreamMeta | None:
        with store_errors():
            fields = cast(dict[bytes, bytes], await self._redis.hgetall(keys.meta_key(stream_id)))
        return _meta_from(stream_id, fields) if fields else None

    async def _load(self, stream_id: str) -> list[Entry]:
        with store_errors():
            rows = cast(Rows, await self._redis.xrange(keys.log_key(stream_id)))
        return [_entry(entry_id, fields) for entry_id, fields in rows]

    async def read(self, stream_id: str, after: int, wait: float) -> list[Entry] | None:
        tail = self._tails.get(stream_id)
        if tail is not None and time.monotonic() >= tail.expires_at:
            del self._tails[stream_id]
            tail = None
        if tail is None:
            entries = await self._load(stream_id)
            if not entries and await self.meta(stream_id) is None:
                return None
            if entries and entries[-1].terminal:
                return entries[after + 1 :]  # finished: Redis has it until it expires
            tail = self._tails.setdefault(stream_id, Tail(entries))
            if not tail.finished:
                self._ensure_follower()
        tail.last_read = time.monotonic()
        return await tail.read(after, wait)

    def _ensure_follower(self) -> None:
        if self._follower is None or self._follower.done():
            self._follower = asyncio.create_task(self._follow(), name="redis-follower")

    async def _follow(self) -> None:
        """Follow every open stream this process reads but does not write, in one XREAD."""
        while True:
            now = time.monotonic()
            for sid, tail in list(self._tails.items()):
                if (
                    tail.finished or sid not in self._next_seq
                ) and now - tail.last_read > TAIL_IDLE_S:
                    del self._tails[sid]
            remote: dict[Any, Any] = {
                keys.log_key(sid): keys.entry_id(len(tail.entries) - 1)
                for sid, tail in self._tails.items()
                if not tail.finished and sid not in self._next_seq
            }
            if not remote:
                if not self._tails:
                    return
                await asyncio.sleep(FOLLOW_BLOCK_MS / 1000)
                continue
            try:
                found = await self._follow_redis.xread(remote, block=FOLLOW_BLOCK_MS)
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

    # -- idempotency, leases, health ---------------------------------------------

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

    async def acquire_lease(self, stream_id: str, holder: str, ms: int) -> bool:
        with store_errors():
            return bool(await self._redis.set(keys.lease_key(stream_id), holder, nx=True, px=ms))

    async def renew_leases(self, stream_ids: list[str], holder: str, ms: int) -> None:
        if not stream_ids:
            return
        commands: list[tuple[Any, ...]] = [
            ("SET", keys.lease_key(sid), holder, "PX", ms) for sid in stream_ids
        ]
        commands += [("EXPIRE", keys.log_key(sid), keys.RUNNING_TTL_S) for sid in stream_ids]
        with store_errors():
            await self._writes.submit(commands)

    async def release_lease(self, stream_id: str) -> None:
        with store_errors():
            await self._redis.delete(keys.lease_key(stream_id))

    async def orphaned_streams(self) -> list[str]:
        """Running streams whose producer's lease has expired (its process died)."""
        with store_errors():
            members = cast(set[bytes], await self._redis.smembers(keys.RUNNING))
            running = [sid.decode() for sid in members]
            if not running:
                return []
            leases = await self._redis.mget([keys.lease_key(sid) for sid in running])
        return [sid for sid, lease in zip(running, leases, strict=True) if lease is None]

    async def forget(self, stream_id: str) -> None:
        """Drop a running stream whose metadata is gone (it can never be resumed)."""
        with store_errors():
            await self._redis.srem(keys.RUNNING, stream_id)

    async def touch_reader(self, stream_id: str) -> None:
        with store_errors():
            await self._writes.submit(
                [("SET", keys.reader_key(stream_id), repr(time.time()), "EX", keys.RUNNING_TTL_S)]
            )

    async def publish_cancel(self, stream_id: str) -> bool:
        with store_errors():
            running = await self._redis.sismember(keys.RUNNING, stream_id)
            if not running:
                return False
            await self._redis.publish(keys.CANCEL_CHANNEL, stream_id)
        return True

    def on_cancel(self, callback: Callable[[str], None]) -> None:
        self._cancel_callback = callback
        if self._cancel_listener is None:
            self._cancel_listener = asyncio.create_task(self._listen_for_cancels())

    async def _listen_for_cancels(self) -> None:
        """One subscription per process, whatever the number of streams."""
        while True:
            try:
                async with self._follow_redis.pubsub() as pubsub:
                    await pubsub.subscribe(keys.CANCEL_CHANNEL)
                    async for message in pubsub.listen():
                        if message["type"] == "message" and self._cancel_callback:
                            self._cancel_callback(message["data"].decode())
            except (RedisError, OSError) as exc:
                log.warning("cancel subscription lost: %s", exc)
                await asyncio.sleep(0.5)

    async def last_reader_seen(self, stream_id: str) -> float | None:
        with store_errors():
            value = cast(bytes | None, await self._redis.get(keys.reader_key(stream_id)))
        return float(value) if value else None

    async def ping(self) -> bool:
        try:
            return bool(await self._redis.ping())
        except (RedisError, OSError):
            return False

    async def aclose(self) -> None:
        for task in (self._follower, self._cancel_listener):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self._redis.aclose()
        await self._follow_redis.aclose()
        await self._redis.connection_pool.disconnect()
        await self._follow_redis.connection_pool.disconnect()


def _flatten(fields: dict[str, str | bytes]) -> list[str | bytes]:
    return [item for pair in fields.items() for item in pair]
