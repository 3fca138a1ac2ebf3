"""Model fallbacks over real simulators: deployment `sonnet` serves claude-sonnet-4-6
and is overloaded (529, retry-after 60: longer than the gateway waits for one),
deployment `haiku` serves claude-haiku-4-5 only, and claude-sonnet-4-6 falls back to
claude-haiku-4-5. A request for sonnet is answered by haiku, named and priced as haiku,
in the ledger as asked for one model and served by the other; a request that opts out
is not."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest

from tests.support import (
    Read,
    assert_error,
    assert_whole_answer,
    direct_text,
    eventually,
    log_events,
    start,
    unique,
)
from tests.support.metrics import scrape
from tests.support.pool import Deployment, PoolGateway, Sim, run_gateway, simulators

SONNET, HAIKU = "claude-sonnet-4-6", "claude-haiku-4-5"
# USD per million tokens (tokenrelay/pricing.py): input, output.
PRICES = {SONNET: (3.0, 15.0), HAIKU: (1.0, 5.0)}


@dataclass
class Fallbacks:
    gw: PoolGateway
    sonnet: Sim
    haiku: Sim
    oracle: str
    cooled: Read  # the opted-out request that met sonnet's 529 first

    def calls(self) -> tuple[dict[str, int], dict[str, int]]:
        return self.sonnet.statuses(), self.haiku.statuses()


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fallbacks]:
    tmp = tmp_path_factory.mktemp("fallbacks")
    with simulators(tmp) as start_sim:
        sonnet, haiku = start_sim("sonnet"), start_sim("haiku", "--models", HAIKU)
        oracle = start_sim("oracle")
        deployments = [Deployment(sonnet, models=[SONNET]), Deployment(haiku, models=[HAIKU])]
        with run_gateway(
            tmp, deployments, fallbacks={SONNET: [HAIKU]},
            TOKENRELAY_DATABASE_URL=f"sqlite+aiosqlite:///{tmp}/usage.db",
        ) as gw:  # fmt: skip
            sonnet.fault(status=529, seconds=120, retry_after=60)
            # The first request meets the 529 and cools sonnet; it opts out of fallbacks,
            # so that which test runs first does not change what the others see.
            cooled = _ask_sync(gw.url, unique("Cools sonnet [[sim:tokens=4]]"), fallback=False)
            yield Fallbacks(gw, sonnet, haiku, oracle.url, cooled)


def _ask_sync(gateway: str, prompt: str, **body: Any) -> Read:
    import asyncio

    return asyncio.run(ask(gateway, prompt, **body))


async def ask(
    gateway: str, prompt: str, headers: dict[str, str] | None = None, **body: Any
) -> Read:
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as client:
        return await start(client, {"prompt": prompt, "model": SONNET, **body}, headers=headers)


def cost(model: str, usage: dict[str, int]) -> float:
    per_input, per_output = PRICES[model]
    return round((usage["input_tokens"] * per_input + usage["output_tokens"] * per_output) / 1e6, 8)


def test_an_opted_out_request_that_meets_the_529_ends_with_a_retryable_error(
    pool: Fallbacks,
) -> None:
    """Its only model's deployment asks for 60 s, longer than the gateway waits
    (TOKENRELAY_RETRY_AFTER_CEILING, 30 s): the stream ends, retryable, no text."""
    events = pool.cooled.events
    assert [e.data for e in events[1:]] == [
        {"error": events[-1].data["error"], "code": "overloaded", "retryable": True,
         "usage": {"input_tokens": 0, "output_tokens": 0}, "cost_usd": 0.0}
    ]  # fmt: skip
    assert pool.calls() == ({"529": 1}, {})
    assert pool.gw.states() == {"sonnet": "cooling", "haiku": "healthy"}


async def test_a_request_for_an_overloaded_model_is_answered_by_its_fallback(
    pool: Fallbacks,
) -> None:
    before = scrape(pool.gw.url)
    calls_before = pool.calls()
    words = unique("Answered by the fallback [[sim:tokens=9]]")
    read = await ask(pool.gw.url, words)
    assert_whole_answer(read.events, await direct_text(pool.oracle, words, model=HAIKU))
    done = read.events[-1].data
    assert done["model"] == HAIKU
    assert done["cost_usd"] == cost(HAIKU, done["usage"]) != cost(SONNET, done["usage"])
    assert done["usage"]["output_tokens"] == 9
    # sonnet is cooling: nothing more was sent to it; haiku answered once.
    assert pool.calls() == (calls_before[0], {"200": calls_before[1].get("200", 0) + 1})
    stream_id = read.events[0].stream_id
    fallbacks = log_events(pool.gw.log_text(), "model_fallback")
    assert [f for f in fallbacks if f["stream_id"] == stream_id] == [
        {"event": "model_fallback", "stream_id": stream_id, "requested": SONNET,
         "served": HAIKU, "deployment": "haiku"}
    ]  # fmt: skip
    moved = scrape(pool.gw.url).moved_since(before)
    assert moved[("tokenrelay_model_fallbacks_total",
                  (("requested", SONNET), ("served", HAIKU)))] == 1  # fmt: skip

    def ledger_row() -> dict[str, Any] | None:
        rows = httpx.get(f"{pool.gw.url}/api/usage").json()["rows"]
        return next((r for r in rows if r["stream_id"] == stream_id), None)

    row = eventually(ledger_row, what="the stream's ledger row")
    assert (row["model"], row["served_model"], row["status"]) == (SONNET, HAIKU, "done")
    assert (row["input_tokens"], row["output_tokens"]) == (
        done["usage"]["input_tokens"],
        done["usage"]["output_tokens"],
    )
    assert row["cost_usd"] == done["cost_usd"]


async def test_the_request_that_meets_the_529_falls_back_at_once(
    pool: Fallbacks, tmp_path: Path
) -> None:
    """A gateway that has not seen sonnet fail calls it, gets the 529 and a 20 s
    retry-after, and the same request goes on with the fallback at once, rather than
    wait the 20 s out for sonnet."""
    deployments = [Deployment(pool.sonnet, models=[SONNET]), Deployment(pool.haiku, models=[HAIKU])]
    pool.sonnet.fault(status=529, seconds=120, retry_after=20)
    with run_gateway(tmp_path, deployments, fallbacks={SONNET: [HAIKU]}) as fresh:
        (sonnet_before, haiku_before) = pool.calls()
        words = unique("Meets the 529, then falls back [[sim:tokens=7]]")
        read = await ask(fresh.url, words)
        assert_whole_answer(read.events, await direct_text(pool.oracle, words, model=HAIKU))
        assert read.events[-1].data["model"] == HAIKU
        assert pool.calls() == (
            {"529": sonnet_before["529"] + 1},
            {"200": haiku_before.get("200", 0) + 1},
        )
        retries = log_events(fresh.log_text(), "upstream_retry")
        assert [(r["delay_s"], r["status"]) for r in retries] == [("0", "529")]
        assert fresh.states() == {"sonnet": "cooling", "haiku": "healthy"}
    pool.sonnet.fault(status=529, seconds=120, retry_after=60)


@pytest.mark.parametrize("opt_out", ["body", "header"])
def test_a_request_that_opts_out_is_refused_while_its_model_cools(
    pool: Fallbacks, opt_out: str
) -> None:
    """`"fallback": false` or `X-Tokenrelay-Fallback: off`: sonnet's deployment cools for
    longer than a new request may wait (TOKENRELAY_UPSTREAM_WAIT, 5 s), so it is a 503
    before any stream exists, and nothing is called."""
    calls_before = pool.calls()
    body: dict[str, Any] = {"prompt": unique("Sonnet or nothing"), "model": SONNET}
    headers = {}
    if opt_out == "body":
        body["fallback"] = False
    else:
        headers["X-Tokenrelay-Fallback"] = "off"
    response = httpx.post(f"{pool.gw.url}/api/stream-response", json=body, headers=headers)
    message = assert_error(response, 503, "overloaded_error")
    assert message == f"Every upstream deployment for {SONNET} is cooling down; retry shortly"
    # The deployment's 60 s, less what has passed since the first request met it.
    assert 1 <= int(response.headers["retry-after"]) <= 60
    assert pool.calls() == calls_before


async def test_the_sdk_names_the_model_that_answered(pool: Fallbacks) -> None:
    """/v1/messages through the official SDK, streamed and not: message.model is the
    fallback's; with the header, the SDK gets the 503."""
    sdk = anthropic.AsyncAnthropic(base_url=pool.gw.url, api_key="unused", max_retries=0)
    words = unique("The SDK asks sonnet [[sim:tokens=6]]")
    expected = await direct_text(pool.oracle, words, model=HAIKU)
    messages: Any = [{"role": "user", "content": words}]
    async with sdk.messages.stream(model=SONNET, max_tokens=100, messages=messages) as stream:
        streamed = await stream.get_final_message()
    assert streamed.model == HAIKU
    assert "".join(b.text for b in streamed.content if b.type == "text") == expected
    words = unique("The SDK asks sonnet, whole [[sim:tokens=6]]")
    whole = await sdk.messages.create(
        model=SONNET, max_tokens=100, messages=[{"role": "user", "content": words}]
    )
    assert whole.model == HAIKU
    assert "".join(b.text for b in whole.content if b.type == "text") == await direct_text(
        pool.oracle, words, model=HAIKU
    )
    calls_before = pool.calls()
    with pytest.raises(anthropic.APIStatusError) as refused:
        await sdk.messages.create(
            model=SONNET, max_tokens=100, messages=[{"role": "user", "content": unique("No")}],
            extra_headers={"X-Tokenrelay-Fallback": "off"},
        )  # fmt: skip
    assert refused.value.status_code == 503
    assert pool.calls() == calls_before
    await sdk.close()
