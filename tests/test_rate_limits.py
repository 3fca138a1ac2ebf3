"""Rate limits per principal, requests and tokens per minute: every refusal and its
headers, the token reservation settled with the real usage, and one limit across two
instances sharing a Redis."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import Redis, assert_error, free_port, redis_server, run_stack, spawn, start
from tests.support.auth import create_key
from tests.support.clock import fresh_minute
from tokenrelay.simulator.engine import Simulator


def keys_for(tmp: Path, *users: str) -> tuple[list[str], dict[str, str]]:
    keys_file = tmp / "keys.txt"
    keys = {user: create_key(keys_file, user) for user in users}
    return ["--auth", "api_key", "--api-keys-file", str(keys_file)], keys


async def post(base: str, key: str, body: dict[str, object]) -> httpx.Response:
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        response = await client.post("/api/stream-response", json=body, headers={"x-api-key": key})
        return response


def usage_of(prompt: str, max_tokens: int) -> int:
    """The tokens the simulator's answer uses: its input and its output."""
    plan = Simulator().plan(
        {"model": "claude-haiku-4-5", "max_tokens": max_tokens,
         "messages": [{"role": "user", "content": prompt}]}
    )  # fmt: skip
    return plan.input_tokens + len(plan.deltas)


async def test_requests_per_minute_count_down_then_refuse_with_429_and_headers(
    tmp_path: Path,
) -> None:
    auth, keys = keys_for(tmp_path, "alice", "bob")
    with run_stack(tmp_path, *auth, TOKENRELAY_RATE_LIMIT_RPM="3") as stack:
        fresh_minute()
        for remaining in (2, 1, 0):
            response = await post(stack.gateway, keys["alice"], {"prompt": "Hi [[sim:tokens=3]]"})
            assert response.status_code == 200
            assert response.headers["x-ratelimit-limit-requests"] == "3"
            assert response.headers["x-ratelimit-remaining-requests"] == str(remaining)
            reset = int(response.headers["x-ratelimit-reset-requests"].removesuffix("s"))
            assert 0 <= reset <= 60
            assert "x-ratelimit-limit-tokens" not in response.headers  # no token limit set
        refused = await post(stack.gateway, keys["alice"], {"prompt": "Hi [[sim:tokens=3]]"})
        message = assert_error(refused, 429, "rate_limit_error")
        assert message == "Rate limit exceeded: 3 requests per minute"
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert refused.headers["x-ratelimit-remaining-requests"] == "0"
        # Nothing reached the upstream for the refused request: 3 answers only.
        assert stack.sim_stats()["requests"] == 3
        # Limits are per principal.
        other = await post(stack.gateway, keys["bob"], {"prompt": "Hi [[sim:tokens=3]]"})
        assert other.status_code == 200
        assert other.headers["x-ratelimit-remaining-requests"] == "2"


async def test_tokens_are_reserved_at_admission_and_settled_with_the_real_usage(
    tmp_path: Path,
) -> None:
    auth, keys = keys_for(tmp_path, "alice")
    slow = "Slow one [[sim:tokens=20]] [[sim:tps=20]]"
    quick = "Quick one [[sim:tokens=5]]"
    reserve_slow = len(slow) // 4 + 1 + 600
    reserve_quick = len(quick) // 4 + 1 + 600
    with run_stack(tmp_path, *auth, TOKENRELAY_RATE_LIMIT_TPM="1000") as stack:
        fresh_minute()
        async with httpx.AsyncClient(base_url=stack.gateway, timeout=30) as client:
            headers = {"x-api-key": keys["alice"]}
            body = {"prompt": slow, "max_tokens": 600}
            running = asyncio.create_task(start(client, body, headers=headers))
            await asyncio.sleep(0.3)  # admitted and streaming (it takes a second)
            # The slow stream's reservation leaves no room for another 600.
            refused = await client.post(
                "/api/stream-response", json={"prompt": quick, "max_tokens": 600}, headers=headers
            )
            message = assert_error(refused, 429, "rate_limit_error")
            assert message == (
                f"Rate limit exceeded: 1000 tokens per minute (this request reserves "
                f"{reserve_quick}: its prompt and max_tokens)"
            )
            assert refused.headers["x-ratelimit-remaining-tokens"] == str(1000 - reserve_slow)
            read = await running
            assert read.headers["x-ratelimit-remaining-tokens"] == str(1000 - reserve_slow)
            assert read.events[-1].data["done"] is True
            # Settled: what the slow answer did not use is back in the window.
            used = usage_of(slow, 600)
            await asyncio.sleep(0.2)
            again = await start(client, {"prompt": quick, "max_tokens": 600}, headers=headers)
            assert again.headers["x-ratelimit-remaining-tokens"] == str(1000 - used - reserve_quick)


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[Redis]:
    with redis_server(tmp_path / "redis") as server:
        yield server


@contextlib.contextmanager
def gateway_on(tmp: Path, redis: Redis, auth: list[str], name: str) -> Iterator[str]:
    port = free_port()
    args = ["serve", "--port", str(port), "--store", redis.url, *auth]
    env = {"TOKENRELAY_RATE_LIMIT_RPM": "4", "TOKENRELAY_SIMULATOR_TTFT_MS": "0"}
    with spawn(args, f"http://127.0.0.1:{port}/readyz", env=env, log_path=tmp / name):
        yield f"http://127.0.0.1:{port}"


async def test_one_limit_across_instances_sharing_redis(tmp_path: Path, redis: Redis) -> None:
    auth, keys = keys_for(tmp_path, "alice")
    with (
        gateway_on(tmp_path, redis, auth, "a.log") as a,
        gateway_on(tmp_path, redis, auth, "b.log") as b,
    ):
        fresh_minute()
        seen = []
        for base in (a, b, a, b):
            response = await post(
                base, keys["alice"], {"prompt": "Hi [[sim:tokens=3]] [[sim:tps=0]]"}
            )
            assert response.status_code == 200
            seen.append(response.headers["x-ratelimit-remaining-requests"])
        assert seen == ["3", "2", "1", "0"]  # one count, whichever instance answered
        for base in (a, b):
            refused = await post(base, keys["alice"], {"prompt": "Hi"})
            assert_error(refused, 429, "rate_limit_error")


async def test_without_auth_the_client_address_is_the_principal(tmp_path: Path) -> None:
    with run_stack(tmp_path, "--rate-limit-rpm", "1") as stack:  # the flag, not the variable
        fresh_minute()
        async with httpx.AsyncClient(base_url=stack.gateway, timeout=30) as client:
            first = await client.post(
                "/api/stream-response", json={"prompt": "Hi [[sim:tokens=2]]"}
            )
            assert first.headers["x-ratelimit-remaining-requests"] == "0"
            second = await client.get("/api/stream-response", params={"prompt": "Hi"})
            assert_error(second, 429, "rate_limit_error")


async def test_no_limit_configured_means_no_ratelimit_headers(stack_no_limits: str) -> None:
    async with httpx.AsyncClient(base_url=stack_no_limits, timeout=30) as client:
        read = await start(client, {"prompt": "Hi [[sim:tokens=2]]"})
    assert not [h for h in read.headers if h.startswith("x-ratelimit-")]


@pytest.fixture
def stack_no_limits(tmp_path: Path) -> Iterator[str]:
    with run_stack(tmp_path) as stack:
        yield stack.gateway
