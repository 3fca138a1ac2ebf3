"""Cancel is not disconnect; abandoned streams stop; finished logs expire."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import (
    Stack,
    eventually_async,
    log_events,
    read_stream,
    resume,
    run_stack,
    start,
    text_of,
    unique,
)


async def test_client_disconnect_does_not_stop_generation(own_stack: Stack) -> None:
    prompt = unique("Keep going [[sim:tokens=30]] [[sim:tps=60]]")
    async with httpx.AsyncClient(base_url=own_stack.gateway, timeout=30) as client:
        head = await start(client, {"prompt": prompt}, stop_after=4)
        await asyncio.sleep(0.8)  # the client is away while generation goes on
        tail = await resume(client, head.last_id)
    events = head.events + tail.events
    assert events[-1].data["done"] is True
    assert sum(e.token is not None for e in events) == 30
    stats = own_stack.sim_stats()
    assert stats["disconnected"] == 0 and stats["completed"] == 1


async def test_delete_cancels_the_upstream_call_at_once(own_stack: Stack) -> None:
    prompt = unique("Stop me [[sim:tokens=200]] [[sim:tps=20]]")
    async with httpx.AsyncClient(base_url=own_stack.gateway, timeout=30) as client:
        head = await start(client, {"prompt": prompt}, stop_after=3)
        stream_id = head.events[0].stream_id
        response = await client.delete(f"/api/streams/{stream_id}")
        assert response.status_code == 200
        assert response.json() == {"stream_id": stream_id, "cancelled": True}
        await eventually_async(
            lambda: own_stack.sim_stats()["disconnected"] == 1,
            what="the simulator to see the upstream call cancelled",
            within=5,
        )
        tail = await resume(client, head.last_id)
        final = tail.events[-1].data
        assert final["code"] == "cancelled" and final["retryable"] is False
        assert final["usage"]["output_tokens"] == len(
            [e for e in head.events + tail.events if e.token is not None]
        )
        again = await client.delete(f"/api/streams/{stream_id}")
        assert again.json() == {"stream_id": stream_id, "cancelled": False}


@pytest.fixture
def short_lived_stack(tmp_path: Path) -> Iterator[Stack]:
    with run_stack(tmp_path, TOKENRELAY_ABANDON_AFTER="0.6", TOKENRELAY_STREAM_TTL="1") as s:
        yield s


async def test_abandoned_stream_is_cancelled_and_its_log_expires(
    short_lived_stack: Stack,
) -> None:
    stack = short_lived_stack
    prompt = unique("Nobody listens [[sim:tokens=200]] [[sim:tps=20]]")
    async with httpx.AsyncClient(base_url=stack.gateway, timeout=30) as client:
        head = await start(client, {"prompt": prompt}, stop_after=2)
        await eventually_async(
            lambda: stack.sim_stats()["disconnected"] == 1,
            what="the simulator to see the abandoned upstream call cancelled",
            within=5,
        )
        tail = await resume(client, head.last_id)
        assert tail.events[-1].data["code"] == "abandoned"
        abandoned = log_events(stack.log_text(), "stream_abandoned")
        assert abandoned == [{"event": "stream_abandoned", "stream_id": head.events[0].stream_id}]
        await asyncio.sleep(1.3)  # stream_ttl is 1 s
        gone = await client.get(f"/api/streams/{head.events[0].stream_id}")
        assert gone.status_code == 404
        assert gone.json()["error"]["type"] == "not_found_error"


async def test_finished_stream_can_be_replayed_until_ttl(short_lived_stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=short_lived_stack.gateway, timeout=30) as client:
        whole = await start(client, {"prompt": unique("Short [[sim:tokens=5]]")})
        replay = await read_stream(client, "GET", f"/api/streams/{whole.events[0].stream_id}")
        assert text_of(replay.events) == whole.text
        assert [e.data for e in replay.events] == [e.data for e in whole.events]
