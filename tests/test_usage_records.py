"""Every stream leaves one usage record when its producer ends, whatever the ending:
exact tokens and cost, its status, retries and continuations, and whether the usage
was reported by the upstream or estimated from the deltas seen."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tokenrelay.config import Settings
from tokenrelay.events import Text
from tokenrelay.pricing import ModelTable
from tokenrelay.providers.base import GenerationRequest, Usage
from tokenrelay.providers.simulator import SimulatorProvider
from tokenrelay.registry import build_store
from tokenrelay.simulator.engine import Simulator
from tokenrelay.streams.coalesce import Coalescer
from tokenrelay.streams.manager import StreamManager, StreamTimings
from tokenrelay.streams.producer import RetryPolicy
from tokenrelay.upstreams.pool import Pool
from tokenrelay.usage.record import UsageList

MODEL = "claude-haiku-4-5"


@pytest.fixture
async def manager() -> AsyncIterator[tuple[StreamManager, UsageList]]:
    store = build_store(Settings(store="memory"))
    usage = UsageList()
    manager = StreamManager(
        log=store.log,
        cluster=store.cluster,
        upstreams=Pool.single(SimulatorProvider(ttft_ms=0, tps=0)),
        models=ModelTable(),
        retry=RetryPolicy(retries=3, base_delay=0.01, max_delay=0.02),
        timings=StreamTimings(heartbeat_interval=0.5),
        usage=usage,
        coalescer=Coalescer("principal", guest_ttl=1),
    )
    await manager.open()
    yield manager, usage
    await manager.aclose()
    await store.aclose()


def request(prompt: str) -> GenerationRequest:
    return GenerationRequest(
        model=MODEL, messages=[{"role": "user", "content": prompt}], max_tokens=1000
    )


async def run(manager: StreamManager, prompt: str, request_id: str = "req_1") -> str:
    sid = await manager.start(
        request(prompt), owner="alice", request_id=request_id, body_fingerprint=prompt
    )
    async for _ in manager.follow(sid, -1):
        pass
    await asyncio.sleep(0)  # the producer's done callback
    return sid


def plain_plan(prompt: str) -> tuple[int, int]:
    plan = Simulator().plan({"model": MODEL, "messages": [{"role": "user", "content": prompt}],
                             "max_tokens": 1000})  # fmt: skip
    return plan.input_tokens, len(plan.deltas)


async def test_a_finished_stream_records_its_reported_usage_and_cost(
    manager: tuple[StreamManager, UsageList],
) -> None:
    mgr, usage = manager
    prompt = "Record me [[sim:tokens=12]]"
    sid = await run(mgr, prompt)
    [rec] = usage.records
    input_tokens, output_tokens = plain_plan(prompt)
    expected_cost = ModelTable().cost_usd(MODEL, Usage(input_tokens, output_tokens))
    assert (rec.stream_id, rec.request_id, rec.principal) == (sid, "req_1", "alice")
    assert (rec.model, rec.served_model, rec.status, rec.stop_reason) == (
        MODEL, MODEL, "done", "end_turn",
    )  # fmt: skip
    assert (rec.input_tokens, rec.output_tokens, rec.cost_usd) == (
        input_tokens, 12, expected_cost,
    )  # fmt: skip
    assert (rec.estimated, rec.cached, rec.coalesced, rec.retries, rec.continuations) == (
        False, False, 0, 0, 0,
    )  # fmt: skip
    assert rec.ttft_ms is not None and 0 <= rec.ttft_ms <= rec.duration_ms
    assert rec.started_at <= rec.finished_at


async def test_retries_and_continuations_are_counted_and_every_attempt_billed(
    manager: tuple[StreamManager, UsageList],
) -> None:
    mgr, usage = manager
    await run(mgr, "Flaky [[sim:tokens=20]] [[sim:status=529]] [[sim:fail_times=2]]", "r1")
    await run(mgr, "Cut [[sim:tokens=20]] [[sim:error_after=6]] [[sim:fail_times=1]]", "r2")
    retried, continued = usage.records
    assert (retried.status, retried.retries, retried.continuations) == ("done", 2, 0)
    assert retried.output_tokens == 20 and not retried.estimated
    assert (continued.status, continued.retries, continued.continuations) == ("done", 0, 1)
    # 6 deltas before the cut (estimated from what was seen), then the 14 that followed.
    assert continued.output_tokens == 20 and continued.estimated


async def test_a_cancelled_stream_records_what_it_had_cost_estimated(
    manager: tuple[StreamManager, UsageList],
) -> None:
    mgr, usage = manager
    prompt = "Long [[sim:tokens=400]] [[sim:tps=100]]"
    sid = await mgr.start(request(prompt), owner="alice", request_id="r", body_fingerprint="f")
    seen: list[Text] = []
    cancelled = False
    async for batch in mgr.follow(sid, -1):
        seen += [e.event for e in batch if type(e.event) is Text]
        if len(seen) >= 5 and not cancelled:
            cancelled = await mgr.cancel(sid, "alice")
    assert cancelled
    await asyncio.sleep(0)
    [rec] = usage.records
    assert rec.status == "cancelled" and rec.estimated
    assert rec.output_tokens == len(seen) and 5 <= rec.output_tokens < 400
    assert rec.cost_usd == ModelTable().cost_usd(MODEL, Usage(rec.input_tokens, len(seen)))


async def test_a_failed_stream_records_its_error_code(
    manager: tuple[StreamManager, UsageList],
) -> None:
    mgr, usage = manager
    await run(mgr, "Never [[sim:status=529]]")
    [rec] = usage.records
    assert (rec.status, rec.retries, rec.output_tokens, rec.ttft_ms, rec.estimated) == (
        "overloaded", 3, 0, None, False,
    )  # fmt: skip


async def test_requests_that_joined_a_stream_are_counted_on_its_one_record(
    manager: tuple[StreamManager, UsageList],
) -> None:
    mgr, usage = manager
    req = request("Together [[sim:tokens=10]] [[sim:tps=50]]")
    ids = await asyncio.gather(
        *(mgr.start(req, owner="alice", request_id=f"r{i}", body_fingerprint="f") for i in range(5))
    )
    assert len(set(ids)) == 1
    async for _ in mgr.follow(ids[0], -1):
        pass
    await asyncio.sleep(0)
    [rec] = usage.records
    assert (rec.coalesced, rec.request_id, rec.output_tokens) == (4, "r0", 10)
