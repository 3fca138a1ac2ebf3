"""The admission gate: caps on concurrent upstream calls, and a bounded queue served
round-robin across principals, whose positions the client sees as `queued` events.

The gate's rules run over both gates, the one of a single process and the one every
instance shares over Redis; then what only the shared one does: one cap and one queue
across instances, and the places of a dead instance given back."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis

from tests.support import (
    FAST_GATEWAY_ENV,
    Redis,
    assert_error,
    assert_whole_answer,
    direct_text,
    eventually_async,
    free_port,
    redis_server,
    run_stack,
    spawn,
    start,
    unique,
)
from tests.support.auth import create_key
from tests.support.streams import Read
from tokenrelay.admission.gate import Caps, Gate, MemoryGate, QueueFull, QueueTimeout, Ticket
from tokenrelay.admission.redis_gate import RedisGate

MakeGate = Callable[[Caps], Awaitable[Gate]]


@contextlib.asynccontextmanager
async def redis_gates(redis: Redis, **timing: float) -> AsyncIterator[MakeGate]:
    """Gates on one Redis, each with clients of its own, as instances have."""
    made: list[tuple[RedisGate, aioredis.Redis, aioredis.Redis]] = []
    cleaner = aioredis.Redis.from_url(redis.url)
    await cleaner.flushall()

    async def make(caps: Caps) -> Gate:
        client, subscriber = aioredis.Redis.from_url(redis.url), aioredis.Redis.from_url(redis.url)
        gate = RedisGate(client, subscriber, caps, **timing)  # type: ignore[arg-type]
        made.append((gate, client, subscriber))
        return gate

    try:
        yield make
    finally:
        for gate, client, subscriber in made:
            await gate.aclose()
            await client.aclose()
            await subscriber.aclose()
        await cleaner.aclose()


@pytest.fixture(params=["memory", "redis"])
async def make_gate(request: pytest.FixtureRequest) -> AsyncIterator[MakeGate]:
    if request.param == "memory":

        async def make(caps: Caps) -> Gate:
            return MemoryGate(caps)

        yield make
    else:
        async with redis_gates(request.getfixturevalue("redis")) as make:
            yield make


def positions(tickets: list[Ticket]) -> list[int]:
    return [t.position if not t.admitted else 0 for t in tickets]


async def become(tickets: list[Ticket], expected: list[int]) -> None:
    """Positions move at once in one process, a pub/sub message later over Redis."""
    await eventually_async(
        lambda: positions(tickets) == expected, what=f"positions {expected}", within=5
    )


async def enter(gate: Gate, principal: str) -> Ticket:
    ticket = await gate.enter(principal)
    assert ticket is not None
    return ticket


async def test_the_queue_serves_principals_in_turn_and_each_in_order(
    make_gate: MakeGate,
) -> None:
    gate = await make_gate(Caps(max_concurrent=1, queue_size=10, per_principal_queue=5))
    running = await enter(gate, "alice")
    assert running.admitted
    tickets = [await enter(gate, "alice") for _ in range(3)] + [await enter(gate, "bob")]
    # Alice's three, bob's one: bob is second, not fourth.
    await become(tickets, [1, 3, 4, 2])
    running.release()
    await become(tickets, [0, 2, 3, 1])
    tickets[0].release()
    await become(tickets, [0, 1, 2, 0])
    assert gate.queued == 2


async def test_no_principal_fills_the_queue_and_a_full_queue_refuses(
    make_gate: MakeGate,
) -> None:
    gate = await make_gate(Caps(max_concurrent=1, queue_size=4))  # each principal: 2 places
    await enter(gate, "alice")
    await enter(gate, "alice"), await enter(gate, "alice")
    with pytest.raises(QueueFull) as info:
        await gate.enter("alice")
    assert info.value.message == "At capacity, and this caller already has 2 requests waiting"
    assert info.value.status == 503 and info.value.retry_after == 1
    await enter(gate, "bob"), await enter(gate, "carol")
    with pytest.raises(QueueFull) as info:
        await gate.enter("dave")
    assert info.value.message == "At capacity and the queue is full; retry shortly"
    assert gate.queued == 4


async def test_a_per_principal_cap_queues_that_principal_only(make_gate: MakeGate) -> None:
    gate = await make_gate(Caps(per_principal=1, queue_size=4))
    first, second = await enter(gate, "alice"), await enter(gate, "alice")
    other = await enter(gate, "bob")
    assert (first.admitted, second.admitted, other.admitted) == (True, False, True)
    first.release()
    await become([second], [0])


async def test_without_caps_nothing_is_counted(make_gate: MakeGate) -> None:
    gate = await make_gate(Caps(queue_size=10))
    assert await gate.enter("alice") is None


async def test_a_waiting_ticket_reports_its_positions_then_runs(make_gate: MakeGate) -> None:
    gate = await make_gate(Caps(max_concurrent=1, queue_size=5))
    running = await enter(gate, "alice")
    first, second = await enter(gate, "bob"), await enter(gate, "carol")
    seen: list[int] = []

    async def report(position: int) -> None:
        seen.append(position)

    waiting = asyncio.create_task(second.wait(report))
    await eventually_async(lambda: seen == [2], what="carol told her place")
    running.release()  # bob runs; carol moves up
    await eventually_async(lambda: seen == [2, 1], what="carol moved up")
    first.release()  # carol runs
    await asyncio.wait_for(waiting, 5)
    assert seen == [2, 1] and second.admitted


async def test_waiting_too_long_gives_up_and_frees_the_place(make_gate: MakeGate) -> None:
    gate = await make_gate(Caps(max_concurrent=1, queue_size=1, queue_timeout=0.05))
    await enter(gate, "alice")
    ticket = await enter(gate, "bob")

    async def report(position: int) -> None:
        return None

    with pytest.raises(QueueTimeout):
        await ticket.wait(report)
    assert gate.queued == 0

    async def carol_may_wait() -> bool:
        with contextlib.suppress(QueueFull):
            return await gate.enter("carol") is not None
        return False

    # The place is free again (over Redis, once the release has reached it).
    for _ in range(100):
        if await carol_may_wait():
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("bob's place was never given back")


async def test_one_cap_and_one_queue_across_instances(redis: Redis) -> None:
    async with redis_gates(redis) as make:
        caps = Caps(max_concurrent=2, queue_size=10, per_principal_queue=5)
        a, b = await make(caps), await make(caps)
        running = [await enter(a, "alice"), await enter(b, "bob")]
        assert all(t.admitted for t in running)
        # The cluster is at its cap of two, whichever instance a request comes to.
        waiting = [
            await enter(a, "alice"), await enter(b, "alice"),
            await enter(a, "carol"), await enter(b, "bob"),
        ]  # fmt: skip
        # In turn: alice, carol, bob, then alice's second (one queue, not one per instance).
        await become(waiting, [1, 4, 2, 3])
        assert (a.queued, b.queued) == (2, 2)
        running[0].release()  # on a: alice's first waiter, also on a, runs
        await become(waiting, [0, 3, 1, 2])
        running[1].release()  # on b: carol, waiting on a, runs
        await become(waiting, [0, 2, 0, 1])
        waiting[0].release()
        await become(waiting, [0, 1, 0, 0])  # bob, waiting on b
        assert (a.queued, b.queued) == (0, 1)


async def test_a_dead_instance_gives_its_places_back(redis: Redis) -> None:
    async with redis_gates(redis, lease_ms=400, renew_every=0.1) as make:
        caps = Caps(max_concurrent=1, queue_size=5)
        dead, alive = await make(caps), await make(caps)
        assert (await enter(dead, "alice")).admitted
        await enter(dead, "alice")  # waiting, on the instance about to die
        mine = await enter(alive, "bob")
        assert positions([mine]) == [2]
        # The instance stops renewing, as a killed one does, and gives nothing back.
        assert isinstance(dead, RedisGate) and dead._watcher is not None
        dead._watcher.cancel()
        dead._tickets.clear()
        seen: list[int] = []

        async def report(position: int) -> None:
            seen.append(position)

        await asyncio.wait_for(mine.wait(report), 5)
        # Both of the dead instance's places lapse (the waiting one may first be admitted
        # for a moment, if its lease ran out a renewal later).
        assert mine.admitted and seen[0] == 2


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
    from tokenrelay.upstreams.pool import Pool

    store = build_store(Settings(store="memory"))
    manager = StreamManager(
        log=store.log, cluster=store.cluster,
        upstreams=Pool.single(SimulatorProvider(ttft_ms=0, tps=10)), models=ModelTable(),
        retry=RetryPolicy(), timings=StreamTimings(),
        gate=MemoryGate(Caps(max_concurrent=1, queue_size=1, queue_timeout=0.2)),
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


@contextlib.contextmanager
def gateway_on(tmp: Path, redis: Redis, simulator: str, name: str) -> Iterator[str]:
    port = free_port()
    args = ["serve", "--port", str(port), "--store", redis.url, "--provider", "anthropic",
            "--anthropic-base-url", simulator, "--auth", "api_key",
            "--api-keys-file", str(tmp / "keys.txt")]  # fmt: skip
    env = {**FAST_GATEWAY_ENV, "TOKENRELAY_MAX_CONCURRENT": "1", "TOKENRELAY_QUEUE_SIZE": "2",
           "TOKENRELAY_DATABASE_URL": "off"}  # fmt: skip
    with spawn(args, f"http://127.0.0.1:{port}/readyz", env=env, log_path=tmp / name):
        yield f"http://127.0.0.1:{port}"


async def test_two_instances_share_one_cap_and_one_queue(tmp_path: Path) -> None:
    prompts = {u: unique(f"Shared queue for {u} [[sim:tokens=30]] [[sim:tps=20]]")
               for u in ("alice", "bob", "carol")}  # fmt: skip
    keys = {u: create_key(tmp_path / "keys.txt", u) for u in (*prompts, "dave")}

    def ask(client: httpx.AsyncClient, user: str) -> Awaitable[Read]:
        return start(client, {"prompt": prompts[user]}, headers={"x-api-key": keys[user]})

    sim_port = free_port()
    simulator = f"http://127.0.0.1:{sim_port}"
    sim_args = ["simulate", "--port", str(sim_port), "--ttft-ms", "0", "--tps", "0"]
    with (
        spawn(sim_args, f"{simulator}/healthz", log_path=tmp_path / "sim.log"),
        redis_server(tmp_path / "redis") as redis,
        gateway_on(tmp_path, redis, simulator, "a.log") as a,
        gateway_on(tmp_path, redis, simulator, "b.log") as b,
    ):
        async with (
            httpx.AsyncClient(base_url=a, timeout=60) as on_a,
            httpx.AsyncClient(base_url=b, timeout=60) as on_b,
        ):
            first = asyncio.ensure_future(ask(on_a, "alice"))
            await asyncio.sleep(0.3)
            second = asyncio.ensure_future(ask(on_b, "bob"))
            await asyncio.sleep(0.3)
            third = asyncio.ensure_future(ask(on_a, "carol"))
            await asyncio.sleep(0.3)
            # One place running and two waiting, across both: b refuses the next one.
            refused = await on_b.post(
                "/api/stream-response", json={"prompt": "One more"},
                headers={"x-api-key": keys["dave"]},
            )  # fmt: skip
            message = assert_error(refused, 503, "overloaded_error")
            assert message == "At capacity and the queue is full; retry shortly"
            reads = await asyncio.gather(first, second, third)
        assert [queued_positions(r) for r in reads] == [[], [1], [2, 1]]
        for user, read in zip(prompts, reads, strict=True):
            assert_whole_answer(read.events, await direct_text(simulator, prompts[user]))
        # One upstream call at a time, three in all, and none for the refused request.
        async with httpx.AsyncClient() as client:
            stats = (await client.get(f"{simulator}/_sim/stats")).json()
        assert stats["requests"] == 3 + 3  # + the three direct reads
