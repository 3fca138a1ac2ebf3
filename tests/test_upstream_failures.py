"""Upstream failures: retries before the first token, and failures after it."""

from __future__ import annotations

import httpx

from tests.conftest import Stack
from tests.streams import start
from tests.test_streaming import direct_text, unique


async def test_429_twice_then_success_is_retried_into_one_seamless_answer(
    own_stack: Stack,
) -> None:
    words = unique("Rate limited twice [[sim:tokens=15]]")
    async with httpx.AsyncClient(base_url=own_stack.gateway, timeout=30) as client:
        read = await start(client, {"prompt": f"{words} [[sim:status=429]] [[sim:fail_times=2]]"})
    assert read.events[-1].data["done"] is True
    assert read.text == await direct_text(own_stack, words)
    assert own_stack.sim_stats()["requests"] == 3 + 1  # two refusals, the answer, direct_text
    assert own_stack.log_text().count("upstream attempt failed, retrying") == 2


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


async def test_error_event_mid_stream_ends_with_error_never_done(
    stack: Stack, client: httpx.AsyncClient
) -> None:
    words = unique("Breaks midway [[sim:tokens=20]]")
    read = await start(client, {"prompt": f"{words} [[sim:error_after=6]]"})
    final = read.events[-1].data
    assert final["code"] == "overloaded" and final["retryable"] is True
    assert not any("done" in e.data for e in read.events)
    tokens = [e.token for e in read.events if e.token is not None]
    assert len(tokens) == 6
    assert (await direct_text(stack, words)).startswith("".join(tokens))
    assert final["usage"]["output_tokens"] == 6


async def test_dropped_upstream_connection_mid_stream_ends_with_error(
    stack: Stack, client: httpx.AsyncClient
) -> None:
    words = unique("Cut midway [[sim:tokens=20]]")
    read = await start(client, {"prompt": f"{words} [[sim:drop_after=4]]"})
    final = read.events[-1].data
    assert "error" in final and final["retryable"] is True
    assert not any("done" in e.data for e in read.events)
    assert sum(e.token is not None for e in read.events) == 4


async def test_error_before_first_token_is_retried(stack: Stack, client: httpx.AsyncClient) -> None:
    words = unique("Fails at once [[sim:tokens=10]]")
    read = await start(client, {"prompt": f"{words} [[sim:error_after=0]] [[sim:fail_times=1]]"})
    assert read.events[-1].data["done"] is True
    assert read.text == await direct_text(stack, words)


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
