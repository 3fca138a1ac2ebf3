"""The streaming core over real sockets: gateway → anthropic SDK → `tokenrelay simulate`."""

from __future__ import annotations

import asyncio

import httpx

from tests.support import (
    Stack,
    assert_whole_answer,
    direct_text,
    read_stream,
    resume,
    start,
    unique,
)


async def test_stream_delivers_exactly_the_simulators_text(stack: Stack, client: httpx.AsyncClient):
    prompt = unique("Tell me about rivers [[sim:tokens=30]]")
    read = await start(client, {"prompt": prompt})
    events = read.events
    assert_whole_answer(events, await direct_text(stack.simulator, prompt))
    assert events[0].data == {
        "stream_id": events[0].stream_id,
        "request_id": read.headers["x-request-id"],
        "model": "claude-haiku-4-5",
    }
    assert sum("token" in e.data for e in events) == 30
    done = events[-1].data
    assert done["stop_reason"] == "end_turn" and done["cached"] is False
    assert done["usage"]["output_tokens"] == 30
    expected_cost = (done["usage"]["input_tokens"] * 1 + 30 * 5) / 1e6  # haiku-4-5 prices
    assert done["cost_usd"] == round(expected_cost, 8)


async def test_headers_and_first_frame_carry_the_contract(client: httpx.AsyncClient):
    read = await start(
        client, {"prompt": unique("Hi [[sim:tokens=3]]")}, headers={"X-Request-ID": "req-abc-1"}
    )
    assert read.headers["content-type"].startswith("text/event-stream")
    assert read.headers["cache-control"] == "no-cache"
    assert read.headers["x-accel-buffering"] == "no"
    assert read.headers["x-request-id"] == "req-abc-1"
    assert read.headers["x-stream-id"] == read.events[0].stream_id
    assert read.events[0].retry == 3000
    assert read.events[0].id == f"{read.events[0].stream_id}:0"
    assert len(read.events[0].stream_id) >= 32  # ≥ 192 random bits, URL-safe


async def test_heartbeats_flow_while_waiting_for_the_first_token(client: httpx.AsyncClient):
    body = {"prompt": unique("Slow start [[sim:ttft_ms=1600]] [[sim:tokens=2]]")}
    lines: list[str] = []
    async with client.stream("POST", "/api/stream-response", json=body) as response:
        async for line in response.aiter_lines():
            lines.append(line)
            if '"done"' in line:
                break
    first_token = next(i for i, line in enumerate(lines) if '"token"' in line)
    assert lines[0] == "retry: 3000"
    # heartbeat_interval is 0.5 s in the test stack: a 1.6 s wait shows at least two.
    assert lines[:first_token].count(": ping") >= 2


async def test_resume_after_disconnect_replays_only_missing_events(
    stack: Stack, client: httpx.AsyncClient
):
    prompt = unique("A long tale [[sim:tokens=40]] [[sim:tps=100]]")
    head = await start(client, {"prompt": prompt}, stop_after=7)
    tail = await resume(client, head.last_id)
    assert_whole_answer(head.events + tail.events, await direct_text(stack.simulator, prompt))


async def test_resume_with_after_query_parameter(client: httpx.AsyncClient):
    whole = await start(client, {"prompt": unique("Numbers [[sim:tokens=12]]")})
    stream_id = whole.events[0].stream_id
    tail = await read_stream(client, "GET", f"/api/streams/{stream_id}?after=5")
    assert [e.seq for e in tail.events] == [e.seq for e in whole.events[6:]]
    assert [e.data for e in tail.events] == [e.data for e in whole.events[6:]]
    everything = await read_stream(client, "GET", f"/api/streams/{stream_id}")
    assert [e.data for e in everything.events] == [e.data for e in whole.events]


async def test_eventsource_get_starts_and_resumes_by_last_event_id(
    stack: Stack, client: httpx.AsyncClient
):
    prompt = unique("Over GET [[sim:tokens=20]] [[sim:tps=100]]")
    head = await read_stream(
        client, "GET", "/api/stream-response", params={"prompt": prompt}, stop_after=5
    )
    # What an EventSource sends when it reconnects: the same URL plus Last-Event-ID.
    tail = await read_stream(
        client,
        "GET",
        "/api/stream-response",
        params={"prompt": prompt},
        headers={"Last-Event-ID": head.last_id},
    )
    assert {e.stream_id for e in head.events + tail.events} == {head.events[0].stream_id}
    assert_whole_answer(head.events + tail.events, await direct_text(stack.simulator, prompt))


async def test_several_viewers_of_one_stream_see_the_same_events(client: httpx.AsyncClient):
    prompt = unique("Shared [[sim:tokens=25]] [[sim:tps=80]]")
    head = await start(client, {"prompt": prompt}, stop_after=1)
    first_id = head.events[0].id
    a, b = await asyncio.gather(resume(client, first_id), resume(client, first_id))
    assert [e.data for e in a.events] == [e.data for e in b.events]
    assert a.events[-1].data["done"] is True


async def test_resuming_after_the_final_event_ends_at_once_with_nothing(
    client: httpx.AsyncClient,
) -> None:
    whole = await start(client, {"prompt": "Finish [[sim:tokens=3]]"})
    async with asyncio.timeout(10):  # not a stream of pings
        after = await resume(client, whole.last_id)
    assert after.events == [] and after.headers["x-stream-id"] == whole.events[0].stream_id
