"""Closing a gateway with live streams: every task it started ends, nothing is left
pending, nothing logs a traceback, and a reader of a stream handed over is ended
cleanly (without a final event) so that its client resumes elsewhere."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from httpx_sse import aconnect_sse

from tests.support import (
    Redis,
    assert_whole_answer,
    eventually_async,
    free_port,
    log_events,
    resume,
    spawn,
)
from tests.support.streams import Event, read_stream
from tokenrelay.config import Settings
from tokenrelay.events import Failed, Start, Text
from tokenrelay.gateway import Gateway, open_gateway, prepare
from tokenrelay.providers.base import GenerationRequest
from tokenrelay.streams.log import Entry

LONG = "A long answer [[sim:tokens=200]] [[sim:tps=40]] [[sim:ttft_ms=0]]"
TRACES = ("Traceback", "Task was destroyed", "CancelledError", "graceful shutdown exceeded")


async def _read_some(gw: Gateway, stream_id: str, seen: list[Entry]) -> None:
    async for batch in gw.manager.follow(stream_id, -1):
        seen.extend(batch)


@pytest.mark.parametrize("store", ["memory", "redis"])
async def test_closing_a_gateway_with_live_streams_leaves_no_task_and_no_traceback(
    store: str, redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(
        store="memory" if store == "memory" else redis.url,
        provider="simulator",
        heartbeat_interval=0.2,
        database_url="off",
    )
    before = asyncio.all_tasks()
    caplog.set_level(logging.DEBUG)
    readers: list[asyncio.Task[None]] = []
    seen: list[list[Entry]] = []
    async with open_gateway(settings, prepare(settings)) as gw:
        for i in range(3):
            request = GenerationRequest(
                model="claude-haiku-4-5",
                messages=[{"role": "user", "content": f"{LONG} {i}"}],
                max_tokens=1000,
            )
            stream_id = await gw.manager.start(
                request, owner="alice", request_id=f"req_{i}", body_fingerprint=str(i)
            )
            seen.append([])
            readers.append(asyncio.create_task(_read_some(gw, stream_id, seen[-1])))
        await eventually_async(
            lambda: all(len(s) > 5 for s in seen), what="every stream to be mid-answer"
        )
        assert gw.manager.active_streams == 3
    # Closing ended every reader by itself: none was cancelled, none still waits.
    done, pending = await asyncio.wait(readers, timeout=5)
    assert pending == set() and all(not t.cancelled() and t.exception() is None for t in done)
    for entries in seen:
        events = [e.event for e in entries]
        assert [e.seq for e in entries] == list(range(len(entries)))
        assert type(events[0]) is Start and all(type(e) is Text for e in events[1:-1])
        # The stream ended, recorded as the retryable shutdown error.
        last = events[-1]
        assert isinstance(last, Failed)
        assert (last.message, last.code, last.retryable) == (
            "Server shutting down",
            "shutdown",
            True,
        )
    await asyncio.sleep(0.05)  # let any stray callback run
    assert asyncio.all_tasks() - before - {asyncio.current_task()} == set()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert not any(t in caplog.text for t in TRACES)


def _serve(
    tmp: Path, redis: Redis, port: int, name: str
) -> contextlib.AbstractContextManager[subprocess.Popen[bytes]]:
    args = ["serve", "--port", str(port), "--store", redis.url]
    env = {"TOKENRELAY_HEARTBEAT_INTERVAL": "0.5", "TOKENRELAY_SIMULATOR_TPS": "40"}
    return spawn(args, f"http://127.0.0.1:{port}/readyz", env=env, log_path=tmp / name)


async def _read_until_cut(base: str, prompt: str, events: list[Event]) -> None:
    """Read a stream until its response ends, keeping each event as it arrives."""
    async with (
        httpx.AsyncClient(base_url=base, timeout=30) as client,
        aconnect_sse(client, "POST", "/api/stream-response", json={"prompt": prompt}) as source,
    ):
        async for sse in source.aiter_sse():
            if sse.data:
                stream_id, _, seq = sse.id.rpartition(":")
                events.append(Event(sse.id, stream_id, int(seq), json.loads(sse.data)))


async def test_sigterm_on_redis_hands_streams_over_and_ends_readers_cleanly(
    tmp_path: Path, redis: Redis
) -> None:
    """The readers of handed-over streams end without a final event (no cancellation
    by uvicorn's graceful timeout, no traceback); their clients resume on the next
    instance and get exactly the rest."""
    prompts = [f"{LONG} story {i}" for i in range(4)]
    port = free_port()
    reads: list[list[Event]] = [[] for _ in prompts]
    with _serve(tmp_path, redis, port, "first.log") as first:
        base = f"http://127.0.0.1:{port}"
        pairs = zip(prompts, reads, strict=True)
        tasks = [asyncio.create_task(_read_until_cut(base, p, r)) for p, r in pairs]
        await eventually_async(
            lambda: all(len(r) > 5 for r in reads), what="every stream to be mid-answer"
        )
        first.send_signal(signal.SIGTERM)
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=20)
        assert first.wait(timeout=20) == 0
    log = (tmp_path / "first.log").read_text()
    assert [e["count"] for e in log_events(log, "handover")] == ["4"]
    assert [t for t in TRACES if t in log] == []
    for events in reads:
        # Cut mid-answer: no done, no error; the client has only to resume.
        assert not any("done" in e.data or "error" in e.data for e in events)
    second_port = free_port()
    with _serve(tmp_path, redis, second_port, "second.log"):
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{second_port}", timeout=60) as c:
            for prompt, head in zip(prompts, reads, strict=True):
                tail = await resume(c, head[-1].id)
                # Directives do not change the text: the same answer, unpaced.
                unpaced = {"prompt": f"{prompt} [[sim:tps=0]]"}
                whole = await read_stream(c, "POST", "/api/stream-response", json=unpaced)
                assert_whole_answer(head + tail.events, whole.text)


def test_a_second_gateway_on_a_port_in_use_refuses_to_start(tmp_path: Path) -> None:
    # granian listens with SO_REUSEPORT: without the check, the second would share
    # the first one's connections and say nothing.
    port = free_port()
    args = ["serve", "--port", str(port), "--provider", "simulator"]
    env = {"TOKENRELAY_DATABASE_URL": "off"}
    with spawn(args, f"http://127.0.0.1:{port}/readyz", env=env):
        second = subprocess.run(
            [sys.executable, "-m", "tokenrelay", *args],
            env={**os.environ, **env}, capture_output=True, timeout=60,
        )  # fmt: skip
        assert second.returncode == 3, second.stdout
        failed = log_events(second.stdout.decode(), "bind_failed")
        assert [(e["port"], e["error"]) for e in failed] == [(str(port), "Address already in use")]
        assert httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200
