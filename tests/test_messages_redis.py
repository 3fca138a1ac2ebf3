"""Claude's format over the shared store: two gateway processes on one Redis. How a
stream's message began is kept with it in Redis, so a stream started on one instance
reads the same, byte for byte, from the other, from the start or resumed mid-way."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support import FAST_GATEWAY_ENV, ROOT, free_port, redis_server, spawn, unique
from tests.support.claude_wire import Frame, body, frames, post, without_ids
from tests.support.stack import REPLAYS

FIXTURE = ROOT / "tests" / "fixtures" / "replays" / "every-event.sse"


@dataclass
class Pair:
    simulator: str
    redis: str
    first: str
    second: str


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    tmp = tmp_path_factory.mktemp("messages-redis")
    with contextlib.ExitStack() as stack:
        sim_port = free_port()
        simulator = f"http://127.0.0.1:{sim_port}"
        stack.enter_context(spawn(
            ["simulate", "--port", str(sim_port), "--ttft-ms", "0", "--tps", "0",
             "--replay-dir", str(REPLAYS)],
            f"{simulator}/healthz",
        ))  # fmt: skip
        redis = stack.enter_context(redis_server(tmp / "redis"))
        urls = []
        for _ in range(2):
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            args = ["serve", "--port", str(port), "--provider", "anthropic"]
            args += ["--anthropic-base-url", simulator, "--store", redis.url]
            log = tmp / f"gateway-{port}.log"
            stack.enter_context(spawn(args, f"{url}/readyz", env=FAST_GATEWAY_ENV, log_path=log))
            urls.append(url)
        yield Pair(simulator, redis.url, *urls)


def test_the_replayed_stream_passes_through_byte_for_byte_on_redis(pair: Pair) -> None:
    response = post(pair.first, body(unique("Weather? [[sim:replay=every-event]]")))
    assert without_ids(response.content) == without_ids(FIXTURE.read_bytes())
    # The other instance never saw it start, and renders it the same from Redis.
    sid = response.headers["x-stream-id"]
    again = httpx.get(f"{pair.second}/v1/streams/{sid}")
    assert again.content == response.content


async def test_a_stream_started_on_one_instance_resumes_on_the_other(pair: Pair) -> None:
    prompt = unique("Across instances [[sim:tokens=30]] [[sim:tps=60]]")
    seen: list[Frame] = []
    async with httpx.AsyncClient(timeout=30) as client:
        async with client.stream(
            "POST", f"{pair.first}/v1/messages", json=body(prompt)
        ) as response:
            sid = response.headers["x-stream-id"]
            buffer = b""
            async for chunk in response.aiter_bytes():
                complete, _, buffer = (buffer + chunk).rpartition(b"\n\n")
                seen += frames(complete + b"\n\n") if complete else []
                if sum(f.type == "content_block_delta" for f in seen) >= 8:
                    break  # hang up
        last = [f.id for f in seen if f.id is not None][-1]
        resume = f"{pair.second}/v1/streams/{sid}"
        rest = await client.get(resume, headers={"last-event-id": last})  # to its end
        whole = await client.get(resume)
    assert seen + frames(rest.content) == frames(whole.content)
    direct = post(pair.simulator, body(prompt))
    assert without_ids(whole.content) == without_ids(direct.content)


async def test_an_instance_that_shuts_down_mid_stream_ends_it_with_an_error(
    pair: Pair, tmp_path: Path
) -> None:
    port = free_port()
    third = f"http://127.0.0.1:{port}"
    args = ["serve", "--port", str(port), "--provider", "anthropic"]
    args += ["--anthropic-base-url", pair.simulator, "--store", pair.redis]
    live = body(unique("Read elsewhere [[sim:tokens=300]] [[sim:tps=60]]"))
    seen: list[Frame] = []
    async with httpx.AsyncClient(timeout=30) as client:
        log_path = tmp_path / "third.log"
        with spawn(args, f"{third}/readyz", env=FAST_GATEWAY_ENV, log_path=log_path) as proc:
            # Produced on the first instance, read on the third, which then shuts down.
            async with client.stream("POST", f"{pair.first}/v1/messages", json=live) as started:
                sid = started.headers["x-stream-id"]
                async with client.stream("GET", f"{third}/v1/streams/{sid}") as elsewhere:
                    buffer, stopped = b"", False
                    async for chunk in elsewhere.aiter_bytes():
                        complete, _, buffer = (buffer + chunk).rpartition(b"\n\n")
                        seen += frames(complete + b"\n\n") if complete else []
                        if not stopped and len(seen) > 6:
                            proc.send_signal(signal.SIGTERM)  # it drains and ends its readers
                            stopped = True
                await started.aread()
            assert proc.wait(timeout=15) == 0, log_path.read_text()[-3000:]
        last = [f.id for f in seen if f.id is not None][-1]
        resume = f"{pair.second}/v1/streams/{sid}"
        rest = await client.get(resume, headers={"last-event-id": last})
        whole = await client.get(resume)
    error = seen.pop()
    assert error.type == "error" and error.id is None  # never an end that looks whole
    assert error.data["error"]["type"] == "overloaded_error"
    assert "message_stop" not in [f.type for f in seen]
    assert seen + frames(rest.content) == frames(whole.content)  # resumed where it broke
