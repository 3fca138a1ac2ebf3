"""SIGTERM with the memory store: readiness turns 503, new streams get 503 with
Retry-After while the listener stays open, in-flight streams finish within
drain_timeout, the rest end with the retryable `shutdown` error, and the process exits."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import (
    Read,
    eventually_async,
    free_port,
    log_lines,
    read_stream,
    spawn,
    unique,
)


def gateway(tmp_path: Path, drain_timeout: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {"TOKENRELAY_DRAIN_TIMEOUT": drain_timeout, "TOKENRELAY_SIMULATOR_TTFT_MS": "0"}
    with spawn(["serve", "--port", str(port), "--provider", "simulator"], f"{url}/readyz",
               env=env, log_path=tmp_path / "gateway.log") as proc:  # fmt: skip
        yield url, proc


async def sigterm_mid_stream(
    url: str, proc: subprocess.Popen[bytes], client: httpx.AsyncClient, prompt: str
) -> tuple[asyncio.Task[Read], httpx.Response]:
    """Start reading a stream of `prompt`, SIGTERM the gateway half a second in, and
    wait for its readiness to say it drains: the reading task and that answer."""
    body = {"prompt": unique(prompt)}
    reading = asyncio.create_task(read_stream(client, "POST", "/api/stream-response", json=body))
    await asyncio.sleep(0.5)
    proc.send_signal(signal.SIGTERM)

    def draining() -> httpx.Response | None:
        response = httpx.get(f"{url}/readyz")
        return response if response.status_code == 503 else None

    ready = await eventually_async(draining, what="readiness to turn 503 after SIGTERM")
    return reading, ready


@pytest.fixture
def patient(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    yield from gateway(tmp_path, "10")


@pytest.fixture
def impatient(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    yield from gateway(tmp_path, "0.5")


async def test_drain_lets_in_flight_streams_finish_and_refuses_new_ones(
    patient: tuple[str, subprocess.Popen[bytes]],
) -> None:
    url, proc = patient
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        prompt = "Finish me [[sim:tokens=40]] [[sim:tps=20]]"
        reading, ready = await sigterm_mid_stream(url, proc, client, prompt)
        refused = await client.post("/api/stream-response", json={"prompt": "too late"})
        read = await reading
    assert ready.status_code == 503 and ready.json() == {"status": "draining"}
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["type"] == "overloaded_error"
    assert read.events[-1].data["done"] is True
    assert sum(e.token is not None for e in read.events) == 40
    assert proc.wait(timeout=10) == 0


async def test_streams_still_running_at_drain_timeout_end_with_shutdown(
    impatient: tuple[str, subprocess.Popen[bytes]],
) -> None:
    url, proc = impatient
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        body = {"prompt": unique("Too long [[sim:tokens=400]] [[sim:tps=20]]")}
        reading = asyncio.create_task(
            read_stream(client, "POST", "/api/stream-response", json=body)
        )
        await asyncio.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        read = await reading
    final = read.events[-1].data
    assert final["error"] == "Server shutting down"
    assert final["code"] == "shutdown" and final["retryable"] is True
    assert final["usage"]["output_tokens"] == sum(e.token is not None for e in read.events)
    assert proc.wait(timeout=10) == 0  # it never hangs on an open SSE connection


@pytest.fixture
def very_patient(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    yield from gateway(tmp_path, "120")


async def test_a_second_signal_ends_the_drain_at_once(
    very_patient: tuple[str, subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    url, proc = very_patient
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        prompt = "Twenty seconds [[sim:tokens=400]] [[sim:tps=20]]"
        reading, _ = await sigterm_mid_stream(url, proc, client, prompt)
        proc.send_signal(signal.SIGTERM)  # the operator will not wait 120 s
        read = await reading
    final = read.events[-1].data
    assert final["code"] == "shutdown" and final["retryable"] is True
    tokens = sum(e.token is not None for e in read.events)
    assert final["usage"]["output_tokens"] == tokens < 400
    assert proc.wait(timeout=10) == 0
    # The streams were ended, then the server stopped: it did not have to be cut off.
    events = [e["event"] for e in log_lines((tmp_path / "gateway.log").read_text())]
    assert "shutdown" in events and "shutdown_forced" not in events
