"""Upstream failures: retries before the first token, and failures after it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import (
    FAST_GATEWAY_ENV,
    Stack,
    assert_whole_answer,
    direct_text,
    free_port,
    log_events,
    run_stack,
    spawn,
    start,
    text_of,
    unique,
)
from tests.support.upstreams import ScriptedUpstream, answer, read_request


async def test_429_twice_then_success_is_retried_into_one_seamless_answer(
    own_stack: Stack,
) -> None:
    words = unique("Rate limited twice [[sim:tokens=15]]")
    async with httpx.AsyncClient(base_url=own_stack.gateway, timeout=30) as client:
        read = await start(client, {"prompt": f"{words} [[sim:status=429]] [[sim:fail_times=2]]"})
    assert_whole_answer(read.events, await direct_text(own_stack.simulator, words))
    assert own_stack.sim_stats()["requests"] == 3 + 1  # two refusals, the answer, direct_text
    retries = log_events(own_stack.log_text(), "upstream_retry")
    assert [(r["stream_id"], r["retry"], r["status"], r["error_type"]) for r in retries] == [
        (read.events[0].stream_id, "1", "429", "rate_limit_error"),
        (read.events[0].stream_id, "2", "429", "rate_limit_error"),
    ]


async def test_529_past_the_retry_limit_ends_in_a_retryable_error(own_stack: Stack) -> None:
    prompt = unique("Always overloaded [[sim:status=529]]")
    async with httpx.AsyncClient(base_url=own_stack.gateway, timeout=30) as client:
        read = await start(client, {"prompt": prompt})
    final = read.events[-1].data
    assert final["error"] and final["code"] == "overloaded" and final["retryable"] is True
    assert [e.data.get("token") for e in read.events[1:-1]] == []
    # upstream_retries is 2 in the test stack: three attempts in all.
    assert own_stack.sim_stats()["requests"] == 3
    assert sum("error" in e.data or "done" in e.data for e in read.events) == 1


@pytest.mark.parametrize(
    ("fault", "error_type"), [("error_after=6", "overloaded_error"), ("drop_after=6", "api_error")]
)
async def test_mid_stream_failure_is_continued_by_prefill_into_one_seamless_text(
    own_stack: Stack, fault: str, error_type: str
) -> None:
    words = unique("Breaks midway [[sim:tokens=20]]")
    async with httpx.AsyncClient(base_url=own_stack.gateway, timeout=30) as client:
        read = await start(client, {"prompt": f"{words} [[sim:{fault}]] [[sim:fail_times=1]]"})
    assert_whole_answer(read.events, await direct_text(own_stack.simulator, words))
    assert sum(e.token is not None for e in read.events) == 20
    final = read.events[-1].data
    assert final["stop_reason"] == "end_turn"
    assert not any("reset" in e.data for e in read.events)
    # Both attempts are billed: 6 deltas, then the 14 of the continuation.
    assert final["usage"]["output_tokens"] == 20
    assert own_stack.sim_stats()["requests"] == 2 + 1  # two attempts, and direct_text
    # It continued from the 6 deltas it had (start event, then one event per delta).
    before_cut = text_of(read.events[:7])
    assert log_events(own_stack.log_text(), "continuation") == [
        {
            "event": "continuation",
            "stream_id": read.events[0].stream_id,
            "mode": "prefill",
            "attempt": "1",
            "chars": str(len(before_cut)),
            "error_type": error_type,
        }
    ]


async def test_failure_that_persists_ends_after_the_continuation_limit(
    stack: Stack, client: httpx.AsyncClient
) -> None:
    words = unique("Always breaks [[sim:tokens=40]]")
    read = await start(client, {"prompt": f"{words} [[sim:error_after=3]]"})
    final = read.events[-1].data
    assert final["code"] == "overloaded" and final["retryable"] is True
    assert not any("done" in e.data for e in read.events)
    # Each attempt adds 3 deltas: the first and three continuations.
    assert sum(e.token is not None for e in read.events) == 12
    assert (await direct_text(stack.simulator, words)).startswith(read.text)
    assert final["usage"]["output_tokens"] == 12


async def test_model_that_rejects_prefill_restarts_with_reset(
    stack: Stack, client: httpx.AsyncClient
) -> None:
    words = unique("No prefill here [[sim:tokens=15]]")
    body = {
        "prompt": f"{words} [[sim:drop_after=5]] [[sim:fail_times=1]]",
        "model": "claude-sonnet-4-6",
    }
    read = await start(client, body)
    kinds = ["reset" if "reset" in e.data else "token" if e.token else "other" for e in read.events]
    assert kinds == ["other"] + ["token"] * 5 + ["reset"] + ["token"] * 15 + ["other"]
    assert read.events[6].data == {"reset": True, "reason": "upstream_error"}
    after_reset = text_of(read.events[7:])
    assert after_reset == await direct_text(stack.simulator, words, model="claude-sonnet-4-6")
    assert read.events[-1].data["usage"]["output_tokens"] == 20
    # The shared stack logs other tests' streams too: only this one's events count.
    stream_id = read.events[0].stream_id
    log = stack.log_text()
    resets = [e for e in log_events(log, "reset") if e["stream_id"] == stream_id]
    assert resets == [{"event": "reset", "stream_id": stream_id, "error_type": "api_error"}]
    assert [e for e in log_events(log, "continuation") if e["stream_id"] == stream_id] == []


async def test_cut_inside_a_tool_use_block_ends_with_a_clear_error(
    client: httpx.AsyncClient,
) -> None:
    # tool=NAME: 5 text deltas, then the tool's input in fragments; cut after one.
    read = await start(
        client, {"prompt": unique("Look it up [[sim:tool=search]] [[sim:drop_after=6]]")}
    )
    final = read.events[-1].data
    assert final["code"] == "incomplete_block" and final["retryable"] is False
    assert final["error"] == (
        "Upstream stream was cut inside a tool_use block, which cannot be continued"
    )
    assert sum(e.token is not None for e in read.events) == 5


async def test_tool_use_block_arrives_complete(client: httpx.AsyncClient) -> None:
    read = await start(client, {"prompt": unique("Look it up [[sim:tool=search]]")})
    tools = [e.data["tool_use"] for e in read.events if "tool_use" in e.data]
    assert len(tools) == 1 and tools[0]["name"] == "search"
    assert tools[0]["id"].startswith("toolu_") and set(tools[0]["input"]) == {"query"}
    assert read.events[-1].data["stop_reason"] == "tool_use"


async def test_error_before_first_token_is_retried(stack: Stack, client: httpx.AsyncClient) -> None:
    words = unique("Fails at once [[sim:tokens=10]]")
    read = await start(client, {"prompt": f"{words} [[sim:error_after=0]] [[sim:fail_times=1]]"})
    assert read.events[-1].data["done"] is True
    assert read.text == await direct_text(stack.simulator, words)


async def test_upstream_400_is_not_retried(stack: Stack, client: httpx.AsyncClient) -> None:
    # claude-sonnet-4-6 rejects a prefill: a conversation ending with an assistant turn
    # is refused by the upstream with 400, which must not be retried.
    body = {
        "model": "claude-sonnet-4-6",
        "messages": [
            {"role": "user", "content": unique("Hello")},
            {"role": "assistant", "content": "Sure"},
        ],
    }
    read = await start(client, body)
    final = read.events[-1].data
    assert final["code"] == "invalid_request" and final["retryable"] is False
    assert "prefill" in final["error"]


@pytest.fixture
def impatient_stack(tmp_path: Path) -> Iterator[Stack]:
    with run_stack(tmp_path, TOKENRELAY_STALL_TIMEOUT="1") as s:
        yield s


async def test_silent_upstream_is_treated_as_dropped_and_continued(
    impatient_stack: Stack,
) -> None:
    words = unique("Falls silent [[sim:tokens=20]]")
    prompt = f"{words} [[sim:stall_after=7]] [[sim:fail_times=1]]"
    async with httpx.AsyncClient(base_url=impatient_stack.gateway, timeout=30) as client:
        read = await start(client, {"prompt": prompt})
    assert read.text == await direct_text(impatient_stack.simulator, words)
    assert read.events[-1].data["done"] is True
    # The stalled connection was given up on (the simulator saw it go), then continued.
    assert impatient_stack.sim_stats()["disconnected"] == 1
    continuations = log_events(impatient_stack.log_text(), "continuation")
    assert [(c["stream_id"], c["mode"]) for c in continuations] == [
        (read.events[0].stream_id, "prefill")
    ]


# -- a pooled connection the upstream closed -------------------------------------------


async def test_a_pooled_connection_the_upstream_closed_is_no_failure(tmp_path: Path) -> None:
    # An upstream that answers the first request on a connection, keeps it open, and
    # closes it without a word when a second request comes on it: what a server's idle
    # timeout does to a pooled connection just as it is used again.
    requests = answered = 0

    async def first_only(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal requests, answered
        for request_here in range(2):
            if await read_request(reader) is None:
                return  # closed by the gateway, or at the end
            requests += 1
            if request_here == 1:
                writer.transport.abort()
                return
            writer.write(answer())
            answered += 1

    log_path = tmp_path / "gateway.log"
    async with ScriptedUpstream(first_only) as upstream:
        port = free_port()
        args = ["serve", "--port", str(port), "--provider", "anthropic"]
        args += ["--anthropic-base-url", f"http://127.0.0.1:{upstream.port}"]
        with spawn(args, f"http://127.0.0.1:{port}/readyz", env=FAST_GATEWAY_ENV,
                   log_path=log_path):  # fmt: skip
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
                texts = [text_of((await start(c, {"prompt": unique("Hi")})).events)
                         for _ in range(3)]  # fmt: skip
    assert texts == ["Hello there"] * 3
    # The second went out on the kept connection, was cut unanswered, and went again at
    # once on a new one, kept in turn; the third went out on that, and the same again.
    assert (upstream.connections, requests, answered) == (3, 5, 3)
    log = log_path.read_text()
    assert log_events(log, "upstream_retry") == []
    assert log_events(log, "upstream_cooldown") == []
