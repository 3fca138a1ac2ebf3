"""Metrics and log events of a mixed workload on a real gateway: successes, a 529
retried, mid-stream failures continued, a 429 from a rate limit, a resume after a
disconnect, cancels, a queue that holds one request and turns the next away. Every
counter that moved moved by exactly what the workload did; every log event it caused
is there with its fields; no log line holds a prompt, an answer or a key.

The workload runs once (a module fixture); each test reads what it left."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import (
    FAST_GATEWAY_ENV,
    Read,
    Stack,
    assert_error,
    eventually_async,
    free_port,
    log_events,
    log_lines,
    resume,
    run_stack,
    start,
    text_of,
    unique,
)
from tests.support.auth import create_key
from tests.support.clock import fresh_minute, not_at_midnight
from tests.support.metrics import Key, Scrape, key, scrape
from tokenrelay import __version__
from tokenrelay.admission.budgets import dollars
from tokenrelay.simulator.engine import Simulator

MODEL = "claude-haiku-4-5"
VERSION = __version__
API = {"route": "api", "model": MODEL}
DONE = ["plain", "short", "retried", "dropped", "errored", "limited", "resumed", "waiting"]
CANCELLED = ["cancelled", "running"]


class Run:
    """The workload's client and what it saw; every request has its own X-Request-ID."""

    def __init__(self, stack: Stack, client: httpx.AsyncClient, keys: dict[str, str]) -> None:
        self.stack = stack
        self.client = client
        self.keys = keys
        self.streams: dict[str, str] = {}  # name -> stream id
        self.request_ids: dict[str, str] = {}  # name -> the id of the request that started it
        self.resumes: dict[str, tuple[str, int]] = {}  # name -> (the resume's id, after)
        self.finals: dict[str, dict[str, Any]] = {}  # name -> its final event
        self.prompts: list[str] = []
        self.answers: list[str] = []
        self.requests = 0

    def headers(self, user: str = "alice") -> dict[str, str]:
        self.requests += 1
        return {"x-api-key": self.keys[user], "X-Request-ID": f"req-metrics-{self.requests}"}

    async def stream(
        self, name: str, words: str, directives: str, user: str = "alice", **kw: Any
    ) -> Read:
        prompt = f"{unique(words)} {directives}"
        self.prompts.append(prompt)
        headers = self.headers(user)
        self.request_ids[name] = headers["X-Request-ID"]
        read = await start(self.client, {"prompt": prompt}, headers=headers, **kw)
        assert read.headers["x-request-id"] == headers["X-Request-ID"]
        self.streams[name] = read.events[0].stream_id
        self._read(name, read)
        return read

    async def resume(self, name: str, head: Read) -> None:
        headers = self.headers()
        tail = await resume(self.client, head.last_id, headers=headers)
        assert tail.headers["x-request-id"] == headers["X-Request-ID"]
        self.resumes[name] = (headers["X-Request-ID"], head.events[-1].seq)
        self._read(name, tail, head)

    async def cancel(self, name: str) -> None:
        stream_id = self.streams[name]
        cancelled = await self.client.delete(f"/api/streams/{stream_id}", headers=self.headers())
        assert cancelled.json() == {"stream_id": stream_id, "cancelled": True}

    async def started(self, name: str) -> str:
        """A stream's id while its request still reads it: its `stream_start` event."""

        def from_log() -> str | None:
            rid = self.request_ids.get(name)
            for line in log_lines(self.stack.log_text()):
                if line["event"] == "stream_start" and line["request_id"] == rid:
                    return str(line["stream_id"])
            return None

        self.streams[name] = await eventually_async(from_log, what=f"{name} to start")
        return self.streams[name]

    def _read(self, name: str, read: Read, head: Read | None = None) -> None:
        final = read.events[-1].data
        if "done" in final or "error" in final:
            self.finals[name] = final
            self.answers.append(text_of((head.events if head else []) + read.events))

    def metrics(self) -> Scrape:
        return scrape(self.stack.gateway, self.keys["ops"])


async def run_workload(run: Run) -> Scrape:
    """Everything but the queue, one request after another."""
    await run.stream("plain", "Telemetry plain", "[[sim:tokens=12]]")
    await run.stream("short", "Telemetry short", "[[sim:tokens=8]]")
    await run.stream("retried", "Telemetry overloaded", "[[sim:status=529]] [[sim:fail_times=1]]")
    await run.stream(
        "dropped",
        "Telemetry dropped",
        "[[sim:tokens=20]] [[sim:drop_after=6]] [[sim:fail_times=1]]",
    )
    await run.stream(
        "errored", "Telemetry error event",
        "[[sim:tokens=16]] [[sim:error_after=5]] [[sim:fail_times=1]]",
    )  # fmt: skip
    fresh_minute(10)  # the limited user's two requests fall in one minute
    await run.stream("limited", "Telemetry limited", "[[sim:tokens=5]]", user="limited")
    refused = await run.client.post(
        "/api/stream-response", json={"prompt": unique("Telemetry over the limit")},
        headers=run.headers("limited"),
    )  # fmt: skip
    message = assert_error(refused, 429, "rate_limit_error")
    assert message == "Rate limit exceeded: 1 requests per minute"
    # A client that hangs up mid-answer, then resumes it.
    head = await run.stream(
        "resumed", "Telemetry resumed", "[[sim:tokens=20]] [[sim:tps=20]]", stop_after=4
    )
    await run.resume("resumed", head)
    # A client that hangs up, cancels its stream, and reads how it ended.
    head = await run.stream(
        "cancelled", "Telemetry cancelled", "[[sim:tokens=200]] [[sim:tps=20]]", stop_after=3
    )
    await run.cancel("cancelled")
    await run.resume("cancelled", head)
    return await queue(run)


async def queue(run: Run) -> Scrape:
    """One slot and one place in the queue: a long stream runs, the next one waits, the
    one after is turned away; then the long one is cancelled and the waiting one runs.
    Returns the scrape taken while one runs and one waits."""
    long = "[[sim:tokens=400]] [[sim:tps=20]]"
    running = asyncio.create_task(run.stream("running", "Telemetry holds the slot", long))
    await run.started("running")
    waiting = asyncio.create_task(run.stream("waiting", "Telemetry waits", "[[sim:tokens=10]]"))
    await eventually_async(
        lambda: run.metrics().value("tokenrelay_connected_readers") == 2, what="both readers"
    )
    during = await eventually_async(
        lambda: (m := run.metrics()).value("tokenrelay_queue_depth") == 1 and m,
        what="a stream in the queue",
    )
    turned_away = await run.client.post(
        "/api/stream-response", json={"prompt": unique("Telemetry no room")},
        headers=run.headers(),
    )  # fmt: skip
    message = assert_error(turned_away, 503, "overloaded_error")
    assert message == "At capacity and the queue is full; retry shortly"
    await run.cancel("running")
    await asyncio.gather(running, waiting)
    return during


@dataclass
class Workload:
    run: Run
    before: Scrape
    queueing: Scrape
    after: Scrape
    log: str

    def moved(self) -> dict[Key, float]:
        return self.after.moved_since(self.before)


def _settled(now: Scrape) -> Scrape | None:
    """The scrape once nothing runs or reads and the ledger has written every row."""
    gauges = ("active_streams", "connected_readers", "queue_depth", "ledger_backlog")
    return now if all(now.value(f"tokenrelay_{g}") == 0 for g in gauges) else None


@pytest.fixture(scope="module")
async def workload(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Workload]:
    tmp = tmp_path_factory.mktemp("metrics")
    keys_file = tmp / "keys.txt"
    keys = {
        "ops": create_key(keys_file, "ops", "--admin"),
        "alice": create_key(keys_file, "alice"),
        "limited": create_key(keys_file, "limited", "--rpm", "1"),
    }
    args = ["--auth", "api_key", "--api-keys-file", str(keys_file), "--access-log"]
    with run_stack(tmp, *args, TOKENRELAY_MAX_CONCURRENT="1", TOKENRELAY_QUEUE_SIZE="1") as stack:
        async with httpx.AsyncClient(base_url=stack.gateway, timeout=60) as client:
            run = Run(stack, client, keys)
            before = run.metrics()
            queueing = await run_workload(run)
            after = await eventually_async(lambda: _settled(run.metrics()), what="all to end")
    # The gateway has stopped: its log is complete, shutdown included.
    yield Workload(run, before, queueing, after, stack.log_text())


def _sum(workload: Workload, field: str) -> float:
    return sum(final["usage"][field] for final in workload.run.finals.values())


async def test_every_counter_moved_by_exactly_what_the_workload_did(workload: Workload) -> None:
    run = workload.run
    assert sorted(run.finals) == sorted(DONE + CANCELLED)
    assert [name for name in DONE if run.finals[name].get("done")] == DONE
    assert [run.finals[name]["code"] for name in CANCELLED] == ["cancelled", "cancelled"]
    assert workload.moved() == {
        key("tokenrelay_streams_started_total", **API): 10,
        key("tokenrelay_streams_completed_total", **API, status="done"): 8,
        key("tokenrelay_streams_completed_total", **API, status="cancelled"): 2,
        # Every request that started a stream got its first text (a resume does not count).
        key("tokenrelay_time_to_first_token_seconds_count", **API): 10,
        # One per upstream attempt with text: the 529 had none, the two breaks had two.
        key("tokenrelay_upstream_time_to_first_token_seconds_count", model=MODEL): 12,
        key("tokenrelay_stream_duration_seconds_count", **API): 10,
        key("tokenrelay_output_tokens_per_second_count", model=MODEL): 8,
        key("tokenrelay_tokens_total", model=MODEL, kind="input"): _sum(workload, "input_tokens"),
        key("tokenrelay_tokens_total", model=MODEL, kind="output"): _sum(workload, "output_tokens"),
        key("tokenrelay_cost_usd_total", model=MODEL): pytest.approx(
            sum(final["cost_usd"] for final in run.finals.values()), rel=1e-9
        ),
        key("tokenrelay_upstream_errors_total", type="overloaded_error"): 2,
        key("tokenrelay_upstream_errors_total", type="api_error"): 1,  # the dropped connection
        key("tokenrelay_upstream_retries_total", reason="overloaded_error"): 1,
        key("tokenrelay_continuations_total", reason="api_error"): 1,
        key("tokenrelay_continuations_total", reason="overloaded_error"): 1,
        key("tokenrelay_resumes_total"): 2,
        key("tokenrelay_client_disconnects_total"): 2,
        key("tokenrelay_rate_limited_total", scope="requests"): 1,
        key("tokenrelay_queue_wait_seconds_count"): 1,
        key("tokenrelay_queue_rejected_total", reason="full"): 1,
        # The one deployment: each call once, by how it ended; the 529 and the error
        # event cooled it down, and the next call, the retry or continuation, probed it.
        key("tokenrelay_upstream_attempts_total", deployment="default", outcome="ok"): 10,
        key("tokenrelay_upstream_attempts_total", deployment="default", outcome="error"): 1,
        key("tokenrelay_upstream_attempts_total", deployment="default", outcome="cut"): 2,
        key("tokenrelay_upstream_cooldowns_total", deployment="default", reason="overloaded"): 2,
        key("tokenrelay_upstream_probes_total", deployment="default", result="ok"): 2,
    }


async def test_gauges_show_the_queue_while_it_holds_a_request(workload: Workload) -> None:
    gauges = ("active_streams", "connected_readers", "queue_depth", "queue_capacity", "draining")
    during = {g: workload.queueing.value(f"tokenrelay_{g}") for g in gauges}
    after = {g: workload.after.value(f"tokenrelay_{g}") for g in gauges}
    assert during == {
        "active_streams": 2, "connected_readers": 2, "queue_depth": 1, "queue_capacity": 1,
        "draining": 0,
    }  # fmt: skip
    assert after == {**dict.fromkeys(gauges, 0), "queue_capacity": 1}
    assert workload.after.value("tokenrelay_build_info", version=VERSION) == 1


async def test_the_workload_logs_each_of_its_events_with_its_fields(workload: Workload) -> None:
    run, log = workload.run, workload.log
    ids = run.streams
    assert sorted(e["stream_id"] for e in log_events(log, "stream_start")) == sorted(ids.values())
    assert sorted(e["stream_id"] for e in log_events(log, "first_token")) == sorted(ids.values())
    complete = {e["stream_id"]: e for e in log_events(log, "stream_complete")}
    assert sorted(complete) == sorted(ids[name] for name in DONE)
    for name in DONE:
        final = run.finals[name]
        line = complete[ids[name]]
        assert (line["output_tokens"], line["stop_reason"]) == (
            str(final["usage"]["output_tokens"]), final["stop_reason"]
        )  # fmt: skip
    cancelled = log_events(log, "stream_cancelled")
    assert sorted(e["stream_id"] for e in cancelled) == sorted(ids[n] for n in CANCELLED)
    assert log_events(log, "stream_error") == []
    assert [(e["stream_id"], e["after"]) for e in log_events(log, "stream_resumed")] == [
        (ids["resumed"], "3"), (ids["cancelled"], "2"),
    ]  # fmt: skip
    retries = log_events(log, "upstream_retry")
    assert [(r["stream_id"], r["status"], r["error_type"]) for r in retries] == [
        (ids["retried"], "529", "overloaded_error")
    ]
    continuations = log_events(log, "continuation")
    assert [(c["stream_id"], c["error_type"]) for c in continuations] == [
        (ids["dropped"], "api_error"), (ids["errored"], "overloaded_error"),
    ]  # fmt: skip
    assert log_events(log, "reset") == []
    assert log_events(log, "rate_limited") == [
        {"event": "rate_limited", "scope": "requests", "principal": "limited", "limit": "1"}
    ]
    assert log_events(log, "queued") == [
        {"event": "queued", "stream_id": ids["waiting"], "position": "1"}
    ]
    assert log_events(log, "queue_rejected") == [{"event": "queue_rejected", "reason": "full"}]
    assert [e["event"] for e in log_events(log, "shutdown")] == ["shutdown"]


async def test_each_streams_lines_carry_the_request_id_that_started_it(
    workload: Workload,
) -> None:
    run = workload.run
    by_stream = {stream_id: name for name, stream_id in run.streams.items()}
    seen: dict[str, set[tuple[str, str]]] = {}
    for line in log_lines(workload.log):
        name = by_stream.get(line.get("stream_id", ""))
        if name is not None:
            seen.setdefault(name, set()).add((line["event"], line["request_id"]))
    for name, events in seen.items():
        started_by = run.request_ids[name]
        resumed_by = run.resumes.get(name, ("", 0))[0]
        # The resume request's own lines: its event, and its access line.
        expected_resume = {("stream_resumed", resumed_by), ("http_request", resumed_by)}
        assert {e for e in events if e[1] != started_by} == (
            expected_resume if resumed_by else set()
        ), name
        assert {"stream_start", "first_token", "http_request"} <= {
            event for event, rid in events if rid == started_by
        }, name


async def test_no_log_line_holds_a_prompt_an_answer_or_a_key(workload: Workload) -> None:
    run, log = workload.run, workload.log
    assert len(log_lines(log)) > 50 and len(run.answers) == 10
    secrets = [*run.keys.values(), FAST_GATEWAY_ENV["ANTHROPIC_API_KEY"]]
    secrets += [prompt.partition(" [[")[0] for prompt in run.prompts] + run.prompts
    # Any three words of an answer in a row (the whole answer would miss a part of it).
    for answer in run.answers:
        words = answer.split(" ")
        secrets += [" ".join(words[i : i + 3]) for i in range(len(words) - 2)]
    leaked = [s for s in secrets if s in log]
    assert leaked == []


def test_a_metrics_port_serves_the_metrics_and_the_main_port_does_not(tmp_path: Path) -> None:
    port = free_port()
    own = f"http://127.0.0.1:{port}"
    with run_stack(tmp_path, "--metrics-port", str(port)) as stack:
        assert_error(httpx.get(f"{stack.gateway}/metrics", timeout=10), 404, "not_found_error")
        assert scrape(own).value("tokenrelay_build_info", version=VERSION) == 1
        streamed = httpx.post(
            f"{stack.gateway}/api/stream-response",
            json={"prompt": unique("Counted on the metrics port [[sim:tokens=3]]")}, timeout=30,
        )  # fmt: skip
        assert streamed.status_code == 200
        assert scrape(own).value("tokenrelay_streams_started_total", **API) == 1
    assert [e["metrics_port"] for e in log_events(stack.log_text(), "serving")] == [str(port)]
    with pytest.raises(httpx.ConnectError):  # it closed with the gateway
        httpx.get(f"{own}/metrics", timeout=5)


def test_metrics_on_the_main_port_are_for_admins_when_auth_is_on(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.txt"
    ops, alice = create_key(keys_file, "ops", "--admin"), create_key(keys_file, "alice")
    with run_stack(tmp_path, "--auth", "api_key", "--api-keys-file", str(keys_file)) as stack:
        url = f"{stack.gateway}/metrics"
        assert_error(httpx.get(url, timeout=10), 401, "authentication_error")
        refused = assert_error(
            httpx.get(url, headers={"x-api-key": alice}), 403, "permission_error"
        )
        assert refused == "Only an admin may read the metrics"
        assert scrape(stack.gateway, ops).value("tokenrelay_build_info", version=VERSION) == 1
        # Prometheus sends a bearer token, and asks for OpenMetrics.
        asked = {"authorization": f"Bearer {ops}", "accept": "application/openmetrics-text"}
        openmetrics = httpx.get(url, headers=asked, timeout=10)
        assert openmetrics.status_code == 200
        assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
        assert openmetrics.text.endswith("# EOF\n")


async def test_joins_and_cache_replays_are_counted_apart_from_the_streams_they_reuse(
    tmp_path: Path,
) -> None:
    prompt = f"{unique('Telemetry reused')} [[sim:tokens=20]] [[sim:tps=20]]"
    with run_stack(tmp_path, TOKENRELAY_CACHE_TTL="60") as stack:
        before = scrape(stack.gateway)
        async with httpx.AsyncClient(base_url=stack.gateway, timeout=30) as client:
            first = asyncio.create_task(start(client, {"prompt": prompt, "temperature": 0}))
            await eventually_async(
                lambda: scrape(stack.gateway).value("tokenrelay_active_streams") == 1,
                what="the first stream",
            )
            joined = await start(
                client, {"prompt": prompt, "temperature": 0}
            )  # while the first generates
            generated = await first
            replayed = await start(client, {"prompt": prompt, "temperature": 0})  # once it is kept
        after = scrape(stack.gateway)
    assert joined.headers["x-stream-id"] == generated.headers["x-stream-id"]
    assert replayed.events[-1].data["cached"] is True
    usage = generated.events[-1].data["usage"]
    assert after.moved_since(before) == {
        key("tokenrelay_streams_started_total", **API): 1,
        key("tokenrelay_streams_completed_total", **API, status="done"): 1,
        key("tokenrelay_time_to_first_token_seconds_count", **API): 3,  # each client's
        key("tokenrelay_upstream_time_to_first_token_seconds_count", model=MODEL): 1,
        key("tokenrelay_stream_duration_seconds_count", **API): 1,
        key("tokenrelay_output_tokens_per_second_count", model=MODEL): 1,
        key("tokenrelay_tokens_total", model=MODEL, kind="input"): usage["input_tokens"],
        key("tokenrelay_tokens_total", model=MODEL, kind="output"): usage["output_tokens"],
        key("tokenrelay_cost_usd_total", model=MODEL): generated.events[-1].data["cost_usd"],
        key("tokenrelay_cache_requests_total", result="miss"): 2,
        key("tokenrelay_cache_requests_total", result="hit"): 1,
        key("tokenrelay_coalesced_total"): 1,
        key("tokenrelay_upstream_attempts_total", deployment="default", outcome="ok"): 1,
    }
    log = stack.log_text()
    assert [e["stream_id"] for e in log_events(log, "coalesced")] == [
        generated.headers["x-stream-id"]
    ]
    assert [e["stream_id"] for e in log_events(log, "cache_hit")] == [
        replayed.headers["x-stream-id"]
    ]


async def test_budget_refusals_are_counted_by_scope_and_when(tmp_path: Path) -> None:
    not_at_midnight()
    prompt = unique("Telemetry spends [[sim:tokens=60]]")
    body = {"model": MODEL, "max_tokens": 1024, "messages": [{"role": "user", "content": prompt}]}
    # claude-haiku-4-5 costs 1 micro-dollar an input token and 5 an output token: the
    # prompt and 20 tokens spend the budget to the last micro-dollar.
    budget = dollars((Simulator().plan(body).input_tokens + 20 * 5) / 1e6)
    with run_stack(tmp_path, TOKENRELAY_BUDGET_DAILY_USD=budget) as stack:
        before = scrape(stack.gateway)
        async with httpx.AsyncClient(base_url=stack.gateway, timeout=30) as client:
            cut = await start(client, {"prompt": prompt})
            refused = await client.post("/api/stream-response", json={"prompt": "More?"})
        after = scrape(stack.gateway)
    assert cut.events[-1].data["code"] == "budget_exceeded"
    assert_error(refused, 429, "rate_limit_error")
    moved = after.moved_since(before)
    assert {k: v for k, v in moved.items() if "budget" in k[0] or "completed" in k[0]} == {
        key("tokenrelay_budget_refusals_total", scope="daily", when="mid_stream"): 1,
        key("tokenrelay_budget_refusals_total", scope="daily", when="admission"): 1,
        key("tokenrelay_streams_completed_total", **API, status="budget_exceeded"): 1,
    }
    log = stack.log_text()
    assert log_events(log, "budget_exceeded") == [
        {"event": "budget_exceeded", "scope": "daily", "when": "mid_stream",
         "stream_id": cut.events[0].stream_id},
        {"event": "budget_exceeded", "scope": "daily", "when": "admission",
         "principal": "127.0.0.1"},
    ]  # fmt: skip
    [error] = log_events(log, "stream_error")
    assert (error["stream_id"], error["code"]) == (cut.events[0].stream_id, "budget_exceeded")
