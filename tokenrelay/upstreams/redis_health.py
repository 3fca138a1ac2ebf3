"""The deployments' health, shared through the stream store's Redis.

    tr:up:cool:{name}   "reason|failures", expiring when the cool-down ends
    tr:up:probe:{name}  held (SET NX PX) by the instance whose call is the probe
    tr:up:changed       pub/sub: "name|cooling ms|reason|failures" (0 ms: recovered)

A message may be missed (a reconnect); every `REFRESH_S` each instance reads the
keys again, so it is never out of step for longer. Without Redis, an instance goes
on with what it knows itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from tokenrelay.cancellation import cancel_and_wait
from tokenrelay.observability.log import log_event
from tokenrelay.upstreams.shared import OnChange

log = logging.getLogger("tokenrelay.upstreams")

CHANNEL = "tr:up:changed"
REFRESH_S = 2.0


class RedisHealth:
    def __init__(self, client: aioredis.Redis, subscriber: aioredis.Redis) -> None:
        self._client = client
        self._subscriber = subscriber
        self._names: Sequence[str] = ()
        self._on_change: OnChange | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def open(self, names: Sequence[str], on_change: OnChange) -> None:
        self._names, self._on_change = names, on_change
        with contextlib.suppress(OSError, RedisError):
            await self._refresh()
        self._tasks = [
            asyncio.create_task(self._listen(), name="upstream-health-changes"),
            asyncio.create_task(self._refresh_loop(), name="upstream-health-refresh"),
        ]

    async def cooled(self, name: str, seconds: float, reason: str, failures: int) -> None:
        ms = max(1, int(seconds * 1000))
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.set(f"tr:up:cool:{name}", f"{reason}|{failures}", px=ms)
                pipe.delete(f"tr:up:probe:{name}")
                pipe.publish(CHANNEL, f"{name}|{ms}|{reason}|{failures}")
                await pipe.execute()
        except (OSError, RedisError) as exc:  # this instance still backs off
            log_event(log, "upstream_share_failed", level=logging.WARNING, error=exc)

    async def recovered(self, name: str) -> None:
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.delete(f"tr:up:cool:{name}", f"tr:up:probe:{name}")
                pipe.publish(CHANNEL, f"{name}|0||0")
                await pipe.execute()
        except (OSError, RedisError) as exc:
            log_event(log, "upstream_share_failed", level=logging.WARNING, error=exc)

    async def claim_probe(self, name: str, seconds: float) -> bool:
        try:
            claimed = await self._client.set(
                f"tr:up:probe:{name}", "1", nx=True, px=max(1, int(seconds * 1000))
            )
        except (OSError, RedisError):
            return True  # without the store, each instance probes for itself
        return bool(claimed)

    async def release_probe(self, name: str) -> None:
        with contextlib.suppress(OSError, RedisError):  # else it lapses
            await self._client.delete(f"tr:up:probe:{name}")

    async def _refresh(self) -> None:
        if not self._names or self._on_change is None:
            return
        async with self._client.pipeline(transaction=False) as pipe:
            for name in self._names:
                pipe.get(f"tr:up:cool:{name}")
                pipe.pttl(f"tr:up:cool:{name}")
            replies = await pipe.execute()
        for i, name in enumerate(self._names):
            value, ttl = replies[2 * i], replies[2 * i + 1]
            if value is None or ttl is None or ttl <= 0:
                continue
            reason, _, failures = value.decode().partition("|")
            self._on_change(name, ttl / 1000, reason, int(failures or 0))

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_S)
            with contextlib.suppress(OSError, RedisError):
                await self._refresh()

    async def _listen(self) -> None:
        while True:
            try:
                async with self._subscriber.pubsub() as pubsub:
                    await pubsub.subscribe(CHANNEL)
                    async for message in pubsub.listen():
                        if message["type"] == "message" and self._on_change is not None:
                            self._heard(message["data"])
            except (OSError, RedisError) as exc:
                log_event(log, "upstream_subscription_lost", level=logging.WARNING, error=exc)
                await asyncio.sleep(0.5)

    def _heard(self, data: bytes) -> None:
        assert self._on_change is not None
        try:
            name, ms, reason, failures = data.decode().split("|")
            self._on_change(name, int(ms) / 1000, reason, int(failures))
        except ValueError:
            return  # not one of ours

    async def aclose(self) -> None:
        await cancel_and_wait(*self._tasks)
