"""The cluster over Redis: leases, takeover of a dead instance's streams, hand-over
on shutdown, cancel and reader presence across instances.

Every stream being produced is in `tr:running`, and its producer holds
`tr:s:{id}:lease`, renewed every LEASE_MS / 3. A stream in `tr:running` without a
lease has lost its producer: the first instance to set the lease again takes it over
and continues it from its log (the producer's continuation does the rest). Two
instances may try at once; SET NX lets exactly one win, and XADD's refusal of a
taken seq (`StreamTakenOver`) stops a producer that came back too late.

The cluster owns two tasks, both stopped by `aclose`: the maintenance loop
(renewal and takeover scans) and the cancel subscription (one per process).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, cast

from redis.exceptions import RedisError

from tokenrelay.cancellation import cancel_and_wait
from tokenrelay.errors import Overloaded
from tokenrelay.observability.log import log_event
from tokenrelay.streams import keys
from tokenrelay.streams.cluster import ClusterHost
from tokenrelay.streams.redis import RedisLog, store_errors

log = logging.getLogger("tokenrelay.cluster")


class RedisCluster:
    def __init__(
        self,
        store: RedisLog,
        *,
        lease_ms: int = keys.LEASE_MS,
        takeover_scan: float = keys.TAKEOVER_SCAN_S,
    ) -> None:
        self._store = store
        self._redis = store.client
        self._instance = ""
        self._lease_ms = lease_ms
        self._takeover_scan = takeover_scan
        self._host: ClusterHost | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def open(self, host: ClusterHost) -> None:
        self._host = host
        self._instance = host.instance_id
        self._tasks = [
            asyncio.create_task(self._maintain(host), name="cluster-maintenance"),
            asyncio.create_task(self._listen_for_cancels(host), name="cluster-cancels"),
        ]

    async def claim(self, stream_id: str) -> None:
        # In the write pipeline, ahead of the new stream's meta: the stream's first
        # append waits for them all in one round trip. (A new id has no lease to lose.)
        lease = keys.lease_key(stream_id)
        self._store.enqueue([("SET", lease, self._instance, "NX", "PX", self._lease_ms)])

    def producer_ended(self, stream_id: str) -> None:
        self._store.release(stream_id)

    async def reader_alive(self, stream_id: str) -> None:
        # Not waited for: a reader's next read is not held up by a hint (a lost one is
        # sent again in READER_TOUCH_S).
        self._store.enqueue(
            [("SET", keys.reader_key(stream_id), repr(time.time()), "EX", keys.RUNNING_TTL_S)]
        )

    async def last_read_elsewhere(self, stream_id: str) -> float | None:
        with store_errors():
            value = cast(bytes | None, await self._redis.get(keys.reader_key(stream_id)))
        return float(value) if value else None

    async def cancel_elsewhere(self, stream_id: str) -> bool:
        with store_errors():
            if not await self._redis.sismember(keys.RUNNING, stream_id):
                return False
            await self._redis.publish(keys.CANCEL_CHANNEL, stream_id)
        return True

    async def hand_over(self) -> int:
        if self._host is None:
            return 0
        handed = await self._host.stop_for_handover()
        for stream_id in handed:
            with contextlib.suppress(Overloaded), store_errors():
                await self._redis.delete(keys.lease_key(stream_id))
        return len(handed)

    async def aclose(self) -> None:
        await cancel_and_wait(*self._tasks)
        self._tasks = []

    # -- leases and takeover -----------------------------------------------------------

    async def _acquire(self, stream_id: str) -> bool:
        with store_errors():
            lease = keys.lease_key(stream_id)
            return bool(await self._redis.set(lease, self._instance, nx=True, px=self._lease_ms))

    async def _renew(self, stream_ids: list[str]) -> None:
        if not stream_ids:
            return
        commands: list[tuple[Any, ...]] = [
            ("SET", keys.lease_key(sid), self._instance, "PX", self._lease_ms) for sid in stream_ids
        ]
        commands += [("EXPIRE", keys.log_key(sid), keys.RUNNING_TTL_S) for sid in stream_ids]
        await self._store.submit(commands)

    async def _orphaned(self) -> list[str]:
        """Running streams whose producer's lease has expired (its process died)."""
        with store_errors():
            members = cast(set[bytes], await self._redis.smembers(keys.RUNNING))
            running = [sid.decode() for sid in members]
            if not running:
                return []
            leases = await self._redis.mget([keys.lease_key(sid) for sid in running])
        return [sid for sid, lease in zip(running, leases, strict=True) if lease is None]

    async def _maintain(self, host: ClusterHost) -> None:
        renew_every = self._lease_ms / 3000
        next_scan = 0.0
        while True:
            try:
                await self._renew(host.local_streams())
                if not host.draining and time.monotonic() >= next_scan:
                    next_scan = time.monotonic() + self._takeover_scan
                    for stream_id in await self._orphaned():
                        await self._take_over(host, stream_id)
            except Overloaded as exc:  # the store is unreachable: try again shortly
                log_event(log, "cluster_maintenance_failed", level=logging.WARNING, error=exc)
            await asyncio.sleep(renew_every)

    async def _take_over(self, host: ClusterHost, stream_id: str) -> None:
        if stream_id in host.local_streams() or not await self._acquire(stream_id):
            return  # ours already, or another instance was quicker
        meta = await self._store.meta(stream_id)
        if meta is None or meta.request is None:
            await self._forget(stream_id)
            with store_errors():
                await self._redis.delete(keys.lease_key(stream_id))
            return
        entries = await self._store.adopt(stream_id)
        if entries and entries[-1].terminal:
            await self._forget(stream_id)
            self._store.release(stream_id)
            return
        host.continue_stream(meta, entries)

    async def _forget(self, stream_id: str) -> None:
        """Stop tracking a running stream that can never be continued."""
        with store_errors():
            await self._redis.srem(keys.RUNNING, stream_id)

    # -- cancel ---------------------------------------------------------------------

    async def _listen_for_cancels(self, host: ClusterHost) -> None:
        """One subscription per process, whatever the number of streams."""
        while True:
            try:
                async with self._store.blocking_client.pubsub() as pubsub:
                    await pubsub.subscribe(keys.CANCEL_CHANNEL)
                    async for message in pubsub.listen():
                        if message["type"] == "message":
                            host.cancel_local(message["data"].decode())
            except (RedisError, OSError) as exc:
                log_event(log, "cancel_subscription_lost", level=logging.WARNING, error=exc)
                await asyncio.sleep(0.5)
