"""`tokenrelay simulate` as one deployment of an upstream pool: Claude's rate limits and
their headers (`--rpm`, `--tpm`, `--rate-window`), faults set from outside through
`/_sim/fault` (the same prompt goes to every deployment, so a directive cannot single one
out), `--models`, and stats a test can assert exactly. Real processes on real sockets,
read with the official SDK (`max_retries=0`) or httpx."""

from __future__ import annotations

import calendar
import contextlib
import math
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anthropic
import httpx
import httpx2
import pytest

from tests.support import ROOT, eventually, free_port, spawn, unique
from tokenrelay.simulator.engine import Simulator

MODEL = "claude-haiku-4-5"
LIMIT_HEADERS = [
    f"anthropic-ratelimit-{kind}-{field}"
    for kind in ("requests", "tokens")
    for field in ("limit", "remaining", "reset")
]


def body(prompt: str, max_tokens: int = 100, **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": prompt}], **extra}  # fmt: skip


def admitted_tokens(request: dict[str, Any]) -> int:
    """Input tokens plus max_tokens: what a token limit counts a request as."""
    return Simulator().plan(request).input_tokens + int(request["max_tokens"])


def epoch(rfc3339: str) -> int:
    return calendar.timegm(time.strptime(rfc3339, "%Y-%m-%dT%H:%M:%SZ"))


def assert_sim_error(response: httpx.Response, status: int, error_type: str) -> None:
    assert response.status_code == status, response.text
    payload = response.json()
    assert payload["type"] == "error" and payload["error"]["type"] == error_type
    assert payload["error"]["message"] and payload["request_id"].startswith("req_")
    assert response.headers["request-id"] == payload["request_id"]


@pytest.fixture(scope="module")
def simulate() -> Iterator[Callable[..., str]]:
    """Start a simulator with these flags; every one started stops with the module."""
    with contextlib.ExitStack() as stack:

        def start(*flags: str) -> str:
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            args = ["simulate", "--port", str(port), "--ttft-ms", "0", "--tps", "0", *flags]
            stack.enter_context(spawn(args, f"{url}/healthz"))
            return url

        yield start


@pytest.fixture(scope="module")
def plain(simulate: Callable[..., str]) -> str:
    return simulate()


@pytest.fixture
def sim(plain: str) -> str:
    """The unlimited simulator, its stats zeroed and no fault left from another test."""
    assert httpx.post(f"{plain}/_sim/reset").json() == {"status": "ok"}
    return plain


@pytest.fixture
async def sdk(sim: str) -> AsyncIterator[anthropic.AsyncAnthropic]:
    client = anthropic.AsyncAnthropic(base_url=sim, api_key="k", max_retries=0)
    yield client
    await client.close()


def stats(url: str) -> dict[str, Any]:
    return httpx.get(f"{url}/_sim/stats").json()  # type: ignore[no-any-return]


def set_fault(url: str, fault: object) -> httpx.Response:
    return httpx.post(f"{url}/_sim/fault", json=fault)


def fault_of(url: str) -> object:
    return httpx.get(f"{url}/_sim/fault").json()["fault"]


def post(url: str, request: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{url}/v1/messages", json=request, headers={"x-api-key": "k"})


# Rate limits


def test_requests_and_tokens_count_down_in_claudes_headers_then_a_429(
    simulate: Callable[..., str],
) -> None:
    url = simulate("--rpm", "3", "--tpm", "100000", "--rate-window", "30")
    requests = [body(unique(f"Limited {i} [[sim:tokens=4]]"), max_tokens=50 + i) for i in range(3)]
    requests[1]["stream"] = True  # a stream carries them as a message does
    before = time.time()
    answers = [post(url, r) for r in requests]
    spent = 0
    for i, (request, answer) in enumerate(zip(requests, answers, strict=True)):
        assert answer.status_code == 200
        spent += admitted_tokens(request)
        got = {h: answer.headers[h] for h in LIMIT_HEADERS}
        assert got["anthropic-ratelimit-requests-limit"] == "3"
        assert got["anthropic-ratelimit-requests-remaining"] == str(2 - i)
        assert got["anthropic-ratelimit-tokens-limit"] == "100000"
        assert got["anthropic-ratelimit-tokens-remaining"] == str(100000 - spent)
        assert got["anthropic-ratelimit-tokens-reset"] == got["anthropic-ratelimit-requests-reset"]
    resets = {a.headers["anthropic-ratelimit-requests-reset"] for a in answers}
    assert len(resets) == 1  # one fixed window, opened by the first request
    reset = epoch(resets.pop())

    sdk = anthropic.Anthropic(base_url=url, api_key="k", max_retries=0)
    with pytest.raises(anthropic.RateLimitError) as limited:
        sdk.messages.create(**body(unique("One too many")))
    after = time.time()
    assert math.ceil(before + 30) <= reset <= math.ceil(after + 30)
    refused = limited.value.response
    assert limited.value.type == "rate_limit_error"
    assert refused.headers["anthropic-ratelimit-requests-remaining"] == "0"
    assert refused.headers["anthropic-ratelimit-tokens-remaining"] == str(100000 - spent)
    assert refused.headers["anthropic-ratelimit-requests-reset"] == time.strftime(
        "%Y-%m-%dT%H:%M:%SZ", time.gmtime(reset)
    )
    # Whole seconds until the window ends, as seen between the first request and now.
    retry_after = int(refused.headers["retry-after"])
    assert math.floor(before + 30 - after) <= retry_after <= 30
    # A refused request counts nothing: the next is refused the same way.
    again = post(url, body(unique("Still too many")))
    assert again.status_code == 429
    assert again.headers["anthropic-ratelimit-tokens-remaining"] == str(100000 - spent)
    counted = stats(url)
    assert counted["statuses"] == {"200": 3, "429": 2}
    assert counted["by_model"] == {MODEL: 5} and counted["requests"] == 5


def test_a_token_limit_alone_counts_input_and_max_tokens(simulate: Callable[..., str]) -> None:
    url = simulate("--tpm", "300")
    first, second, third = (body(unique(f"Tokens {i}"), max_tokens=100) for i in range(3))
    one = post(url, first)
    assert one.status_code == 200
    assert not any(h.startswith("anthropic-ratelimit-requests") for h in one.headers)
    assert one.headers["anthropic-ratelimit-tokens-limit"] == "300"
    left = 300 - admitted_tokens(first)
    assert one.headers["anthropic-ratelimit-tokens-remaining"] == str(left)
    two = post(url, second)
    left -= admitted_tokens(second)
    assert two.status_code == 200 and left < admitted_tokens(third)
    assert two.headers["anthropic-ratelimit-tokens-remaining"] == str(left)
    three = post(url, third)
    assert_sim_error(three, 429, "rate_limit_error")
    assert three.headers["anthropic-ratelimit-tokens-remaining"] == "0"
    assert "request tokens" in three.json()["error"]["message"]
    assert 1 <= int(three.headers["retry-after"]) <= 60


def test_a_window_that_ran_out_admits_again(simulate: Callable[..., str]) -> None:
    url = simulate("--rpm", "1", "--rate-window", "3")
    assert post(url, body(unique("First"))).status_code == 200
    refused = post(url, body(unique("Second")))
    assert refused.status_code == 429 and 1 <= int(refused.headers["retry-after"]) <= 3
    refusals = 1

    def admitted() -> httpx.Response | None:
        nonlocal refusals
        answer = post(url, body(unique("Later")))
        if answer.status_code == 429:
            refusals += 1
            return None
        return answer

    later = eventually(admitted, what="the next window to admit a request", within=10)
    assert later is not None
    assert later.status_code == 200
    assert later.headers["anthropic-ratelimit-requests-remaining"] == "0"
    assert stats(url)["statuses"] == {"200": 2, "429": refusals}


def test_no_limits_no_headers(sim: str) -> None:
    answer = post(sim, body(unique("Unlimited")))
    assert answer.status_code == 200
    assert not any(h.startswith("anthropic-ratelimit") for h in answer.headers)


# Faults from the control route


async def test_a_fault_for_a_count_of_requests(sim: str, sdk: anthropic.AsyncAnthropic) -> None:
    fault = set_fault(sim, {"status": 529, "count": 3})
    assert fault.json() == {"fault": {"status": 529, "retry_after": 1, "count": 3}}
    prompt = unique("Overloaded for three")
    for left in (2, 1, 0):
        with pytest.raises(anthropic.InternalServerError) as overloaded:
            await sdk.messages.create(**body(prompt))
        assert overloaded.value.status_code == 529 and overloaded.value.type == "overloaded_error"
        assert overloaded.value.response.headers["retry-after"] == "1"
        shown = fault_of(sim)
        assert shown == ({"status": 529, "retry_after": 1, "count": left} if left else None)
    message = await sdk.messages.create(**body(prompt))
    assert message.content[0].type == "text"
    assert message.content[0].text == Simulator().plan(body(prompt)).text
    assert stats(sim)["statuses"] == {"529": 3, "200": 1}


async def test_retry_after_is_sent_as_asked_and_a_5xx_has_none_by_default(
    sim: str, sdk: anthropic.AsyncAnthropic
) -> None:
    assert set_fault(sim, {"status": 500}).status_code == 200
    with pytest.raises(anthropic.InternalServerError) as failed:
        await sdk.messages.create(**body(unique("A 500")))
    assert failed.value.status_code == 500 and failed.value.type == "api_error"
    assert "retry-after" not in failed.value.response.headers
    set_fault(sim, {"status": 503, "count": 1, "retry_after": 2})
    with pytest.raises(anthropic.InternalServerError) as unavailable:
        await sdk.messages.create(**body(unique("A 503")))
    assert unavailable.value.response.headers["retry-after"] == "2"
    set_fault(sim, {"status": 429, "count": 1})
    with pytest.raises(anthropic.RateLimitError) as limited:
        await sdk.messages.create(**body(unique("A 429")))
    assert limited.value.response.headers["retry-after"] == "1"


def test_a_fault_for_some_seconds_then_the_next_request_is_whole(sim: str) -> None:
    assert set_fault(sim, {"status": 529, "seconds": 2}).status_code == 200
    prompt = unique("Overloaded for a while")
    first = post(sim, body(prompt))
    assert_sim_error(first, 529, "overloaded_error")
    overloaded = 1

    def recovered() -> httpx.Response | None:
        nonlocal overloaded
        answer = post(sim, body(prompt))
        if answer.status_code == 529:
            overloaded += 1
            return None
        return answer

    answer = eventually(recovered, what="the fault to run out", within=10)
    assert answer is not None
    assert answer.status_code == 200
    assert answer.json()["content"][0]["text"] == Simulator().plan(body(prompt)).text
    assert fault_of(sim) is None
    assert stats(sim)["statuses"] == {"529": overloaded, "200": 1}


async def test_drop_after_cuts_exactly_the_next_stream_after_five_deltas(
    sim: str, sdk: anthropic.AsyncAnthropic
) -> None:
    # The route's break replaces the prompt's: this stream is cut after 5, not 2.
    prompt = unique("Cut on one deployment [[sim:error_after=2]] [[sim:fail_times=1]]")
    planned = Simulator().plan(body(prompt)).deltas
    assert set_fault(sim, {"drop_after": 5, "count": 1}).json() == {
        "fault": {"drop_after": 5, "count": 1}
    }
    # A message that is not streamed has nothing to cut: it leaves the fault for a stream.
    whole = await sdk.messages.create(**body(unique("Not streamed")))
    assert whole.stop_reason == "end_turn"
    texts: list[str] = []
    with pytest.raises((httpx2.TransportError, anthropic.APIConnectionError)):
        async with sdk.messages.stream(**body(prompt)) as stream:
            async for text in stream.text_stream:
                texts.append(text)
    assert texts == planned[:5]
    assert fault_of(sim) is None
    # The next stream is whole (the prompt's own fault was spent by the first attempt).
    async with sdk.messages.stream(**body(prompt)) as stream:
        again = [text async for text in stream.text_stream]
        message = await stream.get_final_message()
    assert again == planned and message.stop_reason == "end_turn"
    counted = stats(sim)
    assert counted["statuses"] == {"200": 3}
    assert counted["completed"] == 2 and counted["errors"] == 1


async def test_error_after_sends_claudes_error_event_after_five_deltas(
    sim: str, sdk: anthropic.AsyncAnthropic
) -> None:
    prompt = unique("Overloaded mid-answer")
    set_fault(sim, {"error_after": 5})
    texts: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as info:
        async with sdk.messages.stream(**body(prompt)) as stream:
            async for text in stream.text_stream:
                texts.append(text)
    assert info.value.type == "overloaded_error"
    assert texts == Simulator().plan(body(prompt)).deltas[:5]


@pytest.mark.parametrize(
    "fault",
    [
        [],
        {},
        {"status": 200},
        {"status": 529, "count": 0},
        {"status": "529"},
        {"status": True},
        {"drop_after": -1},
        {"status": 529, "drop_after": 3},
        {"status": 529, "seconds": 1, "count": 1},
        {"status": 529, "seconds": 0},
        {"drop_after": 3, "retry_after": 1},
        {"status": 529, "later": True},
    ],
)
def test_a_bad_fault_is_claudes_400_and_changes_nothing(sim: str, fault: object) -> None:
    set_fault(sim, {"status": 500, "count": 2})
    assert_sim_error(set_fault(sim, fault), 400, "invalid_request_error")
    assert fault_of(sim) == {"status": 500, "count": 2}


def test_a_body_that_is_not_json_is_a_400_and_delete_clears_the_fault(sim: str) -> None:
    set_fault(sim, {"status": 529, "count": 5})
    bad = httpx.post(f"{sim}/_sim/fault", content=b"{nope")
    assert_sim_error(bad, 400, "invalid_request_error")
    assert httpx.delete(f"{sim}/_sim/fault").json() == {"fault": None}
    assert post(sim, body(unique("Healthy again"))).status_code == 200


# Models, stats and reset


def test_only_the_models_served_are_answered(simulate: Callable[..., str]) -> None:
    url = simulate("--models", "claude-haiku-4-5,claude-sonnet-4-5")
    for model in ("claude-haiku-4-5", "claude-sonnet-4-5"):
        assert post(url, {**body(unique("Served")), "model": model}).status_code == 200
    sdk = anthropic.Anthropic(base_url=url, api_key="k", max_retries=0)
    with pytest.raises(anthropic.NotFoundError) as missing:
        sdk.messages.create(**{**body(unique("Not served")), "model": "claude-opus-4-8"})
    assert missing.value.type == "not_found_error"
    with pytest.raises(anthropic.NotFoundError):
        sdk.messages.count_tokens(
            model="claude-opus-4-8", messages=[{"role": "user", "content": "x"}]
        )
    counted = stats(url)
    assert counted["by_model"] == {"claude-haiku-4-5": 1, "claude-sonnet-4-5": 1,
                                   "claude-opus-4-8": 1}  # fmt: skip
    assert counted["statuses"] == {"200": 2, "404": 1}


def test_an_unknown_model_to_serve_stops_the_simulator_at_start() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tokenrelay", "simulate", "--models", "claude-haiku-4-5,claude-x"],
        cwd=ROOT, capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert b"unknown model claude-x" in done.stderr


def test_stats_count_every_request_by_model_and_status_and_reset_zeroes_them(
    simulate: Callable[..., str],
) -> None:
    url = simulate("--rpm", "4")
    requests = [
        body(unique("Counted")),
        {**body(unique("Counted")), "model": "claude-sonnet-4-5", "stream": True},
        {**body(unique("Counted")), "model": "claude-nope"},
        {**body(unique("Counted [[sim:status=500]]")), "model": "claude-sonnet-4-5"},
    ]
    assert [post(url, r).status_code for r in requests] == [200, 200, 404, 500]
    set_fault(url, {"status": 529, "count": 1})
    assert post(url, body(unique("Down"))).status_code == 529  # counted nothing
    assert httpx.post(f"{url}/v1/messages", content=b"not json").status_code == 400
    assert post(url, body(unique("Over"))).status_code == 429
    counted = stats(url)
    assert counted["by_model"] == {MODEL: 3, "claude-sonnet-4-5": 2, "claude-nope": 1}
    assert counted["statuses"] == {"200": 2, "404": 1, "500": 1, "529": 1, "400": 1, "429": 1}
    assert counted["requests"] == 7 and counted["completed"] == 2 and counted["errors"] == 5

    set_fault(url, {"status": 529, "count": 1})
    assert httpx.post(f"{url}/_sim/reset").status_code == 200
    assert stats(url) == {
        "requests": 0, "active": 0, "completed": 0, "disconnected": 0, "errors": 0,
        "by_model": {}, "statuses": {},
    }  # fmt: skip
    # The fault is gone and the window starts again: the full budget is there.
    fresh = post(url, body(unique("After the reset")))
    assert fresh.status_code == 200
    assert fresh.headers["anthropic-ratelimit-requests-remaining"] == "3"
    assert stats(url)["statuses"] == {"200": 1}
