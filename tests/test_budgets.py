"""Budgets in USD per principal and UTC day (or month): a stream is cut at the first
token that would cross the budget, the upstream call stops, the next request is a
429 before it starts, and the budget holds across instances sharing a Redis."""

from __future__ import annotations

import contextlib
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.support import (
    Redis,
    assert_error,
    free_port,
    redis_server,
    resume,
    run_stack,
    spawn,
    start,
    unique,
)
from tests.support.auth import create_key
from tests.support.clock import not_at_midnight
from tests.support.streams import Read
from tokenrelay.admission.budgets import dollars
from tokenrelay.simulator.engine import Simulator

# claude-haiku-4-5: $1 per million input tokens, $5 per million output tokens, i.e.
# 1 and 5 micro-dollars a token.
IN_MICRO, OUT_MICRO = 1, 5


def plan(prompt: str) -> tuple[int, list[str]]:
    body = {"model": "claude-haiku-4-5", "max_tokens": 1024,
            "messages": [{"role": "user", "content": prompt}]}  # fmt: skip
    p = Simulator().plan(body)
    return p.input_tokens, p.deltas


def tokens_of(read: Read) -> list[str]:
    return [e.data["token"] for e in read.events if "token" in e.data]


async def test_a_stream_is_cut_at_the_token_that_would_cross_the_budget(tmp_path: Path) -> None:
    not_at_midnight()
    prompt = "Spend it all [[sim:tokens=60]] [[sim:tps=200]]"
    input_tokens, deltas = plan(prompt)
    affordable = 20
    # Exactly the prompt and 20 tokens: the 21st would cross it.
    budget = dollars((input_tokens * IN_MICRO + affordable * OUT_MICRO) / 1e6)
    with run_stack(tmp_path, TOKENRELAY_BUDGET_DAILY_USD=budget) as stack:
        async with httpx.AsyncClient(base_url=stack.gateway, timeout=30) as client:
            read = await start(client, {"prompt": prompt})
            assert tokens_of(read) == deltas[:affordable]
            cost = (input_tokens * IN_MICRO + affordable * OUT_MICRO) / 1e6
            assert read.events[-1].data == {
                "error": f"Budget exceeded: the daily budget of ${budget} is spent",
                "code": "budget_exceeded",
                "retryable": False,
                "usage": {"input_tokens": input_tokens, "output_tokens": affordable},
                "cost_usd": cost,
            }
            # The upstream call was cut off, not left to run to its end.
            assert stack.sim_stats()["completed"] == 0
            refused = await client.post("/api/stream-response", json={"prompt": "More?"})
            message = assert_error(refused, 429, "rate_limit_error")
            # Spent to the last micro-dollar: refused before it starts.
            assert message == f"Budget exceeded: the daily budget of ${budget} is spent"
            assert 1 <= int(refused.headers["retry-after"]) <= 86400
            assert stack.sim_stats()["requests"] == 1


async def test_a_stream_under_the_budget_completes_and_its_cost_is_counted(
    tmp_path: Path,
) -> None:
    not_at_midnight()
    keys_file = tmp_path / "keys.txt"
    alice, bob = create_key(keys_file, "alice"), create_key(keys_file, "bob")
    auth = ["--auth", "api_key", "--api-keys-file", str(keys_file)]
    small = "A small one [[sim:tokens=8]]"
    small_in, _ = plan(small)
    with run_stack(tmp_path, *auth, TOKENRELAY_BUDGET_MONTHLY_USD="0.0002") as stack:
        async with httpx.AsyncClient(base_url=stack.gateway, timeout=30) as client:
            first = await start(client, {"prompt": small}, headers={"x-api-key": alice})
            assert first.events[-1].data["done"] is True
            spent = small_in * IN_MICRO + 8 * OUT_MICRO
            big = "A big one [[sim:tokens=80]]"
            big_in, deltas = plan(big)
            second = await start(client, {"prompt": big}, headers={"x-api-key": alice})
            left = 200 - spent - big_in * IN_MICRO
            assert tokens_of(second) == deltas[: left // OUT_MICRO]
            assert second.events[-1].data["error"] == (
                "Budget exceeded: the monthly budget of $0.0002 is spent"
            )
            # Bob has a budget of his own.
            other = await start(client, {"prompt": small}, headers={"x-api-key": bob})
            assert other.events[-1].data["done"] is True


@contextlib.contextmanager
def instance_on(
    tmp: Path, redis: Redis, name: str
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    args = ["serve", "--port", str(port), "--store", redis.url]
    env = {"TOKENRELAY_BUDGET_DAILY_USD": "0.00015", "TOKENRELAY_SIMULATOR_TTFT_MS": "0",
           "TOKENRELAY_SIMULATOR_TPS": "0", "TOKENRELAY_DATABASE_URL": "off"}  # fmt: skip
    with spawn(args, f"http://127.0.0.1:{port}/readyz", env=env, log_path=tmp / name) as proc:
        yield f"http://127.0.0.1:{port}", proc


@contextlib.contextmanager
def gateway_on(tmp: Path, redis: Redis, name: str) -> Iterator[str]:
    with instance_on(tmp, redis, name) as (url, _):
        yield url


async def test_one_budget_across_instances_sharing_redis(tmp_path: Path) -> None:
    not_at_midnight()
    with (
        redis_server(tmp_path / "redis") as redis,
        gateway_on(tmp_path, redis, "a.log") as a,
        gateway_on(tmp_path, redis, "b.log") as b,
    ):
        small, big = "Small [[sim:tokens=10]]", "Big [[sim:tokens=80]]"
        small_in, _ = plan(small)
        big_in, deltas = plan(big)
        async with (
            httpx.AsyncClient(base_url=a, timeout=30) as on_a,
            httpx.AsyncClient(base_url=b, timeout=30) as on_b,
        ):
            first = await start(on_a, {"prompt": small})
            assert first.events[-1].data["done"] is True
            second = await start(on_b, {"prompt": big})  # what a spent counts on b too
            left = 150 - (small_in + 10 * OUT_MICRO) - big_in
            assert tokens_of(second) == deltas[: left // OUT_MICRO]
            assert second.events[-1].data["code"] == "budget_exceeded"
            for client in (on_a, on_b):
                refused = await client.post("/api/stream-response", json={"prompt": "x"})
                assert_error(refused, 429, "rate_limit_error")


async def test_a_stream_taken_over_from_a_dead_instance_still_keeps_to_the_budget(
    tmp_path: Path,
) -> None:
    not_at_midnight()
    prompt = unique("Outlive its instance [[sim:tokens=80]] [[sim:tps=20]]")
    _, deltas = plan(prompt)
    with (
        redis_server(tmp_path / "redis") as redis,
        instance_on(tmp_path, redis, "a.log") as (a, doomed),
        gateway_on(tmp_path, redis, "b.log") as b,
    ):
        async with (
            httpx.AsyncClient(base_url=a, timeout=30) as on_a,
            httpx.AsyncClient(base_url=b, timeout=30) as on_b,
        ):
            begun = await start(on_a, {"prompt": prompt}, stop_after=6)
            doomed.send_signal(signal.SIGKILL)
            doomed.wait()
            # b takes the stream over; the dead instance had taken the whole budget for
            # it (one grant), so what is left of the stream is cut at once, not finished.
            rest = await resume(on_b, begun.last_id)
    seen = tokens_of(begun) + tokens_of(rest)
    assert seen == deltas[: len(seen)] and 5 <= len(seen) < len(deltas)
    assert rest.events[-1].data["code"] == "budget_exceeded"
    assert rest.events[-1].data["error"] == (
        "Budget exceeded: the daily budget of $0.00015 is spent"
    )


async def test_a_key_of_its_own_budget_is_cut_at_it_and_others_are_not(tmp_path: Path) -> None:
    not_at_midnight()
    keys_file = tmp_path / "keys.txt"
    prompt = "Per key [[sim:tokens=40]]"
    input_tokens, deltas = plan(prompt)
    budget = dollars((input_tokens * IN_MICRO + 10 * OUT_MICRO) / 1e6)
    capped = create_key(keys_file, "carol", "--daily-usd", budget)
    free = create_key(keys_file, "dave")
    auth = ["--auth", "api_key", "--api-keys-file", str(keys_file)]
    listed = keys_file.read_text().splitlines()[0].split()[-1]
    assert listed == f"daily_usd={budget}"  # written in USD, as a user would
    with run_stack(tmp_path, *auth) as stack:
        async with httpx.AsyncClient(base_url=stack.gateway, timeout=30) as client:
            cut = await start(client, {"prompt": prompt}, headers={"x-api-key": capped})
            assert tokens_of(cut) == deltas[:10]
            assert cut.events[-1].data["error"] == (
                f"Budget exceeded: the daily budget of ${budget} is spent"
            )
            whole = await start(client, {"prompt": prompt}, headers={"x-api-key": free})
            assert tokens_of(whole) == deltas and whole.events[-1].data["done"] is True
