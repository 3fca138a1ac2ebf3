"""One contract, every store: the same tests on the memory log and on Redis."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import Redis, redis_server
from tokenrelay.errors import StoreUnavailable
from tokenrelay.events import (
    Done,
    Failed,
    Queued,
    Reset,
    Start,
    Text,
    Thinking,
    ThinkingSignature,
    ToolInput,
    ToolUse,
    ToolUseStart,
)
from tokenrelay.providers.base import GenerationRequest
from tokenrelay.streams.log import Opening, StreamLog, StreamMeta, StreamTakenOver
from tokenrelay.streams.memory import MemoryLog
from tokenrelay.streams.redis import RedisLog


@pytest.fixture(params=["memory", "redis"])
async def log(request: pytest.FixtureRequest, redis: Redis) -> AsyncIterator[StreamLog]:
    store: StreamLog = (
        MemoryLog(stream_ttl=1) if request.param == "memory" else RedisLog(redis.url, stream_ttl=1)
    )
    yield store
    await store.aclose()


START = Start("s", "req_1", "claude-haiku-4-5")


def meta(key: str | None = None) -> StreamMeta:
    return StreamMeta(uuid.uuid4().hex, "alice", "req_1", "claude-haiku-4-5", "fp", 0.0, key)


async def test_read_returns_entries_after_an_offset_in_order(log: StreamLog) -> None:
    m = meta()
    await log.create(m)
    for i in range(5):
        assert await log.append(m.stream_id, Text(str(i))) == i
    entries = await log.read(m.stream_id, 1, 0) or []
    assert [(e.seq, e.event) for e in entries] == [(2, Text("2")), (3, Text("3")), (4, Text("4"))]
    assert await log.read(m.stream_id, 4, 0.05) == []
    assert await log.read("no-such-stream", -1, 0) is None
    assert (await log.meta(m.stream_id)) == m


async def test_the_meta_a_takeover_needs_comes_back_whole(log: StreamLog) -> None:
    request = GenerationRequest(
        model="claude-haiku-4-5", messages=[{"role": "user", "content": "Hi"}], max_tokens=64
    )
    m = dataclasses.replace(
        meta("idem-1"), request=request, principal="10.0.0.7", route="messages",
        restartable=False,
    )  # fmt: skip
    await log.create(m)
    assert (await log.meta(m.stream_id)) == m


async def test_a_waiting_reader_is_woken_by_an_append(log: StreamLog) -> None:
    m = meta()
    await log.create(m)
    await log.append(m.stream_id, Start(m.stream_id, "req_1", "claude-haiku-4-5"))
    # The read may wait 30 s but must be done within 5: only the append's wake-up ends it
    # in time, never its own wait running out and reading again.
    waiting = asyncio.create_task(log.read(m.stream_id, 0, 30))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    await log.append(m.stream_id, Text("a"))
    async with asyncio.timeout(5):
        entries = await waiting
    assert entries is not None and [(e.seq, e.event) for e in entries] == [(1, Text("a"))]


async def test_a_finished_log_expires_after_its_ttl(log: StreamLog) -> None:
    m = meta()
    await log.create(m)
    await log.append(m.stream_id, Done("end_turn", {"input_tokens": 1, "output_tokens": 0}, 0.0))
    entries = await log.read(m.stream_id, -1, 0) or []
    assert [e.terminal for e in entries] == [True]
    # Nothing follows the terminal entry, ever: the read says so at once, not after
    # its wait (a reader resuming past the end would otherwise spin).
    async with asyncio.timeout(5):
        assert await log.read(m.stream_id, 0, 30) is None
    await asyncio.sleep(2.2)  # stream_ttl is 1 s; Redis expires keys at 1 s resolution
    assert await log.meta(m.stream_id) is None
    assert await log.read(m.stream_id, -1, 0) is None


async def test_an_idempotency_key_binds_once_per_owner(log: StreamLog) -> None:
    key = uuid.uuid4().hex
    assert await log.claim_idempotency_key("alice", key, "s1", "fp1") == ("s1", "fp1")
    assert await log.claim_idempotency_key("alice", key, "s2", "fp2") == ("s1", "fp1")
    assert await log.claim_idempotency_key("bob", key, "s3", "fp3") == ("s3", "fp3")


async def test_a_reader_that_saw_an_entry_after_the_opening_sees_the_opening(
    log: StreamLog,
) -> None:
    m = meta()
    await log.create(m)
    await log.append(m.stream_id, START)
    await log.set_opening(m.stream_id, Opening("claude-haiku-4-5", {"input_tokens": 7}))
    await log.append(m.stream_id, Text("after it"))
    entries = await log.read(m.stream_id, 0, 5) or []
    assert [e.event for e in entries] == [Text("after it")]
    stored = await log.meta(m.stream_id)
    assert stored is not None and stored.opening == Opening("claude-haiku-4-5", {"input_tokens": 7})


async def test_redis_refuses_a_second_writer_of_the_same_seq(redis: Redis) -> None:
    first, second = RedisLog(redis.url, 60), RedisLog(redis.url, 60)
    m = meta()
    await first.create(m)
    await first.append(m.stream_id, START)
    assert [e.seq for e in await first.read(m.stream_id, -1, 0) or []] == [0]  # in Redis
    assert [e.seq for e in await second.adopt(m.stream_id)] == [0]
    await second.append(m.stream_id, Text("new owner"))
    assert [e.seq for e in await second.read(m.stream_id, -1, 0) or []] == [0, 1]
    # The old owner's append is queued and refused in Redis; its next append is told,
    # and a terminal one, which waits for its batch, at once.
    assert await first.append(m.stream_id, Text("old owner")) == 1
    with pytest.raises(StreamTakenOver):
        await first.append(m.stream_id, Done("end_turn", {"output_tokens": 1}, 0.0))
    with pytest.raises(StreamTakenOver):
        await first.append(m.stream_id, Text("later"))
    entries = await second.read(m.stream_id, -1, 0) or []
    assert [e.event for e in entries] == [START, Text("new owner")]
    await first.aclose()
    await second.aclose()


async def test_redis_never_writes_a_run_after_a_gap(redis: Redis) -> None:
    """A batch of a stream that failed leaves a gap; the runs after it are refused,
    so no reader ever sees a stream with a seq missing."""
    store = RedisLog(redis.url, 60)
    m = meta()
    await store.create(m)
    await store.append(m.stream_id, START)
    await store.read(m.stream_id, -1, 0)
    store._writers[m.stream_id].next_seq = 2  # as if the run with seq 1 had been lost
    with pytest.raises(StreamTakenOver):
        await store.append(m.stream_id, Done("end_turn", {"output_tokens": 0}, 0.0))
    client = store.client
    assert await client.xlen(f"tr:s:{m.stream_id}:log") == 1
    assert await client.sismember("tr:running", m.stream_id)  # the terminal did nothing
    await store.aclose()


async def _calls(client: Any, *names: str) -> tuple[int, ...]:
    stats = await client.info("commandstats")
    return tuple(stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in names)


async def _script_calls(client: Any) -> tuple[int, ...]:
    return await _calls(client, "evalsha", "xadd")


async def test_the_meta_of_a_stream_written_here_is_read_without_a_round_trip(
    redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("tokenrelay.streams.redis.FINISHED_TAIL_S", 0.05)
    writer, elsewhere = RedisLog(redis.url, 60), RedisLog(redis.url, 60)
    m = meta()
    await writer.create(m)
    await writer.append(m.stream_id, START)
    await writer.set_opening(m.stream_id, Opening("claude-haiku-4-5", {"input_tokens": 2}))
    before = await _calls(writer.client, "hgetall")
    here = await writer.meta(m.stream_id)
    assert await _calls(writer.client, "hgetall") == before
    there = await elsewhere.meta(m.stream_id)
    assert await _calls(writer.client, "hgetall") == (before[0] + 1,)
    assert (
        here
        == there
        == dataclasses.replace(m, opening=Opening("claude-haiku-4-5", {"input_tokens": 2}))
    )
    # Ended, its cached tail and meta are let go after FINISHED_TAIL_S; Redis has them.
    await writer.append(m.stream_id, Done("end_turn", {"output_tokens": 0}, 0.0))
    await asyncio.sleep(0.2)
    assert m.stream_id not in writer._tails and m.stream_id not in writer._metas
    entries = await writer.read(m.stream_id, -1, 0) or []
    assert [type(e.event) for e in entries] == [Start, Done]
    assert await writer.meta(m.stream_id) == there
    await writer.aclose()
    await elsewhere.aclose()


async def test_a_burst_of_appends_is_one_command_to_redis(redis: Redis) -> None:
    """Entries a stream appends while its previous batch is out go in one script
    call: one command and one reply for the burst, not one XADD each."""
    store = RedisLog(redis.url, 60)
    warm = meta()
    await store.create(warm)  # the first batch loads the script
    await store.append(warm.stream_id, START)
    await store.read(warm.stream_id, -1, 0)
    m = meta()
    await store.create(m)
    await store.append(m.stream_id, START)  # the first entry waits: it confirms the create
    before = await _script_calls(store.client)
    await store.set_opening(m.stream_id, Opening("claude-haiku-4-5", {"input_tokens": 3}))
    for n in range(20):
        await store.append(m.stream_id, Text(f"t{n} "))
    await store.append(m.stream_id, Done("end_turn", {"output_tokens": 20}, 0.0))
    after = await _script_calls(store.client)
    assert (after[0] - before[0], after[1] - before[1]) == (1, 21)
    entries = await store.read(m.stream_id, -1, 0) or []
    assert [e.event for e in entries[1:-1]] == [Text(f"t{n} ") for n in range(20)]
    assert [e.seq for e in entries] == list(range(22))
    assert await store.client.ttl(f"tr:s:{m.stream_id}:log") == 60  # ended: its TTL
    assert not await store.client.sismember("tr:running", m.stream_id)
    stored = await store.meta(m.stream_id)
    assert stored is not None and stored.opening == Opening("claude-haiku-4-5", {"input_tokens": 3})
    assert await store.client.ttl(f"tr:s:{m.stream_id}:log") == 60  # ended: its TTL
    assert not await store.client.sismember("tr:running", m.stream_id)
    await store.aclose()


async def test_redis_writes_go_on_after_its_scripts_are_flushed(redis: Redis) -> None:
    store = RedisLog(redis.url, 60)
    m = meta()
    await store.create(m)
    await store.append(m.stream_id, START)
    await store.read(m.stream_id, -1, 0)
    await store.client.script_flush()
    await store.append(m.stream_id, Text("after the flush"))
    entries = await store.read(m.stream_id, -1, 0) or []
    assert [e.event for e in entries] == [START, Text("after the flush")]
    await store.aclose()


async def test_a_reader_in_another_process_follows_live_appends(redis: Redis) -> None:
    writer, reader = RedisLog(redis.url, 60), RedisLog(redis.url, 60)
    m = meta()
    await writer.create(m)
    await writer.append(m.stream_id, START)
    assert [e.seq for e in await reader.read(m.stream_id, -1, 0) or []] == [0]
    waiting = asyncio.create_task(reader.read(m.stream_id, 0, 30))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    await writer.append(m.stream_id, Text("live"))
    async with asyncio.timeout(5):  # followed live, not found when the 30 s wait ran out
        entries = await waiting
    assert entries is not None and [e.event for e in entries] == [Text("live")]
    await writer.aclose()
    await reader.aclose()


async def test_unreachable_redis_is_a_clear_503_not_a_crash(tmp_path: Path) -> None:
    with redis_server(tmp_path) as server:
        store = RedisLog(server.url, 60)
        assert await store.ping() is True
        server.stop()
        assert await store.ping() is False
        down = meta()
        await store.create(down)  # written with the first entry, which waits for both
        with pytest.raises(StoreUnavailable) as info:
            await store.append(down.stream_id, START)
        assert info.value.status == 503 and info.value.error_type == "overloaded_error"
        server.start()
        assert await store.ping() is True
        up = meta()
        await store.create(up)
        assert await store.append(up.stream_id, START) == 0
        assert [e.event for e in await store.read(up.stream_id, -1, 0) or []] == [START]
        assert await store.client.exists(f"tr:s:{up.stream_id}:meta") == 1
        await store.aclose()


EVERY_KIND = [
    START,
    Queued(2),
    Text('héllo "wörld"\n'),
    ToolUseStart("toolu_1", "weather"),
    ToolInput('{"city": "Pa'),
    ToolUse("toolu_1", "weather", {"city": "Paris", "days": [1, 2]}),
    Thinking("hmm"),
    ThinkingSignature("EqQBCkYIBRgC"),
    Reset(),
    Failed("Overloaded", "overloaded", True, {"input_tokens": 3, "output_tokens": 2}, 0.5),
]
TERMINAL = [False] * (len(EVERY_KIND) - 1) + [True]


async def test_every_kind_of_event_comes_back_as_it_went_in(log: StreamLog) -> None:
    m = meta()
    await log.create(m)
    for event in EVERY_KIND:
        await log.append(m.stream_id, event)
    entries = await log.read(m.stream_id, -1, 0) or []
    assert [e.event for e in entries] == EVERY_KIND
    assert [e.terminal for e in entries] == TERMINAL


async def test_another_process_parses_every_kind_of_event_from_redis(redis: Redis) -> None:
    writer, reader = RedisLog(redis.url, 60), RedisLog(redis.url, 60)
    m = meta()
    await writer.create(m)
    for event in EVERY_KIND:
        await writer.append(m.stream_id, event)
    entries = await reader.read(m.stream_id, -1, 0) or []
    assert [e.event for e in entries] == EVERY_KIND
    assert [e.terminal for e in entries] == TERMINAL
    await writer.aclose()
    await reader.aclose()


async def test_a_done_event_comes_back_from_redis_with_its_usage_and_cost(redis: Redis) -> None:
    writer, reader = RedisLog(redis.url, 60), RedisLog(redis.url, 60)
    m = meta()
    await writer.create(m)
    done = Done("tool_use", {"input_tokens": 7, "output_tokens": 9}, 0.000052, cached=True)
    await writer.append(m.stream_id, START)
    await writer.append(m.stream_id, done)
    entries = await reader.read(m.stream_id, -1, 0) or []
    assert [e.event for e in entries] == [START, done]
    await writer.aclose()
    await reader.aclose()
