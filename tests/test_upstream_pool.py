"""The upstream pool over real sockets: several `tokenrelay simulate` processes as the
deployments of one gateway (tests/support/pool.py), each answer compared with a
simulator's direct one, each deployment's calls counted by its own `/_sim/stats`.

Smooth weighted round-robin is deterministic, so every count here is exact: each test
has a gateway of its own (the balancer's running scores start at zero) and says, step
by step, which deployment each call goes to and why."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import (
    assert_error,
    assert_whole_answer,
    direct_text,
    eventually,
    log_events,
    start,
    unique,
)
from tests.support.metrics import scrape
from tests.support.pool import Deployment, Sim, run_gateway, simulators

HAIKU = "claude-haiku-4-5"


@pytest.fixture(scope="module")
def sims(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Sim]]:
    """east and west (unlimited), tiny (two requests a 3 s window), and oracle, which
    no gateway calls: the direct answers come from it, leaving the others' counts alone."""
    tmp = tmp_path_factory.mktemp("pool")
    with simulators(tmp) as start_sim:
        yield {
            "east": start_sim("east"),
            "west": start_sim("west"),
            "tiny": start_sim("tiny", "--rpm", "2", "--rate-window", "3"),
            "oracle": start_sim("oracle"),
        }


@pytest.fixture
def east(sims: dict[str, Sim]) -> Sim:
    sims["east"].reset()
    return sims["east"]


@pytest.fixture
def west(sims: dict[str, Sim]) -> Sim:
    sims["west"].reset()
    return sims["west"]


@pytest.fixture
def tiny(sims: dict[str, Sim]) -> Sim:
    sims["tiny"].reset()
    return sims["tiny"]


@pytest.fixture
def oracle(sims: dict[str, Sim]) -> str:
    return sims["oracle"].url


async def ask(gateway: str, prompt: str, **body: Any) -> Any:
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as client:
        return await start(client, {"prompt": prompt, "model": HAIKU, **body})


def answered(*sims: Sim) -> list[int]:
    return [sim.answered() for sim in sims]


async def test_calls_spread_by_weight_exactly(tmp_path: Path, east: Sim, west: Sim) -> None:
    """Weights 3 and 1: every four calls, east, east, west, east (smooth weighted
    round-robin, as nginx spreads them), so 8 calls are 6 and 2."""
    with run_gateway(tmp_path, [Deployment(east, weight=3), Deployment(west, weight=1)]) as gw:
        seen = []
        for i in range(8):
            read = await ask(gw.url, unique(f"Spread {i} [[sim:tokens=3]]"))
            assert read.events[-1].data["done"] is True
            seen.append(answered(east, west))
        assert seen == [[1, 0], [2, 0], [2, 1], [3, 1], [4, 1], [5, 1], [5, 2], [6, 2]]
        assert east.statuses() == {"200": 6} and west.statuses() == {"200": 2}
        states = gw.upstreams()["deployments"]
        assert [(d["name"], d["state"], d["calls_1m"], d["errors_1m"]) for d in states] == [
            ("east", "healthy", 6, 0),
            ("west", "healthy", 2, 0),
        ]
        metrics = scrape(gw.url)
        for name, calls in (("east", 6), ("west", 2)):
            value = metrics.value
            assert (
                value("tokenrelay_upstream_attempts_total", deployment=name, outcome="ok") == calls
            )
            assert value("tokenrelay_upstream_in_flight", deployment=name) == 0
            assert value("tokenrelay_upstream_cooling", deployment=name) == 0


async def test_a_failing_deployment_is_cooled_and_the_request_moves_to_another(
    tmp_path: Path, east: Sim, west: Sim, oracle: str
) -> None:
    """east answers 529 for 2 s (retry-after 3): the first call meets it, east cools for
    3 s, and the same request is answered by west at once. While east cools, every call
    goes to west; after it, one probe goes back to east, and calls spread again."""
    with run_gateway(tmp_path, [Deployment(east), Deployment(west)]) as gw:
        east.fault(status=529, seconds=2, retry_after=3)
        words = unique("Moves within one request [[sim:tokens=12]]")
        read = await ask(gw.url, words)
        assert_whole_answer(read.events, await direct_text(oracle, words))
        assert east.statuses() == {"529": 1} and west.statuses() == {"200": 1}
        stream_id = read.events[0].stream_id
        cooldowns = log_events(gw.log_text(), "upstream_cooldown")
        assert [(c["deployment"], c["reason"], c["seconds"], c["failures"]) for c in cooldowns] == [
            ("east", "overloaded", "3", "1")
        ]
        retries = log_events(gw.log_text(), "upstream_retry")
        assert [(r["stream_id"], r["delay_s"], r["status"]) for r in retries] == [
            (stream_id, "0", "529")
        ]
        assert gw.states() == {"east": "cooling", "west": "healthy"}

        # The scores: east -1, west 1 after the first pick; west alone while east cools.
        for i in range(3):
            await ask(gw.url, unique(f"While east cools {i} [[sim:tokens=3]]"))
        assert east.statuses() == {"529": 1} and west.statuses() == {"200": 4}
        assert gw.states()["east"] == "cooling"

        eventually(lambda: gw.states()["east"] != "cooling", what="east's cool-down to end")
        assert log_events(gw.log_text(), "upstream_probe") == []
        # Scores east 0, west 2: west; then east 1, west 1: east, the probe; then again.
        seen = []
        for i in range(4):
            await ask(gw.url, unique(f"After the cool-down {i} [[sim:tokens=3]]"))
            seen.append(answered(east, west))
        assert seen == [[0, 5], [1, 5], [1, 6], [2, 6]]
        assert east.statuses() == {"529": 1, "200": 2}
        probes = log_events(gw.log_text(), "upstream_probe")
        assert [(p["deployment"], p["failures"]) for p in probes] == [("east", "1")]
        recovered = log_events(gw.log_text(), "upstream_recovered")
        assert [r["deployment"] for r in recovered] == ["east"]
        metrics = scrape(gw.url)
        assert (
            metrics.value(
                "tokenrelay_upstream_cooldowns_total", deployment="east", reason="overloaded"
            )
            == 1
        )
        assert (
            metrics.value("tokenrelay_upstream_probes_total", deployment="east", result="ok") == 1
        )
        assert (
            metrics.value("tokenrelay_upstream_attempts_total", deployment="east", outcome="error")
            == 1
        )
        assert gw.states() == {"east": "healthy", "west": "healthy"}


async def test_a_spent_rate_limit_is_not_called_until_its_window_resets(
    tmp_path: Path, east: Sim, tiny: Sim
) -> None:
    """tiny allows 2 requests a 3 s window and says so in its anthropic-ratelimit-*
    headers. Once they say 0 remain, the gateway calls east only, until the window's
    reset; then tiny again. With one call at a time the headers foresee every refusal:
    tiny answers no 429 at all."""
    with run_gateway(tmp_path, [Deployment(east), Deployment(tiny)]) as gw:
        seen = []
        for i in range(8):
            await ask(gw.url, unique(f"Tiny limit {i} [[sim:tokens=3]]"))
            seen.append(answered(east, tiny))
        # Scores (weight × the part of the limit left): east, tiny (1 of 2 left: 0.5),
        # east, tiny (0 left: spent); then east alone.
        assert seen == [[1, 0], [1, 1], [2, 1], [2, 2], [3, 2], [4, 2], [5, 2], [6, 2]]
        tiny_state = gw.upstreams()["deployments"][1]
        assert (tiny_state["state"], tiny_state["requests_remaining"]) == ("full", 0)
        assert tiny_state["requests_limit"] == 2

        eventually(lambda: gw.states()["tiny"] == "healthy", what="tiny's window to reset")
        # A reset window is whole again, though the last headers said 0: tiny weighs
        # as east does (scores east 0.5, tiny -0.5 here), then half once 1 of 2 is left.
        seen = []
        for i in range(4):
            await ask(gw.url, unique(f"Tiny again {i} [[sim:tokens=3]]"))
            seen.append(answered(east, tiny))
        assert seen == [[7, 2], [7, 3], [8, 3], [9, 3]]
        assert tiny.statuses() == {"200": 3}  # never a 429
        assert east.statuses() == {"200": 9}
        assert log_events(gw.log_text(), "upstream_cooldown") == []


# One attempt a request: a 529 ends it, so that each request below cools exactly one
# deployment (the balancer takes east first, then west, east being cool).
ONE_ATTEMPT = {"TOKENRELAY_UPSTREAM_RETRIES": "0"}


async def cool_both(gw: str, east: Sim, west: Sim) -> None:
    for i in range(2):
        read = await ask(gw, unique(f"Meets a 529 {i} [[sim:tokens=3]]"))
        final = read.events[-1].data
        assert (final["code"], final["retryable"]) == ("overloaded", True)
    assert east.statuses() == {"529": 1} and west.statuses() == {"529": 1}


async def test_every_deployment_cooling_for_long_is_a_503_with_no_upstream_call(
    tmp_path: Path, east: Sim, west: Sim
) -> None:
    with run_gateway(tmp_path, [Deployment(east), Deployment(west)], **ONE_ATTEMPT) as gw:
        for sim in (east, west):
            sim.fault(status=529, seconds=30, retry_after=30)
        await cool_both(gw.url, east, west)
        states = gw.upstreams()["deployments"]
        assert [(d["state"], d["reason"], d["failures"]) for d in states] == [
            ("cooling", "overloaded", 1), ("cooling", "overloaded", 1)
        ]  # fmt: skip
        async with httpx.AsyncClient(base_url=gw.url, timeout=30) as client:
            body = {"prompt": unique("Nobody can take it"), "model": HAIKU}
            response = await client.post("/api/stream-response", json=body)
        message = assert_error(response, 503, "overloaded_error")
        assert message == f"Every upstream deployment for {HAIKU} is cooling down; retry shortly"
        # The earlier cool-down's 30 s, less the moment since it began.
        assert int(response.headers["retry-after"]) in (29, 30)
        assert east.statuses() == {"529": 1} and west.statuses() == {"529": 1}
        metrics = scrape(gw.url)
        for name in ("east", "west"):
            assert metrics.value("tokenrelay_upstream_cooling", deployment=name) == 1
            assert (
                metrics.value(
                    "tokenrelay_upstream_cooldowns_total", deployment=name, reason="overloaded"
                )
                == 1
            )
        assert log_events(gw.log_text(), "upstream_wait") == []


async def test_a_short_cool_down_of_every_deployment_is_waited_out(
    tmp_path: Path, east: Sim, west: Sim, oracle: str
) -> None:
    """Both cool for 1 s (the 529's retry-after), less than a new request may wait
    (TOKENRELAY_UPSTREAM_WAIT, 5 s): the request waits, calls nothing meanwhile, and is
    answered by one call once a deployment is back."""
    with run_gateway(tmp_path, [Deployment(east), Deployment(west)], **ONE_ATTEMPT) as gw:
        for sim in (east, west):
            sim.fault(status=529, count=1, retry_after=1)
        await cool_both(gw.url, east, west)
        words = unique("Waits for a deployment [[sim:tokens=8]]")
        read = await ask(gw.url, words)
        assert_whole_answer(read.events, await direct_text(oracle, words))
        assert east.answered() + west.answered() == 1  # one call, the probe that answered
        assert east.statuses().get("529") == 1 and west.statuses().get("529") == 1
        waits = log_events(gw.log_text(), "upstream_wait")
        assert [w["stream_id"] for w in waits] == [read.events[0].stream_id]
        assert 0 < float(waits[0]["delay_s"]) <= 1


async def test_a_stream_cut_mid_answer_is_continued_on_another_deployment(
    tmp_path: Path, east: Sim, west: Sim, oracle: str
) -> None:
    """east cuts its next stream after 5 deltas; the answer goes on from west with the
    text so far as a prefill (claude-haiku-4-5 takes one): one seamless text, no reset."""
    with run_gateway(tmp_path, [Deployment(east), Deployment(west)]) as gw:
        east.fault(drop_after=5, count=1)
        words = unique("Cut on one, finished on the other [[sim:tokens=16]]")
        read = await ask(gw.url, words)
        assert_whole_answer(read.events, await direct_text(oracle, words))
        assert not any("reset" in e.data for e in read.events)
        assert (east.stats()["requests"], east.stats()["completed"]) == (1, 0)
        assert (west.stats()["requests"], west.stats()["completed"]) == (1, 1)
        continuations = log_events(gw.log_text(), "continuation")
        assert [(c["stream_id"], c["mode"], c["attempt"]) for c in continuations] == [
            (read.events[0].stream_id, "prefill", "1")
        ]
        # A cut is the connection's fault, not the deployment's: east is not cooled.
        assert gw.states() == {"east": "healthy", "west": "healthy"}
        metrics = scrape(gw.url)
        assert (
            metrics.value("tokenrelay_upstream_attempts_total", deployment="east", outcome="cut")
            == 1
        )
        assert (
            metrics.value("tokenrelay_upstream_attempts_total", deployment="west", outcome="ok")
            == 1
        )
