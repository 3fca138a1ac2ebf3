"""Closing the Redis store always ends: its background tasks (the cluster's lease
renewal and cancel subscription, the upstream health subscription, the follower)
stop even when redis-py loses a cancellation that lands while a connection is being
set up, which it does in a few percent of closes that come soon after an open."""

from __future__ import annotations

import asyncio
import random

from tests.support import Redis
from tokenrelay.cancellation import cancel_and_wait
from tokenrelay.config import Settings
from tokenrelay.registry import Store, build_store
from tokenrelay.streams.log import Entry, StreamMeta

CYCLES = 150
# Not a performance bound: a close that has not ended by then never will.
HUNG_AFTER_S = 10


class Host:
    """The stream manager's side of the cluster, for an instance with no streams."""

    instance_id = "shutdown-test"
    draining = False

    def local_streams(self) -> list[str]:
        return []

    def continue_stream(self, meta: StreamMeta, entries: list[Entry]) -> None:
        raise AssertionError("nothing to take over")

    def cancel_local(self, stream_id: str) -> None:
        return None

    async def stop_for_handover(self) -> list[str]:
        return []


async def test_the_redis_store_closes_every_time_however_soon_after_opening(
    redis: Redis,
) -> None:
    rng = random.Random(15)
    closed, hung = 0, 0
    for _ in range(CYCLES):
        store = build_store(Settings(store=redis.url))
        await store.cluster.open(Host())
        await store.upstream_health.open(["primary"], lambda *_: None)
        await asyncio.sleep(rng.uniform(0, 0.05))  # the close lands anywhere in setup
        closing = asyncio.ensure_future(_close(store))
        done, _ = await asyncio.wait([closing], timeout=HUNG_AFTER_S)
        if done:
            closing.result()
            closed += 1
        else:
            hung += 1
    assert (closed, hung) == (CYCLES, 0)
    assert [t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith(_OURS)] == []


_OURS = ("cluster-", "upstream-health-", "redis-follower", "gate-")


async def _close(store: Store) -> None:
    await store.upstream_health.aclose()  # the upstream pool closes it, in the gateway
    await store.aclose()


async def test_a_task_that_loses_its_cancellation_is_cancelled_until_it_ends() -> None:
    seen: list[str] = []

    async def loses_the_first_cancel() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            seen.append("lost")  # what a library's over-broad `except` does
        await asyncio.sleep(3600)
        seen.append("unreachable")

    async def fails() -> None:
        raise ValueError("already failed")

    stubborn = asyncio.create_task(loses_the_first_cancel())
    failed = asyncio.create_task(fails())
    await asyncio.sleep(0)
    await cancel_and_wait(stubborn, failed, None, every=0.01)
    assert stubborn.cancelled() and seen == ["lost"]
    assert isinstance(failed.exception(), ValueError)
