"""What the hot path does, counted rather than timed, so that a regression fails here.

- Each log entry is encoded once per dialect, however many readers read it.
- A reader that fell behind gets everything it missed in one write.
- Memory a token keeps, and at most holds while it passes: bounded per token over
  10,000 tokens through a real StreamManager and the simulator provider.
- N sequential streams through a real gateway cost one upstream connection, and the
  simulator keeps a direct client's connection alive as well.
- A gateway logging at debug level writes as many lines for a 200-token stream as
  for a 20-token one: nothing is logged per token.
- A running stream's producer keeps no instance dict.
- The collector leaves the old generations alone while streams run; the loop-lag
  monitor ticks only while somebody reads, and a loaded loop gathers a reader's tokens.

What a request costs the HTTP layer is tests/test_request_path.py's.
"""

from __future__ import annotations

import asyncio
import gc
import json
import sys
import time
import tracemalloc
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.metrics import MetricWrapperBase
from starlette.types import Message

from tests.support.inprocess import served
from tests.support.logs import log_lines
from tests.support.polling import eventually, eventually_async
from tests.support.processes import free_port, spawn
from tests.support.upstreams import ScriptedUpstream, answer, read_request
from tokenrelay.app import GC_THRESHOLDS, create_app
from tokenrelay.client.bench import direct_target, gateway_target, run_phase
from tokenrelay.client.bench_links import CountingProxy, keepalive_connections
from tokenrelay.client.bench_suite import gateway, prompt_for, simulator
from tokenrelay.config import Settings
from tokenrelay.dialects import anthropic, openai, tokens
from tokenrelay.dialects.anthropic import AnthropicDialect
from tokenrelay.dialects.base import Dialect
from tokenrelay.dialects.openai import ChatChunks
from tokenrelay.dialects.tokens import TokensDialect
from tokenrelay.events import Done, Event, Start
from tokenrelay.observability.log import FLUSH_AFTER_S
from tokenrelay.pricing import ModelTable
from tokenrelay.providers.anthropic_http import AnthropicHttpProvider
from tokenrelay.providers.base import GenerationRequest
from tokenrelay.providers.simulator import SimulatorProvider
from tokenrelay.registry import build_store
from tokenrelay.routes.sse import SSEResponse, stream_frames
from tokenrelay.streams.log import StreamMeta
from tokenrelay.streams.loop_lag import LoopLag
from tokenrelay.streams.manager import StreamManager, StreamTimings
from tokenrelay.streams.producer import RetryPolicy
from tokenrelay.upstreams.pool import Pool

MODEL = "claude-haiku-4-5"


@pytest.fixture
async def manager() -> AsyncIterator[StreamManager]:
    store = build_store(Settings(store="memory"))
    manager = StreamManager(
        log=store.log,
        cluster=store.cluster,
        upstreams=Pool.single(SimulatorProvider(ttft_ms=0, tps=0)),
        models=ModelTable(),
        retry=RetryPolicy(retries=0, base_delay=0.01, max_delay=0.02),
        timings=StreamTimings(heartbeat_interval=5),
    )
    await manager.open()
    yield manager
    await manager.aclose()
    await store.aclose()


async def start(manager: StreamManager, prompt: str) -> str:
    request = GenerationRequest(
        model=MODEL, messages=[{"role": "user", "content": prompt}], max_tokens=20_000
    )
    return await manager.start(
        request, owner="hot-path", request_id=f"req-{time.time_ns()}", body_fingerprint=prompt
    )


async def read_all(
    manager: StreamManager, stream_id: str, dialect: Dialect, sink: list[bytes] | None = None
) -> int:
    """Follow the stream to its end as a client would; returns the bytes sent."""
    sent = 0
    async for chunk in stream_frames(manager, stream_id, -1, dialect):
        sent += len(chunk)
        if sink is not None:
            sink.append(chunk)
    return sent


# -- metric children looked up once -------------------------------------------------


async def test_a_stream_looks_up_no_metric_child_once_its_labels_were_seen(
    manager: StreamManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    """prometheus_client validates label values and locks on every `.labels()`: a
    stream whose route and model were seen before makes no such call at all."""
    warm = await start(manager, "Metrics warm. [[sim:tokens=3]]")
    await read_all(manager, warm, TokensDialect(warm, 3000))
    await eventually_async(lambda: manager.active_streams == 0, what="the stream's end", within=10)
    calls: list[tuple[str, ...]] = []
    real = MetricWrapperBase.labels

    def counting(self: MetricWrapperBase, *values: str) -> Any:
        calls.append(values)
        return real(self, *values)

    monkeypatch.setattr(MetricWrapperBase, "labels", counting)
    again = await start(manager, "Metrics again. [[sim:tokens=3]]")
    sent = await read_all(manager, again, TokensDialect(again, 3000))
    await eventually_async(lambda: manager.active_streams == 0, what="the stream's end", within=10)
    assert sent > 0
    assert calls == []


# -- one encoding per entry per dialect ---------------------------------------------

DIALECTS: dict[str, tuple[Any, list[str], Callable[[str], Dialect]]] = {
    "tokens": (tokens, ["encode_event"], lambda sid: TokensDialect(sid, 3000)),
    "anthropic": (anthropic, ["encode_event"], lambda sid: AnthropicDialect(sid)),
    "openai": (
        openai,
        ["_encode", "_encode_call"],
        lambda sid: ChatChunks(sid, MODEL, 1_700_000_000, True),
    ),
}


@pytest.mark.parametrize("name", sorted(DIALECTS))
async def test_an_entry_is_encoded_once_per_dialect_however_many_readers(
    manager: StreamManager, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    module, functions, make = DIALECTS[name]
    encoded: Counter[int] = Counter()  # id() of each event encoded: the log keeps them alive
    for function in functions:
        real = getattr(module, function)

        def counting(event: Event, real: Callable[[Event], bytes] = real) -> bytes:
            encoded[id(event)] += 1
            return real(event)

        monkeypatch.setattr(module, function, counting)

    # Paced, so that the eight readers follow it live, batch by batch, together.
    stream_id = await start(
        manager, f"Hot path encodes {name}. [[sim:tokens=200]] [[sim:tps=2000]]"
    )
    bodies: list[list[bytes]] = [[] for _ in range(8)]
    await asyncio.gather(*(read_all(manager, stream_id, make(stream_id), b) for b in bodies))

    entries = await manager.log.read(stream_id, -1, 0)
    assert entries is not None and len(entries) == 1 + 200 + 1  # start, the tokens, done
    # Every reader got the same bytes, and no event was encoded twice in this dialect.
    assert len({b"".join(b) for b in bodies}) == 1
    assert max(encoded.values()) == 1
    # ... and every token was encoded (the counter really sees the dialect's encodes).
    text_ids = {id(e.event) for e in entries if type(e.event) is str}
    assert len(text_ids) == 200 and text_ids <= set(encoded)


# -- one write per batch a reader missed --------------------------------------------


async def test_a_reader_that_fell_behind_gets_what_it_missed_in_one_write(
    manager: StreamManager,
) -> None:
    log = manager.log
    stream_id = f"hot-path-behind-{time.time_ns()}"
    meta = StreamMeta(stream_id, "hot-path", "req-behind", MODEL, "fp", time.time())
    await log.create(meta)
    await log.append(stream_id, Start(stream_id, "req-behind", MODEL))

    sends: list[Message] = []
    first_batch_out = asyncio.Event()
    release = asyncio.Event()

    async def send(message: Message) -> None:
        sends.append(message)
        if message["type"] == "http.response.body" and not first_batch_out.is_set():
            first_batch_out.set()
            await release.wait()  # a slow client: its socket does not drain yet

    async def receive() -> Message:
        await asyncio.Event().wait()  # the client never leaves
        raise AssertionError("unreachable")

    frames = stream_frames(manager, stream_id, -1, TokensDialect(stream_id, 3000))
    response = asyncio.create_task(SSEResponse(frames, {})({"type": "http"}, receive, send))
    await first_batch_out.wait()
    for n in range(150):  # appended while the reader is stuck in its first write
        await log.append(stream_id, f"t{n} ")
    await log.append(stream_id, Done("end_turn", {"output_tokens": 150}, 0.0))
    release.set()
    await asyncio.wait_for(response, 10)

    kinds = [m["type"] for m in sends]
    assert kinds == ["http.response.start"] + ["http.response.body"] * 2
    first, missed = (m["body"] for m in sends[1:])
    assert first.count(b"data: ") == 1  # the start event, all there was
    assert missed.count(b"data: ") == 151  # the 150 tokens and the done event, one write
    assert all(b'data: {"token":"t%d "}\n' % n in missed for n in range(150))
    # ... which ends the response too: no empty write after it.
    assert [m["more_body"] for m in sends[1:]] == [True, False]


# -- the first token of a burst ------------------------------------------------------


def claude_burst(texts: list[str]) -> bytes:
    """Claude's event stream for an answer of `texts`, as one piece of bytes."""
    events: list[dict[str, Any]] = [
        {"type": "message_start", "message": {"id": "msg_1", "type": "message",
         "role": "assistant", "model": MODEL, "content": [], "stop_reason": None,
         "stop_sequence": None, "usage": {"input_tokens": 5, "output_tokens": 1}}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        *({"type": "content_block_delta", "index": 0,
           "delta": {"type": "text_delta", "text": text}} for text in texts),
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
         "usage": {"output_tokens": len(texts)}},
        {"type": "message_stop"},
    ]  # fmt: skip
    return b"".join(b"event: %s\ndata: %s\n\n" % (e["type"].encode(), json.dumps(e).encode())
                    for e in events)  # fmt: skip


async def test_the_first_token_of_a_burst_goes_to_readers_before_the_rest_is_decoded() -> None:
    texts = [f"w{n} " for n in range(50)]

    async def bursts(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await read_request(reader) is not None:
            writer.write(answer(claude_burst(texts)))  # the whole answer in one write

    store = build_store(Settings(store="memory"))
    async with ScriptedUpstream(bursts) as upstream:
        provider = AnthropicHttpProvider(
            api_key="sk-test", base_url=f"http://127.0.0.1:{upstream.port}"
        )
        manager = StreamManager(
            log=store.log, cluster=store.cluster, upstreams=Pool.single(provider),
            models=ModelTable(), retry=RetryPolicy(retries=0, base_delay=0.01, max_delay=0.02),
            timings=StreamTimings(heartbeat_interval=5),
        )  # fmt: skip
        await manager.open()
        try:
            stream_id = await start(manager, "a burst")
            batches = [[e.event for e in batch] async for batch in manager.follow(stream_id, -1)]
        finally:
            await manager.aclose()
            await provider.aclose()
            await store.aclose()
    with_text = [[e for e in batch if type(e) is str] for batch in batches]
    with_text = [batch for batch in with_text if batch]
    assert with_text[0] == ["w0 "]  # alone: the 49 after it were not yet decoded
    assert [text for batch in with_text for text in batch] == texts
    assert type(batches[-1][-1]) is Done


# -- memory per token ------------------------------------------------------------------

TOKENS = 10_000
# What one token may keep while its stream's log lives. Measured: 4.0 blocks and
# 218 bytes (its entry, the delta's str, its encoded bytes, the log list's slot,
# each rounded up by the allocator). One more object kept per token (a wrapper, a
# second copy of its bytes: 5 blocks, ~280 bytes) crosses these bounds.
BLOCKS_KEPT_PER_TOKEN = 4.5
BYTES_KEPT_PER_TOKEN = 256
# What the whole stream may hold at most in passing, on top of what it keeps:
# measured 92 KiB for 10,000 tokens; anything that piles up per token (a reader's
# buffer, deltas kept until the end) is 10,000 times its size.
BYTES_PEAK_ABOVE_KEPT = 160 * 1024


async def one_loop_turn(due: float) -> None:
    await asyncio.sleep(0)


async def test_what_a_token_keeps_and_holds_is_bounded(
    manager: StreamManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each token one loop turn after the last, so that the reader takes the stream in
    # the small batches of a real one, however loaded the machine: paced by the clock,
    # a late loop gets the tokens due in one burst, and the one write of the burst
    # is the peak (unpaced, all 10,000). With the lag monitor stopped, no write
    # window gathers them either.
    monkeypatch.setattr("tokenrelay.providers.simulator._pace", one_loop_turn)
    manager.loop_lag.stop()
    # The code paths warmed first: caches filled on a first call are not a token's.
    warm = await start(manager, "Hot path memory warm-up. [[sim:tokens=200]]")
    await read_all(manager, warm, TokensDialect(warm, 3000))

    gc.collect()
    blocks_before = sys.getallocatedblocks()
    tracemalloc.start()
    try:
        prompt = f"Hot path memory. [[sim:tokens={TOKENS}]]"
        stream_id = await start(manager, prompt)
        dialect = TokensDialect(stream_id, 3000)
        sent = largest = 0  # only the sizes: the bytes would count as kept
        async for chunk in stream_frames(manager, stream_id, -1, dialect):
            sent += len(chunk)
            largest = max(largest, len(chunk))
        gc.collect()
        kept, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    blocks_after = sys.getallocatedblocks()

    entries = await manager.log.read(stream_id, -1, 0)
    assert entries is not None and len(entries) == TOKENS + 2
    assert sent > TOKENS * 20  # every token went out
    blocks_per_token = (blocks_after - blocks_before) / TOKENS
    assert 3 <= blocks_per_token <= BLOCKS_KEPT_PER_TOKEN, blocks_per_token
    assert kept / TOKENS <= BYTES_KEPT_PER_TOKEN, kept / TOKENS
    assert largest < 1000, largest  # a few tokens a write (measured: 270 bytes)
    assert peak - kept <= BYTES_PEAK_ABOVE_KEPT, peak - kept


async def test_a_running_streams_producer_has_no_instance_dict(manager: StreamManager) -> None:
    # One producer per open stream: its 33 attributes in a `__dict__` were 1.6 KiB.
    stream_id = await start(manager, "Producer slots. [[sim:tokens=3]] [[sim:tps=5]]")
    producer, _task = manager._producers[stream_id]
    assert not hasattr(producer, "__dict__")
    assert sys.getsizeof(producer) <= 300
    assert await read_all(manager, stream_id, TokensDialect(stream_id, 3000)) > 0


# -- connections -----------------------------------------------------------------------


async def test_sequential_streams_reuse_one_upstream_connection() -> None:
    requests = 20
    async with simulator() as upstream:
        # The simulator keeps a client's connection alive between streamed answers ...
        direct = direct_target(
            upstream, prompt_for(f"hot path direct {time.time_ns()}", 5, 0), 5, MODEL
        )
        bodies = [direct.body.replace(b"#STREAM#", b"%d" % n) for n in range(requests)]
        assert await keepalive_connections(upstream, "/v1/messages", bodies, direct.headers) == 1
        # ... and a gateway in front of it opens one connection for N streams in a row.
        async with CountingProxy(upstream) as proxy, gateway(proxy.url, "memory") as (url, _):
            prompt = prompt_for(f"hot path reuse {time.time_ns()}", 5, 0)
            phase = await run_phase(gateway_target(url, prompt, 5, MODEL), 1, requests, 30)
            assert phase.errors(5) == 0
            assert [r.tokens for r in phase.results] == [5] * requests
            assert proxy.accepted == 1


# -- no log line per token -------------------------------------------------------------


DEFAULT_FLUSH = {"ANTHROPIC_API_KEY": "test", "TOKENRELAY_LOG_FLUSH_MS": str(FLUSH_AFTER_S * 1000)}


def test_a_debug_level_gateway_logs_no_line_per_token(tmp_path: Path) -> None:
    sim_port, gw_port = free_port(), free_port()
    upstream = f"http://127.0.0.1:{sim_port}"
    gw = f"http://127.0.0.1:{gw_port}"
    log_path = tmp_path / "gateway.log"
    serve = ["serve", "--port", str(gw_port), "--provider", "anthropic"]
    serve += ["--anthropic-base-url", upstream, "--log-level", "debug"]
    sim = ["simulate", "--port", str(sim_port), "--ttft-ms", "0", "--tps", "0"]
    with (
        spawn(sim, f"{upstream}/healthz"),
        # The log flushed as by default (spawn's is at every turn of the loop).
        spawn(serve, f"{gw}/readyz", env=DEFAULT_FLUSH, log_path=log_path),
        httpx.Client(base_url=gw, timeout=30) as client,
    ):

        def lines_of_a_stream(count: int) -> tuple[int, int, int]:
            """(its own lines, every line while it ran, those not the database driver's)"""
            # Paced at 1,000 tok/s: a line per token would be logged within its run.
            prompt = (
                f"Hot path log {count} {time.time_ns()}. [[sim:tokens={count}]] [[sim:tps=1000]]"
            )
            body = {"prompt": prompt, "model": MODEL, "max_tokens": count + 10}
            with client.stream("POST", "/api/stream-response", json=body) as response:
                assert response.status_code == 200
                text = "".join(response.iter_text())
                stream_id = response.headers["x-stream-id"]
                request_id = response.headers["x-request-id"]
            assert text.count('{"token":') == count and '"done":true' in text

            def complete() -> list[dict[str, Any]]:
                lines = log_lines(log_path.read_text())
                done = [line for line in lines if line["event"] == "stream_complete"]
                return lines if any(d.get("stream_id") == stream_id for d in done) else []

            lines = eventually(complete, what="the stream's stream_complete line", within=10)
            own = [
                n
                for n, line in enumerate(lines)
                if line.get("request_id") == request_id or line.get("stream_id") == stream_id
            ]
            window = lines[own[0] : own[-1] + 1]
            # The ledger's writes and the batch poller's run on their own schedule.
            not_db = [line for line in window if line["logger"] != "aiosqlite"]
            return len(own), len(window), len(not_db)

        lines_of_a_stream(20)  # a first stream's one-off lines (connections, lazy imports)
        short, long = lines_of_a_stream(20), lines_of_a_stream(200)
        assert short[0] >= 3  # start, first token, complete: the log is on
        assert long[0] == short[0]
        assert long[2] == short[2]
        # Whatever logger it came from, a line per token would be 200 lines.
        assert long[1] < 60, long


async def test_the_collector_leaves_the_old_generations_alone_while_streams_run() -> None:
    """At the default thresholds the collector walks the objects live streams hold (their
    suspended coroutines, futures, timers, entries) again and again: 200 streams of 20
    tokens take some 28 young collections and 2 of the older generations. The gateway's
    thresholds leave the older ones alone; they are the process's while it serves, and
    given back when it stops."""
    before = gc.get_threshold()
    collections: Counter[int] = Counter()

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            collections[info["generation"]] += 1

    port = free_port()
    config = Settings(port=port, provider="simulator", database_url="off", drain_timeout=1,
                      simulator_ttft_ms=0, simulator_tps=0)  # fmt: skip
    async with (
        served(create_app(config), config),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client,
    ):
        assert gc.get_threshold() == GC_THRESHOLDS
        gc.callbacks.append(count)
        try:
            for n in range(200):
                body = {"prompt": f"Collector {n} [[sim:tokens=20]]", "model": MODEL}
                answer = await client.post("/api/stream-response", json=body)
                assert answer.text.count('{"token":') == 20
        finally:
            gc.callbacks.remove(count)
    assert gc.get_threshold() == before
    assert collections[1] + collections[2] == 0, collections


# -- the write window -----------------------------------------------------------------


async def _writes_of_a_paced_stream(manager: StreamManager, tokens: int) -> list[bytes]:
    """The body writes of a stream whose tokens are appended one loop turn apart."""
    log = manager.log
    stream_id = f"hot-path-window-{time.time_ns()}"
    await log.create(StreamMeta(stream_id, "hot-path", "req-window", MODEL, "fp", time.time()))
    await log.append(stream_id, Start(stream_id, "req-window", MODEL))
    bodies: list[bytes] = []

    async def send(message: Message) -> None:
        if message["type"] == "http.response.body":
            bodies.append(message["body"])

    async def receive() -> Message:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    frames = stream_frames(manager, stream_id, -1, TokensDialect(stream_id, 3000))
    response = asyncio.create_task(SSEResponse(frames, {})({"type": "http"}, receive, send))
    for n in range(tokens):
        for _ in range(3):  # the reader's turn to write what arrived
            await asyncio.sleep(0)
        await log.append(stream_id, f"t{n} ")
    for _ in range(3):
        await asyncio.sleep(0)
    await log.append(stream_id, Done("end_turn", {"output_tokens": tokens}, 0.0))
    await asyncio.wait_for(response, 10)
    return bodies


async def test_a_loaded_loop_gathers_a_readers_tokens_and_never_holds_the_first_or_last(
    manager: StreamManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    # At ease, every token is its own write, the moment it arrives.
    calm = await _writes_of_a_paced_stream(manager, 10)
    assert len(calm) == 1 + 10 + 1  # the start, each token, the done event (and the end)
    assert [body.count(b"data: ") for body in calm] == [1] * 12
    # Behind (held there: the monitor stopped), with a window longer than the test may
    # take: the first token goes at once, the rest gather until the stream ends, whose
    # end releases them without waiting out the window.
    manager.loop_lag.stop()
    manager.loop_lag.behind = True
    monkeypatch.setattr("tokenrelay.streams.readers.WRITE_WINDOW_S", 60.0)
    loaded = await _writes_of_a_paced_stream(manager, 10)
    assert len(loaded) == 1 + 1 + 1
    start, first, rest = loaded
    assert start.count(b"data: ") == 1 and b'"stream_id"' in start
    assert first.count(b"data: ") == 1 and b'{"token":"t0 "}' in first
    assert rest.count(b"data: ") == 10 and b'"done":true' in rest  # t1..t9 and done
    assert b"".join(calm).replace(b"\n", b"").count(b'{"token":') == 10
    tokens_of = [b'{"token":"t%d "}' % n for n in range(10)]
    assert [t for t in tokens_of if t in first + rest] == tokens_of  # every one, once


async def test_the_loop_lag_monitor_tells_a_blocked_loop_from_an_idle_one() -> None:
    lag = LoopLag(interval=0.01, late_after=0.003)
    lag.start()
    assert not lag.ticking  # nobody reads: no wake-ups at all
    lag.watch()
    assert lag.ticking
    try:
        await asyncio.sleep(0.03)
        time.sleep(0.05)  # noqa: ASYNC251 -- the loop blocked past a tick's due time
        await asyncio.sleep(0.02)
        assert lag.behind is True  # and it stays so for HOLD_TICKS ticks (0.1 s)
        # On time again for HOLD_TICKS ticks in a row: at ease.
        await eventually_async(lambda: not lag.behind, what="the loop at ease", within=10)
        # The last reader gone, the next tick is the last one.
        lag.unwatch()
        await eventually_async(lambda: not lag.ticking, what="the ticks stopped", within=10)
    finally:
        lag.stop()
    assert lag.behind is False and not lag.ticking


async def test_an_idle_gateway_schedules_nothing_for_the_loop_lag(manager: StreamManager) -> None:
    """The lag monitor ticks while a stream is read and stops with the last reader."""
    assert not manager.loop_lag.ticking
    stream_id = f"hot-path-idle-{time.time_ns()}"
    log = manager.log
    await log.create(StreamMeta(stream_id, "hot-path", "req-idle", MODEL, "fp", time.time()))
    await log.append(stream_id, Start(stream_id, "req-idle", MODEL))
    reader = manager.follow(stream_id, -1)
    assert [e.seq for e in await anext(reader)] == [0]
    assert manager.loop_lag.ticking
    await log.append(stream_id, Done("end_turn", {"output_tokens": 0}, 0.0))
    assert [type(e.event) for e in await anext(reader)] == [Done]
    with pytest.raises(StopAsyncIteration):
        await anext(reader)
    await eventually_async(lambda: not manager.loop_lag.ticking, what="no ticks", within=10)
