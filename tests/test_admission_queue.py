"""The admission gate: caps on concurrent upstream calls, and a bounded queue served
round-robin across principals, whose positions the client sees as `queued` events."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from tests.support import assert_error, assert_whole_answer, run_stack, start
from tests.support.auth import create_key
from tests.support.streams import Read
from tokenrelay.admission.gate import Caps, Gate, QueueFull, QueueTimeout, Ticket


def positions(tickets: list[Ticket]) -> list[int]:
    return [t.position if not t.admitted else 0 for t in tickets]


def test_the_queue_serves_principals_in_turn_and_each_in_order() -> None:
    gate = Gate(Caps(max_concurrent=1, queue_size=10, per_principal_queue=5))
    running = gate.enter("alice")
    assert running is not None and running.admitted
    alice = [gate.enter("alice") for _ in range(3)]
    bob = gate.enter("bob")
    assert all(t is not None for t in [*alice, bob])
    tickets: list[Ticket] = [t for t in (*alice, bob) if t is not None]
    # Alice's three, bob's one: bob is second, not fourth.
    assert positions(tickets) == [1, 3, 4, 2]
    running.release()
    assert tickets[0].admitted and positions(tickets) == [0, 2, 3, 1]
    tickets[0].release()
    assert tickets[3].admitted and positions(tickets) == [0, 1, 2, 0]
    assert (gate.running, gate.queued) == (1, 2)


def test_no_principal_fills_the_queue_and_a_full_queue_refuses() -> None:
    gate = Gate(Caps(max_concurrent=1, queue_size=4))  # each principal: half, 2 places
    assert gate.enter("alice") is not None
    gate.enter("alice"), gate.enter("alice")
    with pytest.raises(QueueFull) as info:
        gate.enter("alice")
    assert info.value.message == "At capacity, and this caller already has 2 requests waiting"
    assert info.value.status == 503 and info.value.retry_after == 1
    gate.enter("bob"), gate.enter("carol")
    with pytest.raises(QueueFull) as info:
        gate.enter("dave")
    assert info.value.message == "At capacity and the queue is full; retry shortly"


def test_a_per_principal_cap_queues_that_principal_only() -> None:
    gate = Gate(Caps(per_principal=1, queue_size=4))
    first, second = gate.enter("alice"), gate.enter("alice")
    other = gate.enter("bob")
    assert first is not None and second is not None and other is not None
    assert (first.admitted, second.admitted, other.admitted) == (True, False, True)
    first.release()
    assert second.admitted


def test_without_caps_nothing_is_counted() -> None:
    assert Gate(Caps(queue_size=10)).enter("alice") is None


async def test_a_waiting_ticket_reports_its_positions_then_runs() -> None:
    gate = Gate(Caps(max_concurrent=1, queue_size=5))
    running = gate.enter("alice")
    first, second = gate.enter("bob"), gate.enter("carol")
    assert running is not None and first is not None and second is not None
    seen: list[int] = []

    async def report(position: int) -> None:
        seen.append(position)

    waiting = asyncio.create_task(second.wait(report))
    await asyncio.sleep(0.01)
    running.release()  # bob runs; carol moves up
    await asyncio.sleep(0.01)
    first.release()  # carol runs
    await asyncio.wait_for(waiting, 5)
    assert seen == [2, 1] and second.admitted


async def test_waiting_too_long_gives_up_and_frees_the_place() -> None:
    gate = Gate(Caps(max_concurrent=1, queue_size=1, queue_timeout=0.05))
    assert gate.enter("alice") is not None
    ticket = gate.enter("bob")
    assert ticket is not None

    async def report(position: int) -> None:
        return None

    with pytest.raises(QueueTimeout):
        await ticket.wait(report)
    assert gate.queued == 0
    assert gate.enter("carol") is not None  # the place is free again


def queued_positions(read: Read) -> list[int]:
    return [e.data["position"] for e in read.events if e.data.get("queued")]


async def test_queued_clients_see_their_positions_then_the_whole_answer(
    tmp_path: Path,
) -> None:
    keys_file = tmp_path / "keys.txt"
    keys = {u: create_key(keys_file, u) for u in ("alice", "bob", "carol")}
    auth = ["--auth", "api_key", "--api-keys-file", str(keys_file)]
    env = {"TOKENRELAY_MAX_CONCURRENT": "1", "TOKENRELAY_QUEUE_SIZE": "2"}
    prompts = {u: f"Queue for {u} [[sim:tokens=30]] [[sim:tps=20]]" for u in keys}
    with run_stack(tmp_path, *auth, **env) as stack:
        async with httpx.AsyncClient(base_url=stack.gateway, timeout=60) as client:

            async def ask(user: str) -> Read:
                body = {"prompt": prompts[user]}
                return await start(client, body, headers={"x-api-key": keys[user]})

            first = asyncio.create_task(ask("alice"))
            await asyncio.sleep(0.2)
            second = asyncio.create_task(ask("bob"))
            await asyncio.sleep(0.2)
            third = asyncio.create_task(ask("carol"))
            await asyncio.sleep(0.2)
            # Both places taken: the next caller is refused before any stream exists.
            refused = await client.post(
                "/api/stream-response", json={"prompt": "One more"},
                headers={"x-api-key": keys["alice"]},
            )  # fmt: skip
            message = assert_error(refused, 503, "overloaded_error")
            assert message == "At capacity and the queue is full; retry shortly"
            assert refused.headers["retry-after"] == "1"
            reads = await asyncio.gather(first, second, third)
        assert [queued_positions(r) for r in reads] == [[], [1], [2, 1]]
        for user, read in zip(keys, reads, strict=True):
            expected = "".join(
                e.data["token"]
                for e in (await _plain(stack.gateway, prompts[user], keys[user])).events
                if "token" in e.data
            )
            assert_whole_answer(read.events, expected)
        # One upstream call at a time, and none for the refused request.
        assert stack.sim_stats()["requests"] == 3 + 3  # + the three plain reads


async def _plain(gateway: str, prompt: str, key: str) -> Read:
    """The same answer unpaced (directives do not change the text)."""
    body = {"prompt": prompt.replace("[[sim:tps=20]]", "")}
    async with httpx.AsyncClient(base_url=gateway, timeout=60) as client:
        return await start(client, body, headers={"x-api-key": key})


async def test_a_stream_that_waits_too_long_ends_with_a_retryable_overloaded_error() -> None:
    from tokenrelay.config import Settings
    from tokenrelay.events import Failed, Queued, Start
    from tokenrelay.pricing import ModelTable
    from tokenrelay.providers.base import GenerationRequest
    from tokenrelay.providers.simulator import SimulatorProvider
    from tokenrelay.registry import build_store
    from tokenrelay.streams.manager import StreamManager, StreamTimings
    from tokenrelay.streams.producer import RetryPolicy

    store = build_store(Settings(store="memory"))
    manager = StreamManager(
        log=store.log, cluster=store.cluster, provider=SimulatorProvider(ttft_ms=0, tps=10),
        models=ModelTable(), retry=RetryPolicy(), timings=StreamTimings(),
        gate=Gate(Caps(max_concurrent=1, queue_size=1, queue_timeout=0.2)),
    )  # fmt: skip
    await manager.open()

    def request(prompt: str) -> GenerationRequest:
        messages = [{"role": "user", "content": prompt}]
        return GenerationRequest(model="claude-haiku-4-5", messages=messages, max_tokens=100)

    await manager.start(request("Long [[sim:tokens=50]]"), owner="a", request_id="r1",
                        body_fingerprint="1")  # fmt: skip
    waiting = await manager.start(request("Waits"), owner="b", request_id="r2",
                                  body_fingerprint="2")  # fmt: skip
    events = [e.event async for batch in manager.follow(waiting, -1) for e in batch]
    assert type(events[0]) is Start and events[1] == Queued(1) and len(events) == 3
    last = events[2]
    assert isinstance(last, Failed)
    assert (last.message, last.code, last.retryable, last.usage["output_tokens"]) == (
        "Waited 0.2 s in the queue without capacity", "overloaded", True, 0,
    )  # fmt: skip
    assert manager.gate.queued == 0
    await manager.aclose()
    await store.aclose()
