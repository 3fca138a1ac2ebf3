"""Several gateway processes on one Redis, behind Debian's nginx: a stream survives the
death of the instance serving it, a SIGTERM, and a Redis restart, and its client gets
the exact full text once."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.support import (
    Redis,
    assert_whole_answer,
    direct_text,
    eventually,
    free_port,
    log_events,
    nginx,
    read_stream,
    redis_server,
    spawn,
    unique,
)
from tokenrelay.client import StreamEvent, TokenRelay


@dataclass
class Gateway:
    url: str
    proc: subprocess.Popen[bytes]
    instance: str
    log: Path


@dataclass
class Cluster:
    simulator: str
    redis: Redis
    lb: str
    gateways: list[Gateway] = field(default_factory=list)

    def by_instance(self, instance: str) -> Gateway:
        return next(g for g in self.gateways if g.instance == instance)


CLUSTER_ENV = {
    "ANTHROPIC_API_KEY": "sk-test-upstream-key",
    "TOKENRELAY_HEARTBEAT_INTERVAL": "0.5",
    "TOKENRELAY_RETRY_BASE_DELAY": "0.05",
    "TOKENRELAY_DRAIN_TIMEOUT": "10",
}


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with contextlib.ExitStack() as stack:
        sim_port = free_port()
        simulator = f"http://127.0.0.1:{sim_port}"
        stack.enter_context(spawn(
            ["simulate", "--port", str(sim_port), "--ttft-ms", "0", "--tps", "0"],
            f"{simulator}/healthz",
        ))  # fmt: skip
        redis = stack.enter_context(redis_server(tmp_path / "redis"))
        ports = [free_port(), free_port()]
        gateways = []
        for port in ports:
            url = f"http://127.0.0.1:{port}"
            log = tmp_path / f"gateway-{port}.log"
            proc = stack.enter_context(spawn(
                ["serve", "--port", str(port), "--provider", "anthropic",
                 "--anthropic-base-url", simulator, "--store", redis.url],
                f"{url}/readyz", env=CLUSTER_ENV, log_path=log,
            ))  # fmt: skip
            instance = httpx.get(f"{url}/readyz").json()["instance"]
            gateways.append(Gateway(url, proc, instance, log))
        lb = stack.enter_context(nginx(tmp_path / "nginx", ports))
        yield Cluster(simulator, redis, lb, gateways)


def stream_id_of(events: list[StreamEvent]) -> str:
    return events[0].id.rpartition(":")[0]


async def stream_through(
    cluster: Cluster, prompt: str, *, after: int, then: Callable[[str], None]
) -> tuple[list[StreamEvent], str]:
    """Stream via nginx with the resuming client; after `after` events call
    `then(instance producing the stream)`. Returns the events and that instance."""
    events: list[StreamEvent] = []
    serving = ""
    # A stream stuck after a failure would otherwise send heartbeats forever: bound it
    # (the answers here take seconds) so that a regression fails instead of hanging.
    async with asyncio.timeout(120), TokenRelay(cluster.lb, max_reconnects=40) as relay:
        async for event in relay.stream(prompt):
            events.append(event)
            if len(events) == after:
                # The producing instance holds the stream's lease in Redis.
                stream_id = event.id.rpartition(":")[0]
                serving = cluster.redis.cli("get", f"tr:s:{stream_id}:lease")
                await asyncio.to_thread(then, serving)
    return events, serving


async def test_killed_instance_stream_is_taken_over_and_resumed_exactly_once(
    cluster: Cluster,
) -> None:
    prompt = unique("Survive a crash [[sim:tokens=60]] [[sim:tps=25]]")
    expected = await direct_text(cluster.simulator, prompt)

    def kill(instance: str) -> None:
        victim = cluster.by_instance(instance)
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait()

    events, serving = await stream_through(cluster, prompt, after=10, then=kill)
    assert_whole_answer(events, expected)
    survivor = next(g for g in cluster.gateways if g.instance != serving)
    takeovers = log_events(survivor.log.read_text(), "takeover")
    assert [t["stream_id"] for t in takeovers] == [stream_id_of(events)]
    # The survivor continued from exactly what the log held: that many events, that text.
    held = events[: int(takeovers[0]["events"])]
    assert int(takeovers[0]["chars"]) == len("".join(e.token or "" for e in held))


async def test_sigterm_hands_streams_over_at_once(cluster: Cluster) -> None:
    prompt = unique("Survive a deploy [[sim:tokens=60]] [[sim:tps=25]]")
    expected = await direct_text(cluster.simulator, prompt)
    stopped: list[Gateway] = []

    def terminate(instance: str) -> None:
        victim = cluster.by_instance(instance)
        victim.proc.send_signal(signal.SIGTERM)
        stopped.append(victim)

    events, _ = await stream_through(cluster, prompt, after=8, then=terminate)
    assert_whole_answer(events, expected)
    victim = stopped[0]
    # It exits well before its 10 s drain timeout: handing over does not wait.
    assert victim.proc.wait(timeout=8) == 0
    assert [h["count"] for h in log_events(victim.log.read_text(), "handover")] == ["1"]


async def test_mid_stream_upstream_error_is_continued_on_redis(cluster: Cluster) -> None:
    words = unique("Continue on redis [[sim:tokens=30]]")
    expected = await direct_text(cluster.simulator, words)
    async with TokenRelay(cluster.lb) as relay:
        events = [
            e async for e in relay.stream(f"{words} [[sim:error_after=9]] [[sim:fail_times=1]]")
        ]
    assert_whole_answer(events, expected)


async def test_redis_restart_mid_stream(cluster: Cluster) -> None:
    prompt = unique("Survive the store [[sim:tokens=60]] [[sim:tps=20]]")
    expected = await direct_text(cluster.simulator, prompt)
    observed: dict[str, object] = {}

    def restart_redis(_: str) -> None:
        cluster.redis.stop()
        observed["ready"] = httpx.get(f"{cluster.gateways[0].url}/readyz").status_code
        refused = httpx.post(
            f"{cluster.gateways[0].url}/api/stream-response",
            json={"prompt": "refused while the store is down"},
        )
        observed["new_stream"] = (
            refused.status_code,
            refused.json()["error"]["type"],
            refused.headers.get("retry-after"),
        )
        time.sleep(1.0)
        cluster.redis.start()

    events, _ = await stream_through(cluster, prompt, after=6, then=restart_redis)
    assert observed == {"ready": 503, "new_stream": (503, "overloaded_error", "1")}
    assert_whole_answer(events, expected)
    async with httpx.AsyncClient() as client:
        assert (await client.get(f"{cluster.gateways[0].url}/readyz")).status_code == 200


async def test_redis_connections_do_not_grow_with_clients(cluster: Cluster) -> None:
    gateway = cluster.gateways[0].url
    prompts = [unique(f"Many readers {i} [[sim:tokens=40]] [[sim:tps=20]]") for i in range(60)]
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as client:

        async def one(prompt: str) -> int:
            async with client.stream("POST", "/api/stream-response", json={"prompt": prompt}) as r:
                return sum([1 async for line in r.aiter_lines() if '"token"' in line])

        tasks = [asyncio.create_task(one(p)) for p in prompts]
        await asyncio.sleep(1.0)
        connections = int(cluster.redis.cli("info", "clients").split("connected_clients:")[1]
                          .split()[0])  # fmt: skip
        counts = await asyncio.gather(*tasks)
    assert counts == [40] * 60
    # Two gateways, each at most 16 pooled connections plus one for following, plus
    # redis-cli itself: bounded, whatever the number of clients.
    assert connections <= 2 * 17 + 1


async def test_cancel_reaches_the_instance_producing_the_stream(cluster: Cluster) -> None:
    a, b = cluster.gateways
    prompt = unique("Cancel me from afar [[sim:tokens=300]] [[sim:tps=20]]")
    async with httpx.AsyncClient(timeout=30) as client:
        head = await read_stream(
            client, "POST", f"{a.url}/api/stream-response", json={"prompt": prompt}, stop_after=3
        )
        stream_id = head.events[0].stream_id
        response = await client.delete(f"{b.url}/api/streams/{stream_id}")
        assert response.json() == {"stream_id": stream_id, "cancelled": True}
        tail = await read_stream(
            client, "GET", f"{b.url}/api/streams/{stream_id}",
            headers={"Last-Event-ID": head.last_id},
        )  # fmt: skip
        stats = (await client.get(f"{cluster.simulator}/_sim/stats")).json()
    final = tail.events[-1].data
    assert final["code"] == "cancelled"
    assert stats["disconnected"] == 1  # the upstream call really stopped
    tokens = sum(e.token is not None for e in head.events + tail.events)
    assert final["usage"]["output_tokens"] == tokens < 300


async def test_readers_follow_a_stream_their_instance_lost_to_another(cluster: Cluster) -> None:
    """Instance A produces a stream and serves its reader. Redis goes away, so A's
    producer stops; while A is frozen, B takes the stream over once Redis is back. A's
    reader must then be fed what B writes, not wait forever for A's own producer."""
    a, b = cluster.gateways
    prompt = unique("Lost and found [[sim:tokens=60]] [[sim:tps=20]]")
    expected = await direct_text(cluster.simulator, prompt)

    def lose_to_b(_: str) -> None:
        cluster.redis.stop()
        eventually(
            lambda: log_events(a.log.read_text(), "store_lost"),
            what="instance A to log store_lost",
            within=30,
        )
        a.proc.send_signal(signal.SIGSTOP)
        try:
            cluster.redis.start()
            eventually(
                lambda: log_events(b.log.read_text(), "takeover"),
                what="instance B to log takeover",
                within=30,
            )
        finally:
            a.proc.send_signal(signal.SIGCONT)

    events: list[StreamEvent] = []
    async with asyncio.timeout(120), TokenRelay(a.url, max_reconnects=40) as relay:
        async for event in relay.stream(prompt):
            events.append(event)
            if len(events) == 6:
                await asyncio.to_thread(lose_to_b, a.instance)
    assert_whole_answer(events, expected)
    stream_id = stream_id_of(events)
    assert [e["stream_id"] for e in log_events(a.log.read_text(), "store_lost")] == [stream_id]
    assert [e["stream_id"] for e in log_events(b.log.read_text(), "takeover")] == [stream_id]
    assert log_events(a.log.read_text(), "takeover") == []
